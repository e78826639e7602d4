"""Does splitting a decode batch in two and overlapping the halves on two CUDA streams beat one stream?

A decode step at batch 256 on the ~1B shape spends about half its time in attention, bound by
memory, and half in matrix products, bound by arithmetic (BENCHMARKS.md, session 9). NanoFlow
(Zhu et al., 2024) overlaps such operations by splitting the batch into nano-batches whose
kernels run concurrently. This script measures the idea with our kernels, unchanged: the two
halves' forwards run on two streams inside one CUDA graph, either free-running or staggered so
that one half's attention runs beside the other half's matrix products (each attention waits for
the other half's previous one). All variants are graph replays of the same step (greedy argmax
included) over the same KV, timed in turns.

    python3 benchmarks/overlap_decode_gpu.py [--model llama-1b] [--batch 256] [--context 513]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from gpu_backend.cuda_timing import cuda_seconds  # noqa: E402
from gpu_backend.decode_graphs import capture_graph  # noqa: E402
from gpu_backend.fused_ops import add_rms_norm  # noqa: E402
from gpu_backend.llama_forward import ForwardBatch, LlamaForward  # noqa: E402
from gpu_backend.models import load_weights  # noqa: E402
from gpu_backend.torch_executor import TorchExecutor  # noqa: E402


def decode_batch(rows: slice, tables: torch.Tensor, pos: torch.Tensor, ids: torch.Tensor, bs: int) -> ForwardBatch:
    t, p = tables[rows], pos[rows]
    blocks = t.gather(1, (p // bs).unsqueeze(1)).squeeze(1)
    return ForwardBatch(ids[rows], p, blocks, p % bs, [], 0, t, p + 1, None)


def one_stream(model: LlamaForward, b: ForwardBatch, out: torch.Tensor) -> None:
    out.copy_(model(b).argmax(-1))


def two_streams(model: LlamaForward, halves: list[ForwardBatch], outs: list[torch.Tensor],
                streams: list[torch.cuda.Stream], stagger: bool) -> None:
    """Each half's forward on its own stream; with ``stagger`` the attention kernels alternate between halves."""
    main = torch.cuda.current_stream()
    for s in streams:
        s.wait_stream(main)
    L = model.dims.num_layers
    done = [[torch.cuda.Event() for _ in range(L)] for _ in halves]
    state = []
    for s, b in zip(streams, halves):
        with torch.cuda.stream(s):
            h = torch.nn.functional.embedding(b.input_ids, model.w.embed)
            state.append([h, add_rms_norm(None, h, model.w.input_norm[0], model.dims.rms_norm_eps)])
    for layer in range(L):
        for i, (s, b) in enumerate(zip(streams, halves)):
            with torch.cuda.stream(s):
                h, x = state[i]
                q, k, v = model.pre_attention(layer, x, b.positions, b.write_blocks, b.write_slots, False)
                if stagger:     # half 0 waits for half 1's previous attention, half 1 for half 0's current one
                    if i == 1:
                        s.wait_event(done[0][layer])
                    elif layer > 0:
                        s.wait_event(done[1][layer - 1])
                attn = torch.empty_like(q)
                model.attention(layer, q, k, v, b, attn)
                done[i][layer].record(s)
                state[i][1] = model.post_attention(layer, attn, h)
    for i, (s, b) in enumerate(zip(streams, halves)):
        with torch.cuda.stream(s):
            outs[i].copy_(model.logits(state[i][1], None).argmax(-1))
        main.wait_stream(s)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-1b")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--context", type=int, default=513)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "overlap_decode_gpu.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("overlap_decode_gpu.py: needs a CUDA device", file=sys.stderr)
        return 2
    B, ctx, bs = args.batch, args.context, 16
    if B % 2:
        raise SystemExit(f"--batch {B}: must be even, the step is split in two halves")
    weights = load_weights(args.model, "cuda", torch.bfloat16, seed=3, random_weights=True)
    per_seq = -(-ctx // bs)
    ex = TorchExecutor(weights, device="cuda", num_gpu_blocks=B * per_seq + 8, num_host_blocks=0,
                       max_model_len=4096, max_num_seqs=B, cuda_graphs=False)
    ex.store.gpu.normal_(generator=torch.Generator("cuda").manual_seed(0))
    model = ex.model
    tables = torch.arange(B * per_seq, device="cuda").view(B, per_seq)
    pos = torch.full((B,), ctx - 1, device="cuda")
    ids = (torch.arange(B, device="cuda") * 7) % 1000 + 1
    full = decode_batch(slice(0, B), tables, pos, ids, bs)
    halves = [decode_batch(slice(0, B // 2), tables, pos, ids, bs), decode_batch(slice(B // 2, B), tables, pos, ids, bs)]
    outs = {name: torch.zeros(B, dtype=torch.long, device="cuda") for name in ("one", "free", "staggered")}
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]

    def split(name):
        return [outs[name][:B // 2], outs[name][B // 2:]]

    side = torch.cuda.Stream()

    def capture(body) -> torch.cuda.CUDAGraph:
        return capture_graph(body, None, side)

    with torch.no_grad():
        graphs = {
            "one_stream": capture(lambda: one_stream(model, full, outs["one"])),
            "two_streams_free": capture(lambda: two_streams(model, halves, split("free"), streams, False)),
            "two_streams_staggered": capture(lambda: two_streams(model, halves, split("staggered"), streams, True)),
        }
    times: dict = {k: [] for k in graphs}
    for g in graphs.values():
        for _ in range(3):
            g.replay()
    torch.cuda.synchronize()
    for _ in range(args.rounds):
        for name, g in graphs.items():
            times[name] += cuda_seconds(g.replay, 10)
    med = {k: statistics.median(v) for k, v in times.items()}
    agree = {k: float((outs[k] == outs["one"]).float().mean()) for k in ("free", "staggered")}
    res = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "model": args.model,
           "batch": B, "context": ctx, "median_s": med, "tokens_equal_to_one_stream": agree}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(f"\n{res['device']}, {res['date']}: {args.model} decode step, batch {B}, context {ctx} (graph replay, "
          f"device time, median of {args.rounds * 10})")
    print("| variant | ms | against one stream | tokens equal |")
    print("|---|---|---|---|")
    for name, t in med.items():
        eq = agree.get(name.replace("two_streams_", ""), 1.0)
        print(f"| {name} | {t * 1e3:.3f} | {t / med['one_stream']:.3f} | {eq:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
