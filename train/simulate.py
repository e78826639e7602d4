"""``servegym simulate``: one workload, one policy (or all of them), one table, one JSON.

The JSON holds the metrics of ``envs.metrics`` plus ``sim_wall_s``, the wall time of the
simulation loop alone (loading the workload and computing metrics excluded), so the
simulator's speed can be measured from the command line. Same seed, same JSON (wall
times aside).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from envs.engine_config import BATCHING_RULES, PREEMPTION_MODES, EngineConfig
from gpu_backend.executor_flags import add_executor_flag_args, executor_flag_options, flag_spelling
from gpu_backend.profiles import DEFAULT_PROFILE
from train.ranker_option import add_ranker_args, make_scorer, ranker_label, ranker_weights


def add_simulate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workload", "-w", default="azure-conv", help="a name from `servegym workloads`")
    p.add_argument("--policy", "-p", default="fcfs",
                   help="a name from `servegym policies`, a comma-separated list, or 'all'")
    p.add_argument("--num-requests", "-n", type=int, default=None,
                   help="serve only the first N requests of the workload")
    p.add_argument("--rate", type=float, default=None,
                   help="re-time arrivals as a Poisson process at R requests/s")
    p.add_argument("--profile", default=DEFAULT_PROFILE,
                   help="cost profile (device x model) from `servegym profiles`, or a profile JSON path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the metrics as JSON to FILE")
    p.add_argument("--batching", choices=sorted(BATCHING_RULES), default="sarathi")
    p.add_argument("--preemption", choices=PREEMPTION_MODES, default="recompute")
    p.add_argument("--max-num-batched-tokens", type=int, default=2048, help="per-iteration token budget")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--no-multi-step", action="store_true",
                   help="step one iteration at a time (no closed-form decode runs)")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bar (auto: only on a terminal)")
    p.add_argument("--backend", choices=("sim", "torch"), default="sim",
                   help="sim: iteration times from the cost profile; torch: run a real model (--model) and "
                        "measure them")
    p.add_argument("--model", default="tiny",
                   help="with --backend torch: tiny, smollm2-135m, llama-1b or llama-8b (gpu_backend.models)")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="with --backend torch: where the model runs (default: cuda when available)")
    p.add_argument("--num-gpu-blocks", type=int, default=None,
                   help="KV blocks of the executor (default: the profile's, or what the device's memory leaves)")
    p.add_argument("--async-scheduling", action="store_true",
                   help="plan each iteration while the previous one runs on the device (vLLM's "
                        "--async-scheduling); arrivals join one iteration later. With --backend sim the iterations "
                        "are timed one at a time, best with a profile fitted for it (h200-MODEL-async-fitted)")
    add_executor_flag_args(p)      # with --backend torch
    add_ranker_args(p, "the workload's requests (e.g. alpaca-eval-<model>)")


def _policy_names(spec: str) -> list[str]:
    from envs.policy import list_policies

    if spec == "all":
        return [p.name for p in list_policies()]
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ValueError(f"--policy {spec!r} names no policy")
    return names


def simulate_once(specs, policy_name: str, profile: str, config: EngineConfig,
                  progress: bool = False, desc: str = "", executor=None,
                  policy_kwargs: dict[str, Any] | None = None) -> tuple[Any, float, Any]:
    """Run one policy over ``specs``; returns (RunRecord, loop wall seconds, engine).

    ``executor``: a ready executor (the real model, loaded once for every policy); by
    default a ``SimExecutor`` of ``profile``. ``policy_kwargs`` go to the policy's factory."""
    from envs.engine import ServingEngine
    from envs.policy import make_policy
    from gpu_backend.sim_executor import SimExecutor

    if executor is None:
        executor = SimExecutor(profile)
    engine = ServingEngine(executor, make_policy(policy_name, **(policy_kwargs or {})), config)
    engine.load(specs)
    bar = None
    callback = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(specs), desc=desc or policy_name, unit="req", file=sys.stderr,
                   dynamic_ncols=True, mininterval=0.2)

        def callback(done: int, total: int) -> None:
            if done - bar.n >= 64 or done == total:
                bar.update(done - bar.n)
    t0 = time.perf_counter()
    record = engine.run(progress=callback)
    wall = time.perf_counter() - t0
    if bar is not None:
        bar.update(len(specs) - bar.n)
        bar.close()
    return record, wall, engine


def run_simulate(args: argparse.Namespace) -> int:
    import baselines  # noqa: F401  (registers the baselines)
    from envs.metrics import compute_metrics
    from envs.metrics_table import format_metrics_table, format_single_run
    from envs.policy import make_policy
    from envs.workloads import get_workload, retime_poisson
    from gpu_backend.profiles import load_profile

    if args.num_requests is not None and args.num_requests < 1:
        raise ValueError(f"--num-requests must be >= 1, got {args.num_requests}")
    if args.rate is not None and not (args.rate > 0 and math.isfinite(args.rate)):
        raise ValueError(f"--rate must be a positive number of requests per second, got {args.rate}")
    names = _policy_names(args.policy)
    for name in names:
        make_policy(name)  # fail on a bad name before any simulation runs
    kwargs_of: dict[str, dict[str, Any]] = {}
    if args.ranker:
        if "ltr" not in names:
            raise ValueError(f"--ranker {ranker_label(args)} is given but no ltr policy runs (--policy {args.policy})")
        kwargs_of["ltr"] = {"scorer": make_scorer(args)}
    elif args.ranker_weights is not None:
        ranker_weights(args)
    profile = load_profile(args.profile)
    if args.num_gpu_blocks is not None and args.num_gpu_blocks < 1:
        raise ValueError(f"--num-gpu-blocks must be >= 1, got {args.num_gpu_blocks}")
    flags = executor_flag_options(args)
    if flags and args.backend != "torch":
        name, on = next(iter(flags.items()))
        raise ValueError(f"{flag_spelling(name, on)} changes the real executor; it needs --backend torch, "
                         f"got --backend {args.backend}")
    executor = None
    kv_bytes_per_token = profile.model.kv_bytes_per_token
    source = f"profile {profile.name}"
    if args.backend == "torch":
        from gpu_backend.executors import make_executor

        options = {} if args.num_gpu_blocks is None else {"num_gpu_blocks": args.num_gpu_blocks}
        options.update(flags)
        executor = make_executor("torch", model=args.model, device=args.device, options=options)
        cap = executor.capacity()
        kv_bytes_per_token = cap.bytes_per_block // cap.block_size
        source = f"model {args.model} on {executor.device} ({executor.dtype}, {cap.num_gpu_blocks:,} KV blocks)"
    elif args.num_gpu_blocks is not None:
        from gpu_backend.sim_executor import SimExecutor

        executor = SimExecutor(profile, num_gpu_blocks=args.num_gpu_blocks)
    workload = get_workload(args.workload)
    specs = workload.generate(args.seed, args.num_requests)
    if args.rate is not None:
        specs = retime_poisson(specs, args.rate, args.seed)
    config = EngineConfig(
        max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs,
        batching=args.batching, preemption_mode=args.preemption,
        enable_prefix_caching=not args.no_prefix_caching, multi_step=not args.no_multi_step,
        async_scheduling=args.async_scheduling)
    show = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty())
    results: dict[str, dict[str, Any]] = {}
    table_rows = []
    for name in names:
        record, wall, engine = simulate_once(specs, name, profile, config, progress=show, executor=executor,
                                             policy_kwargs=kwargs_of.get(name))
        metrics = compute_metrics(record, kv_bytes_per_token=kv_bytes_per_token)
        out = metrics.to_dict()
        out["sim_wall_s"] = wall
        out["sim_requests_per_s"] = len(specs) / wall if wall > 0 else None
        out["iterations"] = engine.iteration
        results[name] = out
        table_rows.append((name, metrics))
        if len(names) == 1:
            print(format_single_run(metrics))
    header = (f"workload {args.workload} ({len(specs):,} requests"
              f"{'' if args.rate is None else f', Poisson {args.rate:g} req/s'}), {source}, "
              f"batching {args.batching}, preemption {args.preemption}, seed {args.seed}")
    print(header)
    print(format_metrics_table(table_rows))
    walls = ", ".join(f"{n} {r['sim_wall_s']:.2f}s" for n, r in results.items())
    print(f"simulation loop wall time: {walls}")
    if args.json is not None:
        run_info = {"workload": args.workload, "num_requests": len(specs), "rate": args.rate,
                    "ranker": ranker_label(args), "ranker_weights": ranker_weights(args),
                    "profile": profile.name, "seed": args.seed, "config": _config_dict(config),
                    "backend": args.backend}
        if args.backend == "torch":
            run_info.update(model=args.model, device=str(executor.device))
        payload: dict[str, Any]
        if len(names) == 1:
            payload = {**results[names[0]], "policy": names[0], "run": run_info}
        else:
            payload = {"policies": results, "run": run_info}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    return 0


def _config_dict(config: EngineConfig) -> dict[str, Any]:
    return {f: getattr(config, f) for f in config.__dataclass_fields__}
