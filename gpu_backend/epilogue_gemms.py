"""The gate/up product of a decode batch with SwiGLU applied as it writes its tiles.

Why: inside a captured decode step every kernel launch costs about 1.15 us on an H200 even
when the kernel does nothing (``benchmarks/small_kernels_gpu.py``, BENCHMARKS.md session 12),
and ``llama-1b`` runs 9 kernels a layer. SwiGLU's ``silu(gate) * up`` needs only the columns of
one output tile, so the product can finish it in its epilogue: one kernel, one launch and one
round trip of the [T, 2I] product through memory fewer a layer.

``gate_up_silu``: a program owns output columns ``n .. n+BN`` and keeps two accumulators, over
the gate rows ``n`` and the up rows ``I + n`` of the fused gate/up weight, so the weight keeps its
layout. It feeds the tensor cores through Hopper's tensor memory accelerator (host-built
``TensorDescriptor``s), so it needs compute capability 9.0 and a Triton that has them. It rounds
where transformers' Llama does (gate and up to bf16, the SiLU, the product), as
``fused_ops.silu_mul`` does after cuBLAS: on an H200 the two agree bit for bit. It runs only for
the weight shapes and row counts where it beat cuBLAS + ``silu_mul`` with cold weights
(``MEASURED_FASTER``: ``llama-1b`` at 128-512 rows, 1.04-1.11x, ``benchmarks/epilogue_gemms_gpu.py``);
everything else, and every CPU call, takes that pair.

The same idea for the QKV product (RoPE and the paged KV write in its epilogue, commit 7b46fdd)
ran 0.59-0.73x of cuBLAS + ``rope_and_cache`` at 32-512 rows: one head per program leaves the
3,072 output columns of ``llama-1b`` too few programs with too little work each, and removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gpu_backend.fused_ops import silu_mul

try:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - CPU-only installs, or a Triton without tensor descriptors
    triton = None
    tl = None
    TensorDescriptor = None

# Gate/up weight shapes [2I, K] -> the decode rows at which the kernel beat cuBLAS + silu_mul, read cold on an H200
# (``benchmarks/epilogue_gemms_gpu.py --model M``, session 12): llama-1b 1.04-1.11x at 128-512 rows. It lost on
# smollm2-135m's [3072, 576] (0.61-0.86x at 128-512 rows) and came out mixed on llama-8b's [28672, 4096]
# (0.83-1.03x), so those keep the pair. Measure a shape before adding it.
MEASURED_FASTER: dict[tuple[int, int], tuple[int, int]] = {(16384, 2048): (128, 512)}


@dataclass(frozen=True, slots=True)
class TileConfig:
    """One launch of the epilogue product: rows per program, reduction step, warps, pipeline stages and
    output columns per program."""

    block_m: int
    block_k: int
    num_warps: int
    num_stages: int
    block_n: int


def supported(device: torch.device) -> bool:
    """Tensor-memory-accelerator kernels need a CUDA device of compute capability 9.0 or newer."""
    return (TensorDescriptor is not None and device.type == "cuda" and torch.cuda.is_available()
            and torch.cuda.get_device_capability(device)[0] >= 9)


def applies(x: torch.Tensor, w: torch.Tensor) -> bool:
    """True when ``x`` times the gate/up weight ``w`` goes through the epilogue kernel: on CUDA, for a weight
    shape and row count where it measured faster (``MEASURED_FASTER``)."""
    rows = MEASURED_FASTER.get(tuple(w.shape))
    return (rows is not None and x.is_cuda and x.dim() == 2 and rows[0] <= x.shape[0] <= rows[1]
            and TensorDescriptor is not None)


def swiglu_config(rows: int) -> TileConfig:
    """The fastest measured launch (session 12, cold weights): narrower tiles where few rows leave few programs."""
    if rows <= 128:
        return TileConfig(128, 128, 8, 3, block_n=64)
    return TileConfig(128, 64, 8, 4, block_n=128)


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


def _check_operands(x: torch.Tensor, w: torch.Tensor, caller: str) -> None:
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"{caller}: x {tuple(x.shape)} and weight {tuple(w.shape)} do not multiply as x @ w.T")
    if not (x.is_contiguous() and w.is_contiguous()):
        raise ValueError(f"{caller}: x and the weight must be contiguous (tensor descriptors read them by rows)")


def gate_up_silu(x: torch.Tensor, w: torch.Tensor, linear=F.linear) -> torch.Tensor:
    """``silu(x @ gate.T) * (x @ up.T)`` for the fused gate/up weight ``w`` [2I, K]: [T, I]. The epilogue
    kernel where ``applies(x, w)``; elsewhere ``linear`` (the caller's product: ``F.linear``, or the
    executor's ``LinearPlan``) and ``fused_ops.silu_mul``."""
    if applies(x, w):
        return gate_up_silu_kernel(x, w, swiglu_config(x.shape[0]))
    _check_operands(x, w, "gate_up_silu")
    return silu_mul(linear(x, w))


def gate_up_silu_kernel(x: torch.Tensor, w: torch.Tensor, cfg: TileConfig) -> torch.Tensor:
    """``gate_up_silu`` by the Triton kernel at launch ``cfg``, for any row count (CUDA, or Triton's
    interpreter)."""
    _check_operands(x, w, "gate_up_silu")
    if triton is None or TensorDescriptor is None:
        raise RuntimeError("gate_up_silu_kernel needs a Triton with tensor descriptors "
                           "(triton.tools.tensor_descriptor)")
    m, k = x.shape
    inter = w.shape[0] // 2
    if w.shape[0] % 2 or inter % cfg.block_n or k % cfg.block_k:
        raise ValueError(f"gate_up_silu: a fused gate/up weight of {w.shape[0]} rows and K={k} does not tile "
                         f"by {cfg}")
    out = torch.empty((m, inter), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(m, cfg.block_m) * (inter // cfg.block_n),)
    _gate_up_silu_kernel[grid](TensorDescriptor.from_tensor(x, [cfg.block_m, cfg.block_k]),
                               TensorDescriptor.from_tensor(w, [cfg.block_n, cfg.block_k]), out, m, k, inter,
                               out.stride(0), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                               num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out
