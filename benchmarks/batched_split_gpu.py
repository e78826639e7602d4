"""Decode products split over K as one batched cuBLAS call, the partials summed by the kernel that follows.

``gemm_cold_gpu.py`` found cuBLAS ahead of our Triton split-K kernel on every decode weight read
cold. This measures the other way to fill the H200's 132 SMs on the few-tile products (at 256
rows the ~1B shape's output and down projections are 32 output tiles of 128 x 128): cut ``K``
into ``S`` slices and let cuBLAS multiply them as ``S`` batched products
(``gpu_backend.skinny_gemm.batched_split_linear``: strided views, nothing copied; "sliced"
below: a pre-sliced contiguous copy of the weight instead), then sum the ``S`` partials inside
the fused kernel that follows each product anyway (``gpu_backend.fused_ops``: RoPE + KV write
after QKV, SiLU * up after gate/up, residual add + RMSNorm after the output and down products).

Each configuration is timed as the pair the decode step runs, product then its follower, for
every layer's own weight in turn inside one CUDA graph (weights read cold, as in a step), and
compared with the pair as cuBLAS alone runs it (``F.linear`` then the follower) in the same run.

    python3 benchmarks/batched_split_gpu.py [--model llama-1b] [--rows 64,128,256,512] [--out FILE.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gemm_cold_gpu import cold_bench_setup, cold_cases, cold_seconds  # noqa: E402
from print_table import print_table  # noqa: E402

from gpu_backend.fused_ops import add_rms_norm, rope_and_cache, silu_mul  # noqa: E402
from gpu_backend.models import MODELS  # noqa: E402
from gpu_backend.skinny_gemm import batched_split_linear  # noqa: E402

SPLITS = (2, 4, 8)


def sliced(w: torch.Tensor, s: int) -> torch.Tensor:
    """``w`` [N, K] as ``s`` contiguous [N, K/s] slices, returned transposed for bmm: [s, K/s, N]."""
    n, k = w.shape
    return w.view(n, s, k // s).transpose(0, 1).contiguous().transpose(1, 2)


def sliced_partials(x: torch.Tensor, w_sliced: torch.Tensor) -> torch.Tensor:
    s, ks, _ = w_sliced.shape
    return torch.bmm(x.view(x.shape[0], s, ks).transpose(0, 1), w_sliced)


def follower(kind: str, d, m: int):
    """The fused kernel the decode step runs on this product's output: a function of the product."""
    if kind in ("o", "down"):
        h = torch.randn((m, d.hidden_size), dtype=torch.bfloat16, device="cuda")
        norm_w = torch.ones(d.hidden_size, dtype=torch.bfloat16, device="cuda")
        return lambda y: add_rms_norm(y, h, norm_w, d.rms_norm_eps)
    if kind == "gate_up":
        return silu_mul
    inv = torch.rand(d.head_dim // 2, device="cuda")
    angles = torch.arange(4096, device="cuda", dtype=torch.float32)[:, None] * inv[None, :]
    emb = torch.cat((angles, angles), dim=-1)
    cos, sin = emb.cos().bfloat16(), emb.sin().bfloat16()
    pos = torch.full((m,), 512, device="cuda")
    blocks = torch.arange(m, device="cuda") // 16
    slots = torch.arange(m, device="cuda") % 16
    kc = torch.zeros((m // 16 + 1, d.num_kv_heads, 16, d.head_dim), dtype=torch.bfloat16, device="cuda")
    vc = torch.zeros_like(kc)
    return lambda y: rope_and_cache(y, cos, sin, pos, blocks, slots, kc, vc, d.num_heads, d.num_kv_heads,
                                    d.head_dim, want_kv=False)[0]


def main() -> int:
    setup = cold_bench_setup("batched_split_gpu", __doc__, "64,128,256,512")
    if setup is None:
        return 2
    args, res = setup
    d = MODELS[args.model].dims
    layers = d.num_layers
    table = []
    for kind, n, k, ws, m, x in cold_cases(args, layers):
        then = follower(kind, d, m)
        ref = then(F.linear(x, ws[0])).float()
        base = cold_seconds(lambda i: then(F.linear(x, ws[i])), layers)
        row = {"kind": kind, "rows": m, "n": n, "k": k, "cublas_us": base * 1e6, "splits": {}}
        best = (base, "1")
        cells = []
        for s in SPLITS:
            if k % (s * 8):
                cells += ["-", "-"]
                continue
            got = then(batched_split_linear(x, ws[0], s)).float()
            err = ((got - ref).abs().max() / ref.abs().max()).item()
            view = cold_seconds(lambda i: then(batched_split_linear(x, ws[i], s)), layers)
            wsl = [sliced(w, s) for w in ws]
            cut = cold_seconds(lambda i: then(sliced_partials(x, wsl[i])), layers)
            row["splits"][s] = {"view_us": view * 1e6, "sliced_us": cut * 1e6, "max_rel_err": err}
            best = min(best, (view, f"{s}"), (cut, f"{s} sliced"))
            cells += [f"{view * 1e6:.1f}", f"{cut * 1e6:.1f}"]
        res["results"].append(row)
        table.append((kind, str(m), f"{n}x{k}", f"{base * 1e6:.1f}", *cells, best[1], f"{base / best[0]:.2f}x"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(f"\n{res['device']} ({res['date']}), {args.model}: us per product + the kernel after it, each of "
          f"{layers} layers' weights in turn (S=s: view / sliced weight)")
    print_table(("weight", "rows", "n x k", "cuBLAS", *(f"S={s} {v}" for s in SPLITS for v in ("view", "sliced")),
                 "best S", "speed-up"), table, False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
