"""The decode GEMMs per model shape: cuBLAS against every split-K candidate, as TorchExecutor's tuning sees them.

For each named model's five weight shapes (QKV, output projection, gate/up, down, LM head)
and decode batches of 32-256 rows, ``LinearPlan.tune`` times ``F.linear`` (cuBLAS) and each
``GemmConfig`` in ``gpu_backend.skinny_gemm.CANDIDATES`` inside CUDA graphs on the same
tensors, in the same run; the table gives both times, the winner and the compute and
weight-read floors (the matmul rate and copy bandwidth measured at the start).

    python3 benchmarks/gemm_gpu.py [--models llama-1b,llama-8b,smollm2-135m] [--rows 32,64,128,256]
        [--markdown] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from print_table import print_table  # noqa: E402
from torch_executor_gpu_common import measure_ceilings  # noqa: E402

from gpu_backend.models import MODELS  # noqa: E402
from gpu_backend.skinny_gemm import LinearPlan  # noqa: E402


def weight_shapes(name: str) -> dict[str, tuple[int, int]]:
    d = MODELS[name].dims
    q, kv = d.num_heads * d.head_dim, d.num_kv_heads * d.head_dim
    return {"qkv": (q + 2 * kv, d.hidden_size), "o": (d.hidden_size, q),
            "gate_up": (2 * d.intermediate_size, d.hidden_size), "down": (d.hidden_size, d.intermediate_size),
            "lm_head": (d.vocab_size, d.hidden_size)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="llama-1b,llama-8b,smollm2-135m")
    ap.add_argument("--rows", default="32,64,128,256")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown rows")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gemm_gpu.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gemm_gpu.py: needs a CUDA device", file=sys.stderr)
        return 2
    rows = [int(r) for r in args.rows.split(",")]
    ceil = measure_ceilings()
    flops, bw = ceil["bf16_matmul_flops"], ceil["d2d_bytes_per_s"]
    results = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
               "matmul_flops": flops, "copy_bytes_per_s": bw, "shapes": []}
    table = []
    for model in args.models.split(","):
        if model not in MODELS:
            raise SystemExit(f"gemm_gpu.py: unknown model {model!r}; named models: {', '.join(MODELS)}")
        for label, (n, k) in weight_shapes(model).items():
            w = torch.randn((n, k), dtype=torch.bfloat16, device="cuda") * 0.02
            plan = LinearPlan()
            t0 = time.perf_counter()
            plan.tune(rows, [w])
            tune_s = time.perf_counter() - t0
            for m in rows:
                c = plan.choices[(m, n, k)]
                floor = max(2 * m * n * k / flops, n * k * 2 / bw)
                rec = {"model": model, "weight": label, "rows": m, "n": n, "k": k, "cublas_us": c.cublas_s * 1e6,
                       "best_us": c.best_s * 1e6, "config": c.config.label() if c.config else "cublas",
                       "floor_us": floor * 1e6, "tune_s": tune_s}
                results["shapes"].append(rec)
                table.append((model, label, str(m), f"{n}x{k}", f"{rec['cublas_us']:.1f}", f"{rec['best_us']:.1f}",
                              f"{c.cublas_s / c.best_s:.2f}x", rec["config"], f"{rec['floor_us']:.1f}"))
            print(f"{model} {label}: tuned in {tune_s:.1f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\n{results['device']} ({results['date']}): matmul {flops / 1e12:.0f} TFLOP/s, copy {bw / 1e12:.2f} TB/s")
    print_table(("model", "weight", "rows", "n x k", "cuBLAS us", "best us", "speed-up", "choice", "floor us"), table,
                args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
