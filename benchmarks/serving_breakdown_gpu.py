"""Where the speed workload's time goes: the serving run at several token budgets, a prefill iteration's
kernels, and the prefill products alone.

``torch_executor_gpu.py`` (b) times the serving engine over ``TorchExecutor`` on 256 requests of 512
prompt and 128 output tokens and compares it with the workload's physical limit (every prefill FLOP at
the matmul rate, every decode step's bytes at the copy bandwidth). This script takes the gap apart:

  serving   the same run in each ``--serving`` configuration (``max_num_batched_tokens``, synchronous or
            asynchronous scheduling): output tokens/s; for synchronous runs also prefill and decode
            iterations (wall and device seconds) and the engine's own time (wall clock of the run minus
            the time spent in ``execute``)
  prefill   one iteration of C fresh 512-token chunks (C = budget / 512) under ``torch.profiler``:
            device time per kernel and per kind (matrix products, attention, norms, ...), and the
            products' FLOP rate against the matmul rate
  gemms     each layer weight's product alone at those row counts (CUDA events), against the
            matmul rate

Usage (device machine): ``python3 benchmarks/serving_breakdown_gpu.py [--serving 8192:sync,16384:async]``;
full results in ``$OUT/serving_breakdown_gpu.json`` (``--out``), a short table last. Needs neither
gymnasium nor stable-baselines3.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from argparse import Namespace
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from decode_profile_gpu import profile_steps  # noqa: E402
from gpu_backend.cuda_timing import cuda_seconds  # noqa: E402
from gpu_backend.models import LlamaWeights, build_hf_model  # noqa: E402
from gpu_backend.plan import BatchPlan, PrefillChunk  # noqa: E402
from gpu_backend.torch_executor import TorchExecutor  # noqa: E402
from torch_executor_gpu import serve_once, serving_config, workload_floor  # noqa: E402
from torch_executor_gpu_common import measure_ceilings, toks  # noqa: E402

KINDS = (("attention", ("flash", "fmha", "attention", "attn", "prefill")),
         ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "sm90", "sm80")),
         ("norm", ("rms", "norm")),
         ("rope", ("rope",)),
         ("silu", ("silu",)),
         ("argmax", ("argmax", "max")))


def kernel_kind(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def serving(weights, configs: list[str], args) -> dict:
    n, p, o = args.requests, args.prompt, args.output
    ex = TorchExecutor(weights, device="cuda", num_gpu_blocks=n * (-(-(p + o) // 16)) + 64, num_host_blocks=0,
                       max_model_len=4096, max_num_seqs=n)
    out = {}
    for c in configs:
        run = serve_once(ex, n, p, o, *serving_config(c))
        run["engine_s"] = run["wall_s"] - run["busy_s"] if not run["async_scheduling"] else None
        out[c] = run
    del ex
    return out


def prefill_plan(num_chunks: int, prompt: int, block_size: int) -> BatchPlan:
    per = -(-prompt // block_size)
    return BatchPlan(prefills=[PrefillChunk(1000 + i, 0, prompt, list(range(per * i, per * (i + 1))), True,
                                            toks(prompt, 900 + i)) for i in range(num_chunks)])


def prefill_kernels(weights, num_chunks: int, prompt: int, matmul_rate: float) -> dict:
    ex = TorchExecutor(weights, device="cuda", num_gpu_blocks=num_chunks * (-(-prompt // 16)) + 16,
                       num_host_blocks=0, max_model_len=4096, max_num_seqs=num_chunks)
    plan = prefill_plan(num_chunks, prompt, ex.block_size)
    prof = profile_steps(ex, plan, steps=5)
    kinds: dict = defaultdict(float)
    for row in prof["kernels"]:
        kinds[kernel_kind(row["kernel"])] += row["us_per_step"]
    device = statistics.median(ex.execute(plan).compute_s for _ in range(8))
    shape = weights.dims.shape(2)
    rows = num_chunks * prompt
    linear_flops = 2 * shape.linear_params_per_token * rows
    gemm_us = kinds.get("gemm", 0.0)
    del ex
    return {"chunks": num_chunks, "rows": rows, "device_s": device, "span_us": prof["span_us"],
            "busy_us": prof["busy_us"], "kinds_us": dict(kinds), "kernels": prof["kernels"][:25],
            "gemm_flops_per_s": linear_flops / (gemm_us * 1e-6) if gemm_us else None,
            "gemm_over_matmul_rate": linear_flops / (gemm_us * 1e-6) / matmul_rate if gemm_us else None}


def gemms_alone(weights, rows_list: list[int], matmul_rate: float) -> dict:
    w = weights
    mats = {"qkv": w.qkv[0], "o": w.o_proj[0], "gate_up": w.gate_up[0], "down": w.down[0]}
    out = {}
    for rows in rows_list:
        for name, mat in mats.items():
            x = torch.randn(rows, mat.shape[1], dtype=mat.dtype, device="cuda")
            for _ in range(3):
                F.linear(x, mat)
            t = statistics.median(cuda_seconds(lambda: F.linear(x, mat), 20))
            flops = 2 * rows * mat.shape[0] * mat.shape[1]
            out[f"{name}@{rows}"] = {"us": t * 1e6, "flops_per_s": flops / t, "over_matmul_rate": flops / t / matmul_rate}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--output", type=int, default=128)
    ap.add_argument("--serving", default="8192:sync,16384:sync,16384:async",
                    help="comma-separated engine configurations BUDGET:async|sync")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "serving_breakdown_gpu.json")
    args = ap.parse_args()
    configs = [c for c in args.serving.split(",") if c]
    try:
        budgets = sorted({serving_config(c)[0] for c in configs})
    except ValueError as e:
        ap.error(f"--serving: {e}")
    bad = [b for b in budgets if b % args.prompt]
    if bad:
        ap.error(f"--serving: budgets {bad} are not multiples of --prompt {args.prompt}")
    if not torch.cuda.is_available():
        print("serving_breakdown_gpu: needs a CUDA device", file=sys.stderr)
        return 2
    res: dict = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"),
                 "args": {k: str(v) for k, v in vars(args).items()}}
    res["ceilings"] = ceil = measure_ceilings()
    rate = ceil["bf16_matmul_flops"]
    hf = build_hf_model("llama-1b", torch.bfloat16, "cuda", seed=3)
    weights = LlamaWeights.from_hf(hf, "llama-1b")
    del hf
    floor_args = Namespace(requests=args.requests, prompt=args.prompt, output=args.output)
    res["floor"] = floor = workload_floor(weights, ceil, floor_args)
    res["serving"] = serving(weights, configs, args)
    res["prefill"] = {b: prefill_kernels(weights, b // args.prompt, args.prompt, rate) for b in budgets}
    res["gemms"] = gemms_alone(weights, budgets, rate)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2, default=str))

    print(f"\n{res['device']}, {res['date']}: llama-1b, {args.requests} x {args.prompt} + {args.output}; copy "
          f"{ceil['d2d_bytes_per_s'] / 1e12:.2f} TB/s, matmul {rate / 1e12:.0f} TFLOP/s; physical limit "
          f"{floor['output_tok_s']:,.0f} tok/s (prefill {floor['prefill_s']:.3f} s, decode {floor['decode_s']:.3f} s)")
    print("| configuration | tok/s | of limit | wall s | prefill its / wall / device s | decode its / wall / device s "
          "| engine s |")
    print("|---|---|---|---|---|---|---|")
    for c, r in res["serving"].items():
        ph = r.get("phases")
        pre = f"{r['prefill_iterations']}" + (f" / {ph['prefill_wall_s']:.3f} / {ph['prefill_device_s']:.3f}" if ph else "")
        dec = f"{r['decode_iterations']}" + (f" / {ph['decode_wall_s']:.3f} / {ph['decode_device_s']:.3f}" if ph else "")
        eng = f"{r['engine_s']:.3f}" if r["engine_s"] is not None else "-"
        print(f"| {c} | {r['output_tok_s']:,.0f} | {r['output_tok_s'] / floor['output_tok_s']:.0%} | {r['wall_s']:.3f} "
              f"| {pre} | {dec} | {eng} |")
    print("| prefill rows | device ms | gemm | attention | norm | rope | silu | other | gemm TFLOP/s (of rate) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for b, p in res["prefill"].items():
        k = p["kinds_us"]
        g = p["gemm_flops_per_s"]
        print(f"| {p['rows']} | {p['device_s'] * 1e3:.2f} | " + " | ".join(
            f"{k.get(n, 0.0) / 1e3:.2f}" for n in ("gemm", "attention", "norm", "rope", "silu", "other"))
            + (f" | {g / 1e12:.0f} ({p['gemm_over_matmul_rate']:.0%}) |" if g else " | - |"))
    print("| product @ rows | us | TFLOP/s | of matmul rate |")
    print("|---|---|---|---|")
    for name, g in res["gemms"].items():
        print(f"| {name} | {g['us']:.1f} | {g['flops_per_s'] / 1e12:.0f} | {g['over_matmul_rate']:.0%} |")
    top = res["prefill"][budgets[0]]["kernels"][:8]
    print(f"top kernels of the {budgets[0]}-row prefill iteration (us per iteration):")
    for r in top:
        print(f"  {r['us_per_step']:9.1f}  x{r['launches_per_step']:.0f}  {r['kernel'][:100]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
