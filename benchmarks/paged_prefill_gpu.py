"""Chunks over cached prefixes on the GPU: the paged prefill kernel against the gather + SDPA path, same run.

Each row is one iteration of ``TorchExecutor`` (random weights of the model's shape, bf16):
``k`` chunks of ``n`` new tokens, each after ``start`` cached tokens — the shape of a
shared-document or multi-turn batch. Median wall time of ``execute`` over repeats, with the
kernel on and off, and their ratio. Usage: ``python benchmarks/paged_prefill_gpu.py [--models M,...]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gpu_backend.models import load_weights  # noqa: E402
from gpu_backend.plan import BatchPlan, PrefillChunk  # noqa: E402
from gpu_backend.torch_executor import TorchExecutor  # noqa: E402

# (chunks, tokens each, cached before): one question over a document, several, many short turns, a
# short question over a long document (few programs: the key splits), long chunks over long prefixes
SHAPES = ((1, 64, 2048), (8, 64, 1024), (32, 32, 512), (1, 52, 7888), (16, 128, 2048))


def time_plan(ex: TorchExecutor, plan: BatchPlan, repeats: int = 10) -> float:
    for _ in range(3):
        ex.execute(plan)
    return statistics.median(ex.execute(plan).duration_s for _ in range(repeats))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="smollm2-135m,llama-1b,llama-8b")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    for model in args.models.split(","):
        ex = TorchExecutor(load_weights(model, "cuda", torch.bfloat16, random_weights=True), device="cuda",
                           num_gpu_blocks=8192, swap_space_bytes=2**28)
        bs = ex.block_size
        for k, n, start in SHAPES:
            nb = -(-(start + n) // bs)
            chunks = [PrefillChunk(i, start, n, list(range(i * nb, (i + 1) * nb)), True,
                                   rng.integers(0, ex.dims.vocab_size, n).tolist()) for i in range(k)]
            plan = BatchPlan(prefills=chunks)
            times = {}
            for kernel in (True, False):
                ex.paged_prefill_kernel = kernel
                times[kernel] = time_plan(ex, plan)
            rows.append((model, k, n, start, times[True], times[False]))
            print(f"{model} {k}x{n} over {start}: kernel {times[True] * 1e3:.2f} ms, gather+SDPA "
                  f"{times[False] * 1e3:.2f} ms", flush=True)
        del ex
        torch.cuda.empty_cache()
    print(f"\nchunks over cached prefixes on {torch.cuda.get_device_name()}: one iteration, median wall ms")
    print(f"{'model':<14}{'chunks':>7}{'tokens':>7}{'cached':>7}{'kernel':>9}{'gather+SDPA':>13}{'speed-up':>10}")
    for m, k, n, s, a, b in rows:
        print(f"{m:<14}{k:>7}{n:>7}{s:>7}{a * 1e3:>9.2f}{b * 1e3:>13.2f}{b / a:>9.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
