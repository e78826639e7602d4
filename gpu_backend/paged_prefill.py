"""Prefill attention straight from the paged KV cache, for every chunk that continues cached tokens, in one launch.

Why: a chunk that starts after cached tokens (a prefix-cache hit, or a later chunk of a
chunked prefill) attends to keys already in the paged cache. Gathering them into a
contiguous tensor, repeating them per query head and calling SDPA with a lower-right
causal mask costs several launches and a copy of the whole prefix per chunk per layer:
on an H200 a batch of 32 such chunks of a 30-layer model took 114 ms. Shared-document and
multi-turn workloads are made of such chunks. This kernel reads each chunk's keys where
they lie, through its block table, and runs flash attention's online softmax over tiles
of queries x tiles of keys for all chunks at once: one launch per layer, whatever the chunks.

The chunk's own keys are already in the cache (``LlamaForward.pre_attention`` writes them
before attention), so a query at position ``p`` attends to cache positions ``0 .. p``.

Host side, ``PrefillTiles`` lays the chunks out as int64 arrays (staged with the rest of the
iteration's inputs); the torch reference (``paged_prefill_reference``) defines the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gpu_backend.paged_attention import (check_kernel_inputs, gather_kv, prefill_attention, split_buffers, triton,
                                         wave_splits)

if triton is not None:
    import triton.language as tl

    from gpu_backend.paged_attention import load_kv_tile, online_softmax_step, split_range

BLOCK_M = 32    # query rows per program: chunks over a cached prefix are often short (questions, turns)
BLOCK_N = 64    # keys per loop iteration


@dataclass(frozen=True, slots=True)
class PrefillTiles:
    """The chunks of one iteration that continue cached tokens, as the kernel reads them.

    ``tables``: [chunks, width] block ids (rows padded with 0 past a chunk's blocks);
    ``seg_row`` / ``seg_start`` / ``seg_len``: each chunk's first row in the packed batch,
    cached tokens before it and its length; ``tile_seg`` / ``tile_row``: for each program, the
    chunk and the first query (within the chunk) of its ``BLOCK_M`` rows.
    """

    tables: np.ndarray
    seg_row: np.ndarray
    seg_start: np.ndarray
    seg_len: np.ndarray
    tile_seg: np.ndarray
    tile_row: np.ndarray

    @property
    def max_keys(self) -> int:
        return int((self.seg_start + self.seg_len).max())

    @classmethod
    def build(cls, chunks: list[tuple[int, int, int, np.ndarray]], block_m: int = BLOCK_M) -> "PrefillTiles":
        """``chunks``: (row, num_tokens, start, block table) of each chunk, every table covering
        ``start + num_tokens`` tokens."""
        width = max(len(c[3]) for c in chunks)
        tables = np.zeros((len(chunks), width), dtype=np.int64)
        for i, c in enumerate(chunks):
            tables[i, :len(c[3])] = c[3]
        per = [-(-n // block_m) for _, n, _, _ in chunks]
        return cls(tables, np.array([c[0] for c in chunks], np.int64), np.array([c[2] for c in chunks], np.int64),
                   np.array([c[1] for c in chunks], np.int64), np.repeat(np.arange(len(chunks), dtype=np.int64), per),
                   np.concatenate([np.arange(0, n, block_m, dtype=np.int64) for _, n, _, _ in chunks]))

    def arrays(self) -> list[np.ndarray]:
        """The arrays to stage, in ``DevicePrefillTiles.from_views`` order (tables flattened)."""
        return [self.tables.reshape(-1), self.seg_row, self.seg_start, self.seg_len, self.tile_seg, self.tile_row]


@dataclass(frozen=True, slots=True)
class DevicePrefillTiles:
    """``PrefillTiles`` on the device."""

    tables: torch.Tensor
    seg_row: torch.Tensor
    seg_start: torch.Tensor
    seg_len: torch.Tensor
    tile_seg: torch.Tensor
    tile_row: torch.Tensor
    max_keys: int = 0        # the longest chunk's cached + new tokens (host-side: picks the key splits)
    num_splits: int = 0      # 0: chosen by prefill_splits()

    @classmethod
    def from_views(cls, views: list[torch.Tensor], host: PrefillTiles, num_splits: int = 0) -> "DevicePrefillTiles":
        tables, *rest = views
        return cls(tables.view(len(host.seg_len), -1), *rest, max_keys=host.max_keys, num_splits=num_splits)


if triton is not None:
    @triton.jit
    def live_splits(last, NUM_SPLITS: tl.constexpr, BLOCK_N: tl.constexpr):
        """Splits a tile whose keys end at ``last`` uses: at most ``NUM_SPLITS``, two key tiles each at least
        (an empty dummy tile: one). The launch's grid is fixed (a captured graph keeps it); a tile with few
        keys leaves its other splits idle instead of writing empty partial results."""
        s = tl.cdiv(last, 2 * BLOCK_N)
        s = tl.where(s > NUM_SPLITS, NUM_SPLITS, s)
        return tl.where(s < 1, 1, s)

    @triton.jit(do_not_specialize=["stride_bt"])
    def _paged_prefill_kernel(Q, K, V, O, PO, PM, PL, BT, TILE_SEG, TILE_ROW, SEG_ROW, SEG_START, SEG_LEN, scale,
                              stride_qt, stride_qh, stride_kb, stride_kh, stride_ks, stride_bt, stride_ot, stride_oh,
                              GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr):
        tile = tl.program_id(0)
        h = tl.program_id(1)
        sp = tl.program_id(2)
        seg = tl.load(TILE_SEG + tile)
        r0 = tl.load(TILE_ROW + tile)
        start = tl.load(SEG_START + seg)
        n = tl.load(SEG_LEN + seg)
        last = start + tl.minimum(r0 + BLOCK_M, n)      # keys up to this tile's last query
        splits = live_splits(last, NUM_SPLITS, BLOCK_N)
        if sp < splits:
            row0 = tl.load(SEG_ROW + seg)
            offs_m = r0 + tl.arange(0, BLOCK_M)
            offs_n = tl.arange(0, BLOCK_N)
            offs_d = tl.arange(0, HEAD_DIM)
            m_ok = offs_m < n
            qpos = start + offs_m
            q = tl.load(Q + (row0 + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                        mask=m_ok[:, None], other=0.0)
            kv_head = (h // GROUP) * stride_kh
            m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_M], tl.float32)
            acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
            # a split can start past some rows' positions: all their keys there are masked
            lo, hi = split_range(last, sp, BLOCK_N, splits)
            qk_scale = scale * 1.4426950408889634            # softmax in base 2
            for k0 in range(lo, hi, BLOCK_N):
                tok = k0 + offs_n
                ok = tok < hi
                k, v = load_kv_tile(K, V, BT + seg * stride_bt, tok, ok, kv_head, stride_kb, stride_ks, offs_d,
                                    BLOCK_SIZE)
                s = tl.dot(q, tl.trans(k)) * qk_scale
                s = tl.where((tok[None, :] <= qpos[:, None]) & ok[None, :], s, float("-inf"))
                m_i, l_i, acc = online_softmax_step(s, v, m_i, l_i, acc)
            if splits == 1:
                out = acc / l_i[:, None]
                tl.store(O + (row0 + offs_m)[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
                         out.to(O.dtype.element_ty), mask=m_ok[:, None])
            else:   # partial results; _prefill_reduce_kernel combines the splits
                part = ((tile * tl.num_programs(1) + h) * NUM_SPLITS + sp) * BLOCK_M + tl.arange(0, BLOCK_M)
                tl.store(PM + part, m_i)
                tl.store(PL + part, l_i)
                tl.store(PO + part[:, None] * HEAD_DIM + offs_d[None, :], acc)

    @triton.jit
    def _prefill_reduce_kernel(PO, PM, PL, O, TILE_SEG, TILE_ROW, SEG_ROW, SEG_START, SEG_LEN, stride_ot, stride_oh,
                               HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                               NUM_SPLITS: tl.constexpr):
        tile = tl.program_id(0)
        h = tl.program_id(1)
        seg = tl.load(TILE_SEG + tile)
        r0 = tl.load(TILE_ROW + tile)
        n = tl.load(SEG_LEN + seg)
        splits = live_splits(tl.load(SEG_START + seg) + tl.minimum(r0 + BLOCK_M, n), NUM_SPLITS, BLOCK_N)
        if splits > 1:      # one split stored its result itself
            offs_m = r0 + tl.arange(0, BLOCK_M)
            offs_d = tl.arange(0, HEAD_DIM)
            first = (tile * tl.num_programs(1) + h) * NUM_SPLITS
            m_all = tl.full([BLOCK_M], float("-inf"), tl.float32)
            for s in range(splits):
                m_all = tl.maximum(m_all, tl.load(PM + (first + s) * BLOCK_M + tl.arange(0, BLOCK_M)))
            l_all = tl.zeros([BLOCK_M], tl.float32)
            acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
            for s in range(splits):
                part = (first + s) * BLOCK_M + tl.arange(0, BLOCK_M)
                w = tl.exp2(tl.load(PM + part) - m_all)      # a split with no key for a row: m = -inf, weight 0
                l_all += tl.load(PL + part) * w
                acc += tl.load(PO + part[:, None] * HEAD_DIM + offs_d[None, :]) * w[:, None]
            rows = tl.load(SEG_ROW + seg) + offs_m
            tl.store(O + rows[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
                     (acc / l_all[:, None]).to(O.dtype.element_ty), mask=(offs_m < n)[:, None])


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            tiles: DevicePrefillTiles, scale: float, out: torch.Tensor) -> torch.Tensor:
    """Attention of the chunks in ``tiles`` (rows of ``q`` [T, heads, hd]) into the same rows of ``out``."""
    check_kernel_inputs(q, k_cache, v_cache, out, "paged_prefill_attention")
    H, D = q.shape[1], q.shape[2]
    kvh, bs = k_cache.shape[1], k_cache.shape[2]
    num_tiles = tiles.tile_seg.shape[0]
    if num_tiles == 0:
        return out
    splits = tiles.num_splits or prefill_splits(num_tiles * H, tiles.max_keys, q.device)
    part_o, part_m, part_l = split_buffers((num_tiles, H), BLOCK_M, D, splits, out)
    _paged_prefill_kernel[(num_tiles, H, splits)](
        q, k_cache, v_cache, out, part_o, part_m, part_l, tiles.tables, tiles.tile_seg, tiles.tile_row,
        tiles.seg_row, tiles.seg_start, tiles.seg_len, scale, q.stride(0), q.stride(1), k_cache.stride(0),
        k_cache.stride(1), k_cache.stride(2), tiles.tables.stride(0), out.stride(0), out.stride(1),
        GROUP=H // kvh, HEAD_DIM=D, BLOCK_SIZE=bs, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, NUM_SPLITS=splits,
        num_warps=4, num_stages=2)
    if splits > 1:
        _prefill_reduce_kernel[(num_tiles, H)](part_o, part_m, part_l, out, tiles.tile_seg, tiles.tile_row,
                                               tiles.seg_row, tiles.seg_start, tiles.seg_len, out.stride(0),
                                               out.stride(1), HEAD_DIM=D, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                                               NUM_SPLITS=splits, num_warps=4)
    return out


def prefill_splits(programs: int, max_keys: int, device: torch.device) -> int:
    """Key splits per (query tile, head): a short chunk over a long prefix makes few programs with long
    loops (52 new tokens over 7,900 cached: 18 programs of 124 key tiles each for a 9-head model), so
    split the keys until there are two waves over the chip, as a power of two up to 16, keeping at
    least two key tiles per split."""
    cap = 1
    while cap < 16 and max_keys >= 4 * cap * BLOCK_N:
        cap *= 2
    return wave_splits(programs, device, cap)


def paged_prefill_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, tiles: PrefillTiles,
                            scale: float, out: torch.Tensor) -> torch.Tensor:
    """The same result with the torch path (gather each chunk's keys, SDPA with a lower-right causal mask)."""
    for row, start, n, table in zip(tiles.seg_row, tiles.seg_start, tiles.seg_len, tiles.tables):
        row, start, n = int(row), int(start), int(n)
        t = torch.as_tensor(table, device=q.device)
        ks = gather_kv(k_cache, t, start + n)
        vs = gather_kv(v_cache, t, start + n)
        out[row:row + n] = prefill_attention(q[row:row + n], ks, vs, scale)
    return out


def compile_kernel_variants(k_cache: torch.Tensor, v_cache: torch.Tensor, num_heads: int, block: int) -> None:
    """Compile every key-split variant now (one tiny launch each): a variant first met while serving
    would stall that iteration for the compile, hundreds of milliseconds. ``block``: a block id the
    launches may read (its contents do not matter; nothing is written to the cache)."""
    dev = k_cache.device
    D = k_cache.shape[3]
    host = PrefillTiles.build([(0, 1, 0, np.array([block], dtype=np.int64))])
    views = [torch.as_tensor(a, device=dev) for a in host.arrays()]
    q = torch.zeros(1, num_heads, D, dtype=k_cache.dtype, device=dev)
    out = torch.empty_like(q)
    s = 1
    while s <= 16:
        paged_prefill_attention(q, k_cache, v_cache, DevicePrefillTiles.from_views(views, host, s), 1.0, out)
        s *= 2
