"""Simulator speed: simulated requests per wall second, iterations per second, env steps per second.

Runs ``servegym simulate`` as a separate process (so the whole-process figure includes
start-up, imports, trace loading and metrics) and reads the loop's own wall time from
its JSON. Prints a table; ``--markdown`` prints rows for BENCHMARKS.md.

    python benchmarks/sim_speed.py [--repeats 3] [--skip-mooncake] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def simulate(args: list[str], repeats: int) -> dict:
    """Best of ``repeats`` runs (machines are shared and noisy): loop and process wall times."""
    best = None
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "m.json"
            cmd = [sys.executable, "-m", "train.cli", "simulate", *args, "--progress", "off", "--json", str(out)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            proc = time.perf_counter() - t0
            m = json.loads(out.read_text())
        row = {"loop_s": m["sim_wall_s"], "process_s": proc, "requests": m["num_requests"],
               "iterations": m["iterations"], "finished": m["num_finished"]}
        if best is None or row["loop_s"] < best["loop_s"]:
            best = row
    return best


def env_steps(seconds: float = 4.0, repeats: int = 3) -> dict:
    """Best of ``repeats`` windows of ``seconds`` (the machine is shared): a random masked policy."""
    import numpy as np

    from envs.serve_env import ServeEnv

    best = None
    for rep in range(repeats):
        env = ServeEnv()
        rng = np.random.default_rng(rep)
        steps = 0
        episodes = 0
        t0 = time.perf_counter()
        env.reset(seed=1000 * rep)
        while time.perf_counter() - t0 < seconds:
            allowed = np.flatnonzero(env.action_masks())
            a = int(allowed[rng.integers(len(allowed))])   # uniform over the allowed actions
            _, _, term, trunc, _ = env.step(a)
            steps += 1
            if term or trunc:
                episodes += 1
                env.reset(seed=1000 * rep + episodes)
        dt = time.perf_counter() - t0
        row = {"steps": steps, "seconds": dt, "episodes": episodes}
        if best is None or steps / dt > best["steps"] / best["seconds"]:
            best = row
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-mooncake", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    rows = []
    for rate in (2, 6):
        base = ["--workload", "azure-conv", "--num-requests", "10000", "--rate", str(rate), "--policy", "fcfs",
                "--profile", "h100-llama-8b"]
        fast = simulate(base, a.repeats)
        step = simulate(base + ["--no-multi-step"], 1)
        rows.append((f"azure-conv 10k, rate {rate}, closed-form runs", fast))
        rows.append((f"azure-conv 10k, rate {rate}, one iteration per step", step))
    if not a.skip_mooncake:
        rows.append(("mooncake-conversation, full (12,031)",
                     simulate(["--workload", "mooncake-conversation", "--policy", "fcfs"], 1)))
    envr = env_steps(repeats=a.repeats)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}")
    hdr = f"{'run':48} {'loop s':>8} {'req/s loop':>11} {'process s':>10} {'req/s proc':>11} {'iter/s loop':>12}"
    print(hdr)
    print("-" * len(hdr))
    for name, r in rows:
        print(f"{name:48} {r['loop_s']:8.2f} {r['requests'] / r['loop_s']:11,.0f} {r['process_s']:10.2f} "
              f"{r['requests'] / r['process_s']:11,.0f} {r['iterations'] / r['loop_s']:12,.0f}")
    print(f"env servegym/Serve-v0 random policy: {envr['steps'] / envr['seconds']:,.0f} steps/s "
          f"({envr['steps']} steps, {envr['episodes']} episodes)")
    if a.markdown:
        print()
        for name, r in rows:
            print(f"| {name} | {r['loop_s']:.2f} | {r['requests'] / r['loop_s']:,.0f} | {r['process_s']:.2f} | "
                  f"{r['requests'] / r['process_s']:,.0f} | {r['iterations'] / r['loop_s']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
