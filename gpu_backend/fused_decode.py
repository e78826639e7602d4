"""Decode attention with RoPE and the KV write in the same kernel, for iterations of decodes only.

Why: at batch 256 a decode layer is nine kernels, and the small ones cost their launch and
ramp more than their work: the separate RoPE-and-cache kernel (``fused_ops.rope_and_cache``)
spent 2.4 us per layer of a ~1B model's step to rotate 256 rows, and wrote the rotated
queries only for the attention kernel to read them back. Here each (sequence, KV head)
program reads its query heads and the new token's K and V straight from the QKV projection,
rotates them in registers, writes the new K and V into the paged cache, and attends over the
cached tokens plus the new one, whose key and value it already holds. The cached range
``[0, context - 1)`` never includes the slot being written, so no program reads a position
another program of the same launch writes.

The arithmetic is ``fused_ops``' and the cache path's: RoPE rounds to the model's dtype after
each product and after the sum (transformers' order), so the cache receives the same bits as
``rope_and_cache`` writes; the online softmax and the split-K reduce are ``paged_attention``'s.
CUDA (or Triton's interpreter) only; the CPU path stays ``rope_and_cache`` plus
``decode_attention_torch``.
"""

from __future__ import annotations

import torch

from gpu_backend.paged_attention import (DECODE_CONFIG, _decode_reduce_kernel, check_kernel_inputs, decode_splits,
                                         load_kv_tile, online_softmax_step, split_buffers, split_range, triton)

if triton is not None:
    import triton.language as tl

    @triton.jit
    def rope_values(x, xp, c, s, first_half):
        """RoPE ``x*cos + rotate_half(x)*sin`` of loaded values ``x`` and their rotation partners ``xp`` (the other
        half of the head), rounded to the input dtype after each product and after the sum."""
        a = (x.to(tl.float32) * c).to(x.dtype).to(tl.float32)
        b = (xp.to(tl.float32) * s).to(x.dtype).to(tl.float32)
        return tl.where(first_half, a - b, a + b).to(x.dtype)

    @triton.jit
    def _decode_rope_kernel(QKV, COS, SIN, BT, CL, WB, WS, K, V, O, PO, PM, PL, scale,
                            stride_qkv, stride_cos, stride_kb, stride_kh, stride_ks, stride_btb, stride_ob, stride_oh,
                            NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
                            GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                            BLOCK_SIZE: tl.constexpr, BLOCKS_PER_TILE: tl.constexpr, NUM_SPLITS: tl.constexpr):
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        sp = tl.program_id(2)
        ctx = tl.load(CL + b)
        offs_g = tl.arange(0, GROUP_PAD)
        live = (offs_g * 0 + ctx) > 0          # per row of the head tiles (a scalar mask trips the interpreter)
        offs_d = tl.arange(0, HEAD_DIM)
        TILE: tl.constexpr = BLOCK_SIZE * BLOCKS_PER_TILE
        offs_t = tl.arange(0, TILE)
        g_ok = offs_g < GROUP
        heads = kvh * GROUP + offs_g
        pos = tl.maximum(ctx - 1, 0)
        c = tl.load(COS + pos * stride_cos + offs_d).to(tl.float32)
        s = tl.load(SIN + pos * stride_cos + offs_d).to(tl.float32)
        row = QKV + b * stride_qkv
        partner = (offs_d + HEAD_DIM // 2) % HEAD_DIM
        first = offs_d < HEAD_DIM // 2
        q_ptr = row + heads[:, None] * HEAD_DIM
        q = rope_values(tl.load(q_ptr + offs_d[None, :], mask=g_ok[:, None], other=0.0),
                        tl.load(q_ptr + partner[None, :], mask=g_ok[:, None], other=0.0),
                        c[None, :], s[None, :], first[None, :])
        k_ptr = row + (NUM_HEADS + kvh) * HEAD_DIM
        k_new = rope_values(tl.load(k_ptr + offs_d), tl.load(k_ptr + partner), c, s, first)
        v_new = tl.load(row + (NUM_HEADS + NUM_KV_HEADS + kvh) * HEAD_DIM + offs_d)
        kv_base = kvh * stride_kh
        # split 0 writes the new token's K and V
        dst = tl.load(WB + b).to(tl.int64) * stride_kb + kv_base + tl.load(WS + b) * stride_ks + offs_d
        w_ok = ((offs_d * 0 + sp) == 0) & ((offs_d * 0 + ctx) > 0)
        tl.store(K + dst, k_new, mask=w_ok)
        tl.store(V + dst, v_new, mask=w_ok)
        m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
        lo, hi = split_range(pos, sp, TILE, NUM_SPLITS)
        for start in range(lo, hi, TILE):
            tok = start + offs_t
            ok = tok < hi
            k, v = load_kv_tile(K, V, BT + b * stride_btb, tok, ok, kv_base, stride_kb, stride_ks, offs_d, BLOCK_SIZE)
            sc = tl.dot(q, tl.trans(k)) * (scale * 1.4426950408889634)          # [GROUP_PAD, TILE], base 2
            sc = tl.where(ok[None, :], sc, float("-inf"))
            m_i, l_i, acc = online_softmax_step(sc, v, m_i, l_i, acc)
        # the new token (split 0 only), from registers
        s_new = tl.sum(q.to(tl.float32) * k_new.to(tl.float32)[None, :], 1) * (scale * 1.4426950408889634)
        s_new = tl.where((offs_g * 0 + sp) == 0, s_new, float("-inf"))
        m_new = tl.maximum(m_i, s_new)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s_new - m_safe)
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + p
        acc = acc * alpha[:, None] + p.to(v_new.dtype).to(tl.float32)[:, None] * v_new.to(tl.float32)[None, :]
        m_i = m_new
        if NUM_SPLITS == 1:
            out = acc / l_i[:, None]
            tl.store(O + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :], out.to(O.dtype.element_ty),
                     mask=(g_ok & live)[:, None])
        else:   # partial results; paged_attention's reduce kernel combines the splits
            prow = ((b * tl.num_programs(1) + kvh) * NUM_SPLITS + sp) * GROUP_PAD + offs_g
            tl.store(PM + prow, m_i)
            tl.store(PL + prow, l_i)
            tl.store(PO + prow[:, None] * HEAD_DIM + offs_d[None, :], acc)


def fused_decode_available() -> bool:
    """True where the kernel can be built (triton installed: CUDA builds of torch ship it)."""
    return triton is not None


def decode_attention_rope(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, write_blocks: torch.Tensor,
                          write_slots: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          block_tables: torch.Tensor, context_lens: torch.Tensor, num_heads: int, num_kv_heads: int,
                          scale: float, out: torch.Tensor | None = None, config: dict | None = None) -> torch.Tensor:
    """Attention output ``[B, heads, hd]`` of ``B`` decodes from their QKV projection ``[B, (heads + 2 kv) * hd]``.

    Row ``b`` decodes the token at position ``context_lens[b] - 1``: its K and V, rotated, go to
    ``(write_blocks[b], write_slots[b])`` of the caches, and it attends over the cached
    positions ``[0, context_lens[b] - 1)`` through its block table plus itself. A row with
    context 0 writes nothing and leaves its ``out`` row as it was. ``cos``/``sin``: [max_len, hd].
    """
    B = qkv.shape[0]
    kvh, bs, D = k_cache.shape[1], k_cache.shape[2], k_cache.shape[3]
    if qkv.shape[1] != (num_heads + 2 * num_kv_heads) * D or num_kv_heads != kvh or qkv.stride(1) != 1:
        raise ValueError(f"qkv {tuple(qkv.shape)} (stride {qkv.stride()}) does not hold {num_heads} query and "
                         f"{num_kv_heads} KV heads of {D} contiguously for caches of {kvh} KV heads")
    if out is None:
        out = torch.empty((B, num_heads, D), dtype=qkv.dtype, device=qkv.device)
    check_kernel_inputs(out, k_cache, v_cache, out, "decode_attention_rope")
    if B == 0:
        return out
    group = num_heads // kvh
    group_pad = max(16, triton.next_power_of_2(group))
    cfg = {**DECODE_CONFIG, **(config or {})}
    splits = cfg.get("num_splits") or decode_splits(B, kvh, qkv.device)
    part_o, part_m, part_l = split_buffers((B, kvh), group_pad, D, splits, out)
    _decode_rope_kernel[(B, kvh, splits)](
        qkv, cos, sin, block_tables, context_lens, write_blocks, write_slots, k_cache, v_cache, out,
        part_o, part_m, part_l, scale,
        qkv.stride(0), cos.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        NUM_HEADS=num_heads, NUM_KV_HEADS=kvh, GROUP=group, GROUP_PAD=group_pad, HEAD_DIM=D, BLOCK_SIZE=bs,
        BLOCKS_PER_TILE=max(1, cfg["tile_tokens"] // bs), NUM_SPLITS=splits,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if splits > 1:
        _decode_reduce_kernel[(B, kvh)](part_o, part_m, part_l, context_lens, out, out.stride(0), out.stride(1),
                                        GROUP=group, GROUP_PAD=group_pad, HEAD_DIM=D, NUM_SPLITS=splits,
                                        num_warps=4)
    return out
