"""Whole iterations with prefill chunks captured as one CUDA graph per token bucket, attention included.

Why: the piecewise graphs (``gpu_backend.mixed_graphs``) still launch each layer's attention
from Python, a few tens of microseconds of host time per layer. On a small model that host
time is most of an iteration with prefill (about 2-4 ms on the 30-layer smollm2 shape
against well under a millisecond of GPU work), so such iterations run at the speed of the
lent machine's CPU and move by 30-100% from one machine to the next (BENCHMARKS.md,
session 7): a simulator fitted on one machine cannot predict another's. Here attention
runs on static shapes too, so the whole iteration is one graph replay:

- rows are packed decodes first (rows ``[0, D)``), then the prefill chunks;
- decode attention runs over the first ``min(bucket, max_decodes)`` rows; rows past the
  iteration's decodes get context 0, which the kernel skips;
- prefill attention is the paged prefill kernel over a fixed number of query tiles; tiles
  past the iteration's point at an empty dummy chunk;
- every row's block table is a row (a *slot*) of the executor's ``DeviceBlockTables``, so
  the KV write positions and the tables the kernels read are gathered inside the graph.

Key splits are fixed per graph (a graph keeps its grid), and a decode range of hundreds of
rows gets one split per sequence; a few decodes at a long context beside a chunk would then
each walk their keys alone (on an H200 a llama-8b iteration of one 52-token chunk and four
decodes at 4,096 tokens took 16 ms against 10 ms piecewise). So each bucket has graphs with
smaller decode ranges, each split as a batch of its size: ``few_decodes`` rows always, and
with ``fine_ranges`` every doubling of it whose batch gets more splits than the next larger
range (``decode_ranges``). With only ``few_decodes`` and the whole range, 9-88 decodes took
one split: smollm2-135m's iteration of a chunk beside 64 decodes at 8,192 tokens took 8.05 ms
against 3.84 ms for the decodes alone (session 17). An iteration with more chunks than
``max_chunks``, more decodes than the bucket's largest range or more tokens than the largest
bucket falls back to the piecewise graphs or the eager path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from gpu_backend.block_tables import DeviceBlockTables
from gpu_backend.decode_graphs import capture_graph
from gpu_backend.fused_ops import add_rms_norm, greedy_tokens
from gpu_backend.llama_forward import LlamaForward
from gpu_backend.mixed_graphs import MIXED_BUCKETS
from gpu_backend.paged_attention import (DECODE_CONFIG, decode_attention_torch, decode_attention_triton, decode_splits,
                                         gather_kv, prefill_attention, triton, wave_splits)
from gpu_backend.paged_prefill import BLOCK_M, DevicePrefillTiles, paged_prefill_attention

FULL_MAX_CHUNKS = 32
FEW_DECODES = 8
# past the piecewise graphs' largest bucket an iteration runs eagerly, one launch per kernel from Python: on
# a small model that is host bound (smollm2-135m on an H200: a fresh 4,096-token chunk took 11.4 ms, 2,048
# tokens plus one decode 14.0 ms, against 3.8 ms for 2,048 tokens in a whole-iteration graph; session 18),
# so whole-iteration graphs go on to larger buckets where the executor's token threshold allows them; not past
# 4,096: one fresh 8,192-token chunk took 27.3 ms in a graph (the paged prefill kernel) against 17.2 ms eagerly
FULL_BUCKETS = MIXED_BUCKETS + (3072, 4096)
_FIELDS = ("ids", "pos", "row_slot", "dctx", "tile_seg", "tile_row", "seg_row", "seg_start", "seg_len", "seg_slot",
           "logit_rows")


@dataclass(frozen=True, slots=True)
class FullLayout:
    """The int64 input vector of one bucket's graph: every field at a fixed offset.

    ``tokens`` rows; decode attention over rows ``[0, decodes)``; ``tiles`` query tiles of
    ``BLOCK_M`` rows; ``chunks`` chunk entries plus one empty dummy (index ``chunks``);
    ``samples`` rows whose logits are computed and sampled.
    """

    tokens: int
    decodes: int
    tiles: int
    chunks: int
    samples: int

    @classmethod
    def for_bucket(cls, tokens: int, max_decodes: int, max_chunks: int) -> "FullLayout":
        chunks = min(tokens, max_chunks)
        return cls(tokens, min(tokens, max_decodes), -(-tokens // BLOCK_M) + chunks, chunks,
                   min(tokens, max_decodes + chunks))

    def sizes(self) -> tuple[int, ...]:
        T, D, M, C, S = self.tokens, self.decodes, self.tiles, self.chunks + 1, self.samples
        return (T, T, T, D, M, M, C, C, C, C, S)

    def offsets(self) -> dict[str, tuple[int, int]]:
        out, o = {}, 0
        for name, n in zip(_FIELDS, self.sizes()):
            out[name] = (o, n)
            o += n
        return out

    @property
    def length(self) -> int:
        return sum(self.sizes())

    def fits(self, num_tokens: int, num_decodes: int, num_chunks: int, num_samples: int) -> bool:
        if num_tokens > self.tokens or num_decodes > self.decodes or num_chunks > self.chunks:
            return False
        # each chunk wastes at most one partial tile
        return num_samples <= self.samples and -(-num_tokens // BLOCK_M) + num_chunks <= self.tiles

    def pack(self, decode_ids: np.ndarray, decode_pos: np.ndarray, decode_slots: np.ndarray,
             chunks: list[tuple[np.ndarray, int, int, bool]], pad_slot: int) -> tuple[np.ndarray, int]:
        """The input vector. ``chunks``: (token ids, start, slot, samples) each. Returns the vector and the
        number of sampled rows (decodes first, then the chunks that sample, in order)."""
        buf = np.zeros(self.length, dtype=np.int64)
        off = self.offsets()

        def field(name: str) -> np.ndarray:
            o, n = off[name]
            return buf[o:o + n]

        nd = decode_ids.size
        ids, pos, row_slot = field("ids"), field("pos"), field("row_slot")
        row_slot[:] = pad_slot
        ids[:nd], pos[:nd], row_slot[:nd] = decode_ids, decode_pos, decode_slots
        field("dctx")[:nd] = decode_pos + 1
        tile_seg, tile_row = field("tile_seg"), field("tile_row")
        tile_seg[:] = self.chunks                       # the empty dummy chunk
        seg_row, seg_start, seg_len, seg_slot = (field(n) for n in ("seg_row", "seg_start", "seg_len", "seg_slot"))
        seg_slot[:] = pad_slot
        logit_rows = field("logit_rows")
        logit_rows[:nd] = np.arange(nd)
        row, tile, sampled = nd, 0, nd
        for i, (tok, start, slot, samples) in enumerate(chunks):
            n = tok.size
            ids[row:row + n] = tok
            pos[row:row + n] = np.arange(start, start + n)
            row_slot[row:row + n] = slot
            seg_row[i], seg_start[i], seg_len[i], seg_slot[i] = row, start, n, slot
            k = -(-n // BLOCK_M)
            tile_seg[tile:tile + k] = i
            tile_row[tile:tile + k] = np.arange(0, n, BLOCK_M)
            tile += k
            row += n
            if samples:
                logit_rows[sampled] = row - 1
                sampled += 1
        return buf, sampled


def static_attention(model: LlamaForward, layer: int, q: torch.Tensor, out: torch.Tensor, tiles: DevicePrefillTiles,
                     decode_tables: torch.Tensor, decode_ctx: torch.Tensor, decode_splits_: int) -> None:
    """Every row's attention into ``out`` with grids fixed by the shapes alone: the paged prefill kernel over
    ``tiles``, the decode kernel over rows ``[0, len(decode_ctx))`` (rows with context 0 skipped). Off CUDA,
    the torch reference computes the same rows."""
    k_cache, v_cache = model.store.layers[layer]
    nd = decode_ctx.shape[0]
    if q.is_cuda and triton is not None:
        paged_prefill_attention(q, k_cache, v_cache, tiles, model.scale, out)
        # the fixed launch, not decode_launch's pick: rows past the iteration's decodes exit at once, so the
        # static range's program count says nothing about the live ones (64 decodes at 2,048 tokens beside 16
        # chunks, in a 256-row range: 0.89x the piecewise path with the pick for 2,048 programs, 1.06x with this)
        decode_attention_triton(q[:nd], k_cache, v_cache, decode_tables, decode_ctx, model.scale, out=out[:nd],
                                config={"num_splits": decode_splits_, **DECODE_CONFIG})
        return
    for i, (row, start, n) in enumerate(zip(tiles.seg_row.tolist(), tiles.seg_start.tolist(), tiles.seg_len.tolist())):
        if n:
            ks = gather_kv(k_cache, tiles.tables[i], start + n)
            vs = gather_kv(v_cache, tiles.tables[i], start + n)
            out[row:row + n] = prefill_attention(q[row:row + n], ks, vs, model.scale)
    live = decode_ctx > 0
    if bool(live.any()):
        res = decode_attention_torch(q[:nd], k_cache, v_cache, decode_tables, decode_ctx.clamp(min=1), model.scale)
        out[:nd][live] = res[live]


def decode_ranges(top: int, few: int, splits_of: Callable[[int], int], fine: bool = True) -> list[int]:
    """The decode ranges (rows) of one token bucket whose iterations carry up to ``top`` decodes, ascending:
    ``few`` and ``top`` always; with ``fine``, also each ``few * 2**k`` below ``top`` whose batch gets more key
    splits (``splits_of(rows)``) than the next larger range kept, so that an iteration's decodes are split
    within a factor of two of how a batch of their own size would be."""
    few = min(few, top)
    kept = [top]
    if fine:
        r = few * 2
        middle = []
        while r < top:
            middle.append(r)
            r *= 2
        for r in reversed(middle):
            if splits_of(r) > splits_of(kept[-1]):
                kept.append(r)
    return sorted({few, *kept})


class FullGraphs:
    """Captured graphs for iterations with prefill chunks (module docstring), keyed by (token bucket,
    decode range): per bucket one per range of ``decode_ranges``, from ``few_decodes`` rows to
    ``max_decodes``.

    ``tables``: the executor's device block tables (their tensor must not be reallocated after
    capture); ``max_decodes``: the most decodes an iteration may carry (the executor's
    ``max_num_seqs``); ``fine_ranges``: the ranges between ``few_decodes`` and the bucket's largest.
    """

    def __init__(self, model: LlamaForward, tables: DeviceBlockTables, max_decodes: int,
                 sizes: tuple[int, ...] = FULL_BUCKETS, max_chunks: int = FULL_MAX_CHUNKS,
                 few_decodes: int = FEW_DECODES, fine_ranges: bool = True):
        d = model.dims
        dev = model.store.device
        self.model = model
        self.tables = tables
        self.block_size = model.store.block_size

        def splits_of(rows: int) -> int:
            return decode_splits(rows, d.num_kv_heads, dev)

        self.keys = [(n, r) for n in sorted(sizes)
                     for r in decode_ranges(min(n, max_decodes), few_decodes, splits_of, fine_ranges)]
        self.layouts = {key: FullLayout.for_bucket(key[0], key[1], max_chunks) for key in self.keys}
        self.inputs = {k: torch.zeros(lay.length, dtype=torch.long, device=dev) for k, lay in self.layouts.items()}
        self.out = {k: torch.zeros(lay.samples, dtype=torch.long, device=dev) for k, lay in self.layouts.items()}
        for k, lay in self.layouts.items():     # an all-padding vector: what the warm-up and capture run on
            self.inputs[k].copy_(torch.as_tensor(lay.pack(np.zeros(0, np.int64), np.zeros(0, np.int64),
                                                          np.zeros(0, np.int64), [], tables.pad_slot)[0]))
        self.decode_splits = {k: splits_of(lay.decodes) for k, lay in self.layouts.items()}
        self.prefill_splits = {k: wave_splits(-(-k[0] // BLOCK_M) * d.num_heads, dev) for k in self.keys}
        self._table_ptr = tables.table.data_ptr()
        self.graphs: dict = {}
        self._capture()

    def _views(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        buf = self.inputs[key]
        return {name: buf[o:o + k] for name, (o, k) in self.layouts[key].offsets().items()}

    def _body(self, n: tuple[int, int]) -> None:
        m = self.model
        w = m.w
        lay = self.layouts[n]
        v = self._views(n)
        table = self.tables.table
        pos = v["pos"]
        write_blocks = table[v["row_slot"], pos // self.block_size]
        write_slots = pos % self.block_size
        decode_tables = table.index_select(0, v["row_slot"][:lay.decodes])
        tiles = DevicePrefillTiles(table.index_select(0, v["seg_slot"]), v["seg_row"], v["seg_start"], v["seg_len"],
                                   v["tile_seg"], v["tile_row"], num_splits=self.prefill_splits[n])
        h = F.embedding(v["ids"], w.embed)
        x = add_rms_norm(None, h, w.input_norm[0], m.dims.rms_norm_eps)
        for layer in range(m.dims.num_layers):
            q, _, _ = m.pre_attention(layer, x, pos, write_blocks, write_slots, want_kv=False)
            attn = torch.zeros_like(q) if not q.is_cuda else torch.empty_like(q)
            static_attention(m, layer, q, attn, tiles, decode_tables, v["dctx"], self.decode_splits[n])
            x = m.post_attention(layer, attn, h)
        greedy_tokens(m.logits(x, v["logit_rows"]), self.out[n])

    def _capture(self) -> None:
        torch.cuda.synchronize()
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        with torch.no_grad():
            for key in reversed(self.keys):    # largest first: the pool's blocks then fit the rest
                self.graphs[key] = capture_graph(lambda: self._body(key), pool, side)
        torch.cuda.synchronize()

    def bucket(self, num_tokens: int, num_decodes: int, num_chunks: int,
               num_samples: int) -> tuple[int, int] | None:
        """The key of the graph that takes this iteration (the smallest token bucket that holds it, then the
        smallest decode range that holds its decodes), or None."""
        size = next((n for n, _ in self.keys if n >= num_tokens), None)
        for key in self.keys:
            if key[0] == size and self.layouts[key].fits(num_tokens, num_decodes, num_chunks, num_samples):
                return key
        return None

    @torch.no_grad()
    def run(self, n: tuple[int, int], staged: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Replay graph ``n``'s on ``staged`` (its packed input vector, on the device); returns the greedy
        tokens of the ``num_samples`` sampled rows."""
        if self.tables.table.data_ptr() != self._table_ptr:
            raise RuntimeError("the device block table was reallocated after the graphs were captured")
        self.inputs[n].copy_(staged)
        self.graphs[n].replay()
        return self.out[n][:num_samples]
