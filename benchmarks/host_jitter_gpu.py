"""Where the host part of a decode step goes, and which setting steadies it.

Why: on lent H200 machines the device time of a small model's decode step holds within 1-2%
from one minute to the next, but its wall time does not: the host part (wall minus device)
of the same smollm2-135m step took 0.06 ms in one calibration pass and 0.33 ms in the next
(session 13). A fitted profile that models wall time inherits that. This script runs the
executor's decode step (one CUDA graph replay) back to back and times, per step, the host
work before the launch, the device time and the wait for the sampled tokens, under settings
that cycle every block of ``--block`` seconds, so that every setting meets the same phases of the
machine:

- ``block``: as shipped (the token read-back blocks in the CUDA driver);
- ``poll``: the host polls the step's end event before reading the tokens back;
- ``threads1``: torch's CPU thread pool cut to one thread during the block;
- ``pinned``: the process pinned to one CPU core during the block.

Usage (on the GPU machine): ``python3 benchmarks/host_jitter_gpu.py --seconds 60 --out DIR``.
Needs torch, transformers and triton. Prints a table last; writes every step's times to DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpu_backend.models import load_weights  # noqa: E402
from gpu_backend.plan import BatchPlan  # noqa: E402
from gpu_backend.torch_executor import TorchExecutor  # noqa: E402

SETTINGS = ("block", "poll", "threads1", "pinned")


def decode_plans(ex: TorchExecutor, batch: int, ctx: int, steps: int):
    """``steps`` consecutive decode plans of ``batch`` sequences from context ``ctx``, tables grown in place."""
    bs = ex.block_size
    per = -(-(ctx + steps + 1) // bs)
    full = [list(range(i * per, (i + 1) * per)) for i in range(batch)]
    live = [t[:ctx // bs + 1] for t in full]
    sids = list(range(batch))
    for k in range(steps):
        pos = ctx + k
        for t, f in zip(live, full):
            if len(t) <= pos // bs:
                t.append(f[len(t)])
        yield BatchPlan(decode_seq_ids=sids, decode_positions=[pos] * batch, decode_block_tables=live,
                        decode_input_ids=[7] * batch, decode_context_sum=batch * (pos + 1), decode_context_max=pos + 1)


def one_step(ex: TorchExecutor, plan: BatchPlan, poll: bool) -> tuple[float, float, float, float]:
    """(host work until the launch returns, device time, wait for the tokens, wall) of one decode step: the
    executor's own decode path, its read-back made to poll the step's end event first when ``poll``."""
    t0 = time.perf_counter()
    ex._validate(plan)
    tokens, _ = ex._compute(plan)
    t_launched = time.perf_counter()
    if poll:
        while not ex._c1.query():
            pass
    tokens.tolist()
    t_end = time.perf_counter()
    return t_launched - t0, ex._c0.elapsed_time(ex._c1) / 1e3, t_end - t_launched, t_end - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--block", type=float, default=1.5, help="seconds per setting before the next one")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("host_jitter_gpu.py needs a CUDA device")
    weights = load_weights(args.model, "cuda", torch.bfloat16, random_weights=True)
    steps_per_run = 4096
    ex = TorchExecutor(weights, device="cuda", num_gpu_blocks=args.batch * (-(-(args.context + steps_per_run + 1) // 16))
                       + 64, num_host_blocks=0, max_model_len=args.context + steps_per_run + 16)
    ex.store.gpu.normal_()
    all_cpus = os.sched_getaffinity(0)
    threads = torch.get_num_threads()
    rows = {s: [] for s in SETTINGS}
    plans = decode_plans(ex, args.batch, args.context, steps_per_run)
    for _ in range(20):
        one_step(ex, next(plans), False)
    t_start = time.perf_counter()
    blocks = 0
    while time.perf_counter() - t_start < args.seconds:
        setting = SETTINGS[blocks % len(SETTINGS)]
        blocks += 1
        if setting == "threads1":
            torch.set_num_threads(1)
        if setting == "pinned":
            os.sched_setaffinity(0, {min(all_cpus)})
        try:
            t_block = time.perf_counter()
            while time.perf_counter() - t_block < args.block:
                plan = next(plans, None)
                if plan is None:        # the sequences reached their last position: start again from ctx
                    plans = decode_plans(ex, args.batch, args.context, steps_per_run)
                    plan = next(plans)
                rows[setting].append((time.perf_counter() - t_start, blocks, *one_step(ex, plan, setting == "poll")))
        finally:
            torch.set_num_threads(threads)
            os.sched_setaffinity(0, all_cpus)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "host_jitter.json").write_text(json.dumps(
            {"model": args.model, "batch": args.batch, "context": args.context, "cpus": len(all_cpus),
             "threads": threads, "columns": ["t", "block", "pre_s", "device_s", "wait_s", "wall_s"], "rows": rows}) + "\n")
    print(f"{args.model}, decode batch {args.batch} at context {args.context}, {args.seconds:.0f} s in blocks of "
          f"{args.block} s; {len(all_cpus)} CPUs, {threads} torch threads")
    print(f"{'setting':<9} {'steps':>6} {'pre us':>7} {'device us':>9} {'wait us':>8} {'wall us':>8} {'host us':>8} "
          f"{'host p90':>9} {'block medians of host: min':>27} {'max':>6}")
    for s, r in rows.items():
        if not r:
            continue
        host = [x[5] - x[3] for x in r]
        per_block: dict[int, list[float]] = {}
        for x, h in zip(r, host):
            per_block.setdefault(x[1], []).append(h)
        bm = [statistics.median(v) for v in per_block.values()]
        med = lambda i: statistics.median(x[i] for x in r) * 1e6      # noqa: E731
        hs = sorted(host)
        print(f"{s:<9} {len(r):>6} {med(2):>7.0f} {med(3):>9.0f} {med(4):>8.0f} {med(5):>8.0f} "
              f"{statistics.median(host) * 1e6:>8.0f} {hs[int(0.9 * len(hs))] * 1e6:>9.0f} {min(bm) * 1e6:>27.0f} "
              f"{max(bm) * 1e6:>6.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
