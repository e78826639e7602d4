"""The products of ``gpu_backend.epilogue_gemms`` against cuBLAS followed by the ``fused_ops`` kernel they replace.

Each candidate launch configuration of ``gate_up_silu`` (SwiGLU in the gate/up product's epilogue)
and ``qkv_rope_cache`` (RoPE and the paged KV write in the QKV product's epilogue) is timed as the
decode step runs it: every layer's own weight in turn inside one CUDA graph, so weights are read
cold. The baselines, in the same run: cuBLAS's product then ``silu_mul`` / ``rope_and_cache``, and
for QKV also the product cut into batched K slices (``split_gemms``) with ``rope_and_cache``
summing the partials. Each candidate's output is checked against the cuBLAS pair's first.

Session 12's first sweep of the SwiGLU product (the script at commit 2f26c58) also tried plain
pointer loads instead of tensor descriptors: 0.86-0.95x at 256 rows, and a warp-specialised loop
that hung on Triton 3.6.

    python3 benchmarks/epilogue_gemms_gpu.py [--model llama-1b] [--rows 32,64,128,256,512] [--out FILE.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gemm_cold_gpu import cold_bench_setup, cold_cases, cold_seconds  # noqa: E402
from print_table import print_table  # noqa: E402

from gpu_backend.epilogue_gemms import TileConfig, gate_up_silu, qkv_config, qkv_rope_cache, swiglu_config  # noqa: E402
from gpu_backend.fused_ops import rope_and_cache, silu_mul  # noqa: E402
from gpu_backend.models import MODELS  # noqa: E402
from gpu_backend.skinny_gemm import LinearPlan  # noqa: E402

SWIGLU = (TileConfig(128, 64, 8, 4, 128), TileConfig(128, 128, 8, 3, 64), TileConfig(128, 64, 4, 4, 64),
          TileConfig(64, 64, 4, 4, 128), TileConfig(64, 128, 4, 3, 64), TileConfig(128, 64, 8, 3, 128))
QKV = (TileConfig(64, 64, 4, 4), TileConfig(128, 64, 4, 4), TileConfig(128, 64, 8, 3), TileConfig(64, 128, 4, 3),
       TileConfig(128, 128, 8, 3), TileConfig(64, 64, 4, 6), TileConfig(128, 64, 8, 4))


def label(c: TileConfig) -> str:
    return f"{c.block_m}x{c.block_n or 'head'}x{c.block_k}/w{c.num_warps}/st{c.num_stages}"


def main() -> int:
    setup = cold_bench_setup("epilogue_gemms_gpu", __doc__, "32,64,128,256,512")
    if setup is None:
        return 2
    args, res = setup
    args.kinds = "qkv,gate_up"
    d = MODELS[args.model].dims
    layers = res["layers"]
    plan = LinearPlan(split_sms=res["sms"])
    nh, nkv, hd = d.num_heads, d.num_kv_heads, d.head_dim
    table = []
    for kind, n, k, ws, m, x in cold_cases(args, layers):
        if kind == "gate_up":
            def pair(i):
                return silu_mul(F.linear(x, ws[i]))
            baselines = {"cuBLAS + silu_mul": pair}

            def fused(i, cfg):
                return gate_up_silu(x, ws[i], cfg)
            configs, default = SWIGLU, swiglu_config(m)
        else:
            ang = torch.rand(4096, hd // 2, device="cuda") * 6
            cos = torch.cat([ang, ang], 1).cos().to(torch.bfloat16)
            sin = torch.cat([ang, ang], 1).sin().to(torch.bfloat16)
            pos = torch.randint(0, 4096, (m,), device="cuda")
            blocks = torch.randperm(m, device="cuda")
            slots = torch.randint(0, 16, (m,), device="cuda")
            kc = torch.zeros(m, nkv, 16, hd, dtype=torch.bfloat16, device="cuda")
            vc = torch.zeros_like(kc)

            def rope(y):
                return rope_and_cache(y, cos, sin, pos, blocks, slots, kc, vc, nh, nkv, hd, want_kv=False)[0]
            baselines = {"cuBLAS + rope_and_cache": lambda i: rope(F.linear(x, ws[i])),
                         "split_gemms + rope_and_cache": lambda i: rope(plan.partials(x, ws[i]))}

            def fused(i, cfg):
                return qkv_rope_cache(x, ws[i], cos, sin, pos, blocks, slots, kc, vc, nh, nkv, hd, False, cfg)[0]
            configs, default = QKV, qkv_config(m)
        ref = next(iter(baselines.values()))(0).float()
        base_us = {name: cold_seconds(fn, layers) * 1e6 for name, fn in baselines.items()}
        cands = {}
        for cfg in dict.fromkeys((default, *configs)):
            try:
                got = fused(0, cfg).float()
                us = cold_seconds(lambda i: fused(i, cfg), layers) * 1e6
            except (triton.runtime.errors.OutOfResources, ValueError) as e:
                print(f"   {kind} {m} {label(cfg)}: {type(e).__name__}: {str(e)[:160]}", flush=True)
                continue
            err = float((got - ref).abs().max() / ref.abs().max())
            cands[label(cfg)] = {"us": us, "max_rel_err": err, "default": cfg == default}
            print(f"   {kind} {m} {label(cfg)}: {us:.1f} us, err {err:.1e}"
                  f"{' (default)' if cfg == default else ''}", flush=True)
        res["results"].append({"kind": kind, "rows": m, "baselines_us": base_us, "candidates": cands})
        if cands:
            best = min(cands, key=lambda c: cands[c]["us"])
            dflt = next((c for c in cands if cands[c]["default"]), best)
            fastest_base = min(base_us.values())
            table.append((kind, m, " / ".join(f"{v:.1f}" for v in base_us.values()), f"{cands[dflt]['us']:.1f}",
                          f"{fastest_base / cands[dflt]['us']:.2f}x", best, f"{cands[best]['us']:.1f}",
                          f"{max(c['max_rel_err'] for c in cands.values()):.1e}"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(f"\n{res['device']} {res['date']}, {args.model}, {layers} layers' weights read cold, us per product; "
          f"baselines: gate/up cuBLAS + silu_mul; QKV cuBLAS + rope_and_cache / split_gemms + rope_and_cache")
    print_table(("product", "rows", "baselines us", "default config us", "against the fastest baseline",
                 "best config", "best us", "max rel err"), table, False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
