"""How steady is the lent GPU machine? Fixed pieces of work timed over and over for a minute, beside the
driver's clocks, power, temperature and throttle reasons.

Why: a fitted profile is only as good as the machine is steady. Calibration sweeps on lent H200s
showed the same shape taking 1.3 ms in one pass and 1.55 ms in the next, and a 2,048-token prefill
10 ms in one pass and 20 ms in another (session 13). This script tells which part of the machine
moves — the tensor cores (a compute-bound product), memory (a copy), kernel launches or the host
(a Python loop of small operations) — and whether the driver's clocks move with it.

Usage (on the GPU machine): ``python3 benchmarks/gpu_stability_gpu.py --seconds 60 --out DIR``.
Prints a table last (per piece of work: median, p10, p90, slowest / fastest sample); writes every
sample and every driver reading to DIR. Needs only torch and ``nvidia-smi``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import threading
import time
from pathlib import Path

import torch

SMI_FIELDS = ("clocks.sm", "clocks.mem", "power.draw", "temperature.gpu", "utilization.gpu",
              "clocks_throttle_reasons.active")


def watch_driver(stop: threading.Event, readings: list, period_ms: int = 200) -> None:
    """Poll ``nvidia-smi`` until ``stop`` is set; each reading is (seconds since start, {field: value})."""
    t0 = time.perf_counter()
    cmd = ["nvidia-smi", f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader,nounits"]
    while not stop.is_set():
        out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip().splitlines()
        if out:
            readings.append((time.perf_counter() - t0, dict(zip(SMI_FIELDS, (v.strip() for v in out[0].split(","))))))
        stop.wait(period_ms / 1e3)


def pieces() -> dict:
    """Name -> (callable doing one unit of work on the GPU, what it measures)."""
    a = torch.randn(4096, 4096, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(4096, 4096, dtype=torch.bfloat16, device="cuda")
    src = torch.empty(2**29, dtype=torch.uint8, device="cuda")       # 512 MiB
    dst = torch.empty_like(src)
    small = torch.zeros(256, device="cuda")
    graph_in = torch.zeros(256, device="cuda")
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(200):
            graph_in.add_(1.0)
    return {
        "gemm_4096": (lambda: torch.mm(a, b), "tensor cores: 137 GFLOP"),
        "copy_512MiB": (lambda: dst.copy_(src), "memory: 1 GiB moved"),
        "graph_200_launches": (g.replay, "launches: 200 tiny kernels in one graph"),
        "eager_200_ops": (lambda: [small.add_(1.0) for _ in range(200)], "host: 200 eager launches"),
    }


def time_unit(fn, reps: int) -> float:
    """Seconds per call of ``fn``, ``reps`` calls between two synchronisations (wall clock)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_stability_gpu.py needs a CUDA device")
    work = pieces()
    reps = {"gemm_4096": 20, "copy_512MiB": 5, "graph_200_launches": 10, "eager_200_ops": 5}
    for fn, _ in work.values():       # compile and warm every piece once
        fn()
    torch.cuda.synchronize()
    readings: list = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch_driver, args=(stop, readings), daemon=True)
    t0 = time.perf_counter()
    watcher.start()
    samples = {name: [] for name in work}
    try:
        while time.perf_counter() - t0 < args.seconds:
            for name, (fn, _) in work.items():
                samples[name].append((time.perf_counter() - t0, time_unit(fn, reps[name])))
    finally:
        stop.set()
        watcher.join()
    rows = []
    for name, (_, what) in work.items():
        ts = sorted(s for _, s in samples[name])
        q = lambda f: ts[min(len(ts) - 1, int(f * len(ts)))]      # noqa: E731
        rows.append((name, what, len(ts), statistics.median(ts), q(0.1), q(0.9), ts[-1] / ts[0]))
    clocks = [float(r["clocks.sm"]) for _, r in readings if r["clocks.sm"].replace(".", "").isdigit()]
    power = [float(r["power.draw"]) for _, r in readings if r["power.draw"].replace(".", "").isdigit()]
    reasons = sorted({r["clocks_throttle_reasons.active"] for _, r in readings})
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "stability.json").write_text(json.dumps(
            {"device": torch.cuda.get_device_name(), "samples": samples,
             "driver": [(t, r) for t, r in readings]}, indent=1) + "\n")
    print(f"{torch.cuda.get_device_name()}: {args.seconds:.0f} s, {len(readings)} driver readings")
    if clocks:
        print(f"SM clock MHz: min {min(clocks):.0f}, median {statistics.median(clocks):.0f}, max {max(clocks):.0f}; "
              f"power W: min {min(power):.0f}, max {max(power):.0f}; throttle reasons seen: {', '.join(reasons)}")
    print(f"{'work':<20} {'what':<40} {'n':>4} {'median us':>10} {'p10':>9} {'p90':>9} {'max/min':>8}")
    for name, what, n, med, p10, p90, spread in rows:
        print(f"{name:<20} {what:<40} {n:>4} {med * 1e6:>10.1f} {p10 * 1e6:>9.1f} {p90 * 1e6:>9.1f} {spread:>7.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
