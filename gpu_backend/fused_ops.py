"""Fused element-wise stages of the Llama layer: Triton kernels on CUDA, the same arithmetic in torch elsewhere.

Why: a decode step at batch 256 moves a few GB, so its floor is a couple of milliseconds;
written as plain torch, each RMSNorm, RoPE and SwiGLU is five to ten tiny kernels, and the
hundreds of them per step cost as much as the step's real work even inside a CUDA graph.
Each function here is one kernel:

- ``add_rms_norm``: the residual add and the next RMSNorm (``h += x; return norm(h)``);
- ``rope_and_cache``: RoPE on Q and K, and K and V written into their paged-cache slots;
- ``silu_mul``: SwiGLU's ``silu(gate) * up``;
- ``greedy_tokens``: each row's argmax written straight into the caller's token buffer (torch's
  argmax is a generic reduction plus a copy, 14 us on a 256 x 32,000 batch on an H200).

Each also takes the product it follows as ``[S, T, N]`` split-K partials
(``gpu_backend.skinny_gemm.LinearPlan.partials``): they are summed in float32 and rounded
once on the way in, so splitting a product over K costs no reduction kernel of its own.

Each rounds to the model's dtype where transformers' Llama does (after the add, after the
normalised value, after each RoPE product, after the SiLU), so bf16 results track the
reference to the last bit wherever the order of operations allows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None
    tl = None


def _use_triton(t: torch.Tensor) -> bool:
    return t.is_cuda and triton is not None


def _summed(x: torch.Tensor) -> torch.Tensor:
    """A product [T, N] as is; its split-K partials [S, T, N] summed in float32 and rounded once."""
    return x if x.dim() == 2 else x.float().sum(0).to(x.dtype)


# ---------------------------------------------------------------------- torch reference
def rms_norm_torch(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    hf = h.float()
    hf = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * hf.to(h.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope_torch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, heads, hd]; cos, sin: [T, 1, hd] (the half-angle table repeated twice)."""
    return x * cos + _rotate_half(x) * sin


# ---------------------------------------------------------------------- kernels
if triton is not None:
    @triton.jit
    def _add_rms_norm_kernel(X, H, W, Y, stride_xs, stride_x, stride_h, stride_y, N, eps,
                             HAS_X: tl.constexpr, SPLITS: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        ok = offs < N
        h = tl.load(H + row * stride_h + offs, mask=ok, other=0.0)
        if HAS_X:
            xf = tl.zeros([BLOCK], dtype=tl.float32)
            for s in tl.static_range(SPLITS):    # split-K partials of one product: summed, then rounded once
                xf += tl.load(X + s * stride_xs + row * stride_x + offs, mask=ok, other=0.0).to(tl.float32)
            h = (h.to(tl.float32) + xf.to(h.dtype).to(tl.float32)).to(h.dtype)
            tl.store(H + row * stride_h + offs, h, mask=ok)
        hf = h.to(tl.float32)
        var = tl.sum(hf * hf, axis=0) / N
        y = (hf * tl.rsqrt(var + eps)).to(h.dtype)
        w = tl.load(W + offs, mask=ok, other=0.0)
        tl.store(Y + row * stride_y + offs, (w.to(tl.float32) * y.to(tl.float32)).to(Y.dtype.element_ty), mask=ok)

    @triton.jit
    def _rope_cache_kernel(QKV, COS, SIN, POS, WB, WS, QOUT, KC, VC, KOUT, VOUT,
                           stride_s, stride_t, stride_qt, stride_cos, stride_cb, stride_ch, stride_cs, stride_kvt,
                           NH: tl.constexpr, NKV: tl.constexpr, HALF: tl.constexpr, HEADS_PAD: tl.constexpr,
                           WRITE_KV: tl.constexpr, SPLITS: tl.constexpr):
        # one token per program; rows of the tile are its heads: [0, NH) q, [NH, NH+NKV) k, then v
        t = tl.program_id(0)
        hh = tl.arange(0, HEADS_PAD)[:, None]
        offs = tl.arange(0, HALF)[None, :]
        ok = hh < NH + 2 * NKV
        src = QKV + t * stride_t + hh * (2 * HALF) + offs
        if SPLITS == 1:
            x1 = tl.load(src, mask=ok, other=0.0)
            x2 = tl.load(src + HALF, mask=ok, other=0.0)
        else:   # split-K partials of the QKV product: summed in float32, rounded once
            s1 = tl.zeros([HEADS_PAD, HALF], dtype=tl.float32)
            s2 = tl.zeros([HEADS_PAD, HALF], dtype=tl.float32)
            for s in tl.static_range(SPLITS):
                s1 += tl.load(src + s * stride_s, mask=ok, other=0.0).to(tl.float32)
                s2 += tl.load(src + s * stride_s + HALF, mask=ok, other=0.0).to(tl.float32)
            x1 = s1.to(QOUT.dtype.element_ty)
            x2 = s2.to(QOUT.dtype.element_ty)
        pos = tl.load(POS + t)
        c = tl.load(COS + pos * stride_cos + offs).to(tl.float32)
        s = tl.load(SIN + pos * stride_cos + offs).to(tl.float32)
        a1 = (x1.to(tl.float32) * c).to(x1.dtype).to(tl.float32)
        b1 = (x2.to(tl.float32) * s).to(x1.dtype).to(tl.float32)
        a2 = (x2.to(tl.float32) * c).to(x1.dtype).to(tl.float32)
        b2 = (x1.to(tl.float32) * s).to(x1.dtype).to(tl.float32)
        rot = hh < NH + NKV
        y1 = tl.where(rot, (a1 - b1).to(x1.dtype), x1)
        y2 = tl.where(rot, (a2 + b2).to(x1.dtype), x2)
        is_q = hh < NH
        dst = QOUT + t * stride_qt + hh * (2 * HALF) + offs
        tl.store(dst, y1, mask=is_q)
        tl.store(dst + HALF, y2, mask=is_q)
        blk = tl.load(WB + t).to(tl.int64)
        slot = tl.load(WS + t)
        is_k = (hh >= NH) & rot
        kdst = KC + blk * stride_cb + (hh - NH) * stride_ch + slot * stride_cs + offs
        tl.store(kdst, y1, mask=is_k)
        tl.store(kdst + HALF, y2, mask=is_k)
        is_v = (hh >= NH + NKV) & ok
        vdst = VC + blk * stride_cb + (hh - NH - NKV) * stride_ch + slot * stride_cs + offs
        tl.store(vdst, y1, mask=is_v)
        tl.store(vdst + HALF, y2, mask=is_v)
        if WRITE_KV:   # the chunk's own K and V, contiguous, for prefill attention
            kout = KOUT + t * stride_kvt + (hh - NH) * (2 * HALF) + offs
            tl.store(kout, y1, mask=is_k)
            tl.store(kout + HALF, y2, mask=is_k)
            vout = VOUT + t * stride_kvt + (hh - NH - NKV) * (2 * HALF) + offs
            tl.store(vout, y1, mask=is_v)
            tl.store(vout + HALF, y2, mask=is_v)

    @triton.jit
    def _silu_mul_kernel(GU, OUT, stride_s, stride_g, stride_o, N, SPLITS: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < N
        if SPLITS == 1:
            g = tl.load(GU + row * stride_g + offs, mask=ok, other=0.0)
            u = tl.load(GU + row * stride_g + N + offs, mask=ok, other=0.0)
        else:   # split-K partials of the gate/up product: summed in float32, rounded once
            gs = tl.zeros([BLOCK], dtype=tl.float32)
            us = tl.zeros([BLOCK], dtype=tl.float32)
            for s in tl.static_range(SPLITS):
                gs += tl.load(GU + s * stride_s + row * stride_g + offs, mask=ok, other=0.0).to(tl.float32)
                us += tl.load(GU + s * stride_s + row * stride_g + N + offs, mask=ok, other=0.0).to(tl.float32)
            g = gs.to(OUT.dtype.element_ty)
            u = us.to(OUT.dtype.element_ty)
        gf = g.to(tl.float32)
        s = (gf / (1.0 + tl.exp(-gf))).to(g.dtype)
        tl.store(OUT + row * stride_o + offs, (s.to(tl.float32) * u.to(tl.float32)).to(g.dtype), mask=ok)


    @triton.jit
    def _argmax_kernel(X, OUT, stride_x, N, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        best_v = tl.full([], float("-inf"), tl.float32)
        best_i = tl.full([], 0, tl.int32)
        for start in range(0, N, BLOCK):
            o = start + offs
            x = tl.load(X + row * stride_x + o, mask=o < N, other=float("-inf")).to(tl.float32)
            m = tl.max(x, axis=0)
            i = tl.min(tl.where(x == m, o, N), axis=0)     # the first index holding the maximum, as torch
            take = m > best_v                               # strictly: an earlier block keeps a tie
            best_i = tl.where(take, i, best_i)
            best_v = tl.where(take, m, best_v)
        tl.store(OUT + row, best_i.to(tl.int64))


# ---------------------------------------------------------------------- public functions
def add_rms_norm(x: torch.Tensor | None, h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``h += x`` in place (when ``x`` is given), then RMSNorm of ``h`` [T, hidden].

    ``x`` is [T, hidden], or [S, T, hidden]: the S split-K partials of one product
    (``gpu_backend.skinny_gemm.batched_split_linear``), summed in float32 and rounded once
    before the add, so the split costs no kernel of its own."""
    if x is not None and x.shape[-2:] != h.shape:
        raise ValueError(f"add_rms_norm: x has shape {tuple(x.shape)}, the residual {tuple(h.shape)}")
    if not _use_triton(h):
        if x is not None:
            h.add_(_summed(x))
        return rms_norm_torch(h, weight, eps)
    T, N = h.shape
    y = torch.empty_like(h)
    if T:
        splits = 1 if x is None or x.dim() == 2 else x.shape[0]
        _add_rms_norm_kernel[(T,)](x if x is not None else h, h, weight, y,
                                   x.stride(0) if splits > 1 else 0, x.stride(-2) if x is not None else 0,
                                   h.stride(0), y.stride(0), N, eps, HAS_X=x is not None, SPLITS=splits,
                                   BLOCK=triton.next_power_of_2(N), num_warps=8)
    return y


def check_qkv_width(qkv: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int, caller: str) -> None:
    """A QKV product (or its partials) must hold ``num_heads + 2 num_kv_heads`` heads of ``head_dim``."""
    need = (num_heads + 2 * num_kv_heads) * head_dim
    if qkv.shape[-1] != need:
        raise ValueError(f"{caller}: qkv has {qkv.shape[-1]} columns, {num_heads} + 2 x {num_kv_heads} heads "
                         f"of {head_dim} need {need}")


def rope_and_cache(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                   write_blocks: torch.Tensor, write_slots: torch.Tensor, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int,
                   want_kv: bool = True):
    """RoPE on the Q and K parts of ``qkv`` [T, (heads + 2 kv_heads) * hd]; K and V stored in the cache.

    ``qkv`` may also be [S, T, ...]: split-K partials, summed and rounded once (see ``add_rms_norm``).

    ``cos``/``sin``: [max_len, hd] tables; caches: [blocks, kv_heads, block_size, hd] views.
    Returns ``(q, k, v)``: q [T, heads, hd] rotated; k (rotated) and v [T, kv_heads, hd], or,
    on CUDA without ``want_kv``, None for both (they then live only in the cache).
    """
    T = qkv.shape[-2]
    qn, kvn = num_heads * head_dim, num_kv_heads * head_dim
    check_qkv_width(qkv, num_heads, num_kv_heads, head_dim, "rope_and_cache")
    if not _use_triton(qkv):
        qkv = _summed(qkv)
        c = cos[positions].unsqueeze(1)
        s = sin[positions].unsqueeze(1)
        q = apply_rope_torch(qkv[:, :qn].view(T, num_heads, head_dim), c, s)
        k = apply_rope_torch(qkv[:, qn:qn + kvn].view(T, num_kv_heads, head_dim), c, s)
        v = qkv[:, qn + kvn:].view(T, num_kv_heads, head_dim)
        k_cache.permute(0, 2, 1, 3)[write_blocks, write_slots] = k
        v_cache.permute(0, 2, 1, 3)[write_blocks, write_slots] = v
        return q, k, v
    if k_cache.stride() != v_cache.stride():
        raise ValueError(f"K and V caches have different strides: {k_cache.stride()} vs {v_cache.stride()}")
    q = torch.empty((T, num_heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    k = v = None
    if want_kv:
        k = torch.empty((T, num_kv_heads, head_dim), dtype=qkv.dtype, device=qkv.device)
        v = torch.empty_like(k)
    if T:
        _rope_cache_kernel[(T,)](
            qkv, cos, sin, positions, write_blocks, write_slots, q, k_cache, v_cache,
            k if want_kv else q, v if want_kv else q,
            qkv.stride(0) if qkv.dim() == 3 else 0, qkv.stride(-2), q.stride(0), cos.stride(0),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            k.stride(0) if want_kv else 0,
            NH=num_heads, NKV=num_kv_heads, HALF=head_dim // 2,
            HEADS_PAD=triton.next_power_of_2(num_heads + 2 * num_kv_heads), WRITE_KV=want_kv,
            SPLITS=qkv.shape[0] if qkv.dim() == 3 else 1, num_warps=4)
    return q, k, v


def silu_mul(gu: torch.Tensor) -> torch.Tensor:
    """``silu(gu[:, :I]) * gu[:, I:]`` for ``gu`` [T, 2I], or for its split-K partials [S, T, 2I]
    (summed and rounded once, see ``add_rms_norm``)."""
    inter = gu.shape[-1] // 2
    if not _use_triton(gu):
        gu = _summed(gu)
        return F.silu(gu[:, :inter]) * gu[:, inter:]
    T = gu.shape[-2]
    out = torch.empty((T, inter), dtype=gu.dtype, device=gu.device)
    if T:
        block = 1024
        splits = gu.shape[0] if gu.dim() == 3 else 1
        _silu_mul_kernel[(T, triton.cdiv(inter, block))](gu, out, gu.stride(0) if splits > 1 else 0, gu.stride(-2),
                                                          out.stride(0), inter, SPLITS=splits, BLOCK=block,
                                                          num_warps=4)
    return out


def greedy_tokens(logits: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out[i] = argmax(logits[i])`` (the first index of the maximum, as ``torch.argmax``) for ``logits``
    [T, vocab] and ``out`` [T] int64; returns ``out``."""
    if logits.dim() != 2 or out.shape != logits.shape[:1] or out.dtype != torch.long:
        raise ValueError(f"greedy_tokens: logits {tuple(logits.shape)} need an int64 out of shape "
                         f"({logits.shape[0]},), got {out.dtype} {tuple(out.shape)}")
    if not _use_triton(logits):
        return out.copy_(logits.argmax(-1))
    if logits.shape[0]:
        if logits.stride(1) != 1:
            raise ValueError("greedy_tokens: logits must be contiguous along the vocabulary")
        _argmax_kernel[(logits.shape[0],)](logits, out, logits.stride(0), logits.shape[1], BLOCK=4096, num_warps=8)
    return out
