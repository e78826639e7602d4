"""Device time of GPU work: CUDA events around a call, and replays of a captured CUDA graph.

Shared by the executor's GEMM tuning (``gpu_backend.skinny_gemm``) and the GPU benchmarks, so
every figure that chooses a kernel or goes into BENCHMARKS.md is timed the same way.
"""

from __future__ import annotations

import statistics

import torch


def cuda_seconds(fn, reps: int) -> list[float]:
    """Device seconds of each of ``reps`` calls of ``fn`` (CUDA events, synchronised after each)."""
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return times


def graph_seconds(fn, calls: int = 10, reps: int = 5) -> float:
    """Median device seconds per call of ``fn``, from replays of a CUDA graph of ``calls`` calls (no launch
    gaps); ``fn`` runs three times on a side stream first (compiles, allocator warm-up)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    return statistics.median(cuda_seconds(graph.replay, reps)) / calls
