"""The split-K linear kernel and the per-shape plan that picks it (gpu_backend/skinny_gemm.py).

The kernel runs on a CUDA device, or on the CPU under Triton's interpreter
(``TRITON_INTERPRET=1 python -m pytest tests/gpu_backend/test_skinny_gemm.py`` with triton
installed); elsewhere those tests are skipped."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpu_backend.skinny_gemm import CANDIDATES, GemmConfig, LinearPlan, ShapeChoice, split_k_linear
from tests.gpu_backend.kernel_device import kernel_device


needs_kernel = pytest.mark.skipif(kernel_device() is None, reason="needs CUDA, or triton with TRITON_INTERPRET=1")


def test_config_fits_only_whole_reduction_steps_per_split():
    cfg = GemmConfig(64, 128, 64, split_k=4)
    assert cfg.fits(256, 2048, 8192) and cfg.fits(1, 128, 256)
    assert not cfg.fits(256, 2048, 8192 + 64)       # 8256 is not a multiple of 4 x 64
    assert not cfg.fits(256, 2000, 8192)            # 2000 columns do not fill whole 128-column tiles
    assert not cfg.fits(0, 2048, 8192)
    assert cfg.label() == "64x128x64/s4/w4/st4"
    assert all(c.block_m >= 16 and c.split_k >= 1 for c in CANDIDATES)


def test_plan_without_choices_is_f_linear_and_refuses_nothing_on_the_cpu():
    x, w = torch.randn(8, 32), torch.randn(16, 32)
    plan = LinearPlan()
    assert torch.equal(plan(x, w), F.linear(x, w))
    plan.tune([8], [w])                              # CPU weights: nothing to time, nothing chosen
    assert plan.choices == {}
    # a choice for this shape is never taken off CUDA
    plan.choices[(8, 16, 32)] = ShapeChoice(8, 16, 32, 1.0, 0.5, GemmConfig(16, 16, 32, 1))
    assert torch.equal(plan(x, w), F.linear(x, w))


@needs_kernel
@pytest.mark.parametrize("m,n,k,cfg", [(5, 64, 256, GemmConfig(16, 32, 32, 2)),
                                       (40, 64, 256, GemmConfig(32, 64, 64, 4)),
                                       (33, 128, 128, GemmConfig(16, 64, 128, 1)),
                                       (64, 32, 512, GemmConfig(64, 32, 64, 8))])
def test_split_k_matches_f_linear(m, n, k, cfg):
    dev = kernel_device()
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    g = torch.Generator().manual_seed(m * n)
    x = torch.randn(m, k, generator=g).to(dev, dtype)
    w = (torch.randn(n, k, generator=g) * 0.05).to(dev, dtype)
    got = split_k_linear(x, w, cfg)
    assert got.shape == (m, n) and got.dtype == dtype
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(got.float(), F.linear(x, w).float(), rtol=tol, atol=tol)


@needs_kernel
def test_split_k_refuses_shapes_it_cannot_run():
    dev = kernel_device()
    x, w = torch.randn(8, 96, device=dev), torch.randn(32, 96, device=dev)
    with pytest.raises(ValueError, match=r"config 16x32x64/s1/w4/st4 does not fit rows=8, n=32, k=96"):
        split_k_linear(x, w, GemmConfig(16, 32, 64, 1))
    with pytest.raises(ValueError, match="x has 96 columns but the weight has 64"):
        split_k_linear(x, torch.randn(32, 64, device=dev), GemmConfig(16, 32, 32, 1))
