"""Shared pieces of the GPU benchmark (benchmarks/torch_executor_gpu.py): the results dict, a section
wrapper that records a failing part and goes on, the device's ceilings, relative error, token helpers
(device timers: ``gpu_backend.cuda_timing``)."""

from __future__ import annotations

import statistics
import time
import traceback

import torch

from gpu_backend.cuda_timing import cuda_seconds

RESULTS: dict = {"errors": {}}


def log(*a) -> None:
    print(*a, flush=True)


def section(name):
    """Run one part; record its exception and go on with the others."""
    def wrap(fn):
        def run(*a, **kw):
            t0 = time.perf_counter()
            log(f"== {name}")
            try:
                out = fn(*a, **kw)
            except Exception as e:  # a benchmark part failing must not lose the other parts' numbers
                RESULTS["errors"][name] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
                log(f"!! {name} failed: {type(e).__name__}: {e}")
                out = None
            log(f"   ({time.perf_counter() - t0:.1f} s)")
            torch.cuda.empty_cache()
            return out
        return run
    return wrap


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def measure_ceilings() -> dict:
    """The device-to-device copy bandwidth (bytes read + written per second, 2 GiB copied) and the bf16
    matmul rate (8192^3), each the median of timed repeats."""
    n = 2 * 2**30
    src = torch.randn(n // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    bw = 2 * n / statistics.median(cuda_seconds(lambda: dst.copy_(src), 20))
    del src, dst
    m = 8192
    a = torch.randn(m, m, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(m, m, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        a @ b
    flops = 2 * m**3 / statistics.median(cuda_seconds(lambda: a @ b, 10))
    return {"d2d_bytes_per_s": bw, "bf16_matmul_flops": flops}


def toks(n, seed, vocab=32000):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
