"""Causal attention of fresh prefill chunks: grouped-query heads are mapped to their KV head by SDPA itself
(``enable_gqa``) and agree with K and V repeated to every query head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpu_backend.paged_attention import causal_attention


def repeated_heads_reference(q, k, v, scale):
    group = q.shape[2] // k.shape[2]
    qh, kh, vh = (t.transpose(1, 2).float() for t in (q, k, v))
    kh = kh.repeat_interleave(group, dim=1)
    vh = vh.repeat_interleave(group, dim=1)
    return F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale).transpose(1, 2)


def chunks(device, dtype, heads, kv_heads, head_dim, g=3, n=40):
    gen = torch.Generator().manual_seed(heads * 100 + head_dim)
    q, k, v = (torch.randn(g, n, h, head_dim, generator=gen).to(device, dtype)
               for h in (heads, kv_heads, kv_heads))
    return q, k, v


@pytest.mark.parametrize("heads, kv_heads", [(8, 2), (6, 6)])
def test_grouped_heads_equal_repeated_heads_on_the_cpu(heads, kv_heads):
    q, k, v = chunks("cpu", torch.float32, heads, kv_heads, 16)
    got = causal_attention(q, k, v, 0.25)
    assert got.shape == q.shape
    torch.testing.assert_close(got, repeated_heads_reference(q, k, v, 0.25), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype, head_dim", [(torch.bfloat16, 64), (torch.bfloat16, 128), (torch.float32, 64)])
def test_grouped_heads_on_cuda_match_a_float32_reference(dtype, head_dim):
    # bf16 takes flash attention with enable_gqa; float32, which flash refuses, repeats K and V
    q, k, v = chunks("cuda", dtype, 32, 8, head_dim)
    scale = head_dim ** -0.5
    got = causal_attention(q, k, v, scale).float()
    want = repeated_heads_reference(q, k, v, scale)
    err = float((got - want).norm() / want.norm())
    assert err < (1e-2 if dtype == torch.bfloat16 else 1e-5), err
