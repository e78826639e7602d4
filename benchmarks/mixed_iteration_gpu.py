"""Where a mixed iteration (prefill chunks + decodes) spends its time: host-side ops from torch's profiler.

A batch with prefill chunks replays piecewise CUDA graphs with eager attention between
them; on a small model the iteration is bound by the host launching that attention. This
times one such iteration against the same chunks alone and the same decodes alone
(``TorchExecutor``, random weights, bf16; median wall time), then profiles the mixed one and
prints the operations with the most host time.

    python3 benchmarks/mixed_iteration_gpu.py [--model smollm2-135m] [--decodes 8] [--tokens 256]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gpu_backend.models import load_weights  # noqa: E402
from gpu_backend.plan import BatchPlan, PrefillChunk  # noqa: E402
from gpu_backend.torch_executor import TorchExecutor  # noqa: E402
from paged_prefill_gpu import time_plan  # noqa: E402  (beside this script)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--decodes", type=int, default=8)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--context", type=int, default=512, help="context of each decoding sequence")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    ex = TorchExecutor(load_weights(args.model, "cuda", torch.bfloat16, random_weights=True), device="cuda",
                       num_gpu_blocks=4096, swap_space_bytes=2**28)
    ex.store.gpu.normal_()
    bs, vocab = ex.block_size, ex.dims.vocab_size
    per = -(-(args.context + 1) // bs)
    tables = [list(range(i * per, (i + 1) * per)) for i in range(args.decodes)]
    base = args.decodes * per
    chunk = PrefillChunk(10_000, 0, args.tokens, list(range(base, base + -(-args.tokens // bs))), True,
                         rng.integers(0, vocab, args.tokens).tolist())
    decodes = dict(decode_seq_ids=list(range(args.decodes)), decode_positions=[args.context] * args.decodes,
                   decode_block_tables=tables, decode_input_ids=rng.integers(0, vocab, args.decodes).tolist(),
                   decode_context_sum=args.decodes * (args.context + 1))
    plans = {"prefill only": BatchPlan(prefills=[chunk]), "decodes only": BatchPlan(**decodes),
             "mixed": BatchPlan(prefills=[chunk], **decodes)}
    walls = {name: time_plan(ex, plan, repeats=20) for name, plan in plans.items()}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            ex.execute(plans["mixed"])
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60))
    print(f"\n{args.model} on {torch.cuda.get_device_name()}: {args.tokens}-token chunk, {args.decodes} decodes at "
          f"context {args.context + 1}; median wall per iteration")
    for name, t in walls.items():
        print(f"  {name:13s} {t * 1e3:7.3f} ms")
    print(f"  mixed - prefill only: {(walls['mixed'] - walls['prefill only']) * 1e3:.3f} ms "
          f"({(walls['mixed'] - walls['prefill only']) / ex.dims.num_layers * 1e6:.1f} us per layer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
