"""The split-K linear kernel and the per-shape plan that picks it (gpu_backend/skinny_gemm.py).

The kernel runs on a CUDA device, or on the CPU under Triton's interpreter
(``TRITON_INTERPRET=1 python -m pytest tests/gpu_backend/test_skinny_gemm.py`` with triton
installed); elsewhere those tests are skipped."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpu_backend.skinny_gemm import (CANDIDATES, GemmConfig, LinearPlan, ShapeChoice, batched_split_count,
                                      batched_split_linear, split_k_linear)
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


def test_batched_split_partials_sum_to_the_product():
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(6, 64, generator=g), torch.randn(24, 64, generator=g)
    parts = batched_split_linear(x, w, 4)
    assert parts.shape == (4, 6, 24)
    for s in range(4):      # partial s is the product over K columns [16 s, 16 s + 16)
        torch.testing.assert_close(parts[s], F.linear(x[:, 16 * s:16 * s + 16], w[:, 16 * s:16 * s + 16]))
    torch.testing.assert_close(parts.sum(0), F.linear(x, w), rtol=1e-5, atol=1e-5)


def test_batched_split_refuses_bad_splits_and_layouts():
    x, w = torch.randn(6, 64), torch.randn(24, 64)
    with pytest.raises(ValueError, match="3 splits of K=64 are not whole multiples of 8 columns"):
        batched_split_linear(x, w, 3)
    with pytest.raises(ValueError, match="x has 64 columns but the weight has 32"):
        batched_split_linear(x, w[:, :32].contiguous(), 2)
    with pytest.raises(ValueError, match="contiguous along K"):
        batched_split_linear(x, torch.randn(64, 24).t(), 2)


def test_split_count_fills_one_wave_of_tiles_with_long_enough_slices():
    sms = 132
    assert batched_split_count(256, 2048, 8192, sms) == 4     # llama-1b down: 32 tiles -> 128
    assert batched_split_count(512, 2048, 8192, sms) == 2     # 64 tiles: 4 slices would need 256 SMs
    assert batched_split_count(256, 2048, 2048, sms) == 2     # output: 4 slices of 512 columns are too short
    assert batched_split_count(128, 4096, 14336, sms) == 4    # llama-8b down: 32 tiles, slices of 3,584
    assert batched_split_count(512, 3072, 2048, sms) == 1     # QKV: 96 tiles, no room for a second slice
    assert batched_split_count(64, 16384, 2048, sms) == 1     # gate/up: 128 tiles already
    assert batched_split_count(256, 576, 1536, sms) == 2      # smollm2 down: 1536 / 4 < 2048
    assert batched_split_count(256, 960, 576, sms) == 2       # smollm2 QKV: two slices of 288
    assert batched_split_count(256, 960, 480, sms) == 1       # 240 columns a slice are too few
    assert batched_split_count(256, 960, 584, sms) == 1       # 584 is not two whole multiples of 8
    assert batched_split_count(32, 2048, 8192, sms) == 1      # outside the measured 64-512 rows
    assert batched_split_count(513, 2048, 8192, sms) == 1
    assert batched_split_count(256, 2048, 8192, 64) == 2      # a smaller GPU: 32 tiles x 2 slices fill 64 SMs
    assert batched_split_count(256, 2048, 8192, 48) == 1
