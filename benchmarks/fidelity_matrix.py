"""Every fitted profile against every recorded real run: does a profile hold on leases it was not fitted on?

Why: a fidelity figure from one lent machine says how well a profile predicts *that* machine. The
lent H200s differ, mostly in how long their hosts take per iteration (session 13: the same decode
step's host part took 0.06-0.38 ms from one lease or minute to the next, against a steady device
time). This judges each profile (``servegym fidelity --replay``'s judgement, on the CPU) against the
real runs kept in ``benchmarks/data/fidelity_runs/`` — one per lease, model and workload, recorded by
``benchmarks/calibrate_gpu.py`` — and prints a table: per-iteration MAPE and end-to-end p50 / p99
latency error per run and profile, then how many runs meet each target.

Usage::

    python benchmarks/fidelity_matrix.py --model llama-1b [--profiles NAME_OR_PATH,...] [--runs DIR]
                                         [--async-scheduling]

Profiles default to the shipped fitted one (``h200-MODEL-fitted``). ``--async-scheduling``: the runs served
with asynchronous scheduling (``fidelity_runs/async/``) and the profile fitted for it
(``h200-MODEL-async-fitted``). Needs the simulator only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import baselines  # noqa: E402,F401  (registers the policies the runs were served with)
from gpu_backend.profiles import load_profile  # noqa: E402
from train.fidelity import judge, read_real_run  # noqa: E402

RUNS = ROOT / "benchmarks" / "data" / "fidelity_runs"
TARGET = 0.05          # issue #4: per-iteration MAPE and end-to-end p50 / p99 error


def run_files(runs: Path, model: str) -> list[Path]:
    """``LEASE-MODEL-WORKLOAD.json.gz`` files of ``model``, in lease order."""
    files = sorted(p for p in runs.glob(f"*-{model}-*.json*") if p.name.split("-", 1)[1].startswith(model + "-"))
    if not files:
        raise SystemExit(f"no recorded runs of {model} in {runs}")
    return files


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="smollm2-135m, llama-1b or llama-8b")
    p.add_argument("--profiles", default=None, help="comma-separated profile names or JSON paths")
    p.add_argument("--runs", type=Path, default=None, help=f"default: {RUNS} (with --async-scheduling: its async/)")
    p.add_argument("--async-scheduling", action="store_true",
                   help="the asynchronously scheduled runs and h200-MODEL-async-fitted")
    args = p.parse_args(argv)
    if args.runs is None:
        args.runs = RUNS / "async" if args.async_scheduling else RUNS
    names = (args.profiles or f"h200-{args.model}{'-async' if args.async_scheduling else ''}-fitted").split(",")
    profiles = [load_profile(n) for n in names]
    files = run_files(args.runs, args.model)
    met = {n: [0, 0, 0, 0] for n in names}     # MAPE; MAPE and closed-loop E2E; replayable runs; MAPE and replay E2E
    print(f"{args.model}: cells are per-iteration MAPE · E2E p50 / p99 error of the simulator's own run "
          f"[· of the real run's plans replayed, where the recording allows] (target {TARGET:.0%} each)\n")
    print("| run | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for f in files:
        real = read_real_run(f)
        cells = []
        for name, prof in zip(names, profiles):
            j = judge(real, prof)
            mape = j["per_iteration"]["mape"]
            e50, e99 = (j["end_to_end"][k]["error"] for k in ("e2e_p50_s", "e2e_p99_s"))
            met[name][0] += mape <= TARGET
            met[name][1] += mape <= TARGET and e50 <= TARGET and e99 <= TARGET
            cell = f"{mape:.1%} · {e50:.1%} / {e99:.1%}"
            r50, r99 = (j["end_to_end"][k].get("replay_error") for k in ("e2e_p50_s", "e2e_p99_s"))
            if r50 is not None and r99 is not None:
                met[name][2] += 1
                met[name][3] += mape <= TARGET and r50 <= TARGET and r99 <= TARGET
                cell += f" · {r50:.1%} / {r99:.1%}"
            cells.append(cell)
        label = f.name.split(".json")[0].replace(f"-{args.model}-", " ")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    for name in names:
        print(f"{name}: per-iteration MAPE within {TARGET:.0%} on {met[name][0]} of {len(files)} runs, "
              f"the whole target on {met[name][1]}"
              + (f"; with the replayed plans' E2E, the whole target on {met[name][3]} of {met[name][2]} "
                 f"replayable runs" if met[name][2] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
