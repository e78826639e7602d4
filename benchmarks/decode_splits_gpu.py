"""Decode attention against the number of context splits per (sequence, KV head), on one layer.

``decode_splits`` picks the split count from the batch alone (enough programs for two waves
over the SMs), so a captured graph keeps it. Serving long contexts showed steps that jump
when that count halves (llama-8b at ~11,000 tokens: 12.9 ms at 31 sequences, 19.1 ms at 33).
This times the Triton kernel (CUDA graphs, one layer of the model's shape, random KV) for
each batch, context and split count, beside the rule's choice, so a better rule can be read
off. Usage: ``python3 benchmarks/decode_splits_gpu.py [--model llama-8b] [--contexts 512,8192]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from print_table import print_table  # noqa: E402

from gpu_backend.cuda_timing import graph_seconds as graph_time  # noqa: E402
from gpu_backend.models import MODELS  # noqa: E402
from gpu_backend.paged_attention import decode_attention_triton, decode_splits  # noqa: E402

SPLITS = (1, 2, 4, 8, 16)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama-8b")
    p.add_argument("--batches", default="8,16,32,48,64,128,256")
    p.add_argument("--contexts", default="512,8192")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    d = MODELS[args.model].dims
    bs = 16
    batches = [int(b) for b in args.batches.split(",")]
    contexts = [int(c) for c in args.contexts.split(",")]
    per_seq = -(-max(contexts) // bs)
    blocks = max(batches) * per_seq
    k_cache = torch.randn(blocks, d.num_kv_heads, bs, d.head_dim, dtype=torch.bfloat16, device="cuda")
    v_cache = torch.randn_like(k_cache)
    rows = []
    for ctx in contexts:
        for b in batches:
            q = torch.randn(b, d.num_heads, d.head_dim, dtype=torch.bfloat16, device="cuda")
            tables = torch.arange(b * per_seq, device="cuda").view(b, per_seq)
            lens = torch.full((b,), ctx, device="cuda")
            out = torch.empty_like(q)
            times = {s: graph_time(lambda: decode_attention_triton(q, k_cache, v_cache, tables, lens, 0.1, out,
                                                                   {"num_splits": s})) for s in SPLITS}
            rule = decode_splits(b, d.num_kv_heads, q.device)
            best = min(times, key=times.get)
            kv_bytes = b * ctx * d.num_kv_heads * d.head_dim * 2 * 2
            rows.append((ctx, b, *[f"{times[s] * 1e6:.1f}" for s in SPLITS], rule, best,
                         f"{times[rule] / times[best]:.2f}x", f"{kv_bytes / times[best] / 1e12:.2f}"))
            print(f"ctx {ctx} batch {b}: " + ", ".join(f"{s} splits {t * 1e6:.1f} us" for s, t in times.items()),
                  flush=True)
    print(f"\n{args.model} decode attention, one layer, {torch.cuda.get_device_name()}: microseconds per call")
    print_table(("context", "batch", *[f"{s} split(s)" for s in SPLITS], "rule", "best", "rule / best",
                 "best TB/s"), rows, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
