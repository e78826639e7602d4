"""Decode products that apply the element-wise stage after them as they write their tiles.

Why: inside a captured decode step every kernel launch costs about 1.15 us on an H200 even
when the kernel does nothing (``benchmarks/small_kernels_gpu.py``, BENCHMARKS.md session 12),
and ``llama-1b`` runs 9 kernels a layer. Two of its element-wise stages need only the columns
of one output tile, so a product can finish them in its epilogue and drop a kernel, a launch
and a round trip of the product through memory:

- ``gate_up_silu``: SwiGLU's ``silu(gate) * up``. A program owns output columns ``n .. n+BN`` and
  keeps two accumulators, over the gate rows ``n`` and the up rows ``I + n`` of the fused
  gate/up weight, so the weight keeps its layout;
- ``qkv_rope_cache``: the QKV projection, RoPE on Q and K, and K and V written into their paged
  cache slots. A program owns one head of ``BLOCK_M`` tokens and keeps the head's two halves in
  two accumulators, which is what rotate-half RoPE pairs up.

Both feed the tensor cores through Hopper's tensor memory accelerator (host-built
``TensorDescriptor``s), so they need compute capability 9.0 and a Triton that has them. They
round where transformers' Llama does (the product to bf16, then each RoPE product, the SiLU and
the SwiGLU product), as ``gpu_backend.fused_ops`` does after a cuBLAS product: on an H200 the
fused SwiGLU equals cuBLAS + ``silu_mul`` bit for bit. They are used for 32-512 rows, where they
were measured; other batches, and every CPU call, take cuBLAS and the ``fused_ops`` kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gpu_backend.fused_ops import rope_and_cache, silu_mul

try:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - CPU-only installs, or a Triton without tensor descriptors
    triton = None
    tl = None
    TensorDescriptor = None

MIN_ROWS, MAX_ROWS = 32, 512


@dataclass(frozen=True, slots=True)
class TileConfig:
    """One launch of an epilogue product: rows per program, reduction step, warps, pipeline stages
    (and, for SwiGLU, output columns per program)."""

    block_m: int
    block_k: int
    num_warps: int
    num_stages: int
    block_n: int = 0


def supported(device: torch.device) -> bool:
    """Tensor-memory-accelerator kernels need a CUDA device of compute capability 9.0 or newer."""
    return (TensorDescriptor is not None and device.type == "cuda" and torch.cuda.is_available()
            and torch.cuda.get_device_capability(device)[0] >= 9)


def applies(x: torch.Tensor) -> bool:
    """True when a product of ``x``'s rows goes through an epilogue kernel (CUDA, 32-512 rows)."""
    return x.is_cuda and x.dim() == 2 and MIN_ROWS <= x.shape[0] <= MAX_ROWS and TensorDescriptor is not None


def swiglu_config(rows: int) -> TileConfig:
    if rows <= 128:
        return TileConfig(128, 128, 8, 3, block_n=64)
    return TileConfig(128, 64, 8, 4, block_n=128)


def qkv_config(rows: int) -> TileConfig:
    return TileConfig(64 if rows <= 64 else 128, 64, 4, 4)


if triton is not None:
    @triton.jit
    def _gate_up_silu_kernel(x_desc, w_desc, OUT, M, K, I, stride_om,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid = tl.program_id(0)
        num_m = tl.cdiv(M, BLOCK_M)
        m0 = (pid % num_m) * BLOCK_M           # programs sharing a weight tile are adjacent: read once
        n0 = (pid // num_m) * BLOCK_N
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            x = x_desc.load([m0, k])
            acc_g = tl.dot(x, w_desc.load([n0, k]).T, acc_g)
            acc_u = tl.dot(x, w_desc.load([I + n0, k]).T, acc_u)
        dt = OUT.dtype.element_ty
        g = acc_g.to(dt).to(tl.float32)
        s = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32)
        rows = m0 + tl.arange(0, BLOCK_M)
        cols = n0 + tl.arange(0, BLOCK_N)
        tl.store(OUT + rows[:, None] * stride_om + cols[None, :], (s * acc_u.to(dt).to(tl.float32)).to(dt),
                 mask=rows[:, None] < M)

    @triton.jit
    def _qkv_rope_cache_kernel(x_desc, w_desc, COS, SIN, POS, WB, WS, QOUT, KC, VC, KOUT, VOUT, M, K,
                               stride_qt, stride_cos, stride_cb, stride_ch, stride_cs, stride_kvt,
                               NH: tl.constexpr, NKV: tl.constexpr, HALF: tl.constexpr, WRITE_KV: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
        # heads [0, NH) are queries, [NH, NH + NKV) keys, then values; each is 2 * HALF weight rows
        pid = tl.program_id(0)
        num_m = tl.cdiv(M, BLOCK_M)
        head = pid // num_m
        m0 = (pid % num_m) * BLOCK_M
        n0 = head * 2 * HALF
        acc1 = tl.zeros((BLOCK_M, HALF), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_M, HALF), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            x = x_desc.load([m0, k])
            acc1 = tl.dot(x, w_desc.load([n0, k]).T, acc1)
            acc2 = tl.dot(x, w_desc.load([n0 + HALF, k]).T, acc2)
        dt = QOUT.dtype.element_ty
        rows = m0 + tl.arange(0, BLOCK_M)
        ok = rows < M
        offs = tl.arange(0, HALF)
        x1 = acc1.to(dt)
        x2 = acc2.to(dt)
        if head < NH + NKV:     # rotate-half RoPE, rounded after each product as transformers does
            pos = tl.load(POS + rows, mask=ok, other=0)
            c = tl.load(COS + pos[:, None] * stride_cos + offs[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
            s = tl.load(SIN + pos[:, None] * stride_cos + offs[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
            a1 = (x1.to(tl.float32) * c).to(dt).to(tl.float32)
            b1 = (x2.to(tl.float32) * s).to(dt).to(tl.float32)
            a2 = (x2.to(tl.float32) * c).to(dt).to(tl.float32)
            b2 = (x1.to(tl.float32) * s).to(dt).to(tl.float32)
            y1 = (a1 - b1).to(dt)
            y2 = (a2 + b2).to(dt)
        else:
            y1 = x1
            y2 = x2
        if head < NH:
            dst = QOUT + rows[:, None] * stride_qt + head * 2 * HALF + offs[None, :]
            tl.store(dst, y1, mask=ok[:, None])
            tl.store(dst + HALF, y2, mask=ok[:, None])
        else:
            blk = tl.load(WB + rows, mask=ok, other=0).to(tl.int64)
            slot = tl.load(WS + rows, mask=ok, other=0)
            if head < NH + NKV:
                kvh = head - NH
                cache = KC + blk[:, None] * stride_cb + kvh * stride_ch + slot[:, None] * stride_cs + offs[None, :]
                own = KOUT + rows[:, None] * stride_kvt + kvh * 2 * HALF + offs[None, :]
            else:
                kvh = head - NH - NKV
                cache = VC + blk[:, None] * stride_cb + kvh * stride_ch + slot[:, None] * stride_cs + offs[None, :]
                own = VOUT + rows[:, None] * stride_kvt + kvh * 2 * HALF + offs[None, :]
            tl.store(cache, y1, mask=ok[:, None])
            tl.store(cache + HALF, y2, mask=ok[:, None])
            if WRITE_KV:    # the chunk's own K and V, contiguous, for prefill attention
                tl.store(own, y1, mask=ok[:, None])
                tl.store(own + HALF, y2, mask=ok[:, None])


def _check_operands(x: torch.Tensor, w: torch.Tensor, caller: str) -> None:
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"{caller}: x {tuple(x.shape)} and weight {tuple(w.shape)} do not multiply as x @ w.T")
    if not (x.is_contiguous() and w.is_contiguous()):
        raise ValueError(f"{caller}: x and the weight must be contiguous (tensor descriptors read them by rows)")


def gate_up_silu(x: torch.Tensor, w: torch.Tensor, config: TileConfig | None = None) -> torch.Tensor:
    """``silu(x @ gate.T) * (x @ up.T)`` for the fused gate/up weight ``w`` [2I, K]: [T, I]."""
    _check_operands(x, w, "gate_up_silu")
    if w.shape[0] % 2:
        raise ValueError(f"gate_up_silu: the fused gate/up weight has an odd row count {w.shape[0]}")
    if not applies(x):
        return silu_mul(F.linear(x, w))
    m, k = x.shape
    inter = w.shape[0] // 2
    cfg = config or swiglu_config(m)
    if inter % cfg.block_n or k % cfg.block_k:
        raise ValueError(f"gate_up_silu: {inter} columns and K={k} do not tile by {cfg}")
    out = torch.empty((m, inter), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(m, cfg.block_m) * (inter // cfg.block_n),)
    _gate_up_silu_kernel[grid](TensorDescriptor.from_tensor(x, [cfg.block_m, cfg.block_k]),
                               TensorDescriptor.from_tensor(w, [cfg.block_n, cfg.block_k]), out, m, k, inter,
                               out.stride(0), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                               num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out


def qkv_rope_cache(x: torch.Tensor, w: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                   write_blocks: torch.Tensor, write_slots: torch.Tensor, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int, want_kv: bool = True,
                   config: TileConfig | None = None):
    """The QKV projection of ``x`` by ``w`` [(heads + 2 kv_heads) * hd, K] followed by ``rope_and_cache``'s
    work, in one kernel; same arguments and result as ``fused_ops.rope_and_cache`` on ``x @ w.T``."""
    _check_operands(x, w, "qkv_rope_cache")
    if w.shape[0] != (num_heads + 2 * num_kv_heads) * head_dim:
        raise ValueError(f"qkv_rope_cache: the weight has {w.shape[0]} rows, {num_heads} + 2 x {num_kv_heads} "
                         f"heads of {head_dim} need {(num_heads + 2 * num_kv_heads) * head_dim}")
    if not applies(x):
        return rope_and_cache(F.linear(x, w), cos, sin, positions, write_blocks, write_slots, k_cache, v_cache,
                              num_heads, num_kv_heads, head_dim, want_kv)
    if k_cache.stride() != v_cache.stride() or k_cache.stride(3) != 1:
        raise ValueError(f"qkv_rope_cache: K and V caches need equal strides and a contiguous head dimension, "
                         f"got {k_cache.stride()} and {v_cache.stride()}")
    m, k = x.shape
    cfg = config or qkv_config(m)
    if k % cfg.block_k:
        raise ValueError(f"qkv_rope_cache: K={k} does not tile by {cfg}")
    half = head_dim // 2
    q = torch.empty((m, num_heads, head_dim), dtype=x.dtype, device=x.device)
    kv = torch.empty((2, m, num_kv_heads, head_dim), dtype=x.dtype, device=x.device) if want_kv else None
    k_own, v_own = (kv[0], kv[1]) if want_kv else (q, q)
    grid = (triton.cdiv(m, cfg.block_m) * (num_heads + 2 * num_kv_heads),)
    _qkv_rope_cache_kernel[grid](
        TensorDescriptor.from_tensor(x, [cfg.block_m, cfg.block_k]),
        TensorDescriptor.from_tensor(w, [half, cfg.block_k]),
        cos, sin, positions, write_blocks, write_slots, q, k_cache, v_cache, k_own, v_own, m, k,
        q.stride(0), cos.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        k_own.stride(0) if want_kv else 0, NH=num_heads, NKV=num_kv_heads, HALF=half, WRITE_KV=want_kv,
        BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return (q, kv[0], kv[1]) if want_kv else (q, None, None)
