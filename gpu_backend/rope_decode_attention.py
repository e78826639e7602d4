"""A decode layer's RoPE, KV write and paged attention in one Triton kernel.

Why: in a decode step the RoPE + KV-write kernel (``fused_ops.rope_and_cache``) moves a few
hundred kilobytes, so its cost is its launch and the gap before the attention kernel that
follows it: 3.9 us a layer on an H200, 63 us of a 2.3 ms ``llama-1b`` step at batch 256
(BENCHMARKS.md, session 14). The attention kernel already owns one (sequence, KV head) pair
per program, which is exactly the new token's K and V and the query heads of its GQA group,
so it can rotate them itself:

- the program reads its query heads and the new token's K and V straight from the QKV
  product (or sums its split-K partials, rounded once, as ``rope_and_cache`` does), applies
  rotate-half RoPE with the same roundings, and writes K and V into their cache slot;
- it attends over the ``context - 1`` cached tokens as ``paged_attention``'s decode kernel
  does, and folds the new token in from registers, so nothing reads the slot it has just
  written (no ordering between the program's own threads is needed);
- with the context split over several programs, the last split folds in the new token and
  writes the cache; the same reduction kernel combines the splits.

Off CUDA (and where Triton is missing) the same contract runs as ``rope_and_cache`` followed
by the reference decode attention.
"""

from __future__ import annotations

import torch

from gpu_backend.fused_ops import check_qkv_width, rope_and_cache
from gpu_backend.paged_attention import (_num_sms, check_kernel_inputs, decode_attention, decode_launch,
                                         decode_splits, split_buffers, triton)

# Where the fused kernel runs, and how it is launched: (programs per SM at least, launch configuration),
# first match. From one sweep on an H200 (``benchmarks/decode_attention_access_gpu.py``, BENCHMARKS.md
# session 14) of llama-1b's decode shapes from 32 x 2,048 to 256 x 1,025 tokens, each kernel at 18
# configurations: at 128-256 sequences (7.8-15.5 programs per SM) the fused kernel at these configurations
# took 0.91-0.97x the time of the RoPE kernel plus the attention as shipped. At 3.9 programs per SM
# (64 x 1,025, and 32 x 2,048 in two splits) its best was 0.97x and 1.01x: there the two kernels stay.
# Launched as the attention is (``decode_launch``) it was up to 1.21x slower than the pair: its prologue
# (RoPE of the query group, the new K and V) wants narrow tiles when programs are many. The thresholds
# were chosen on these same cells.
FUSED_LAUNCH = ((12, {"tile_tokens": 16, "num_warps": 1, "num_stages": 2}),
                (6, {"tile_tokens": 32, "num_warps": 1, "num_stages": 3}))
FUSED_MAX_HEAD_DIM = 64

if triton is not None:
    import triton.language as tl

    from gpu_backend.paged_attention import (_decode_reduce_kernel, load_kv_tile, online_softmax_step,
                                             sequence_and_kv_head, split_range)

    @triton.jit
    def _qkv_columns(row, cols, mask, stride_s, SPLITS: tl.constexpr, OUT_DTYPE: tl.constexpr):
        """Columns ``cols`` of one token's QKV product, its split-K partials summed in float32 and rounded once."""
        if SPLITS == 1:
            x = tl.load(row + cols, mask=mask, other=0.0).to(OUT_DTYPE)
        else:
            acc = tl.load(row + cols, mask=mask, other=0.0).to(tl.float32)
            for s in tl.static_range(1, SPLITS):
                acc += tl.load(row + s * stride_s + cols, mask=mask, other=0.0).to(tl.float32)
            x = acc.to(OUT_DTYPE)
        return x

    @triton.jit
    def _rotate(x, x_rot, cos, sin, first_half, OUT_DTYPE: tl.constexpr):
        """Rotate-half RoPE of ``x`` given ``x_rot`` (x with its halves swapped), rounded where transformers'
        Llama rounds: each product, then the sum."""
        a = (x.to(tl.float32) * cos).to(OUT_DTYPE).to(tl.float32)
        b = (x_rot.to(tl.float32) * sin).to(OUT_DTYPE).to(tl.float32)
        return tl.where(first_half, a - b, a + b).to(OUT_DTYPE)

    @triton.jit(do_not_specialize=["stride_btb"])
    def _rope_decode_kernel(QKV, COS, SIN, POS, WB, WS, K, V, BT, CL, O, PO, PM, PL, scale,
                            stride_s, stride_t, stride_cos, stride_kb, stride_kh, stride_ks, stride_btb,
                            stride_ob, stride_oh,
                            NH: tl.constexpr, NKV: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
                            HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCKS_PER_TILE: tl.constexpr,
                            NUM_SPLITS: tl.constexpr, SPLITS: tl.constexpr, HEADS_FASTEST: tl.constexpr):
        b, kvh = sequence_and_kv_head(HEADS_FASTEST)
        sp = tl.program_id(2)
        DT: tl.constexpr = K.dtype.element_ty
        ctx = tl.load(CL + b)
        live = ctx > 0
        pos = tl.load(POS + b)
        offs_g = tl.arange(0, GROUP_PAD)
        offs_d = tl.arange(0, HEAD_DIM)
        HALF: tl.constexpr = HEAD_DIM // 2
        rot_d = (offs_d + HALF) % HEAD_DIM
        first_half = offs_d < HALF
        live_d = offs_d < tl.where(live, HEAD_DIM, 0)
        cos = tl.load(COS + pos * stride_cos + offs_d, mask=live_d, other=0.0).to(tl.float32)
        sin = tl.load(SIN + pos * stride_cos + offs_d, mask=live_d, other=0.0).to(tl.float32)
        g_ok = offs_g < tl.where(live, GROUP, 0)
        heads = kvh * GROUP + offs_g
        row = QKV + b * stride_t
        qcols = heads[:, None] * HEAD_DIM
        q_ok = g_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
        q = _qkv_columns(row, qcols + offs_d[None, :], q_ok, stride_s, SPLITS, DT)
        q_rot = _qkv_columns(row, qcols + rot_d[None, :], q_ok, stride_s, SPLITS, DT)
        q = _rotate(q, q_rot, cos[None, :], sin[None, :], first_half[None, :], DT)
        kcol = (NH + kvh) * HEAD_DIM
        vcol = (NH + NKV + kvh) * HEAD_DIM
        k_new = _rotate(_qkv_columns(row, kcol + offs_d, live_d, stride_s, SPLITS, DT),
                        _qkv_columns(row, kcol + rot_d, live_d, stride_s, SPLITS, DT), cos, sin, first_half, DT)
        v_new = _qkv_columns(row, vcol + offs_d, live_d, stride_s, SPLITS, DT)
        last = tl.where(sp == NUM_SPLITS - 1, ctx, 0) > 0
        write_d = offs_d < tl.where(last, HEAD_DIM, 0)
        kv_base = kvh * stride_kh
        slot_off = tl.load(WB + b).to(tl.int64) * stride_kb + kv_base + tl.load(WS + b) * stride_ks
        tl.store(K + slot_off + offs_d, k_new, mask=write_d)
        tl.store(V + slot_off + offs_d, v_new, mask=write_d)

        TILE: tl.constexpr = BLOCK_SIZE * BLOCKS_PER_TILE
        offs_t = tl.arange(0, TILE)
        qk_scale = scale * 1.4426950408889634
        m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
        lo, hi = split_range(tl.maximum(ctx - 1, 0), sp, TILE, NUM_SPLITS)
        for start in range(lo, hi, TILE):
            tok = start + offs_t
            ok = tok < hi
            k, v = load_kv_tile(K, V, BT + b * stride_btb, tok, ok, kv_base, stride_kb, stride_ks, offs_d, BLOCK_SIZE)
            s = tl.dot(q, tl.trans(k)) * qk_scale
            s = tl.where(ok[None, :], s, float("-inf"))
            m_i, l_i, acc = online_softmax_step(s, v, m_i, l_i, acc)
        # the new token, from registers: only the last split counts it
        s_new = tl.sum(q.to(tl.float32) * k_new.to(tl.float32)[None, :], 1) * qk_scale
        s_new = tl.where(last, s_new, float("-inf"))
        m_new = tl.maximum(m_i, s_new)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s_new - m_safe)
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + p
        acc = acc * alpha[:, None] + p.to(DT).to(tl.float32)[:, None] * v_new.to(tl.float32)[None, :]
        m_i = m_new
        if NUM_SPLITS == 1:
            tl.store(O + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
                     (acc / l_i[:, None]).to(O.dtype.element_ty), mask=q_ok)
        else:
            prow = ((b * NKV + kvh) * NUM_SPLITS + sp) * GROUP_PAD + offs_g
            tl.store(PM + prow, m_i)
            tl.store(PL + prow, l_i)
            tl.store(PO + prow[:, None] * HEAD_DIM + offs_d[None, :], acc)


def _use_triton(t: torch.Tensor) -> bool:
    return t.is_cuda and triton is not None


def fused_launch(programs: int, head_dim: int, device: torch.device) -> dict | None:
    """The fused kernel's launch configuration for ``programs`` (sequence, KV head, split) programs, or None
    where the RoPE kernel and the attention should stay separate (off CUDA, head_dim above 64, or too few
    programs per SM: ``FUSED_LAUNCH``)."""
    if device.type != "cuda" or triton is None or head_dim > FUSED_MAX_HEAD_DIM:
        return None
    per_sm = programs / _num_sms(device.index or 0)
    return next((dict(cfg) for least, cfg in FUSED_LAUNCH if per_sm >= least), None)


def fused_applies(batch: int, num_kv_heads: int, head_dim: int, device: torch.device) -> bool:
    """Whether a decode-only batch of ``batch`` sequences should take the fused kernel (``fused_launch``).
    A function of the batch shape only, so a captured graph keeps its choice."""
    if device.type != "cuda":
        return False
    programs = batch * num_kv_heads * decode_splits(batch, num_kv_heads, device)
    return fused_launch(programs, head_dim, device) is not None


def rope_decode_attention(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                          write_blocks: torch.Tensor, write_slots: torch.Tensor, k_cache: torch.Tensor,
                          v_cache: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
                          num_heads: int, num_kv_heads: int, head_dim: int, out: torch.Tensor | None = None,
                          config: dict | None = None) -> torch.Tensor:
    """One decode layer's attention from its QKV product: RoPE, the new K and V written to their cache slots,
    paged attention over the cached context plus the new token. Returns ``out`` [B, heads, hd].

    ``qkv``: [B, (heads + 2 kv_heads) * hd], or its split-K partials [S, B, ...] (summed, rounded once);
    ``positions``: each row's new token, which must be ``context_lens - 1``; ``write_blocks`` /
    ``write_slots``: where its K and V go; the rest as ``paged_attention.decode_attention``. A row with
    context 0 writes nothing and leaves its ``out`` row as it was.
    """
    B = qkv.shape[-2]
    check_qkv_width(qkv, num_heads, num_kv_heads, head_dim, "rope_decode_attention")
    if not _use_triton(qkv):
        q, _, _ = rope_and_cache(qkv, cos, sin, positions, write_blocks, write_slots, k_cache, v_cache,
                                 num_heads, num_kv_heads, head_dim)
        return decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale, out)
    if out is None:
        out = torch.empty((B, num_heads, head_dim), dtype=k_cache.dtype, device=qkv.device)
    check_kernel_inputs(out, k_cache, v_cache, out, "rope_decode_attention")
    if qkv.stride(-1) != 1 or cos.stride(-1) != 1:
        raise ValueError("rope_decode_attention: qkv and the RoPE tables need contiguous last dimensions")
    if B == 0:
        return out
    group = num_heads // num_kv_heads
    group_pad = max(16, triton.next_power_of_2(group))
    config = config or {}
    splits = config.get("num_splits") or decode_splits(B, num_kv_heads, qkv.device)
    programs = B * num_kv_heads * splits
    cfg = {**(fused_launch(programs, head_dim, qkv.device) or decode_launch(programs, head_dim, qkv.device)),
           **config}
    bs = k_cache.shape[2]
    part_o, part_m, part_l = split_buffers((B, num_kv_heads), group_pad, head_dim, splits, out)
    heads_fastest = bool(cfg.get("heads_fastest", False))
    _rope_decode_kernel[(num_kv_heads, B, splits) if heads_fastest else (B, num_kv_heads, splits)](
        qkv, cos, sin, positions, write_blocks, write_slots, k_cache, v_cache, block_tables, context_lens, out,
        part_o, part_m, part_l, scale,
        qkv.stride(0) if qkv.dim() == 3 else 0, qkv.stride(-2), cos.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0), out.stride(0), out.stride(1),
        NH=num_heads, NKV=num_kv_heads, GROUP=group, GROUP_PAD=group_pad, HEAD_DIM=head_dim, BLOCK_SIZE=bs,
        BLOCKS_PER_TILE=max(1, cfg["tile_tokens"] // bs), NUM_SPLITS=splits,
        SPLITS=qkv.shape[0] if qkv.dim() == 3 else 1, HEADS_FASTEST=heads_fastest, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if splits > 1:
        _decode_reduce_kernel[(B, num_kv_heads)](part_o, part_m, part_l, context_lens, out, out.stride(0),
                                                 out.stride(1), GROUP=group, GROUP_PAD=group_pad, HEAD_DIM=head_dim,
                                                 NUM_SPLITS=splits, num_warps=4)
    return out
