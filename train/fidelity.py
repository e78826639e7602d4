"""``servegym fidelity``: does the simulator tell the truth about one workload on one GPU?

One workload is served twice with the same policy, engine settings and KV block counts:
first on the real executor (``TorchExecutor``, measured), then on the simulator with a
fitted profile. Two comparisons:

- per iteration: every plan the real run executed is handed, unchanged, to the
  simulator's executor, and its predicted duration is compared with the measured one
  (absolute percentage error: mean = MAPE, p50, p99) — the cost model alone, on identical
  plans;
- end to end: the simulated run's TTFT, TPOT and E2E (p50 and p99) and throughput against
  the real run's (relative error) — the cost model's errors as they compound through
  scheduling.

The simulator run uses eager block ids, so its block groups and swap copies are the real
run's. The real run needs a GPU (or the CPU with the tiny model, for tests).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from envs.engine_config import BATCHING_RULES, PREEMPTION_MODES, EngineConfig


@dataclass(frozen=True, slots=True)
class IterationRecord:
    """What one real iteration was (the plan, as the simulator sees it) and how long it took."""

    plan_copy: Any          # a BatchPlan with the counts and moves of the real one (tables not kept)
    measured_s: float


class RecordingExecutor:
    """Passes plans to the real executor and keeps a copy of each with its measured time."""

    def __init__(self, inner):
        self.inner = inner
        self.supports_multi_step = inner.supports_multi_step
        self.needs_token_ids = inner.needs_token_ids
        self.needs_block_ids = inner.needs_block_ids
        self.records: list[IterationRecord] = []

    def capacity(self):
        return self.inner.capacity()

    def decode_step_affine(self, num_seqs: int):
        return self.inner.decode_step_affine(num_seqs)

    def execute(self, plan):
        from gpu_backend.plan import BatchPlan, PrefillChunk

        res = self.inner.execute(plan)
        copy = BatchPlan(
            prefills=[PrefillChunk(c.seq_id, c.start, c.num_tokens, [], c.samples) for c in plan.prefills],
            num_decode=plan.num_decode, decode_context_sum=plan.decode_context_sum,
            swap_in=list(plan.swap_in), swap_out=list(plan.swap_out))
        self.records.append(IterationRecord(copy, res.duration_s))
        return res


def _ape_stats(pred: np.ndarray, real: np.ndarray) -> dict[str, float]:
    ape = np.abs(pred - real) / real
    return {"mape": float(ape.mean()), "p50": float(np.percentile(ape, 50)), "p99": float(np.percentile(ape, 99)),
            "max": float(ape.max()), "iterations": int(ape.size),
            "total_error": float(abs(pred.sum() - real.sum()) / real.sum())}


def _num(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _rel(sim: float, real: float) -> float | None:
    if real is None or sim is None or not math.isfinite(real) or not math.isfinite(sim) or real == 0:
        return None
    return abs(sim - real) / abs(real)


def run_fidelity(args: argparse.Namespace) -> int:
    import baselines  # noqa: F401  (registers the policies)
    from envs.engine import ServingEngine
    from envs.metrics import compute_metrics
    from envs.policy import make_policy
    from envs.workloads import get_workload, retime_poisson
    from gpu_backend.executors import make_executor
    from gpu_backend.profiles import load_profile
    from gpu_backend.sim_executor import SimExecutor

    profile = load_profile(args.profile)
    make_policy(args.policy)
    specs = get_workload(args.workload).generate(args.seed, args.num_requests)
    if args.rate is not None:
        specs = retime_poisson(specs, args.rate, args.seed)
    options: dict[str, Any] = {"random_weights": True} if args.random_weights else {}
    if args.num_gpu_blocks is not None:
        options["num_gpu_blocks"] = args.num_gpu_blocks
    real_ex = make_executor("torch", model=args.model, device=args.device, options=options)
    cap = real_ex.capacity()
    if cap.block_size != profile.block_size or cap.bytes_per_block != profile.bytes_per_block:
        raise ValueError(f"profile {profile.name}: blocks of {profile.block_size} tokens x {profile.bytes_per_block} "
                         f"bytes, the model's are {cap.block_size} x {cap.bytes_per_block}: not the same model")
    # the same KV memory in both runs
    gpu_blocks = min(cap.num_gpu_blocks, profile.num_gpu_blocks)
    host_blocks = min(cap.num_host_blocks, profile.num_host_blocks)
    config = EngineConfig(max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs,
                          batching=args.batching, preemption_mode=args.preemption, num_gpu_blocks=gpu_blocks,
                          num_host_blocks=host_blocks, lazy_block_ids=False, multi_step=False)
    rec = RecordingExecutor(real_ex)
    real_engine = ServingEngine(rec, make_policy(args.policy), config)
    real_engine.load(specs)
    real_record = real_engine.run()
    sim_ex = SimExecutor(profile, num_gpu_blocks=gpu_blocks, num_host_blocks=host_blocks)
    pred = np.array([sim_ex.execute(r.plan_copy).duration_s for r in rec.records])
    real = np.array([r.measured_s for r in rec.records])
    per_iteration = _ape_stats(pred, real)
    kinds = {"decode": [not r.plan_copy.prefills for r in rec.records],
             "with_prefill": [bool(r.plan_copy.prefills) for r in rec.records]}
    by_kind = {k: _ape_stats(pred[np.array(m)], real[np.array(m)]) for k, m in kinds.items() if any(m)}
    sim_engine = ServingEngine(SimExecutor(profile, num_gpu_blocks=gpu_blocks, num_host_blocks=host_blocks),
                               make_policy(args.policy), config)
    sim_engine.load(specs)
    sim_record = sim_engine.run()
    kvb = cap.bytes_per_block // cap.block_size
    m_real = compute_metrics(real_record, kv_bytes_per_token=kvb).to_dict()
    m_sim = compute_metrics(sim_record, kv_bytes_per_token=kvb).to_dict()
    keys = ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "e2e_p50_s", "e2e_p99_s", "throughput_tok_s")
    end_to_end = {k: {"real": m_real.get(k), "sim": m_sim.get(k), "error": _rel(m_sim.get(k), m_real.get(k))}
                  for k in keys}
    out = {"workload": args.workload, "policy": args.policy, "model": args.model, "profile": profile.name,
           "num_requests": len(specs), "num_gpu_blocks": gpu_blocks, "num_host_blocks": host_blocks,
           "preemption": args.preemption, "per_iteration": per_iteration, "per_iteration_by_kind": by_kind,
           "end_to_end": end_to_end,
           "preemptions": {"real": m_real.get("preemptions"), "sim": m_sim.get("preemptions")},
           "iterations": {"real": real_engine.iteration, "sim": sim_engine.iteration}}
    print(f"fidelity: {args.workload} ({len(specs)} requests), policy {args.policy}, model {args.model} vs "
          f"profile {profile.name}, {gpu_blocks:,} GPU / {host_blocks:,} host KV blocks")
    print(f"per iteration ({per_iteration['iterations']} plans): MAPE {per_iteration['mape']:.1%}, "
          f"p50 {per_iteration['p50']:.1%}, p99 {per_iteration['p99']:.1%}, total time {per_iteration['total_error']:.1%}"
          + "".join(f"; {k} MAPE {v['mape']:.1%} ({v['iterations']})" for k, v in by_kind.items()))
    print(f"{'metric':<18} {'real':>10} {'sim':>10} {'error':>7}")
    for k, v in end_to_end.items():
        err = "-" if v["error"] is None else f"{v['error']:.1%}"
        print(f"{k:<18} {_num(v['real']):>10} {_num(v['sim']):>10} {err:>7}")
    print(f"preemptions real {out['preemptions']['real']}, sim {out['preemptions']['sim']}; iterations real "
          f"{out['iterations']['real']}, sim {out['iterations']['sim']}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


def add_fidelity_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workload", "-w", required=True, help="a name from `servegym workloads`")
    p.add_argument("--policy", "-p", default="fcfs", help="a name from `servegym policies`")
    p.add_argument("--model", required=True, help="tiny, smollm2-135m, llama-1b or llama-8b")
    p.add_argument("--profile", required=True, help="the fitted profile (name or JSON path) to judge")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None)
    p.add_argument("--num-requests", "-n", type=int, default=200)
    p.add_argument("--rate", type=float, default=None, help="re-time arrivals as Poisson at R requests/s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batching", choices=sorted(BATCHING_RULES), default="sarathi")
    p.add_argument("--preemption", choices=PREEMPTION_MODES, default="recompute")
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--num-gpu-blocks", type=int, default=None,
                   help="KV blocks of both runs (default: the smaller of the executor's and the profile's)")
    p.add_argument("--random-weights", action="store_true",
                   help="the model's shape with random weights (timing does not depend on the values)")
    p.add_argument("--json", type=Path, default=None)
