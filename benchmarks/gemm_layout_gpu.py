"""cuBLAS's speed on the executor's weight shapes by weight layout and BLAS back end, in one run.

``F.linear(x, W)`` with ``W`` stored ``[N, K]`` (how transformers and the executor keep weights)
lets cuBLAS pick its kernel for a transposed operand; the same product with ``Wt = W.T`` stored
contiguous (``[K, N]``, ``torch.mm(x, Wt)``) is another problem to cuBLAS's heuristics and can
get another kernel. Each (model, weight, rows) is timed both ways inside CUDA graphs, once per
BLAS setting (default, ``TORCH_BLAS_PREFER_CUBLASLT=1``), each setting in its own process since
torch reads it at start-up. Rows cover decode batches and prefill chunks, so a layout is judged
on both.

    python3 benchmarks/gemm_layout_gpu.py [--models llama-1b,smollm2-135m,llama-8b]
        [--rows 1,16,64,128,256,1024,4096,8192] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gemm_gpu import weight_shapes  # noqa: E402
from print_table import print_table  # noqa: E402

from gpu_backend.cuda_timing import graph_seconds  # noqa: E402

BLAS_SETTINGS = {"default": {}, "cublaslt": {"TORCH_BLAS_PREFER_CUBLASLT": "1"}}
LM_HEAD_MAX_ROWS = 256      # prefill computes logits for its last rows only


def measure(models: list[str], rows: list[int]) -> list[dict]:
    """Device microseconds of each layout for every (model, weight, rows), this process's BLAS setting."""
    out = []
    for model in models:
        for label, (n, k) in weight_shapes(model).items():
            w = torch.randn((n, k), dtype=torch.bfloat16, device="cuda") * 0.02
            wt = w.t().contiguous()
            for m in rows:
                if label == "lm_head" and m > LM_HEAD_MAX_ROWS:
                    continue
                x = torch.randn((m, k), dtype=torch.bfloat16, device="cuda")
                same = torch.equal(F.linear(x, w), torch.mm(x, wt))
                rec = {"model": model, "weight": label, "rows": m, "n": n, "k": k, "equal": same,
                       "linear_us": graph_seconds(lambda: F.linear(x, w)) * 1e6,
                       "mm_t_us": graph_seconds(lambda: torch.mm(x, wt)) * 1e6}
                out.append(rec)
            del w, wt
            torch.cuda.empty_cache()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="llama-1b,smollm2-135m,llama-8b")
    ap.add_argument("--rows", default="1,16,64,128,256,1024,4096,8192")
    ap.add_argument("--worker", help=argparse.SUPPRESS)   # BLAS setting of a child process
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gemm_layout_gpu.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gemm_layout_gpu.py: needs a CUDA device", file=sys.stderr)
        return 2
    models, rows = args.models.split(","), [int(r) for r in args.rows.split(",")]
    if args.worker:
        args.out.write_text(json.dumps(measure(models, rows)))
        return 0
    results = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"),
               "torch": torch.__version__, "settings": {}}
    for setting, env in BLAS_SETTINGS.items():
        part = args.out.with_suffix(f".{setting}.json")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--models", args.models, "--rows", args.rows, "--worker", setting,
                        "--out", str(part)], env={**os.environ, **env}, check=True)
        results["settings"][setting] = json.loads(part.read_text())
        part.unlink()
        print(f"{setting}: {time.perf_counter() - t0:.0f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    lt = {(r["model"], r["weight"], r["rows"]): r for r in results["settings"]["cublaslt"]}
    table = []
    for r in results["settings"]["default"]:
        o = lt[(r["model"], r["weight"], r["rows"])]
        best = min(r["linear_us"], r["mm_t_us"], o["linear_us"], o["mm_t_us"])
        table.append((r["model"], r["weight"], str(r["rows"]), f"{r['linear_us']:.1f}", f"{r['mm_t_us']:.1f}",
                      f"{o['linear_us']:.1f}", f"{o['mm_t_us']:.1f}", f"{r['linear_us'] / best:.2f}x",
                      "yes" if r["equal"] and o["equal"] else "no"))
    print(f"\n{results['device']} ({results['date']}, torch {results['torch']}): device us per product")
    print_table(("model", "weight", "rows", "linear", "mm W.T", "lt linear", "lt mm W.T", "linear/best", "equal"),
                table, False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
