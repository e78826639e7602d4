"""Where a plan with swaps spends its time under asynchronous scheduling, in serving and alone.

Session 17 asked why plans with swaps took 0.48-0.54 ms beyond their forward pass in asynchronously
scheduled serving, against about 0.3 ms (copies included) for the sweep's decodes beside swaps. Then a plan
with swaps waited for the iteration in flight, so it started on an idle device and the host's whole launch
path showed in its duration. This script answered it on the first run: the gap was the host's time from
``launch`` to the forward pass (0.47-0.53 ms in serving, 0.23 ms for the same plans alone: the serving
loop leaves the host's caches cold), not the copies. Plans with swaps are now launched behind the iteration
in flight like any other, and the script shows what they cost that way.

It serves the swap workload (``vtc-overload-2``, swap preemption, the same KV blocks as
``calibrate_gpu.py --async-scheduling``) asynchronously over ``TorchExecutor`` and times, for every
iteration:

  host    seconds inside ``launch``: issuing the swaps (``start_swaps``), the decode inputs and block-table
          update (``_decode_inputs``), staging (``_stage``), and from ``launch`` to the forward pass's start
  device  the duration ``collect`` reports, the forward pass, the swap copies, and, for an iteration launched
          on an idle device, from its first event to its forward pass (lead)

Then it runs each plan with swaps again, alone on an idle device (launch, collect; the decode inputs the
serving run left pending become token 0), ``--repeats`` times: the same plan, with none of the serving loop
around it.

Usage (device machine): ``python3 benchmarks/swap_plan_breakdown_gpu.py [--model llama-1b] [--out DIR]``;
full results in ``DIR/swap_plan_breakdown.json``, a short table last. Needs neither gymnasium nor
stable-baselines3.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from calibrate_gpu import ASYNC_SWAP_GPU_BLOCKS, DEFAULT_SWAP_GPU_BLOCKS  # noqa: E402
from envs.engine import ServingEngine  # noqa: E402
from envs.engine_config import EngineConfig  # noqa: E402
from envs.policy import make_policy  # noqa: E402
from envs.workloads import get_workload, retime_poisson  # noqa: E402
import baselines  # noqa: E402,F401  (registers the policies)
from gpu_backend.executors import make_executor  # noqa: E402
from gpu_backend.plan import PENDING_TOKEN  # noqa: E402

HOST_PARTS = ("start_swaps", "_decode_inputs", "_stage")


class LaunchProbe:
    """Host seconds spent in the methods ``TorchExecutor.launch`` calls, per launch, by wrapping them on the
    instance; and the host clock when the forward pass was about to be enqueued (``_start_compute``)."""

    def __init__(self, ex):
        self.current: dict[str, float] = {}
        for owner, name in ((ex.store, "start_swaps"), (ex, "_decode_inputs"), (ex, "_stage")):
            self._wrap(owner, name)
        inner_start = ex._start_compute

        def start_compute():
            self.current["to_compute"] = time.perf_counter() - self.current["t0"]
            inner_start()
        ex._start_compute = start_compute

    def _wrap(self, owner, name: str) -> None:
        inner = getattr(owner, name)

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                self.current[name] = self.current.get(name, 0.0) + time.perf_counter() - t
        setattr(owner, name, timed)

    def begin(self) -> None:
        self.current = {"t0": time.perf_counter()}

    def end(self) -> dict[str, float]:
        out = {k: v for k, v in self.current.items() if k != "t0"}
        out["launch"] = time.perf_counter() - self.current["t0"]
        return out


class ProbedExecutor:
    """``TorchExecutor`` with ``launch``/``collect`` timed (``LaunchProbe`` and the step's CUDA events); keeps
    every plan and its timings in launch order."""

    def __init__(self, inner):
        self.inner = inner
        self.supports_multi_step = inner.supports_multi_step
        self.needs_token_ids = inner.needs_token_ids
        self.needs_block_ids = inner.needs_block_ids
        self.probe = LaunchProbe(inner)
        self.rows: list[dict] = []
        self.plans: list = []

    def capacity(self):
        return self.inner.capacity()

    def decode_step_affine(self, num_seqs: int):
        return self.inner.decode_step_affine(num_seqs)

    def launch(self, plan):
        self.probe.begin()
        step = self.inner.launch(plan)
        return plan, self.probe.end(), step

    def collect(self, launched):
        plan, host, step = launched
        drained = step.after is None
        res = self.inner.collect(step)
        self.rows.append(timings(plan, host, step, res, drained))
        self.plans.append(plan)
        return res


def timings(plan, host: dict, step, res, drained: bool) -> dict:
    lead = None
    if drained and step.begin is not None and step.compute is not None:
        lead = step.begin.elapsed_time(step.compute[0]) / 1e3
    return {"swaps": bool(plan.swap_in or plan.swap_out), "drained": drained,
            "copies": len(plan.swap_in) + len(plan.swap_out),
            "blocks": sum(m.num_blocks for m in (*plan.swap_in, *plan.swap_out)),
            "num_decode": len(plan.decode_seq_ids), "num_chunks": len(plan.prefills),
            "duration_s": res.duration_s, "compute_s": res.compute_s, "swap_s": res.swap_s, "lead_s": lead,
            **{f"host_{k}_s": v for k, v in host.items()}}


def alone(ex: ProbedExecutor, plan, repeats: int) -> list[dict]:
    """The plan launched on an idle device and collected, ``repeats`` times."""
    ids = plan.decode_input_ids
    if ids is not None and PENDING_TOKEN in ids:
        plan = replace(plan, decode_input_ids=[0 if t == PENDING_TOKEN else t for t in ids])
    out = []
    for _ in range(repeats):
        launched = ex.launch(plan)
        ex.collect(launched)
        out.append(ex.rows.pop())
        ex.plans.pop()
    return out


def summary(rows: list[dict]) -> dict:
    keys = ["duration_s", "compute_s", "swap_s", "lead_s", "host_launch_s", "host_to_compute_s"] + \
        [f"host_{k}_s" for k in HOST_PARTS]
    out = {"n": len(rows)}
    for k in keys:
        vals = [r[k] for r in rows if r.get(k) is not None]
        if vals:
            out[k] = statistics.median(vals)
    gaps = [r["duration_s"] - r["compute_s"] for r in rows]
    if gaps:
        out["gap_s"] = statistics.median(gaps)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama-1b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--num-gpu-blocks", type=int, default=None,
                   help="KV blocks (default: calibrate_gpu.py's for this model's asynchronous swap workload)")
    p.add_argument("--num-host-blocks", type=int, default=4096)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--repeats", type=int, default=5, help="runs of each plan with swaps alone")
    p.add_argument("--out", type=Path, default=Path("."))
    args = p.parse_args(argv)
    blocks = args.num_gpu_blocks or ASYNC_SWAP_GPU_BLOCKS.get(args.model, DEFAULT_SWAP_GPU_BLOCKS)
    t_build = time.perf_counter()
    inner = make_executor("torch", model=args.model, device=args.device,
                          options={"random_weights": True, "num_gpu_blocks": blocks,
                                   "num_host_blocks": args.num_host_blocks})
    print(f"executor built in {time.perf_counter() - t_build:.1f} s", flush=True)
    ex = ProbedExecutor(inner)
    config = EngineConfig(max_num_batched_tokens=2048, max_num_seqs=256, batching="sarathi",
                          preemption_mode="swap", num_gpu_blocks=blocks, num_host_blocks=args.num_host_blocks,
                          lazy_block_ids=False, multi_step=False, async_scheduling=True)
    specs = retime_poisson(get_workload("vtc-overload-2").generate(0, args.requests), args.rate, 0)
    for run in ("warm-up", "recorded"):
        ex.rows.clear()
        ex.plans.clear()
        engine = ServingEngine(ex, make_policy("fcfs"), config)
        engine.load(specs)
        t = time.perf_counter()
        engine.run()
        print(f"{run} run: {engine.iteration} iterations in {time.perf_counter() - t:.2f} s", flush=True)
    rows = ex.rows
    swap_idx = [i for i, r in enumerate(rows) if r["swaps"]]
    plain = [r for r in rows if not r["swaps"]]
    alone_rows = []
    for i in swap_idx:
        runs = alone(ex, ex.plans[i], args.repeats)
        alone_rows.append({k: statistics.median(r[k] for r in runs) if isinstance(runs[0][k], float) else runs[0][k]
                           for k in runs[0] if runs[0][k] is not None})
    groups = {"serving, plans with swaps": [rows[i] for i in swap_idx],
              "same plans alone": alone_rows,
              "serving, plans without swaps": plain}
    table = {name: summary(rs) for name, rs in groups.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "swap_plan_breakdown.json").write_text(json.dumps(
        {"model": args.model, "num_gpu_blocks": blocks, "summary": table, "serving": rows,
         "alone": alone_rows}, indent=1))
    print(f"\nmedians, ms ({args.model}, {blocks} KV blocks; gap = duration - forward pass)")
    cols = {"duration_s": "duration", "compute_s": "forward", "gap_s": "gap", "swap_s": "copies", "lead_s": "lead",
            "host_to_compute_s": "h:to fwd", "host_launch_s": "h:launch", "host_start_swaps_s": "h:swaps",
            "host__decode_inputs_s": "h:dec in", "host__stage_s": "h:stage"}
    print(f"{'':<30} {'n':>5} " + " ".join(f"{c:>9}" for c in cols.values()))
    for name, s in table.items():
        cells = " ".join("        -" if s.get(c) is None else f"{s[c] * 1e3:9.3f}" for c in cols)
        print(f"{name:<30} {s['n']:>5} {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
