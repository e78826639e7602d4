"""``servegym benchmark``: every policy on a scenario's seeded arrivals, one table, JSON, Markdown and plots.

    servegym benchmark --scenario vtc-overload --policies fcfs,vtc,lcf --seeds 3 --out runs/vtc

Every policy serves the same requests for each seed (``envs.scenarios``), so differences
are the policies'. The table shows the scenario's columns as mean ± sample standard
deviation over seeds. ``DIR`` receives:

* ``results.json``: policy label -> every numeric key of ``servegym simulate --json``
  (the metrics of ``envs.metrics``, ``sim_wall_s``, ``sim_requests_per_s``,
  ``iterations``) plus the scenario extras (``envs.scenarios.metrics``), averaged over
  seeds, each with ``<key>_std`` beside it (sample standard deviation; None with one seed
  or where a value is missing), plus ``num_seeds``; ``per_client``,
  ``rejected_by_reason`` and, on a cluster, ``per_replica`` (requests routed, finished,
  cache hit rate, iterations, busy time, preemptions, output tokens of each replica) are
  averaged the same way, key by key;
* ``results.md``: the table in Markdown; ``run.json``: scenario, seeds, policies, engine
  settings, the command and the date;
* ``latency_cdf.png``: TTFT and end-to-end latency CDFs per policy (``Axes.ecdf``, all seeds
  pooled); ``client_service.png``: each client's service rate over time (VTC's windowed
  service, input x1 + output x2 per second, first seed) per policy;
* with DLPM (or D²LPM) among the policies, a quantum sweep: ``quantum_sweep.json`` and
  ``quantum_sweep.png`` (throughput against Jain's index, one point per quantum, mean over
  seeds, with the other policies as reference points). ``--quantum-sweep none`` skips it.

Which policies apply where, and how single-engine policies run on a cluster:
``train.benchmark_runs``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from train.benchmark_runs import PolicyPlan, SeedRun, resolve_policies, run_all
from train.ranker_option import add_ranker_args, make_scorer, ranker_command_parts, ranker_label, ranker_weights

DEFAULT_QUANTA = (256.0, 1024.0, 4096.0, 16384.0, 65536.0)
_NON_AVERAGED = ("per_client", "rejected_by_reason")


def add_benchmark_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", "-s", required=True, help="a scenario id from `servegym scenarios`")
    p.add_argument("--policies", "-p", default=None,
                   help="comma-separated policy names, ROUTER+POLICY, d2lpm, or 'all' "
                        "(default: the scenario's comparison set)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for results.json, results.md, run.json and the plots (default: runs/benchmark-<scenario>)")
    p.add_argument("--quantum-sweep", default="auto",
                   help="DLPM quanta for the throughput-fairness plot: 'auto' (a default sweep when dlpm or d2lpm "
                        "is benchmarked), 'none', or comma-separated values")
    p.add_argument("--no-plots", action="store_true", help="write the JSON and Markdown only")
    add_ranker_args(p, "the scenario's requests (the ltr-* scenarios do)")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bar (auto: only on a terminal)")


def _with_ranker(plans: list[PolicyPlan], args: argparse.Namespace) -> list[PolicyPlan]:
    """LTR plans get one shared scorer of the ``--ranker`` checkpoints (scores cached across seeds)."""
    if not any(p.policy == "ltr" for p in plans):
        raise ValueError(f"--ranker {ranker_label(args)} is given but no ltr policy runs")
    scorer = make_scorer(args)
    return [dataclasses.replace(p, policy_kwargs={**p.policy_kwargs, "scorer": scorer}) if p.policy == "ltr" else p
            for p in plans]


def run_benchmark(args: argparse.Namespace) -> int:
    from envs.scenarios import get_scenario

    scenario = get_scenario(args.scenario)
    if isinstance(args.seeds, bool) or args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    plans = resolve_policies(args.policies, scenario)
    if args.ranker:
        plans = _with_ranker(plans, args)
    elif args.ranker_weights is not None:
        ranker_weights(args)
    quanta = _parse_quanta(args.quantum_sweep, plans)
    out_dir = args.out if args.out is not None else Path("runs") / f"benchmark-{scenario.id}"
    seeds = list(range(args.seeds))
    sweep_plans = _sweep_plans(plans, quanta)
    show = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty())
    bar = None
    on_run = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=len(seeds) * (len(plans) + len(sweep_plans)), desc=scenario.id, unit="run",
                   file=sys.stderr, dynamic_ncols=True)

        def on_run(run: SeedRun) -> None:
            bar.set_postfix_str(f"{run.plan.label} seed {run.seed}", refresh=False)
            bar.update(1)
    try:
        runs = run_all(scenario, plans, seeds, on_run)
        sweep_runs = run_all(scenario, sweep_plans, seeds, on_run) if sweep_plans else {}
    finally:
        if bar is not None:
            bar.close()
    results = {label: aggregate([r.metrics for r in rs]) for label, rs in runs.items()}
    table = format_table(scenario, results)
    print(f"scenario {scenario.id}: {scenario.description}")
    print(f"  {scenario.source}; profile {scenario.profile}, {scenario.num_replicas} replica(s), "
          f"seeds {seeds[0]}..{seeds[-1]}; mean ± std over seeds")
    print(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "results.json", results)
    (out_dir / "results.md").write_text(format_markdown(scenario, results, seeds) + "\n")
    _write_json(out_dir / "run.json", _run_info(scenario, plans, seeds, quanta, _command(args)))
    written = ["results.json", "results.md", "run.json"]
    sweep = None
    if sweep_runs:
        sweep = {label: aggregate([r.metrics for r in rs]) for label, rs in sweep_runs.items()}
        _write_json(out_dir / "quantum_sweep.json",
                    {"quanta": list(quanta), "points": sweep})
        written.append("quantum_sweep.json")
    if not args.no_plots:
        from train import benchmark_plots

        written += benchmark_plots.write_plots(out_dir, scenario, runs, sweep, quanta, results)
    print(f"wrote {', '.join(written)} to {out_dir}")
    return 0


# ------------------------------------------------------------------ aggregation
def aggregate(per_seed: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of every numeric key, with ``<key>_std`` (sample std) beside it.

    A key missing or None in some seeds is averaged over the others; None when no seed has
    it. ``_std`` is None with fewer than two values. Nested dicts (``per_client``,
    ``rejected_by_reason``) are aggregated key by key the same way. Non-numeric values are
    dropped.
    """
    keys: list[str] = []
    for d in per_seed:
        for k in d:
            if k not in keys:
                keys.append(k)
    out: dict[str, Any] = {}
    for k in keys:
        values = [d.get(k) for d in per_seed]
        if k in _NON_AVERAGED or any(isinstance(v, dict) for v in values):
            subs = [v for v in values if isinstance(v, dict)]
            inner_keys: list[str] = []
            for v in subs:
                inner_keys += [ik for ik in v if ik not in inner_keys]
            if all(isinstance(x, dict) for v in subs for x in v.values()):
                out[k] = {ik: aggregate([v[ik] for v in subs if ik in v]) for ik in inner_keys}
            else:
                out[k] = aggregate([{ik: v.get(ik, 0) for ik in inner_keys} for v in subs]) if subs else {}
            continue
        nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(float(v))]
        if not nums and any(v is not None and not isinstance(v, (int, float)) for v in values):
            continue
        out[k] = float(np.mean(nums)) if nums else None
        out[f"{k}_std"] = float(np.std(nums, ddof=1)) if len(nums) >= 2 else None
    out["num_seeds"] = len(per_seed)
    return out


# ------------------------------------------------------------------ tables
def _cell(results: dict[str, Any], key: str) -> str:
    mean = results.get(key)
    if mean is None:
        return "-"
    std = results.get(f"{key}_std")
    fmt = _fmt_for(key, mean)
    return fmt.format(mean) if std is None else f"{fmt.format(mean)} ± {fmt.format(std)}"


def _fmt_for(key: str, value: float) -> str:
    if key.startswith("num_") or key in ("preemptions", "iterations", "completed"):
        return "{:.0f}"
    if key in ("jain_index", "jain_index_total", "cache_hit_rate"):
        return "{:.3f}"
    if abs(value) >= 100:
        return "{:.0f}"
    return "{:.3g}" if abs(value) < 0.1 else "{:.2f}"


def _rows(scenario, results: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["policy", *scenario.columns]
    body = [[label, *(_cell(r, c) for c in scenario.columns)] for label, r in results.items()]
    return header, body


def format_table(scenario, results: dict[str, dict[str, Any]]) -> str:
    header, body = _rows(scenario, results)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join([cells[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells[1:], widths[1:]))]).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in body)])


def format_markdown(scenario, results: dict[str, dict[str, Any]], seeds: list[int]) -> str:
    header, body = _rows(scenario, results)
    lines = [f"**{scenario.id}** — {scenario.description}. {scenario.source}. Profile {scenario.profile}, "
             f"{scenario.num_replicas} replica(s), seeds {seeds[0]}..{seeds[-1]} (mean ± std).", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


# ------------------------------------------------------------------ quantum sweep
def _parse_quanta(spec: str, plans: list[PolicyPlan]) -> tuple[float, ...]:
    spec = spec.strip()
    if spec == "none":
        return ()
    if spec == "auto":
        return DEFAULT_QUANTA if any(_sweepable(p) for p in plans) else ()
    values = []
    for part in spec.split(","):
        try:
            q = float(part)
        except ValueError:
            raise ValueError(f"--quantum-sweep: {part.strip()!r} is not a number (use 'auto', 'none' or numbers)") from None
        if not (math.isfinite(q) and q > 0):
            raise ValueError(f"--quantum-sweep: quanta must be finite numbers > 0, got {part.strip()!r}")
        values.append(q)
    if not any(_sweepable(p) for p in plans):
        raise ValueError("--quantum-sweep needs dlpm or d2lpm among --policies")
    return tuple(values)


def _sweepable(plan: PolicyPlan) -> bool:
    return plan.policy == "dlpm"


def _sweep_plans(plans: list[PolicyPlan], quanta: tuple[float, ...]) -> list[PolicyPlan]:
    """The first DLPM-running plan (D²LPM's local DLPM included) at each quantum."""
    if not quanta:
        return []
    base = next(p for p in plans if _sweepable(p))
    out = []
    for q in quanta:
        router_kwargs = dict(base.router_kwargs)
        if base.router == "d2lpm":
            router_kwargs["local_quantum"] = q
        out.append(PolicyPlan(f"{base.label}@Q={q:g}", base.policy, {**base.policy_kwargs, "quantum": q},
                              base.router, router_kwargs))
    return out


# ------------------------------------------------------------------ files
def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")


def _command(args: argparse.Namespace) -> str:
    parts = ["servegym", "benchmark", "--scenario", args.scenario]
    if args.policies is not None:
        parts += ["--policies", args.policies]
    parts += ["--seeds", str(args.seeds)]
    if args.out is not None:
        parts += ["--out", str(args.out)]
    if args.quantum_sweep != "auto":
        parts += ["--quantum-sweep", args.quantum_sweep]
    if args.no_plots:
        parts.append("--no-plots")
    parts += ranker_command_parts(args)
    return " ".join(parts)


def _jsonable(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Policy arguments for run.json: objects (a scorer) by their name."""
    return {k: v if isinstance(v, (int, float, str, bool, type(None), list, tuple, dict))
            else getattr(v, "name", repr(v)) for k, v in kwargs.items()}


def _run_info(scenario, plans: list[PolicyPlan], seeds: list[int], quanta, command: str) -> dict[str, Any]:
    return {
        "scenario": scenario.id, "description": scenario.description, "source": scenario.source,
        "profile": scenario.profile, "num_replicas": scenario.num_replicas, "load_scale": scenario.load_scale,
        "stop_after_finished": scenario.stop_after_finished, "service_window_s": scenario.service_window_s,
        "engine": {f: getattr(scenario.engine, f) for f in scenario.engine.__dataclass_fields__},
        "seeds": seeds,
        "policies": [{"label": p.label, "policy": p.policy, "policy_kwargs": _jsonable(p.policy_kwargs),
                      "router": p.router, "router_kwargs": p.router_kwargs} for p in plans],
        "quantum_sweep": list(quanta),
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
