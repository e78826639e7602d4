"""End to end: LTR with a trained ranker against FCFS and oracle SJF/SRTF, on prompts the ranker never saw.

The LTR paper's chatbot experiment (Fu et al., NeurIPS'24, ``../shared/papers.md`` §4.4:
Llama-3-8B-Instruct, Gamma cv 1 arrivals at 2-64 req/s for 60 s; 2.8x lower latency
than FCFS) rebuilt in the simulator: the requests are the *test split* of the
checkpoint's target model (the ``alpaca-eval-<model>-test`` prompts, repeated in seeded
order as needed), Poisson arrivals at each rate for ``--duration`` seconds, served with
the H100 x Llama-8B profile with the KV cache cut to 150,000 tokens (an A100-40GB beside
Llama-3-8B) and preemption by swapping, as vllm-ltr does. Rates are the paper's times
``--load-scale`` (the simulated engine is faster than the paper's A100). The ``ltr``
policy (``baselines/ltr.py``) ranks with ``agents.ranker_scorer.RankerScorer`` over the
checkpoint (``--checkpoint`` given several times: their rank average, ``EnsembleScorer``,
weighted by ``--ranker-weights``; all must share a target model and split seed); ``sjf`` and ``srtf`` read the true lengths. The table gives mean and p90
end-to-end latency and the ratios FCFS/LTR and LTR/SJF, and the ranker's own wall time
against the simulated busy time (its overhead if it ran beside the engine).

    python benchmarks/ranker_e2e.py --checkpoint DIR [--checkpoint DIR2 ... --ranker-weights W1,W2,...] [--rates 2,4,8,16,32,64] [--load-scale 1.25]
        [--duration 60] [--device cpu] [--threads N] [--score-once] [--markdown] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from print_table import print_table  # noqa: E402  (beside this script)

POLICIES = ("fcfs", "ltr", "sjf", "srtf")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, action="append", required=True,
                   help="a trained ranker; several: LTR ranks by their rank average")
    p.add_argument("--ranker-weights", default=None, metavar="W1,W2,...",
                   help="with several --checkpoint: their weights, in order (default: equal)")
    p.add_argument("--rates", default="2,4,8,16,32,64", help="the paper's rates, req/s")
    p.add_argument("--load-scale", type=float, default=1.25)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", default="h100-llama-8b")
    p.add_argument("--num-gpu-blocks", type=int, default=9375, help="KV blocks of 16 tokens (150k tokens)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--score-once", action="store_true",
                   help="score each test prompt once and cache it (the simulated latencies do not depend on the "
                        "ranker's wall time; a large ensemble scoring every arrival anew takes minutes per rate); "
                        "the overhead columns are then left out")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    import baselines  # noqa: F401  (registers the policies)
    from agents.ranker import Ranker
    from agents.ranker_scorer import EnsembleScorer, RankerScorer
    from train.ranker_option import parse_ranker_weights
    from agents.ranking_metrics import length_tau
    from envs.engine import ServingEngine
    from envs.engine_config import EngineConfig
    from envs.metrics import compute_metrics
    from envs.policy import make_policy
    from envs.workloads import retime_poisson
    from envs.workloads.alpaca import AlpacaEvalWorkload
    from gpu_backend.profiles import load_profile
    from gpu_backend.sim_executor import SimExecutor

    try:
        weights = parse_ranker_weights(args.ranker_weights, len(args.checkpoint), "--checkpoint")
    except ValueError as exc:
        raise SystemExit(f"ranker_e2e.py: {exc}") from None
    rankers = [Ranker.load(c).to(args.device) for c in args.checkpoint]
    meta = rankers[0].meta
    for c, r in zip(args.checkpoint, rankers):
        if r.meta.target_model is None or r.meta.split_seed is None:
            raise SystemExit(f"{c}: not a trained checkpoint (no target model / split seed)")
        if (r.meta.target_model, r.meta.split_seed) != (meta.target_model, meta.split_seed):
            raise SystemExit(f"{c}: ranks {r.meta.target_model} split {r.meta.split_seed}, but "
                             f"{args.checkpoint[0]} ranks {meta.target_model} split {meta.split_seed}")

    def make_scorer(cache: bool):
        members = [RankerScorer(r, cache=cache) for r in rankers]
        return members[0] if len(members) == 1 else EnsembleScorer(members, weights)

    workload = AlpacaEvalWorkload("ltr-e2e", "ltr-e2e", meta.target_model, split="test", split_seed=meta.split_seed)
    unique = workload.generate(args.seed)
    once = make_scorer(cache=True)
    tau = length_tau(once.score(unique), [s.output_len for s in unique])
    profile = load_profile(args.profile)
    config = EngineConfig(num_gpu_blocks=args.num_gpu_blocks, preemption_mode="swap")
    results = []
    for paper_rate in [float(r) for r in args.rates.split(",") if r]:
        rate = paper_rate * args.load_scale
        n = max(1, round(rate * args.duration))
        specs = retime_poisson(workload.generate(args.seed, n), rate, args.seed)
        row = {"paper_rate": paper_rate, "rate": rate, "num_requests": n}
        for name in POLICIES:
            # no cache across calls: every arrival batch is scored, as a server meeting new prompts would
            scorer = (once if args.score_once else make_scorer(cache=False)) if name == "ltr" else None
            policy = make_policy(name, scorer=scorer) if scorer else make_policy(name)
            engine = ServingEngine(SimExecutor(profile), policy, config)
            engine.load(specs)
            t0 = time.perf_counter()
            record = engine.run()
            wall = time.perf_counter() - t0
            m = compute_metrics(record, kv_bytes_per_token=profile.model.kv_bytes_per_token)
            row[name] = {"e2e_mean_s": m.e2e.mean, "e2e_p90_s": m.e2e.p90, "num_finished": m.num_finished,
                         "busy_s": record.counters.busy_time_s, "iterations": record.counters.iterations,
                         "sim_wall_s": wall}
            if scorer is not None and not args.score_once:
                row[name].update(ranker_s=scorer.seconds, ranker_calls=scorer.calls,
                                 ranker_prompts=scorer.prompts_scored)
        results.append(row)
        print(f"{paper_rate:g} req/s (x{args.load_scale:g} = {rate:g}): " + ", ".join(
            f"{k} {row[k]['e2e_mean_s']:.2f}s" for k in POLICIES), file=sys.stderr, flush=True)

    described = f"ranker {meta.backbone}/{meta.loss}" if len(rankers) == 1 else \
        make_scorer(cache=True).name + f" ({len(rankers)} rankers)"
    print(f"{described} for {meta.target_model}: Kendall tau {tau:.3f} on the "
          f"{len(unique)} test prompts it never saw; profile {profile.name}, {args.num_gpu_blocks * 16:,} KV tokens, "
          f"swap preemption, sarathi batching; Poisson arrivals for {args.duration:g} s; seed {args.seed}")
    header = ("paper req/s", "sim req/s", "requests", "FCFS mean", "LTR mean", "SJF mean", "SRTF mean",
              "FCFS p90", "LTR p90", "SJF p90", "FCFS/LTR mean", "FCFS/LTR p90", "LTR/SJF mean",
              *(() if args.score_once else ("ranker ms/call", "ranker % of busy")))
    table = []
    for r in results:
        ltr = r["ltr"]
        table.append((
            f"{r['paper_rate']:g}", f"{r['rate']:g}", str(r["num_requests"]),
            *(f"{r[k]['e2e_mean_s']:.2f}" for k in POLICIES),
            *(f"{r[k]['e2e_p90_s']:.2f}" for k in ("fcfs", "ltr", "sjf")),
            f"{r['fcfs']['e2e_mean_s'] / ltr['e2e_mean_s']:.2f}x", f"{r['fcfs']['e2e_p90_s'] / ltr['e2e_p90_s']:.2f}x",
            f"{ltr['e2e_mean_s'] / r['sjf']['e2e_mean_s']:.2f}x",
            *(() if args.score_once else (f"{ltr['ranker_s'] / max(ltr['ranker_calls'], 1) * 1e3:.1f}",
                                          f"{ltr['ranker_s'] / ltr['busy_s'] * 100:.2f}"))))
    print_table(header, table, args.markdown)
    if args.score_once:
        print("latencies in seconds (end to end); --score-once: each test prompt scored once, before serving")
    else:
        print("latencies in seconds (end to end); ranker ms/call: wall time per batch of newly arrived requests "
              f"on {args.device} (every arrival scored, no cache); % of busy: ranker wall time / simulated busy time")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"kendall_tau": tau, "device": args.device,
                                         "checkpoints": [str(c) for c in args.checkpoint],
                                         "ranker_weights": weights, "score_once": args.score_once,
                                         "rows": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
