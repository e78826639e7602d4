"""Attention over the paged KV cache: a plain torch path (CPU, reference) and a Triton decode kernel (CUDA).

Decode (one query token per sequence) reads the sequence's KV through its block table:
token ``t`` lives in block ``table[t // block_size]`` at slot ``t % block_size``. This is
vLLM's paged attention (Kwon et al., SOSP 2023, §4.1 "PagedAttention"): the KV of
a sequence need not be contiguous, so memory is allocated block by block and blocks can
be shared by sequences with a common prefix. The Triton kernel computes one
(sequence, KV head) pair per program: all query heads of the GQA group against a tile of
``block_size * BLOCKS_PER_TILE`` context tokens at a time, with the online softmax of
FlashAttention (Dao et al., NeurIPS 2022, §3.1, Algorithm 1) so the context is read once.
When the batch is too small to fill the GPU (few sequences, long contexts), each
sequence's context is split across several programs whose partial softmax results a
second kernel combines (flash-decoding: the split-KV scheme of FlashAttention-2's
decoding path, Dao 2023, §3.2 "parallelism").

Prefill chunks (many query tokens of one sequence) use ``F.scaled_dot_product_attention``
with a lower-right causal mask: queries at positions ``start .. start+n-1`` see keys
``0 .. start+n-1``. When ``start == 0`` the keys are the chunk's own, fresh from the
projection; otherwise the cached prefix is gathered from the paged cache first.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

try:  # Triton ships with CUDA builds of torch; the CPU path never needs it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on CPU-only installs
    triton = None
    tl = None


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The first ``num_tokens`` tokens of a sequence from one layer's K (or V) cache.

    ``cache``: [num_blocks, kv_heads, block_size, head_dim]; returns [kv_heads, num_tokens, head_dim].
    """
    bs = cache.shape[2]
    nb = -(-num_tokens // bs)
    blocks = cache[block_table[:nb]]                       # [nb, kv_heads, bs, hd]
    kvh, hd = blocks.shape[1], blocks.shape[3]
    return blocks.permute(1, 0, 2, 3).reshape(kvh, nb * bs, hd)[:, :num_tokens]


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of ``n`` queries (the last ``n`` positions) over ``L >= n`` keys.

    q: [n, heads, hd]; k, v: [kv_heads, L, hd]. Returns [n, heads, hd].
    """
    n = q.shape[0]
    L = k.shape[1]
    qh = q.transpose(0, 1).unsqueeze(0)                      # [1, heads, n, hd]
    kh = k.unsqueeze(0)
    vh = v.unsqueeze(0)
    group = q.shape[1] // k.shape[0]
    if group > 1:
        kh = kh.repeat_interleave(group, dim=1)
        vh = vh.repeat_interleave(group, dim=1)
    if n == L:
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale)
    else:
        # query i (position L - n + i) sees keys 0 .. L - n + i: a lower-right causal mask, which
        # SDPA runs in its memory-efficient kernel on CUDA without materialising an n x L mask
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=causal_lower_right(n, L), scale=scale)
    return out.squeeze(0).transpose(0, 1)


_PRECOMPILED_SDPA = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
_FLASH_DTYPES = (torch.float16, torch.bfloat16)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal self-attention of ``g`` equal-length chunks that start at position 0, in one call.

    q: [g, n, heads, hd]; k, v: [g, n, kv_heads, hd]. Returns [g, n, heads, hd].
    """
    qh = q.transpose(1, 2)
    kh = k.transpose(1, 2)
    vh = v.transpose(1, 2)
    gqa = q.shape[2] != k.shape[2]
    if not q.is_cuda:
        return F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale, enable_gqa=gqa).transpose(1, 2)
    # Flash attention maps each query head to its KV head itself (enable_gqa); repeating K and V to the
    # query heads cost two copies of the chunk's K and V per layer, 6% of an 8,192-token prefill of llama-1b
    # on an H200. The memory-efficient kernel takes no enable_gqa, so whatever flash refuses is repeated.
    # Not cuDNN's backend: it builds a plan per new shape (tens of ms), and serving meets new chunk lengths
    # and counts all the time.
    if gqa and (q.dtype not in _FLASH_DTYPES or q.shape[-1] > 256):
        group = q.shape[2] // k.shape[2]
        kh = kh.repeat_interleave(group, dim=1)
        vh = vh.repeat_interleave(group, dim=1)
        gqa = False
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION] if gqa else _PRECOMPILED_SDPA):
        return F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale, enable_gqa=gqa).transpose(1, 2)


def decode_attention_torch(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Reference decode attention (plain torch, float32 softmax), batched with a padding mask.

    q: [B, heads, hd]; caches: [num_blocks, kv_heads, block_size, hd]; block_tables: [B, W]
    (entries past a sequence's blocks may hold anything valid); context_lens: [B].
    """
    B, H, D = q.shape
    kvh, bs = k_cache.shape[1], k_cache.shape[2]
    W = block_tables.shape[1]
    g = H // kvh
    k = k_cache[block_tables.long()].permute(0, 2, 1, 3, 4).reshape(B, kvh, W * bs, D)
    v = v_cache[block_tables.long()].permute(0, 2, 1, 3, 4).reshape(B, kvh, W * bs, D)
    qg = q.view(B, kvh, g, D).float()
    scores = torch.matmul(qg, k.float().transpose(-1, -2)) * scale            # [B, kvh, g, W*bs]
    valid = torch.arange(W * bs, device=q.device)[None, :] < context_lens.long()[:, None]
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    p = torch.softmax(scores, dim=-1)
    out = torch.matmul(p, v.float())                                          # [B, kvh, g, D]
    return out.reshape(B, H, D).to(q.dtype)


if triton is not None:
    # pieces shared with the paged prefill kernel (gpu_backend.paged_prefill); Triton inlines them
    @triton.jit
    def split_range(last, sp, TILE: tl.constexpr, num_splits):
        """Program ``sp``'s share of keys [0, last): whole tiles, split evenly (flash-decoding's split-K)."""
        per = tl.cdiv(tl.cdiv(last, TILE), num_splits) * TILE
        lo = sp * per
        return lo, tl.minimum(last, lo + per)

    @triton.jit
    def sequence_and_kv_head(HEADS_FASTEST: tl.constexpr):
        """The program's (sequence, KV head) on a grid of (sequences, KV heads), or of (KV heads, sequences)
        when ``HEADS_FASTEST``: then neighbouring programs read neighbouring heads of the same cache blocks."""
        if HEADS_FASTEST:
            b = tl.program_id(1)
            kvh = tl.program_id(0)
        else:
            b = tl.program_id(0)
            kvh = tl.program_id(1)
        return b, kvh

    @triton.jit
    def load_kv_tile(K, V, table_row, tok, ok, kv_head_off, stride_kb, stride_ks, offs_d,
                     BLOCK_SIZE: tl.constexpr):
        """K and V of cache positions ``tok`` (where ``ok``) of one sequence, through its block table."""
        blk = tl.load(table_row + tok // BLOCK_SIZE, mask=ok, other=0).to(tl.int64)
        off = blk[:, None] * stride_kb + kv_head_off + (tok % BLOCK_SIZE)[:, None] * stride_ks + offs_d[None, :]
        return tl.load(K + off, mask=ok[:, None], other=0.0), tl.load(V + off, mask=ok[:, None], other=0.0)

    @triton.jit
    def online_softmax_step(s, v, m_i, l_i, acc):
        """Fold one tile of base-2 scores ``s`` (masked entries -inf) and its values into the running
        max, sum and output. A row with every score so far masked keeps max -inf and adds nothing."""
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        return m_new, l_i * alpha + tl.sum(p, 1), acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)

    # eager mixed batches pass block tables of any width: no recompilation per width
    @triton.jit(do_not_specialize=["stride_btb"])
    def _paged_decode_kernel(Q, K, V, BT, CL, O, PO, PM, PL, scale,
                             stride_qb, stride_qh, stride_kb, stride_kh, stride_ks,
                             stride_btb, stride_ob, stride_oh,
                             GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                             BLOCK_SIZE: tl.constexpr, BLOCKS_PER_TILE: tl.constexpr, NUM_SPLITS: tl.constexpr,
                             HEADS_FASTEST: tl.constexpr = False):
        b, kvh = sequence_and_kv_head(HEADS_FASTEST)
        if HEADS_FASTEST:
            num_kv = tl.num_programs(0)
        else:
            num_kv = tl.num_programs(1)
        sp = tl.program_id(2)
        ctx = tl.load(CL + b)
        offs_g = tl.arange(0, GROUP_PAD)
        offs_d = tl.arange(0, HEAD_DIM)
        TILE: tl.constexpr = BLOCK_SIZE * BLOCKS_PER_TILE
        offs_t = tl.arange(0, TILE)
        g_ok = offs_g < GROUP
        heads = kvh * GROUP + offs_g
        q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :], mask=g_ok[:, None], other=0.0)
        m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
        kv_base = kvh * stride_kh
        lo, hi = split_range(ctx, sp, TILE, NUM_SPLITS)
        for start in range(lo, hi, TILE):
            tok = start + offs_t
            ok = tok < hi
            k, v = load_kv_tile(K, V, BT + b * stride_btb, tok, ok, kv_base, stride_kb, stride_ks, offs_d, BLOCK_SIZE)
            s = tl.dot(q, tl.trans(k)) * (scale * 1.4426950408889634)          # [GROUP_PAD, TILE], base 2
            s = tl.where(ok[None, :], s, float("-inf"))
            m_i, l_i, acc = online_softmax_step(s, v, m_i, l_i, acc)
        if NUM_SPLITS == 1:
            out = acc / l_i[:, None]
            tl.store(O + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :], out.to(O.dtype.element_ty),
                     mask=(g_ok & (offs_g * 0 + ctx > 0))[:, None])
        else:   # partial results; _decode_reduce_kernel combines the splits
            row = ((b * num_kv + kvh) * NUM_SPLITS + sp) * GROUP_PAD + offs_g
            tl.store(PM + row, m_i)
            tl.store(PL + row, l_i)
            tl.store(PO + row[:, None] * HEAD_DIM + offs_d[None, :], acc)

    @triton.jit
    def _decode_reduce_kernel(PO, PM, PL, CL, O, stride_ob, stride_oh,
                              GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                              NUM_SPLITS: tl.constexpr):
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        offs_g = tl.arange(0, GROUP_PAD)
        offs_d = tl.arange(0, HEAD_DIM)
        first = (b * tl.num_programs(1) + kvh) * NUM_SPLITS
        m_all = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        for s in tl.static_range(NUM_SPLITS):
            m_all = tl.maximum(m_all, tl.load(PM + (first + s) * GROUP_PAD + offs_g))
        l_all = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
        for s in tl.static_range(NUM_SPLITS):
            row = (first + s) * GROUP_PAD + offs_g
            w = tl.exp2(tl.load(PM + row) - m_all)          # an empty split has m = -inf: weight 0
            l_all += tl.load(PL + row) * w
            acc += tl.load(PO + row[:, None] * HEAD_DIM + offs_d[None, :]) * w[:, None]
        heads = kvh * GROUP + offs_g
        tl.store(O + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
                 (acc / l_all[:, None]).to(O.dtype.element_ty),
                 mask=((offs_g < GROUP) & (offs_g * 0 + tl.load(CL + b) > 0))[:, None])


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def wave_splits(programs: int, device: torch.device, max_splits: int = 16) -> int:
    """Splits of the key range per program: enough programs for two waves over the chip, as a power of two
    up to ``max_splits`` (1 off CUDA). Shared by the decode and the paged prefill kernels."""
    if device.type != "cuda":
        return 1
    want = -(-2 * _num_sms(device.index or 0) // max(1, programs))
    s = 1
    while s < want and s < max_splits:
        s *= 2
    return s


def decode_splits(batch: int, kv_heads: int, device: torch.device) -> int:
    """Context splits per (sequence, KV head). A function of the batch shape only (not the context), so a
    captured graph keeps it."""
    return wave_splits(batch * kv_heads, device)


def check_kernel_inputs(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor | None,
                        caller: str) -> None:
    """What the paged Triton kernels assume of their tensors; a clear error instead of wrong reads."""
    if triton is None:
        raise RuntimeError(f"{caller} needs triton (it ships with CUDA builds of torch)")
    if k_cache.stride() != v_cache.stride():
        raise ValueError(f"K and V caches have different strides: {k_cache.stride()} vs {v_cache.stride()}")
    if q.stride(2) != 1 or k_cache.stride(3) != 1 or (out is not None and out.stride(2) != 1):
        raise ValueError("q, out and the caches need a contiguous head dimension")
    D = q.shape[2]
    if D & (D - 1) or D < 16:
        raise ValueError(f"head_dim {D} must be a power of two >= 16 for the Triton kernel")


def split_buffers(lead: tuple[int, ...], rows: int, head_dim: int, splits: int, out: torch.Tensor):
    """Partial (output, max, sum) buffers of ``lead + (splits, rows)`` for a split launch; ``out`` stands in
    (unused) when there is one split."""
    if splits == 1:
        return out, out, out
    shape = (*lead, splits, rows)
    part_m = torch.empty(shape, dtype=torch.float32, device=out.device)
    return (torch.empty((*shape, head_dim), dtype=torch.float32, device=out.device), part_m,
            torch.empty_like(part_m))


# Launch configurations of the decode kernel: context tokens per loop iteration, warps, pipeline stages.
# From sweeps of one layer on an H200 (``benchmarks/decode_profile_gpu.py``, BENCHMARKS.md session 9) at 17
# shapes of the two head_dim-64 models, from 1 x 8,192 to 256 x 2,048 tokens; at every one of them the rule
# picks the fastest configuration or one within 0.2% of it. With many programs per SM (batch 256, one split:
# 15 per SM) one-warp programs over small tiles keep the most loads in flight; with few (small batches split
# over long contexts: 1-4 per SM) each program needs wide tiles and four warps (one sequence of 8,192 tokens:
# 20-23% faster than the middle configuration, which was the only one before). head_dim 128 (llama-8b) keeps
# the middle one everywhere: its best choices differ, and its fitted profile was measured with this one.
DECODE_CONFIG = {"tile_tokens": 64, "num_warps": 2, "num_stages": 2}
MANY_PROGRAMS_CONFIG = {"tile_tokens": 32, "num_warps": 1, "num_stages": 3}
FEW_PROGRAMS_CONFIG = {"tile_tokens": 128, "num_warps": 4, "num_stages": 3}
MANY_PROGRAMS_PER_SM = 8
FEW_PROGRAMS_PER_SM = 4


def decode_launch(programs: int, head_dim: int, device: torch.device) -> dict:
    """The decode kernel's launch configuration for a grid of ``programs`` (sequences x KV heads x splits).
    A function of the batch shape only, so a captured graph keeps it."""
    if head_dim > 64 or device.type != "cuda":
        return dict(DECODE_CONFIG)
    sms = _num_sms(device.index or 0)
    if programs >= MANY_PROGRAMS_PER_SM * sms:
        return dict(MANY_PROGRAMS_CONFIG)
    if programs <= FEW_PROGRAMS_PER_SM * sms:
        return dict(FEW_PROGRAMS_CONFIG)
    return dict(DECODE_CONFIG)


def decode_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
                            out: torch.Tensor | None = None, config: dict | None = None) -> torch.Tensor:
    """Paged decode attention with the Triton kernel; same contract as ``decode_attention_torch``.

    A row with ``context_lens == 0`` is skipped: its ``out`` row is left as it was (the static
    decode range of a captured mixed iteration holds such rows). K and V caches must share
    strides (views of one ``PagedKVStore`` tensor do).
    """
    check_kernel_inputs(q, k_cache, v_cache, out, "decode_attention_triton")
    B, H, D = q.shape
    kvh, bs = k_cache.shape[1], k_cache.shape[2]
    group = H // kvh
    group_pad = max(16, triton.next_power_of_2(group))
    config = config or {}
    if out is None:
        out = torch.empty_like(q)
    if B == 0:
        return out
    splits = config.get("num_splits") or decode_splits(B, kvh, q.device)
    cfg = {**decode_launch(B * kvh * splits, D, q.device), **config}
    blocks_per_tile = max(1, cfg["tile_tokens"] // bs)
    part_o, part_m, part_l = split_buffers((B, kvh), group_pad, D, splits, out)
    heads_fastest = bool(cfg.get("heads_fastest", False))
    _paged_decode_kernel[(kvh, B, splits) if heads_fastest else (B, kvh, splits)](
        q, k_cache, v_cache, block_tables, context_lens, out, part_o, part_m, part_l, scale,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=group_pad, HEAD_DIM=D, BLOCK_SIZE=bs, BLOCKS_PER_TILE=blocks_per_tile,
        NUM_SPLITS=splits, HEADS_FASTEST=heads_fastest, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if splits > 1:
        _decode_reduce_kernel[(B, kvh)](part_o, part_m, part_l, context_lens, out, out.stride(0), out.stride(1),
                                        GROUP=group, GROUP_PAD=group_pad, HEAD_DIM=D, NUM_SPLITS=splits,
                                        num_warps=4)
    return out


def decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale, out=None):
    """Dispatch: the Triton kernel on CUDA, the torch reference elsewhere."""
    if q.is_cuda and triton is not None:
        return decode_attention_triton(q, k_cache, v_cache, block_tables, context_lens, scale, out)
    res = decode_attention_torch(q, k_cache, v_cache, block_tables, context_lens, scale)
    if out is not None:
        out.copy_(res)
        return out
    return res
