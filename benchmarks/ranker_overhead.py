"""The output-length ranker's cost: milliseconds per batch of new prompts, against the iteration it sits beside.

The LTR paper (Fu et al., NeurIPS'24, ``../shared/papers.md`` §4.2) runs its predictor once
per batch of newly arrived requests and reports an overhead under 2 %. This script
measures (1) the ranker's wall time per batch of B new prompts (tokenisation + forward,
AlpacaEval prompts drawn at random; median and p90 over repeats after warm-up) and
(2) the simulated iteration time of the engine serving the same prompts
(``h100-llama-8b`` profile, FCFS, Poisson arrivals at ``--rate``): mean busy time per
iteration, and the batch cost as a fraction of it. A fresh backbone costs what a trained
one does (same shapes), so ``--checkpoint`` is optional.

    python benchmarks/ranker_overhead.py [--backbone minilm-l6 | --checkpoint DIR] [--device cpu]
        [--pooling last] [--prompt-format chat] [--cuda-graphs off|on|both] [--tf32] [--batch-sizes 1,4,16,64]
        [--repeats 20] [--rate 16] [--threads N] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from print_table import print_table  # noqa: E402  (beside this script)


def simulated_iteration_s(model: str, rate: float, num_requests: int, profile: str) -> tuple[float, int]:
    """Mean busy seconds per engine iteration (and the iteration count) serving AlpacaEval at ``rate``."""
    from envs.engine import ServingEngine
    from envs.engine_config import EngineConfig
    from envs.policy import make_policy
    from envs.workloads import retime_poisson
    from envs.workloads.alpaca import AlpacaEvalWorkload
    from gpu_backend.sim_executor import SimExecutor

    import baselines  # noqa: F401  (registers fcfs)

    specs = AlpacaEvalWorkload("overhead", "overhead", model).generate(0, num_requests)
    specs = retime_poisson(specs, rate, 0)
    engine = ServingEngine(SimExecutor(profile), make_policy("fcfs"), EngineConfig(multi_step=False))
    engine.load(specs)
    record = engine.run()
    c = record.counters
    return c.busy_time_s / c.iterations, c.iterations


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="minilm-l6")
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--pooling", default=None, help="a fresh backbone's pooling (default: the backbone's own)")
    p.add_argument("--prompt-format", default="raw", help="a fresh backbone's prompt format: raw or chat")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-sizes", default="1,4,16,64")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--target-model", default="Meta-Llama-3-8B-Instruct")
    p.add_argument("--rate", type=float, default=16.0, help="arrival rate of the simulated run, req/s")
    p.add_argument("--num-requests", type=int, default=805)
    p.add_argument("--profile", default="h100-llama-8b")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--cuda-graphs", choices=("off", "on", "both"), default="off",
                   help="score through CUDA graphs per padded shape (agents.ranker_graphs); both: eager and "
                        "graphs in the same run, with the ratio")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matrix products on CUDA (the fp32 backbone)")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    from agents.ranker import Ranker
    from envs.workloads.alpaca import load_alpaca_eval

    if args.checkpoint is not None:
        ranker = Ranker.load(args.checkpoint)
    else:
        try:
            ranker = Ranker.from_backbone(args.backbone, pooling=args.pooling, prompt_format=args.prompt_format)
        except ValueError as exc:
            raise SystemExit(f"ranker_overhead.py: --pooling/--prompt-format: {exc}") from None
    ranker.to(args.device)
    prompts = load_alpaca_eval().prompts
    rng = np.random.default_rng(0)
    iter_s, iterations = simulated_iteration_s(args.target_model, args.rate, args.num_requests, args.profile)
    sizes = [int(x) for x in args.batch_sizes.split(",") if x]
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.cuda_graphs]
    by_length = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    rows = []
    for graphs in modes:
        try:
            ranker.use_cuda_graphs(graphs)
        except ValueError as exc:
            raise SystemExit(f"ranker_overhead.py: --cuda-graphs: {exc}") from None
        for b in sizes:
            # warm-up (allocator, kernels, and with graphs every padded shape a batch of b can take):
            # chunks of b prompts spread over the prompts sorted by length, the longest included
            starts = sorted(set(range(0, len(prompts) - b + 1, max(b, len(prompts) // 40))) | {len(prompts) - b})
            for start in starts:
                ranker.score([prompts[i] for i in by_length[start:start + b]], batch_size=b)
            if graphs:
                ranker.cuda_graphs.prepare(min(b, ranker.cuda_graphs.max_rows))
            times = []
            for _ in range(args.repeats):
                batch = [prompts[i] for i in rng.choice(len(prompts), b, replace=False)]
                t0 = time.perf_counter()
                ranker.score(batch, batch_size=b)  # returns numpy: a GPU run is synchronised
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            p90 = float(np.percentile(times, 90))
            rows.append(("graphs" if graphs else "eager", b, med * 1e3, p90 * 1e3, med / iter_s * 100))
    device = args.device
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name(0)}{', TF32' if args.tf32 else ''})"
    print(f"ranker {ranker.meta.backbone} (max {ranker.meta.max_length} tokens) on {device}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    print(f"simulated iteration: {iter_s * 1e3:.2f} ms mean busy time over {iterations:,} iterations "
          f"({args.profile}, FCFS, {args.num_requests} AlpacaEval prompts at {args.rate:g} req/s)")
    header = ("forward", "new prompts", "ms/batch (median)", "ms/batch (p90)", "% of an iteration")
    table = [(mode, str(b), f"{m:.2f}", f"{q:.2f}", f"{r:.1f}") for mode, b, m, q, r in rows]
    if len(modes) == 2:
        eager = {b: m for mode, b, m, _, _ in rows if mode == "eager"}
        header += ("eager / graphs",)
        table = [(*t, f"{eager[b] / m:.1f}x" if mode == "graphs" else "") for t, (mode, b, m, _, _) in zip(table, rows)]
    print_table(header, table, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
