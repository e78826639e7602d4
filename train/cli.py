"""``servegym``: the command-line door to the simulator, workloads, policies and profiles.

Subcommands: ``simulate`` (one workload under one or all policies, a metrics table and
JSON), ``workloads``, ``policies`` and ``profiles`` (what exists). Later subcommands
(benchmark, train, evaluate, profile, fidelity) plug into the same parser.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from train.benchmark import add_benchmark_args, run_benchmark
from train.simulate import add_simulate_args, run_simulate


def _cmd_workloads(args: argparse.Namespace) -> int:
    from envs.workloads import list_workloads

    rows = [(w.name, w.kind, "-" if w.num_requests is None else f"{w.num_requests:,}", w.description)
            for w in list_workloads()]
    _print_rows(("name", "kind", "requests", "description"), rows)
    return 0


def _cmd_policies(args: argparse.Namespace) -> int:
    import baselines  # noqa: F401  (registers the baselines)
    from envs.policy import list_policies

    rows = [(p.name, "yes" if p.oracle else "no", p.description) for p in list_policies()]
    _print_rows(("name", "oracle", "description"), rows)
    return 0


def _cmd_profiles(args: argparse.Namespace) -> int:
    from gpu_backend.profiles import list_profiles, load_profile

    rows = []
    for name in list_profiles():
        p = load_profile(name)
        rows.append((name, p.device.name, p.model.name, type(p.cost).__name__.replace("CostModel", "").lower(),
                     f"{p.num_gpu_blocks:,}", f"{p.num_gpu_blocks * p.block_size:,}"))
    _print_rows(("name", "device", "model", "cost model", "GPU blocks", "KV tokens"), rows)
    return 0


def _cmd_scenarios(args: argparse.Namespace) -> int:
    from envs.scenarios import list_scenarios

    rows = [(s.id, s.suite, str(s.num_replicas), ",".join(s.policies), s.description) for s in list_scenarios()]
    _print_rows(("id", "suite", "replicas", "policies", "description"), rows)
    return 0


def _print_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def _add_ranker_commands(sub) -> None:
    """``train ranker`` and ``ranker score`` (the learning-to-rank length predictor, train/train_ranker.py)."""
    from train.train_ranker import (add_ranker_score_args, add_train_ranker_args, run_ranker_score,
                                    run_train_ranker)

    train_p = sub.add_parser("train", help="train a learned predictor or policy")
    train_sub = train_p.add_subparsers(dest="train_command", required=True, metavar="WHAT")
    rk = train_sub.add_parser("ranker", help="fine-tune an output-length ranker (LTR) for one target model")
    add_train_ranker_args(rk)
    rk.set_defaults(func=run_train_ranker)
    ranker_p = sub.add_parser("ranker", help="use a trained output-length ranker")
    ranker_sub = ranker_p.add_subparsers(dest="ranker_command", required=True, metavar="WHAT")
    score = ranker_sub.add_parser("score", help="score prompts from a JSON-lines file with a ranker checkpoint")
    add_ranker_score_args(score)
    score.set_defaults(func=run_ranker_score)


def _add_profile_command(sub) -> None:
    """``profile``: time the real executor on a GPU and fit a cost profile (gpu_backend/calibration.py)."""
    from gpu_backend.calibration import add_profile_args, run_profile

    prof = sub.add_parser("profile", help="time the real executor on a GPU and fit the simulator's cost profile")
    add_profile_args(prof)
    prof.set_defaults(func=run_profile)


def _add_fidelity_command(sub) -> None:
    """``fidelity``: one workload on the real executor and on the simulator, compared (train/fidelity.py)."""
    from train.fidelity import add_fidelity_args, run_fidelity

    fid = sub.add_parser("fidelity", help="serve a workload on the real executor and the simulator, compare")
    add_fidelity_args(fid)
    fid.set_defaults(func=run_fidelity)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servegym", description="An RL environment and simulator for LLM-serving schedulers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sim = sub.add_parser("simulate", help="serve a workload under a policy and print its metrics")
    add_simulate_args(sim)
    sim.set_defaults(func=run_simulate)
    bench = sub.add_parser("benchmark", help="run policies on a named scenario over seeds: table, JSON, plots")
    add_benchmark_args(bench)
    bench.set_defaults(func=run_benchmark)
    sub.add_parser("scenarios", help="list the named benchmark scenarios").set_defaults(func=_cmd_scenarios)
    sub.add_parser("workloads", help="list the named workloads").set_defaults(func=_cmd_workloads)
    sub.add_parser("policies", help="list the registered policies").set_defaults(func=_cmd_policies)
    sub.add_parser("profiles", help="list the cost profiles (device x model)").set_defaults(func=_cmd_profiles)
    _add_profile_command(sub)
    _add_fidelity_command(sub)
    _add_ranker_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, OSError) as e:
        # Bad input (names, files, values): one clear line, no traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"servegym {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
