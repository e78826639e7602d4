"""The gate/up product with SwiGLU in its epilogue (``gpu_backend.epilogue_gemms``) against cuBLAS + ``silu_mul``.

Each candidate launch configuration of ``gate_up_silu_kernel`` is timed as the decode step runs
it: every layer's own weight in turn inside one CUDA graph, so weights are read cold. The
baseline, in the same run: cuBLAS's product then ``fused_ops.silu_mul``. Each candidate's output
is checked against the baseline's.

Session 12's first sweep (the script at commit 2f26c58) also tried plain pointer loads instead of
tensor descriptors: 0.86-0.95x at 256 rows; a warp-specialised loop hung on Triton 3.6. The same
script at commit 7b46fdd also timed a QKV product with RoPE and the KV write in its epilogue.

    python3 benchmarks/epilogue_gemms_gpu.py [--model llama-1b] [--rows 32,64,128,256,512] [--out FILE.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gemm_cold_gpu import cold_bench_setup, cold_cases, cold_seconds  # noqa: E402
from print_table import print_table  # noqa: E402

from gpu_backend.epilogue_gemms import TileConfig, gate_up_silu_kernel, swiglu_config  # noqa: E402
from gpu_backend.fused_ops import silu_mul  # noqa: E402

CONFIGS = (TileConfig(128, 64, 8, 4, 128), TileConfig(128, 128, 8, 3, 64), TileConfig(128, 64, 4, 4, 64),
           TileConfig(64, 64, 4, 4, 128), TileConfig(64, 128, 4, 3, 64), TileConfig(128, 64, 8, 3, 128))


def label(c: TileConfig) -> str:
    return f"{c.block_m}x{c.block_n}x{c.block_k}/w{c.num_warps}/st{c.num_stages}"


def main() -> int:
    setup = cold_bench_setup("epilogue_gemms_gpu", __doc__, "32,64,128,256,512")
    if setup is None:
        return 2
    args, res = setup
    args.kinds = "gate_up"
    layers = res["layers"]
    table = []
    for kind, n, k, ws, m, x in cold_cases(args, layers):
        ref = silu_mul(F.linear(x, ws[0])).float()
        base = cold_seconds(lambda i: silu_mul(F.linear(x, ws[i])), layers) * 1e6
        default = swiglu_config(m)
        cands = {}
        for cfg in dict.fromkeys((default, *CONFIGS)):
            try:
                got = gate_up_silu_kernel(x, ws[0], cfg).float()
                us = cold_seconds(lambda i: gate_up_silu_kernel(x, ws[i], cfg), layers) * 1e6
            except (triton.runtime.errors.OutOfResources, ValueError) as e:
                print(f"   {m} rows {label(cfg)}: {type(e).__name__}: {str(e)[:160]}", flush=True)
                continue
            err = float((got - ref).abs().max() / ref.abs().max())
            cands[label(cfg)] = {"us": us, "max_rel_err": err, "default": cfg == default}
            print(f"   {m} rows {label(cfg)}: {us:.1f} us, err {err:.1e}{' (default)' if cfg == default else ''}",
                  flush=True)
        res["results"].append({"rows": m, "cublas_silu_mul_us": base, "candidates": cands})
        if cands:
            best = min(cands, key=lambda c: cands[c]["us"])
            dflt = next((c for c in cands if cands[c]["default"]), best)
            table.append((m, f"{base:.1f}", f"{cands[dflt]['us']:.1f}", f"{base / cands[dflt]['us']:.2f}x", best,
                          f"{cands[best]['us']:.1f}", f"{max(c['max_rel_err'] for c in cands.values()):.1e}"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(f"\n{res['device']} {res['date']}, {args.model} gate/up + SwiGLU, {layers} layers' weights read cold, "
          f"us per layer")
    print_table(("rows", "cuBLAS + silu_mul", "epilogue kernel (default config)", "speed-up", "best config",
                 "best us", "max rel err"), table, False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
