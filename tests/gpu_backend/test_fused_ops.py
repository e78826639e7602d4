"""The residual add + RMSNorm of gpu_backend/fused_ops.py, with a plain product or split-K partials.

The Triton kernel runs on a CUDA device, or on the CPU under Triton's interpreter
(``TRITON_INTERPRET=1``); the interpreter rounds to bf16 differently, so there the kernel is
compared with the torch path in float32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpu_backend import fused_ops
from gpu_backend.fused_ops import add_rms_norm, greedy_tokens, rms_norm_torch, rope_and_cache, silu_mul
from tests.gpu_backend.kernel_device import kernel_device

needs_kernel = pytest.mark.skipif(kernel_device() is None, reason="needs CUDA, or triton with TRITON_INTERPRET=1")


def _inputs(splits: int, dtype=torch.float32, t: int = 5, n: int = 48):
    g = torch.Generator().manual_seed(splits)
    h = torch.randn(t, n, generator=g).to(dtype)
    x = torch.randn(splits, t, n, generator=g).to(dtype)
    w = torch.randn(n, generator=g).to(dtype)
    return h, x, w


def test_partials_are_summed_then_added_once_on_the_torch_path():
    h, x, w = _inputs(3, torch.bfloat16)
    summed = x.float().sum(0).to(torch.bfloat16)
    h_split, h_plain = h.clone(), h.clone()
    y_split = add_rms_norm(x, h_split, w, 1e-5)
    y_plain = add_rms_norm(summed, h_plain, w, 1e-5)
    assert torch.equal(h_split, h + summed)          # the residual stream took the rounded sum
    assert torch.equal(h_split, h_plain) and torch.equal(y_split, y_plain)
    assert torch.equal(y_plain, rms_norm_torch(h + summed, w, 1e-5))


def test_shape_mismatch_names_both_shapes():
    h, x, w = _inputs(2)
    with pytest.raises(ValueError, match=r"x has shape \(2, 5, 47\), the residual \(5, 48\)"):
        add_rms_norm(x[..., :47], h, w, 1e-5)
    with pytest.raises(ValueError, match=r"\(4, 48\), the residual \(5, 48\)"):
        add_rms_norm(x[0, :4], h, w, 1e-5)


@needs_kernel
@pytest.mark.parametrize("splits", [1, 2, 3, 4])
def test_kernel_matches_torch_path(splits, monkeypatch):
    dev = kernel_device()
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    h, x, w = _inputs(splits, dtype)
    h, x, w = h.to(dev), x.to(dev), w.to(dev)
    x_in = x[0] if splits == 1 else x
    h_kernel, h_torch = h.clone(), h.clone()
    if dev == "cpu":     # the public function takes the torch path off CUDA; call the kernel itself
        monkeypatch.setattr(fused_ops, "_use_triton", lambda t: True)
    y_kernel = add_rms_norm(x_in, h_kernel, w, 1e-5)
    monkeypatch.setattr(fused_ops, "_use_triton", lambda t: False)
    y_torch = add_rms_norm(x_in, h_torch, w, 1e-5)
    tol = 0 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(h_kernel, h_torch, rtol=tol, atol=tol)
    torch.testing.assert_close(y_kernel, y_torch, rtol=tol or 1e-6, atol=tol or 1e-5)


@needs_kernel
def test_kernel_without_x_only_normalises(monkeypatch):
    dev = kernel_device()
    h, _, w = _inputs(1)
    h, w = h.to(dev), w.to(dev)
    before = h.clone()
    monkeypatch.setattr(fused_ops, "_use_triton", lambda t: True)
    y = add_rms_norm(None, h, w, 1e-5)
    assert torch.equal(h, before)
    torch.testing.assert_close(y, rms_norm_torch(before, w, 1e-5), rtol=1e-6, atol=1e-5)


def _rope_inputs(splits: int, dtype=torch.float32, t: int = 3, nh: int = 4, nkv: int = 2, hd: int = 8):
    g = torch.Generator().manual_seed(10 + splits)
    qkv = torch.randn(splits, t, (nh + 2 * nkv) * hd, generator=g).to(dtype)
    angles = torch.arange(16, dtype=torch.float32)[:, None] * torch.rand(hd // 2, generator=g)[None, :]
    emb = torch.cat((angles, angles), dim=-1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    positions = torch.tensor([0, 5, 11][:t])
    blocks, slots = torch.tensor([1, 0, 2][:t]), torch.tensor([3, 1, 0][:t])
    k_cache = torch.zeros(3, nkv, 4, hd, dtype=dtype)
    return qkv, cos, sin, positions, blocks, slots, k_cache, torch.zeros_like(k_cache), (nh, nkv, hd)


def test_rope_and_cache_sums_partials_before_rotating():
    qkv, cos, sin, pos, blocks, slots, kc, vc, heads = _rope_inputs(3, torch.bfloat16)
    summed = qkv.float().sum(0).to(torch.bfloat16)
    kc2, vc2 = kc.clone(), vc.clone()
    q, k, v = rope_and_cache(qkv, cos, sin, pos, blocks, slots, kc, vc, *heads)
    q2, k2, v2 = rope_and_cache(summed, cos, sin, pos, blocks, slots, kc2, vc2, *heads)
    assert torch.equal(q, q2) and torch.equal(k, k2) and torch.equal(v, v2)
    assert torch.equal(kc, kc2) and torch.equal(vc, vc2)
    assert torch.equal(vc[1, :, 3], summed[0, 48:].view(2, 8))     # token 0's V in block 1, slot 3


def test_rope_and_cache_refuses_a_qkv_of_the_wrong_width():
    qkv, cos, sin, pos, blocks, slots, kc, vc, _ = _rope_inputs(1)
    with pytest.raises(ValueError, match="qkv has 64 columns, 4 \\+ 2 x 3 heads of 8 need 80"):
        rope_and_cache(qkv[0], cos, sin, pos, blocks, slots, kc, vc, 4, 3, 8)


def test_silu_mul_sums_partials_first():
    g = torch.Generator().manual_seed(4)
    gu = torch.randn(2, 3, 16, generator=g).to(torch.bfloat16)
    summed = gu.float().sum(0).to(torch.bfloat16)
    assert torch.equal(silu_mul(gu), silu_mul(summed))
    assert torch.equal(silu_mul(summed), F.silu(summed[:, :8]) * summed[:, 8:])


@needs_kernel
@pytest.mark.parametrize("splits", [1, 2, 4])
def test_rope_kernel_matches_torch_path(splits, monkeypatch):
    dev = kernel_device()
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    qkv, cos, sin, pos, blocks, slots, kc, vc, heads = (a.to(dev) if isinstance(a, torch.Tensor) else a
                                                        for a in _rope_inputs(splits, dtype))
    qkv_in = qkv[0] if splits == 1 else qkv
    kc2, vc2 = kc.clone(), vc.clone()
    monkeypatch.setattr(fused_ops, "_use_triton", lambda t: True)
    q, k, v = rope_and_cache(qkv_in, cos, sin, pos, blocks, slots, kc, vc, *heads)
    monkeypatch.setattr(fused_ops, "_use_triton", lambda t: False)
    q2, k2, v2 = rope_and_cache(qkv_in, cos, sin, pos, blocks, slots, kc2, vc2, *heads)
    tol = 0 if dtype == torch.float32 else 1e-2
    for a, b in ((q, q2), (k, k2), (v, v2), (kc, kc2), (vc, vc2)):
        torch.testing.assert_close(a, b, rtol=tol or 1e-6, atol=tol or 1e-6)


@needs_kernel
@pytest.mark.parametrize("splits", [1, 3])
def test_silu_kernel_matches_torch_path(splits, monkeypatch):
    dev = kernel_device()
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    g = torch.Generator().manual_seed(splits)
    gu = torch.randn(splits, 3, 2 * 1100, generator=g).to(dev, dtype)    # 1100 columns: two blocks, masked
    gu_in = gu[0] if splits == 1 else gu
    monkeypatch.setattr(fused_ops, "_use_triton", lambda t: True)
    got = silu_mul(gu_in)
    monkeypatch.setattr(fused_ops, "_use_triton", lambda t: False)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got, silu_mul(gu_in), rtol=tol, atol=tol)


def _tied_logits(dtype=torch.float32):
    """Three rows over 9,000 tokens (three 4,096-token blocks of the kernel) with their maximum tied."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(3, 9000, generator=g).to(dtype)
    x[0, [7, 4100, 8999]] = 9.0          # tied across blocks: the first wins
    x[1, [5000, 5001]] = 9.0             # tied inside one block
    x[2, 8999] = 9.0                     # in the last, partial block
    return x


def test_greedy_tokens_writes_the_first_maximum_into_out():
    x = _tied_logits()
    out = torch.full((3,), -1, dtype=torch.long)
    assert greedy_tokens(x, out) is out
    assert out.tolist() == [7, 5000, 8999] == x.argmax(-1).tolist()
    with pytest.raises(ValueError, match=r"logits \(3, 9000\) need an int64 out of shape \(3,\), "
                                         r"got torch.int32 \(3,\)"):
        greedy_tokens(x, torch.zeros(3, dtype=torch.int32))


@needs_kernel
def test_argmax_kernel_matches_torch_including_ties(monkeypatch):
    dev = kernel_device()
    x = _tied_logits(torch.bfloat16 if dev == "cuda" else torch.float32).to(dev)
    g = torch.Generator().manual_seed(9)
    x = torch.cat([x, torch.randn(5, 9000, generator=g).to(x.device, x.dtype)])
    out = torch.full((8,), -1, dtype=torch.long, device=dev)
    monkeypatch.setattr(fused_ops, "_use_triton", lambda t: True)
    greedy_tokens(x, out)
    assert out.tolist() == x.argmax(-1).tolist()
    assert out[:3].tolist() == [7, 5000, 8999]
