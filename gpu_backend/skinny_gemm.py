"""Linear layers for few-row batches: products split over K, where that fills a GPU that one product leaves idle.

Why: a decode step multiplies ``M`` rows (one per sequence, 256 at most here) by each weight
matrix. When the weight has few output columns (the ~1B shape's down projection: 8192 -> 2048),
``M x N`` holds only a few dozen 128 x 128 output tiles for 132 SMs, and cuBLAS ran that product
at half the GPU's matrix rate on an H200 (21.7 us against a 10.9 us compute floor). Splitting
the reduction dimension ``K`` over ``S`` programs per tile fills the machine; a second kernel sums
the ``S`` float32 partial products and rounds once to the model's dtype (the split-K scheme of
CUTLASS's "parallel split-K" GEMMs).

Two ways, both off by default (the shipped fitted profiles timed the executor without them):

- ``LinearPlan.tune`` times cuBLAS and every ``GemmConfig`` candidate of our Triton kernel on the
  GPU for each (rows, weight shape) the executor will replay in a CUDA graph and keeps the
  fastest (faster alone on some shapes, 2% slower inside the whole decode step);
- ``LinearPlan.partials`` (``split_sms``) cuts K into 2 or 4 slices by ``batched_split_count`` and
  lets cuBLAS multiply them as one batched product; the fused kernel after the product
  (``gpu_backend.fused_ops``) sums the partials, so no reduction kernel runs.

Shapes neither picks, and every CPU call, go to ``F.linear``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from gpu_backend.cuda_timing import graph_seconds

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None
    tl = None


@dataclass(frozen=True, slots=True)
class GemmConfig:
    """One compiled variant of the split-K kernel: output tile, reduction step, split count, launch shape."""

    block_m: int
    block_n: int
    block_k: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 4

    def fits(self, m: int, n: int, k: int) -> bool:
        """True when the kernel can run this shape: every split covers whole reduction steps."""
        return m >= 1 and k % (self.split_k * self.block_k) == 0 and n % self.block_n == 0

    def label(self) -> str:
        return (f"{self.block_m}x{self.block_n}x{self.block_k}/s{self.split_k}"
                f"/w{self.num_warps}/st{self.num_stages}")


# Tiles of 64 or 128 rows, split 1-8 ways: the candidates a decode batch of 32-256 rows needs.
CANDIDATES: tuple[GemmConfig, ...] = tuple(
    GemmConfig(bm, bn, bk, s, w, st)
    for bm, bn, bk, w, st, splits in ((64, 64, 128, 4, 4, (1, 2, 4, 8)), (64, 128, 64, 4, 4, (1, 2, 4)),
                                      (128, 128, 64, 8, 4, (1, 2, 4)), (128, 64, 64, 4, 4, (2, 4)))
    for s in splits
)


if triton is not None:
    @triton.jit
    def _split_k_kernel(A, W, C, M, N, K_PER_SPLIT, stride_am, stride_wn, stride_cs, stride_cm,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # Programs that share a weight tile are adjacent, so the tile is read from DRAM once.
        pid = tl.program_id(0)
        num_m = tl.cdiv(M, BLOCK_M)
        pid_n = pid // num_m
        pid_m = pid % num_m
        split = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = split * K_PER_SPLIT + tl.arange(0, BLOCK_K)
        a_ptrs = A + offs_m[:, None] * stride_am + offs_k[None, :]
        w_ptrs = W + offs_n[:, None] * stride_wn + offs_k[None, :]
        rows_ok = offs_m[:, None] < M
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for _ in range(0, K_PER_SPLIT, BLOCK_K):
            a = tl.load(a_ptrs, mask=rows_ok, other=0.0)
            w = tl.load(w_ptrs)
            acc = tl.dot(a, tl.trans(w), acc)
            a_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
        c_ptrs = C + split * stride_cs + offs_m[:, None] * stride_cm + offs_n[None, :]
        tl.store(c_ptrs, acc.to(C.dtype.element_ty), mask=rows_ok)

    @triton.jit
    def _sum_splits_kernel(P, C, numel, SPLITS: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < numel
        acc = tl.load(P + offs, mask=ok, other=0.0)
        for s in tl.static_range(1, SPLITS):
            acc += tl.load(P + s * numel + offs, mask=ok, other=0.0)
        tl.store(C + offs, acc.to(C.dtype.element_ty), mask=ok)


def split_k_linear(x: torch.Tensor, weight: torch.Tensor, cfg: GemmConfig) -> torch.Tensor:
    """``x @ weight.T`` (``F.linear`` without bias) by the Triton kernel with ``cfg``."""
    if triton is None:
        raise RuntimeError("split_k_linear needs triton (it ships with CUDA builds of torch)")
    m, k = x.shape
    n, k_w = weight.shape
    if k != k_w:
        raise ValueError(f"split_k_linear: x has {k} columns but the weight has {k_w}")
    if not cfg.fits(m, n, k):
        raise ValueError(f"split_k_linear: config {cfg.label()} does not fit rows={m}, n={n}, k={k}")
    if x.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError("split_k_linear: x and weight must be contiguous along their last dimension")
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    s = cfg.split_k
    dest = out if s == 1 else torch.empty((s, m, n), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(m, cfg.block_m) * (n // cfg.block_n), s)
    _split_k_kernel[grid](x, weight, dest, m, n, k // s, x.stride(0), weight.stride(0),
                          dest.stride(0) if s > 1 else 0, n, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                          BLOCK_K=cfg.block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if s > 1:
        block = 1024
        _sum_splits_kernel[(triton.cdiv(m * n, block),)](dest, out, m * n, SPLITS=s, BLOCK=block)
    return out


def batched_split_linear(x: torch.Tensor, weight: torch.Tensor, splits: int) -> torch.Tensor:
    """The ``splits`` partial products of ``x @ weight.T`` over equal slices of K, as one batched cuBLAS
    call: [splits, M, N] in ``x``'s dtype. Both operands are strided views, nothing is copied; the
    consumer sums the partials (``gpu_backend.fused_ops`` does so on the way in)."""
    m, k = x.shape
    n, k_w = weight.shape
    if k != k_w:
        raise ValueError(f"batched_split_linear: x has {k} columns but the weight has {k_w}")
    if splits < 1 or k % (8 * splits):
        raise ValueError(f"batched_split_linear: {splits} splits of K={k} are not whole multiples of 8 columns")
    if x.stride(1) != 1 or weight.stride(1) != 1 or weight.stride(0) != k:
        raise ValueError("batched_split_linear: x and weight must be contiguous along K (weight fully contiguous)")
    ks = k // splits
    return torch.bmm(x.view(m, splits, ks).transpose(0, 1), weight.view(n, splits, ks).permute(1, 2, 0))


def batched_split_count(m: int, n: int, k: int, sms: int) -> int:
    """How many K slices ``batched_split_linear`` should cut an ``m``-row product by ``n x k`` into (1: none).

    The rule fills the GPU with output tiles: the product's 128 x 128 tiles times the slices must fit
    the ``sms`` multiprocessors in one wave; 4 slices when each keeps at least 2,048 columns of K, else
    2 when each keeps 256. It stays within the rows where it was measured (64-512,
    ``benchmarks/batched_split_gpu.py``, BENCHMARKS.md session 11): on the 24 measured QKV, output and
    down products of three models it picks the fastest option or one within 3% of it on 21, 9% at
    worst, and is never more than 3% slower than cuBLAS."""
    if not 64 <= m <= 512:
        return 1
    tiles = -(-m // 128) * -(-n // 128)
    if tiles * 4 <= sms and k % 32 == 0 and k // 4 >= 2048:
        return 4
    if tiles * 2 <= sms and k % 16 == 0 and k // 2 >= 256:
        return 2
    return 1


@dataclass(slots=True)
class ShapeChoice:
    """What tuning measured for one (rows, n, k): cuBLAS's time and the best kernel's, if it won."""

    rows: int
    n: int
    k: int
    cublas_s: float
    best_s: float
    config: GemmConfig | None     # None: cuBLAS stays


_TUNED: dict[tuple, ShapeChoice] = {}


@dataclass
class LinearPlan:
    """Which implementation multiplies each tuned (rows, weight shape); ``F.linear`` for everything else."""

    choices: dict[tuple[int, int, int], ShapeChoice] = field(default_factory=dict)
    split_sms: int = 0      # > 0: ``partials`` splits K by ``batched_split_count`` for this many SMs

    def partials(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The product for a consumer that sums split-K partials (``gpu_backend.fused_ops``): [T, N], or
        [S, T, N] when splitting is on (``split_sms``), ``x`` is on CUDA and the rule splits this shape."""
        if self.split_sms and x.is_cuda and x.dim() == 2:
            s = batched_split_count(x.shape[0], weight.shape[0], weight.shape[1], self.split_sms)
            if s > 1:
                return batched_split_linear(x, weight, s)
        return self(x, weight)

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.choices and x.is_cuda and x.dim() == 2:
            choice = self.choices.get((x.shape[0], weight.shape[0], weight.shape[1]))
            if choice is not None and choice.config is not None:
                return split_k_linear(x, weight, choice.config)
        return F.linear(x, weight)

    def tune(self, rows: list[int], weights: list[torch.Tensor],
             candidates: tuple[GemmConfig, ...] = CANDIDATES) -> None:
        """Time cuBLAS and each fitting candidate for every (rows, weight) on its CUDA device; keep the fastest.

        A candidate must also reproduce cuBLAS's product to bf16 rounding, so a kernel that
        miscompiles on some GPU is never picked."""
        shapes = {(w.shape[0], w.shape[1]): w for w in weights}
        for (n, k), w in shapes.items():
            if not w.is_cuda or triton is None:
                return
            for m in rows:
                key = (str(w.device), w.dtype, m, n, k, candidates)
                if key in _TUNED:       # another executor in this process already measured it
                    self.choices[(m, n, k)] = _TUNED[key]
                    continue
                x = torch.randn((m, k), dtype=w.dtype, device=w.device) * 0.1
                reference = F.linear(x, w)
                cublas = graph_seconds(lambda: F.linear(x, w))
                best, best_cfg = cublas, None
                for cfg in candidates:
                    if not cfg.fits(m, n, k):
                        continue
                    got = split_k_linear(x, w, cfg)
                    if not torch.allclose(got.float(), reference.float(), rtol=2e-2, atol=2e-2):
                        continue
                    t = graph_seconds(lambda: split_k_linear(x, w, cfg))
                    if t < best:
                        best, best_cfg = t, cfg
                self.choices[(m, n, k)] = _TUNED[key] = ShapeChoice(m, n, k, cublas, best, best_cfg)
