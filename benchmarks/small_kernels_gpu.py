"""Launch configurations of the decode step's small kernels, and how close the decode attention is to a pure read.

A ``llama-1b`` decode step at batch 256 runs about 150 kernels, most of them small. What each
launch costs, and whether the small kernels' launch configurations leave time on the table,
decide how far the step can get below its byte roofline (the element-wise kernels had never been
swept before session 12, the attention was in session 9). This sweeps each kernel's launch
configuration at the step's shapes, every configuration inside a CUDA graph of 16 launches (one
per layer, as in the step; the gap between dependent launches included), against the
configuration the executor ships:

- ``add_rms_norm`` (after the output and down products; with split_gemms=True it sums 2 or 4
  float32 partials), warps per row, and a variant that normalises several rows per program;
- ``rope_and_cache`` (after QKV), warps; ``silu_mul`` (after gate/up), block and warps;
  ``greedy_tokens`` (after the LM head), block and warps;
- an empty kernel of 256 programs: the floor of any launch in a graph;
- the decode attention at 256 x 513 (one layer), tile / warps / stages, one or two context
  splits, against a Triton kernel that only reads the same number of bytes.

    python3 benchmarks/small_kernels_gpu.py [--out FILE.json] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from print_table import print_table  # noqa: E402
from torch_executor_gpu_common import measure_ceilings  # noqa: E402

from gpu_backend import fused_ops  # noqa: E402
from gpu_backend.cuda_timing import graph_seconds  # noqa: E402
from gpu_backend.models import MODELS  # noqa: E402
from gpu_backend.paged_attention import decode_attention_triton  # noqa: E402

LAYERS = 16


@triton.jit
def _empty_kernel(OUT):
    tl.store(OUT + tl.program_id(0), 1)


@triton.jit
def _read_kernel(X, OUT, n, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    base = pid.to(tl.int64) * BLOCK * ITERS
    for i in range(ITERS):
        offs = base + i * BLOCK + tl.arange(0, BLOCK)
        acc += tl.load(X + offs, mask=offs < n, other=0.0).to(tl.float32)
    tl.store(OUT + pid, tl.sum(acc, axis=0))


@triton.jit
def _norm_rows_kernel(X, H, W, Y, stride_xs, T, N: tl.constexpr, eps, SPLITS: tl.constexpr, ROWS: tl.constexpr):
    """add + RMSNorm of ROWS rows per program (contiguous [T, N] tensors; X as SPLITS partials)."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]
    offs = tl.arange(0, N)[None, :]
    ok = rows < T
    h = tl.load(H + rows * N + offs, mask=ok, other=0.0)
    xf = tl.zeros([ROWS, N], dtype=tl.float32)
    for s in tl.static_range(SPLITS):
        xf += tl.load(X + s * stride_xs + rows * N + offs, mask=ok, other=0.0).to(tl.float32)
    h = (h.to(tl.float32) + xf.to(h.dtype).to(tl.float32)).to(h.dtype)
    tl.store(H + rows * N + offs, h, mask=ok)
    hf = h.to(tl.float32)
    var = tl.sum(hf * hf, axis=1) / N
    y = (hf * tl.rsqrt(var + eps)[:, None]).to(h.dtype)
    w = tl.load(W + offs)
    tl.store(Y + rows * N + offs, (w.to(tl.float32) * y.to(tl.float32)).to(Y.dtype.element_ty), mask=ok)


def per_call_us(fn) -> float:
    return graph_seconds(fn, calls=LAYERS, reps=15) * 1e6


def sweep_norm(d, T: int) -> list[dict]:
    N = d.hidden_size
    h = torch.randn(T, N, dtype=torch.bfloat16, device="cuda")
    w = torch.randn(N, dtype=torch.bfloat16, device="cuda")
    y = torch.empty_like(h)
    rows = []
    for splits in (1, 2, 4):
        x = (torch.randn(T, N, dtype=torch.bfloat16, device="cuda") if splits == 1 else
             torch.randn(splits, T, N, dtype=torch.float32, device="cuda"))
        xs = x.stride(0) if splits > 1 else 0
        shipped = per_call_us(lambda: fused_ops.add_rms_norm(x, h, w, d.rms_norm_eps))
        for warps in (1, 2, 4, 8, 16):
            def run(warps=warps):
                fused_ops._add_rms_norm_kernel[(T,)](x, h, w, y, xs, N, N, N, N, d.rms_norm_eps, HAS_X=True,
                                                     SPLITS=splits, BLOCK=N, num_warps=warps)
            rows.append({"kernel": "add_rms_norm", "splits": splits, "config": f"1 row/{warps} warps",
                         "us": per_call_us(run), "shipped_us": shipped})
        for per in (2, 4, 8):
            for warps in (4, 8, 16):
                def run(per=per, warps=warps):
                    _norm_rows_kernel[(triton.cdiv(T, per),)](x, h, w, y, xs, T, N, d.rms_norm_eps, SPLITS=splits,
                                                              ROWS=per, num_warps=warps)
                rows.append({"kernel": "add_rms_norm", "splits": splits, "config": f"{per} rows/{warps} warps",
                             "us": per_call_us(run), "shipped_us": shipped})
    return rows


def sweep_rope(d, T: int) -> list[dict]:
    nh, nkv, hd = d.num_heads, d.num_kv_heads, d.head_dim
    cols = (nh + 2 * nkv) * hd
    cos = torch.randn(4096, hd, dtype=torch.bfloat16, device="cuda")
    sin = torch.randn_like(cos)
    pos = torch.full((T,), 512, dtype=torch.long, device="cuda")
    blocks = torch.arange(T, dtype=torch.long, device="cuda")
    slots = torch.zeros(T, dtype=torch.long, device="cuda")
    kc = torch.zeros(T + 1, nkv, 16, hd, dtype=torch.bfloat16, device="cuda")
    vc = torch.zeros_like(kc)
    q = torch.empty(T, nh, hd, dtype=torch.bfloat16, device="cuda")
    rows = []
    for splits in (1, 2):
        qkv = (torch.randn(T, cols, dtype=torch.bfloat16, device="cuda") if splits == 1 else
               torch.randn(splits, T, cols, dtype=torch.float32, device="cuda"))
        shipped = per_call_us(lambda: fused_ops.rope_and_cache(qkv, cos, sin, pos, blocks, slots, kc, vc, nh, nkv,
                                                               hd, want_kv=False))
        for warps in (1, 2, 4, 8):
            def run(warps=warps):
                fused_ops._rope_cache_kernel[(T,)](
                    qkv, cos, sin, pos, blocks, slots, q, kc, vc, q, q, qkv.stride(0) if splits > 1 else 0,
                    qkv.stride(-2), q.stride(0), cos.stride(0), kc.stride(0), kc.stride(1), kc.stride(2), 0,
                    NH=nh, NKV=nkv, HALF=hd // 2, HEADS_PAD=triton.next_power_of_2(nh + 2 * nkv), WRITE_KV=False,
                    SPLITS=splits, num_warps=warps)
            rows.append({"kernel": "rope_and_cache", "splits": splits, "config": f"{warps} warps",
                         "us": per_call_us(run), "shipped_us": shipped})
    return rows


def sweep_silu(d, T: int) -> list[dict]:
    inter = d.intermediate_size
    gu = torch.randn(T, 2 * inter, dtype=torch.bfloat16, device="cuda")
    out = torch.empty(T, inter, dtype=torch.bfloat16, device="cuda")
    shipped = per_call_us(lambda: fused_ops.silu_mul(gu))
    rows = []
    for block in (512, 1024, 2048, 4096, 8192):
        for warps in (2, 4, 8):
            def run(block=block, warps=warps):
                fused_ops._silu_mul_kernel[(T, triton.cdiv(inter, block))](gu, out, 0, gu.stride(0), out.stride(0),
                                                                           inter, SPLITS=1, BLOCK=block,
                                                                           num_warps=warps)
            rows.append({"kernel": "silu_mul", "splits": 1, "config": f"block {block}/{warps} warps",
                         "us": per_call_us(run), "shipped_us": shipped})
    return rows


def sweep_argmax(d, T: int) -> list[dict]:
    logits = torch.randn(T, d.vocab_size, dtype=torch.bfloat16, device="cuda")
    out = torch.empty(T, dtype=torch.long, device="cuda")
    shipped = per_call_us(lambda: fused_ops.greedy_tokens(logits, out))
    rows = []
    for block in (1024, 2048, 4096, 8192):
        for warps in (4, 8, 16):
            def run(block=block, warps=warps):
                fused_ops._argmax_kernel[(T,)](logits, out, logits.stride(0), d.vocab_size, BLOCK=block,
                                               num_warps=warps)
            rows.append({"kernel": "greedy_tokens", "splits": 1, "config": f"block {block}/{warps} warps",
                         "us": per_call_us(run), "shipped_us": shipped})
    return rows


def sweep_attention(d, B: int, ctx: int) -> tuple[list[dict], dict]:
    per_seq = -(-ctx // 16)
    kc = torch.randn(B * per_seq + 1, d.num_kv_heads, 16, d.head_dim, dtype=torch.bfloat16, device="cuda")
    vc = torch.randn_like(kc)
    perm = torch.randperm(B * per_seq, generator=torch.Generator().manual_seed(0))
    tables = perm.view(B, per_seq).cuda()       # scattered blocks, as a busy pool has them (int64, as the executor)
    lens = torch.full((B,), ctx, dtype=torch.long, device="cuda")
    q = torch.randn(B, d.num_heads, d.head_dim, dtype=torch.bfloat16, device="cuda")
    out = torch.empty_like(q)
    scale = d.head_dim ** -0.5
    kv_bytes = 2 * B * ctx * d.num_kv_heads * d.head_dim * 2
    shipped = per_call_us(lambda: decode_attention_triton(q, kc, vc, tables, lens, scale, out))
    rows = []
    for splits in (1, 2):
        for tile in (16, 32, 64):
            for warps in (1, 2, 4):
                for stages in (2, 3, 4):
                    cfg = {"tile_tokens": tile, "num_warps": warps, "num_stages": stages, "num_splits": splits}
                    try:
                        us = per_call_us(lambda: decode_attention_triton(q, kc, vc, tables, lens, scale, out, cfg))
                    except triton.runtime.errors.OutOfResources as e:
                        print(f"   attention {cfg}: {e}", flush=True)
                        continue
                    rows.append({"kernel": "decode_attention", "splits": splits,
                                 "config": f"{tile}/{warps}/{stages}", "us": us, "shipped_us": shipped,
                                 "TBps": kv_bytes / us / 1e6})
    # the same bytes read by a plain streaming kernel
    flat = torch.cat([kc.flatten(), vc.flatten()])[: kv_bytes // 2]
    part = torch.empty(1 << 16, dtype=torch.float32, device="cuda")
    read = {}
    for block, iters in ((4096, 8), (8192, 4), (2048, 32)):
        programs = triton.cdiv(flat.numel(), block * iters)
        us = per_call_us(lambda: _read_kernel[(programs,)](flat, part, flat.numel(), BLOCK=block, ITERS=iters,
                                                         num_warps=8))
        read[f"block {block} x {iters}"] = {"us": us, "TBps": kv_bytes / us / 1e6}
    return rows, {"kv_bytes": kv_bytes, "read_kernel": read, "shipped_us": shipped,
                  "shipped_TBps": kv_bytes / shipped / 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-1b", choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--context", type=int, default=513)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "small_kernels_gpu.json")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("small_kernels_gpu: needs a CUDA device", file=sys.stderr)
        return 2
    d = MODELS[args.model].dims
    T = args.batch
    copy_bw = measure_ceilings()["d2d_bytes_per_s"]
    flag = torch.zeros(T, dtype=torch.int32, device="cuda")
    empty_us = per_call_us(lambda: _empty_kernel[(T,)](flag, num_warps=1))
    rows = sweep_norm(d, T) + sweep_rope(d, T) + sweep_silu(d, T) + sweep_argmax(d, T)
    att_rows, att = sweep_attention(d, T, args.context)
    res = {"device": torch.cuda.get_device_name(), "model": args.model, "batch": T, "context": args.context,
           "copy_TBps": copy_bw / 1e12, "empty_kernel_us": empty_us, "rows": rows + att_rows, "attention": att}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(f"\n{res['device']}: copy bandwidth {copy_bw / 1e12:.2f} TB/s, an empty kernel of {T} programs "
          f"{empty_us:.2f} us per launch in a graph")
    best = {}
    for r in rows + att_rows:
        key = (r["kernel"], r["splits"])
        if key not in best or r["us"] < best[key]["us"]:
            best[key] = r
    per_step = {"add_rms_norm": 2 * LAYERS, "greedy_tokens": 1}
    table = [(k, s, f"{r['shipped_us']:.2f}", r["config"], f"{r['us']:.2f}", f"{r['shipped_us'] / r['us']:.2f}x",
              f"{(r['shipped_us'] - r['us']) * per_step.get(k, LAYERS):.0f}")
             for (k, s), r in sorted(best.items())]
    print_table(("kernel", "splits", "shipped us", "best config", "best us", "speed-up", "us saved per step*"), table,
                args.markdown)
    print("* add_rms_norm twice per layer, rope / silu / attention once, greedy_tokens once per step")
    print(f"attention: shipped {att['shipped_us']:.1f} us = {att['shipped_TBps']:.2f} TB/s; read-only kernel "
          + ", ".join(f"{k}: {v['us']:.1f} us = {v['TBps']:.2f} TB/s" for k, v in att["read_kernel"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
