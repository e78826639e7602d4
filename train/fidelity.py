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
  scheduling;
- end to end on the real run's own plans (``replay``): the same metrics with every plan kept
  and re-timed by the cost model (``train.fidelity_replay``) — the cost model's errors alone,
  without the simulator's scheduler answering them with other choices.

The simulator run uses eager block ids, so its block groups and swap copies are the real
run's. The real run needs a GPU (or the CPU with the tiny model, for tests); it follows
``--warmup-runs`` unrecorded runs of the same workload, so the first use of a kernel shape
(Triton compilation, cuBLAS heuristics, allocator growth) is not timed. ``--json`` keeps the
real run (settings, metrics, every iteration's plan, measured time and device time), and
``--replay`` judges another profile against it on any machine — a cost model can be improved
without the GPU.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from envs.engine_config import BATCHING_RULES, PREEMPTION_MODES, EngineConfig
from gpu_backend.executor_flags import add_executor_flag_args, executor_flag_options
from train.fidelity_replay import can_replay, replay_metrics, request_table


@dataclass(frozen=True, slots=True)
class IterationRecord:
    """What one real iteration was (the plan, as the simulator sees it) and how long it took."""

    plan_copy: Any          # a BatchPlan with the counts and moves of the real one (tables not kept)
    measured_s: float
    device_s: float = 0.0   # the executor's device time inside it (``StepResult.compute_s``); the rest is host work
    start_s: float = math.nan               # the engine's clock when it began
    new_ids: tuple[int, ...] = ()           # requests it scheduled for the first time
    idle_start: bool | None = None          # asynchronous runs: launched with no iteration in flight


class RecordingExecutor:
    """Passes plans to the real executor and keeps a copy of each with its measured time, and, given the
    engine's ``clock``, when it began and which requests it scheduled first (``train.fidelity_replay``)."""

    def __init__(self, inner, clock=None):
        self.inner = inner
        self.clock = clock
        self.supports_multi_step = inner.supports_multi_step
        self.needs_token_ids = inner.needs_token_ids
        self.needs_block_ids = inner.needs_block_ids
        self.records: list[IterationRecord] = []
        self._seen: set[int] = set()

    def capacity(self):
        return self.inner.capacity()

    def decode_step_affine(self, num_seqs: int):
        return self.inner.decode_step_affine(num_seqs)

    def _now(self) -> float:
        return self.clock() if self.clock is not None else math.nan

    def _copy(self, plan):
        """The plan as the simulator sees it, and the requests it schedules for the first time."""
        from gpu_backend.plan import BatchPlan, PrefillChunk

        ids = [c.seq_id for c in plan.prefills] + list(plan.decode_seq_ids)
        new_ids = tuple(dict.fromkeys(i for i in ids if i not in self._seen))
        self._seen.update(new_ids)
        copy = BatchPlan(
            prefills=[PrefillChunk(c.seq_id, c.start, c.num_tokens, [], c.samples) for c in plan.prefills],
            num_decode=plan.num_decode, decode_context_sum=plan.decode_context_sum,
            decode_context_max=plan.decode_context_max, swap_in=list(plan.swap_in), swap_out=list(plan.swap_out))
        return copy, new_ids

    def execute(self, plan):
        start = self._now()
        copy, new_ids = self._copy(plan)
        res = self.inner.execute(plan)
        self.records.append(IterationRecord(copy, res.duration_s, res.compute_s, start, new_ids))
        return res


class PipelinedRecordingExecutor(RecordingExecutor):
    """``RecordingExecutor`` for asynchronous scheduling (``launch``/``collect``). An iteration is recorded when
    it is collected, in launch order: the engine's clock then stands at the end of the one before, which is
    when it began (the executor times it from there)."""

    def __init__(self, inner, clock=None):
        super().__init__(inner, clock)
        self.in_flight = 0

    def launch(self, plan):
        copy, new_ids = self._copy(plan)
        idle = self.in_flight == 0
        handle = self.inner.launch(plan)
        self.in_flight += 1
        return copy, new_ids, idle, handle

    def collect(self, launched):
        copy, new_ids, idle, handle = launched
        start = self._now()
        res = self.inner.collect(handle)
        self.in_flight -= 1
        self.records.append(IterationRecord(copy, res.duration_s, res.compute_s, start, new_ids, idle))
        return res


END_TO_END_KEYS = ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "e2e_p50_s", "e2e_p99_s",
                   "throughput_tok_s")


def _ape_stats(pred: np.ndarray, real: np.ndarray) -> dict[str, float]:
    ape = np.abs(pred - real) / real
    return {"mape": float(ape.mean()), "p50": float(np.percentile(ape, 50)), "p99": float(np.percentile(ape, 99)),
            "max": float(ape.max()), "iterations": int(ape.size),
            "total_error": float(abs(pred.sum() - real.sum()) / real.sum())}


def _num(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _rel(sim: float, real: float) -> float | None:
    if real is None or sim is None or not math.isfinite(real) or not math.isfinite(sim) or real == 0:
        return None
    return abs(sim - real) / abs(real)


def _plan_record(r: IterationRecord) -> dict:
    """One real iteration as JSON: what the simulator needs to time it again, and the measured time."""
    plan = r.plan_copy
    return {"s": r.measured_s, "device_s": r.device_s,
            "prefills": [[c.start, c.num_tokens, int(c.samples)] for c in plan.prefills],
            "num_decode": plan.num_decode, "decode_context_sum": plan.decode_context_sum,
            "decode_context_max": plan.decode_context_max,
            "swap_in": [[m.src_start, m.dst_start, m.num_blocks] for m in plan.swap_in],
            "swap_out": [[m.src_start, m.dst_start, m.num_blocks] for m in plan.swap_out],
            "start_s": r.start_s, "new_ids": list(r.new_ids),
            **({} if r.idle_start is None else {"idle_start": r.idle_start})}


def idle_started(records: list[dict]) -> np.ndarray:
    """Which iterations of an asynchronously scheduled real run were launched with none in flight (the
    executor timed them from their own launch). Runs recorded before session 17 do not say: there it is the
    first iteration and each that began after the one before had ended (the clock moved to an arrival)."""
    if records and "idle_start" in records[0]:
        return np.array([bool(r["idle_start"]) for r in records])
    out = np.zeros(len(records), dtype=bool)
    prev_end = None
    for i, r in enumerate(records):
        start = r.get("start_s", math.nan)
        out[i] = prev_end is None or start > prev_end
        prev_end = start + r["s"]
    return out


def _record_plan(rec: dict):
    from gpu_backend.plan import BatchPlan, GroupMove, PrefillChunk

    return BatchPlan(prefills=[PrefillChunk(i, st, n, [], bool(smp)) for i, (st, n, smp) in enumerate(rec["prefills"])],
                     num_decode=rec["num_decode"], decode_context_sum=rec["decode_context_sum"],
                     decode_context_max=rec.get("decode_context_max", 0),
                     swap_in=[GroupMove(*m) for m in rec["swap_in"]], swap_out=[GroupMove(*m) for m in rec["swap_out"]])


def _settings(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in ("workload", "policy", "model", "num_requests", "rate", "seed", "batching",
                                          "preemption", "max_num_batched_tokens", "max_num_seqs", "async_scheduling")}


def _workload(settings: dict):
    from envs.workloads import get_workload, retime_poisson

    specs = get_workload(settings["workload"]).generate(settings["seed"], settings["num_requests"])
    if settings["rate"] is not None:
        specs = retime_poisson(specs, settings["rate"], settings["seed"])
    return specs


def _config(settings: dict, gpu_blocks: int, host_blocks: int) -> EngineConfig:
    """Both runs' engine settings. Both schedule asynchronously where the settings say so (runs recorded
    before session 16 do not say: synchronous), so the simulator's run lets arrivals join as late."""
    return EngineConfig(max_num_batched_tokens=settings["max_num_batched_tokens"],
                        max_num_seqs=settings["max_num_seqs"], batching=settings["batching"],
                        preemption_mode=settings["preemption"], num_gpu_blocks=gpu_blocks,
                        num_host_blocks=host_blocks, lazy_block_ids=False, multi_step=False,
                        async_scheduling=settings.get("async_scheduling", False))


def _real_run(args: argparse.Namespace, profile) -> dict:
    """Serve the workload on the real executor (after ``args.warmup_runs`` unrecorded runs of it)."""
    from envs.engine import ServingEngine
    from envs.metrics import compute_metrics
    from envs.policy import make_policy
    from gpu_backend.executors import make_executor

    settings = _settings(args)
    specs = _workload(settings)
    options: dict[str, Any] = {"random_weights": True} if args.random_weights else {}
    if args.num_gpu_blocks is not None:
        options["num_gpu_blocks"] = args.num_gpu_blocks
    options.update(executor_flag_options(args))
    real_ex = make_executor("torch", model=args.model, device=args.device, options=options)
    cap = real_ex.capacity()
    if cap.block_size != profile.block_size or cap.bytes_per_block != profile.bytes_per_block:
        raise ValueError(f"profile {profile.name}: blocks of {profile.block_size} tokens x {profile.bytes_per_block} "
                         f"bytes, the model's are {cap.block_size} x {cap.bytes_per_block}: not the same model")
    # the same KV memory in both runs
    gpu_blocks = min(cap.num_gpu_blocks, profile.num_gpu_blocks)
    host_blocks = min(cap.num_host_blocks, profile.num_host_blocks)
    config = _config(settings, gpu_blocks, host_blocks)
    kvb = cap.bytes_per_block // cap.block_size
    warmup_metrics = []
    for _ in range(args.warmup_runs):   # compiles kernels and warms the allocator for the shapes the run meets
        warm = ServingEngine(real_ex, make_policy(args.policy), config)
        warm.load(specs)
        warmup_metrics.append(compute_metrics(warm.run(), kv_bytes_per_token=kvb).to_dict())
    rec = (PipelinedRecordingExecutor if config.async_scheduling else RecordingExecutor)(real_ex)
    engine = ServingEngine(rec, make_policy(args.policy), config)
    rec.clock = lambda: engine.clock
    engine.load(specs)
    record = engine.run()
    ends = [r.start_s + r.measured_s for r in rec.records]     # as the engine adds them
    return {"settings": settings, "num_gpu_blocks": gpu_blocks, "num_host_blocks": host_blocks,
            "kv_bytes_per_token": kvb, "warmup_runs": args.warmup_runs, "warmup_metrics": warmup_metrics,
            "metrics": compute_metrics(record, kv_bytes_per_token=kvb).to_dict(), "iterations": engine.iteration,
            "records": [_plan_record(r) for r in rec.records], "requests": request_table(record.requests, ends)}


def judge(real: dict, profile) -> dict:
    """The simulator with ``profile`` against a real run (``_real_run``'s dict, or one read back from JSON)."""
    from envs.engine import ServingEngine
    from envs.metrics import compute_metrics
    from envs.policy import make_policy
    from gpu_backend.sim_executor import SimExecutor

    settings = real["settings"]
    if not real["records"]:
        rejected = real["metrics"].get("num_rejected", 0)
        raise ValueError(f"the real run of {settings['workload']} served no iteration ({rejected} requests rejected): "
                         f"nothing to judge; give it KV memory for its requests")
    gpu_blocks, host_blocks = real["num_gpu_blocks"], real["num_host_blocks"]
    sim_ex = SimExecutor(profile, num_gpu_blocks=gpu_blocks, num_host_blocks=host_blocks)
    plans = [_record_plan(r) for r in real["records"]]
    pred = np.array([sim_ex.execute(p).duration_s for p in plans])
    if settings.get("async_scheduling"):    # as the simulator's own asynchronous run times them
        pred = pred + sim_ex.cost.idle_start_s * idle_started(real["records"])
    measured = np.array([r["s"] for r in real["records"]])
    per_iteration = _ape_stats(pred, measured)
    kinds = {"decode": [not p.prefills for p in plans], "with_prefill": [bool(p.prefills) for p in plans]}
    by_kind = {k: _ape_stats(pred[np.array(m)], measured[np.array(m)]) for k, m in kinds.items() if any(m)}
    host = host_time(real["records"], kinds)
    specs = _workload(settings)
    sim_engine = ServingEngine(SimExecutor(profile, num_gpu_blocks=gpu_blocks, num_host_blocks=host_blocks),
                               make_policy(settings["policy"]), _config(settings, gpu_blocks, host_blocks))
    sim_engine.load(specs)
    sim_record = sim_engine.run()
    m_real = real["metrics"]
    m_sim = compute_metrics(sim_record, kv_bytes_per_token=real["kv_bytes_per_token"]).to_dict()
    end_to_end = {k: {"real": m_real.get(k), "sim": m_sim.get(k), "error": _rel(m_sim.get(k), m_real.get(k))}
                  for k in END_TO_END_KEYS}
    if can_replay(real):     # the real run's own plans on the cost model's clock
        m_replay = replay_metrics(real, pred, real["kv_bytes_per_token"])
        for k, v in end_to_end.items():
            v["replay"] = m_replay.get(k)
            v["replay_error"] = _rel(m_replay.get(k), m_real.get(k))
    return {**{k: settings[k] for k in ("workload", "policy", "model", "preemption")}, "profile": profile.name,
            "num_requests": len(specs), "num_gpu_blocks": gpu_blocks, "num_host_blocks": host_blocks,
            "per_iteration": per_iteration, "per_iteration_by_kind": by_kind, "end_to_end": end_to_end,
            "preemptions": {"real": m_real.get("preemptions"), "sim": m_sim.get("preemptions")},
            "iterations": {"real": real["iterations"], "sim": sim_engine.iteration},
            "real_repeat": real_repeat(real), **({"host_time": host} if host else {})}


def host_time(records: list[dict], kinds: dict[str, list[bool]]) -> dict | None:
    """Per kind of iteration, the median host time (measured minus device time) and its share of the
    iteration. Host work is what moves with the lent machine's CPU rather than its GPU. None for runs
    recorded before device times were kept."""
    if not records or "device_s" not in records[0]:
        return None
    s = np.array([r["s"] for r in records])
    dev = np.array([r["device_s"] for r in records])
    out = {}
    for k, mask in kinds.items():
        m = np.array(mask) & (dev > 0)
        if m.any():
            out[k] = {"host_s_p50": float(np.median(s[m] - dev[m])), "device_s_p50": float(np.median(dev[m])),
                      "host_share_p50": float(np.median((s[m] - dev[m]) / s[m])), "iterations": int(m.sum())}
    return out


def real_repeat(real: dict) -> dict | None:
    """How far the recorded real run is from the last warm-up run of the same workload (same
    machine, same plans up to timing): the hardware's own run-to-run spread, the floor under any
    simulator's end-to-end error. None unless there were two or more warm-ups (the first compiles)."""
    warm = real.get("warmup_metrics") or []
    if len(warm) < 2:
        return None
    m_real, m_warm = real["metrics"], warm[-1]
    return {k: _rel(m_warm.get(k), m_real.get(k)) for k in END_TO_END_KEYS}


def _print_report(out: dict) -> None:
    per_iteration = out["per_iteration"]
    print(f"fidelity: {out['workload']} ({out['num_requests']} requests), policy {out['policy']}, model "
          f"{out['model']} vs profile {out['profile']}, {out['num_gpu_blocks']:,} GPU / {out['num_host_blocks']:,} "
          f"host KV blocks")
    print(f"per iteration ({per_iteration['iterations']} plans): MAPE {per_iteration['mape']:.1%}, "
          f"p50 {per_iteration['p50']:.1%}, p99 {per_iteration['p99']:.1%}, total time {per_iteration['total_error']:.1%}"
          + "".join(f"; {k} MAPE {v['mape']:.1%} ({v['iterations']})" for k, v in out["per_iteration_by_kind"].items()))
    repeat = out.get("real_repeat")
    replayed = "replay" in next(iter(out["end_to_end"].values()))
    print(f"{'metric':<18} {'real':>10} {'sim':>10} {'error':>7}"
          + (f" {'replay':>10} {'error':>7}" if replayed else "") + (f" {'real again':>10}" if repeat else ""))
    for k, v in out["end_to_end"].items():
        line = f"{k:<18} {_num(v['real']):>10} {_num(v['sim']):>10} {_pct(v['error']):>7}"
        if replayed:
            line += f" {_num(v['replay']):>10} {_pct(v['replay_error']):>7}"
        if repeat:
            line += f" {_pct(repeat[k]):>10}"
        print(line)
    if replayed:
        print("replay: the real run's own plans, each timed by the profile (no scheduling of the simulator's own)")
    if repeat:
        print("real again: the last unrecorded warm-up run against the recorded one (the hardware's own spread)")
    print(f"preemptions real {out['preemptions']['real']}, sim {out['preemptions']['sim']}; iterations real "
          f"{out['iterations']['real']}, sim {out['iterations']['sim']}")
    for k, v in (out.get("host_time") or {}).items():
        print(f"{k} iterations, real run (p50): device {v['device_s_p50'] * 1e3:.3f} ms, host "
              f"{v['host_s_p50'] * 1e3:.3f} ms ({v['host_share_p50']:.0%} of the iteration)")


def read_real_run(path: Path) -> dict:
    """The recorded real run of a fidelity JSON (``--json``'s output, or a ``.json.gz`` of one)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt") as f:
                data = json.load(f)
        else:
            data = json.loads(path.read_text())
        return data["real_run"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--replay {path}: not a fidelity JSON with a real_run ({e})") from e


def run_fidelity(args: argparse.Namespace) -> int:
    import baselines  # noqa: F401  (registers the policies)
    from envs.policy import make_policy
    from gpu_backend.profiles import load_profile

    profile = load_profile(args.profile)
    if args.replay is not None:
        real = read_real_run(args.replay)
        kvb = profile.bytes_per_block // profile.block_size
        if real.get("kv_bytes_per_token") != kvb:
            raise ValueError(f"--replay {args.replay}: its run's model holds {real.get('kv_bytes_per_token')} KV bytes "
                             f"per token, profile {profile.name}'s {kvb}: not the same model")
    else:
        if args.model is None or args.workload is None:
            raise ValueError("servegym fidelity needs --workload and --model (or --replay FILE)")
        if args.warmup_runs < 0:
            raise ValueError(f"--warmup-runs must be >= 0, got {args.warmup_runs}")
        make_policy(args.policy)
        real = _real_run(args, profile)
    out = judge(real, profile)
    _print_report(out)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**out, "real_run": real}) + "\n")
    return 0


def add_fidelity_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workload", "-w", default=None, help="a name from `servegym workloads`")
    p.add_argument("--policy", "-p", default="fcfs", help="a name from `servegym policies`")
    p.add_argument("--model", default=None, help="tiny, smollm2-135m, llama-1b or llama-8b")
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
    p.add_argument("--async-scheduling", action="store_true",
                   help="the real run plans each iteration while the previous one runs (vLLM's --async-scheduling), "
                        "so iterations last their device time: judge a profile fitted with --timing async")
    add_executor_flag_args(p)
    p.add_argument("--warmup-runs", type=int, default=1,
                   help="unrecorded runs of the workload first, so kernel compilation is not timed (default 1)")
    p.add_argument("--replay", type=Path, default=None,
                   help="judge --profile against the real run kept in this fidelity JSON (no GPU needed)")
    p.add_argument("--json", type=Path, default=None,
                   help="write the report and the real run (every iteration's plan and time) here")
