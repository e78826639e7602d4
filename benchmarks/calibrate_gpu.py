"""Calibration and fidelity on one GPU, in one call: for each model, fit a profile
(``servegym profile``) and judge it on two workloads (``servegym fidelity``).

Why one script: GPU time comes in short leases. Everything the fitted profiles and the
fidelity table in BENCHMARKS.md need is produced here, each model's files written as soon
as they exist (a run cut short keeps what it finished), and the summary table is printed
last. The fidelity JSONs keep the real runs, so a later cost model can be judged against
them on any machine with ``servegym fidelity --replay FILE --profile P``. The run starts with
``gpu_stability_gpu.py`` (``stability.json``): how fast this lease's GPU and host are, to set the
fidelity figures beside other leases'.

Usage (on the GPU machine, from the repository root)::

    python benchmarks/calibrate_gpu.py --out DIR [--models llama-1b,smollm2-135m,llama-8b] [--async-scheduling]

``--async-scheduling``: the profiles are fitted on each iteration launched back to back (``servegym profile
--timing async``, written as ``h200-MODEL-async-fitted.json``) and judged on real runs that schedule
asynchronously (``servegym fidelity --async-scheduling``), where the host's work hides behind the device's.

Models are built with random weights of their shape (timing does not depend on the values,
and the SmolLM2 checkpoint is larger than what travels to the device). Needs torch,
transformers and triton; not gymnasium or stable-baselines3.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpu_backend.executor_flags import add_executor_flag_args, executor_flag_options, flag_spelling  # noqa: E402

# (label, extra fidelity arguments): one prefix-heavy workload, one with preemption by swap
WORKLOADS = (
    ("prefix-heavy", ["-w", "shared-doc-qa", "--rate", "10", "-n", "100"]),
    ("swap", ["-w", "vtc-overload-2", "--rate", "200", "-n", "200", "--preemption", "swap"]),
)
# KV blocks of the swap workload. smollm2-135m at 2,000 sits at the edge of preemption (0, 21 and 100
# preemptions in three real runs; 0 in the simulator); at 1,600 the simulator preempts 124 times.
SWAP_GPU_BLOCKS = {"smollm2-135m": 1600}
DEFAULT_SWAP_GPU_BLOCKS = 2000
# Asynchronous scheduling serves the same workload faster, so fewer requests wait and fewer are preempted:
# llama-1b at 2,000 blocks never preempted (S16d, S16e; 90-111 times synchronously), at 1,400 it did 158 times
# (S16f); smollm2-135m at 1,600 only 9 times.
ASYNC_SWAP_GPU_BLOCKS = {"smollm2-135m": 1100, "llama-1b": 1400}


def workload_args(model: str, label: str, extra: list[str], async_scheduling: bool = False) -> list[str]:
    """The fidelity arguments of one workload for one model."""
    if label == "swap":
        blocks = (ASYNC_SWAP_GPU_BLOCKS if async_scheduling else SWAP_GPU_BLOCKS).get(model, DEFAULT_SWAP_GPU_BLOCKS)
        return [*extra, "--num-gpu-blocks", str(blocks)]
    return list(extra)


def _run(argv: list[str], what: str) -> None:
    """``python ARGV`` in its own process, so each executor's GPU memory is returned after it."""
    rc = subprocess.run([sys.executable, *argv], cwd=ROOT).returncode
    if rc:
        raise RuntimeError(f"{what} exited {rc}")


def _cli(argv: list[str]) -> None:
    _run(["-m", "train.cli", *argv], f"servegym {' '.join(argv)}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", default="llama-1b,smollm2-135m,llama-8b")
    p.add_argument("--skip-profile", action="store_true",
                   help="judge the profiles already in --out (or the shipped ones) instead of fitting new ones")
    p.add_argument("--skip-fidelity", action="store_true",
                   help="only fit the profiles (a big model's profile and judgement fit one device command each)")
    p.add_argument("--passes", default=None, help="passes over the sweep (servegym profile's default if not given)")
    p.add_argument("--probe-seconds", type=float, default=20.0,
                   help="first time the lent machine's GPU and host for this long (gpu_stability_gpu.py; 0: skip)")
    p.add_argument("--async-scheduling", action="store_true",
                   help="fit back-to-back iterations and judge asynchronously scheduled real runs (h200-MODEL-async-fitted)")
    add_executor_flag_args(p)      # passed on to servegym profile and fidelity
    args = p.parse_args(argv)
    flag_args = [flag_spelling(name, on) for name, on in executor_flag_options(args).items()]
    timing_args = ["--timing", "async"] if args.async_scheduling else []
    async_args = ["--async-scheduling"] if args.async_scheduling else []
    suffix = "-async-fitted" if args.async_scheduling else "-fitted"
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.probe_seconds > 0:      # how this lease's GPU and host compare with others' (BENCHMARKS.md, session 13)
        _run([str(ROOT / "benchmarks" / "gpu_stability_gpu.py"), "--seconds", str(args.probe_seconds), "--out",
              str(args.out)], "gpu_stability_gpu.py")
    for model in args.models.split(","):
        prof = args.out / f"h200-{model}{suffix}.json"
        if not args.skip_profile:
            t0 = time.perf_counter()
            _cli(["profile", "--model", model, "--random-weights", "--out", str(prof),
                  "--samples", str(args.out / f"samples-{model}.json"), *flag_args, *timing_args,
                  *(["--passes", args.passes] if args.passes else [])])
            print(f"   profile {model}: {time.perf_counter() - t0:.0f} s", flush=True)
        elif not prof.exists():
            prof = ROOT / "gpu_backend" / "profiles" / "fitted" / prof.name
        for label, extra in () if args.skip_fidelity else WORKLOADS:
            t0 = time.perf_counter()
            fid = args.out / f"fid-{model}-{label}.json"
            # two warm-ups: the first compiles kernels, the second is a clean repeat of the recorded run
            _cli(["fidelity", "--device", "cuda", "--model", model, "--random-weights", "--profile", str(prof),
                  "--warmup-runs", "2", "--json", str(fid), *workload_args(model, label, extra, args.async_scheduling),
                  *flag_args, *async_args])
            d = json.loads(fid.read_text())
            e2e = d["end_to_end"]
            rows.append((model, label, d["per_iteration"]["mape"], d["per_iteration"]["p50"],
                         d["per_iteration"]["p99"], e2e["ttft_p50_s"]["error"], e2e["ttft_p99_s"]["error"],
                         e2e["e2e_p50_s"]["error"], e2e["e2e_p99_s"]["error"], e2e["throughput_tok_s"]["error"],
                         d["preemptions"]["real"], d["preemptions"]["sim"],
                         *((d.get("real_repeat") or {}).get(k) for k in ("e2e_p50_s", "e2e_p99_s")),
                         *(e2e[k].get("replay_error") for k in ("e2e_p50_s", "e2e_p99_s"))))
            print(f"   fidelity {model} {label}: {time.perf_counter() - t0:.0f} s", flush=True)
    print("\nmodel         workload      MAPE   p50    p99    TTFT50 TTFT99 E2E50  E2E99  thru   preempt real/sim"
          "  real again E2E50 E2E99  replay E2E50 E2E99")
    for r in rows:
        cells = " ".join("   -  " if v is None else f"{v:6.1%}" for v in r[2:10])
        again = " ".join("   -  " if v is None else f"{v:6.1%}" for v in r[12:14])
        replay = " ".join("   -  " if v is None else f"{v:6.1%}" for v in r[14:16])
        print(f"{r[0]:<13} {r[1]:<13} {cells} {r[10]}/{r[11]:<8} {again}        {replay}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
