"""The decode layer's RoPE + KV write + paged attention kernel (gpu_backend/rope_decode_attention.py).

The kernel runs on CUDA, or on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``), where
it is compared in float32 with the unfused path: ``rope_and_cache`` and the reference attention."""

from __future__ import annotations

import pytest
import torch

from gpu_backend import rope_decode_attention as rda
from gpu_backend.fused_ops import rope_and_cache
from gpu_backend.paged_attention import decode_attention_torch
from tests.gpu_backend.kernel_device import kernel_device

needs_kernel = pytest.mark.skipif(kernel_device() is None, reason="needs CUDA, or triton with TRITON_INTERPRET=1")

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 8, 2, 16, 16


def _inputs(dev: str, dtype: torch.dtype, partials: int, ctx: list[int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B = len(ctx)
    width = HEADS * HEAD_DIM + 2 * KV_HEADS * HEAD_DIM
    qkv = torch.randn(partials, B, width, generator=g)        # partials in the model's dtype, as cuBLAS writes them
    qkv = (qkv[0] if partials == 1 else qkv).to(dev, dtype)
    angles = torch.arange(64, dtype=torch.float32)[:, None] * (1.0 / 10000 ** (torch.arange(0, HEAD_DIM, 2) / HEAD_DIM))
    emb = torch.cat((angles, angles), -1)
    cos, sin = emb.cos().to(dev, dtype), emb.sin().to(dev, dtype)
    kc = torch.randn(32, KV_HEADS, BLOCK, HEAD_DIM, generator=g).to(dev, dtype)
    vc = torch.randn(32, KV_HEADS, BLOCK, HEAD_DIM, generator=g).to(dev, dtype)
    tables = torch.stack([torch.randperm(32, generator=g)[:4] for _ in range(B)]).to(dev)
    ctx_t = torch.tensor(ctx, device=dev)
    pos = (ctx_t - 1).clamp(min=0)
    blocks = tables.gather(1, (pos // BLOCK)[:, None]).squeeze(1)
    return qkv, cos, sin, pos, blocks, pos % BLOCK, kc, vc, tables, ctx_t


def _unfused(qkv, cos, sin, pos, blocks, slots, kc, vc, tables, ctx, scale):
    q, _, _ = rope_and_cache(qkv, cos, sin, pos, blocks, slots, kc, vc, HEADS, KV_HEADS, HEAD_DIM)
    return decode_attention_torch(q, kc, vc, tables, ctx, scale)


def test_qkv_of_the_wrong_width_is_refused_with_both_numbers():
    qkv = torch.zeros(2, 100)
    with pytest.raises(ValueError, match="100 columns.*need 192"):
        rda.rope_decode_attention(qkv, None, None, None, None, None, None, None, None, None, 1.0,
                                  HEADS, KV_HEADS, HEAD_DIM)


def test_the_torch_path_writes_the_cache_and_attends_like_the_unfused_pair():
    args = _inputs("cpu", torch.float32, 1, [5, 40, 1])
    kc2, vc2 = args[6].clone(), args[7].clone()
    got = rda.rope_decode_attention(*args, 0.25, HEADS, KV_HEADS, HEAD_DIM)
    want = _unfused(*args[:6], kc2, vc2, *args[8:], 0.25)
    assert torch.equal(got, want)
    assert torch.equal(args[6], kc2) and torch.equal(args[7], vc2)


@needs_kernel
@pytest.mark.parametrize("partials, splits, heads_fastest, launch", [
    (1, 1, False, {}), (2, 1, True, {}), (1, 3, False, {}), (3, 4, True, {}),
    (2, 1, False, {"tile_tokens": 16, "num_warps": 1, "num_stages": 2}),      # the FUSED_LAUNCH configurations
    (2, 1, False, {"tile_tokens": 32, "num_warps": 1, "num_stages": 3})])
def test_kernel_matches_the_unfused_path(partials, splits, heads_fastest, launch, monkeypatch):
    """Contexts of one token (the new one alone), one partial block, several blocks; the cache slot written
    and every other slot left as it was."""
    dev = kernel_device()
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    args = _inputs(dev, dtype, partials, [1, 7, 40, 64], seed=partials * 10 + splits)
    kc, vc = args[6], args[7]
    kc_ref, vc_ref = kc.clone(), vc.clone()
    want = _unfused(*args[:6], kc_ref, vc_ref, *args[8:], 0.3)
    monkeypatch.setattr(rda, "_use_triton", lambda t: True)
    got = rda.rope_decode_attention(*args, 0.3, HEADS, KV_HEADS, HEAD_DIM, config={"num_splits": splits, "heads_fastest": heads_fastest, **launch})
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    torch.testing.assert_close(kc, kc_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(vc, vc_ref, atol=0, rtol=0)


@needs_kernel
def test_kernel_leaves_rows_of_context_zero_and_their_cache_untouched(monkeypatch):
    dev = kernel_device()
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    qkv, cos, sin, pos, blocks, slots, kc, vc, tables, ctx = _inputs(dev, dtype, 1, [9, 0, 3], seed=4)
    before_k, before_v = kc.clone(), vc.clone()
    out = torch.full((3, HEADS, HEAD_DIM), 5.0, dtype=dtype, device=dev)
    monkeypatch.setattr(rda, "_use_triton", lambda t: True)
    rda.rope_decode_attention(qkv, cos, sin, pos, blocks, slots, kc, vc, tables, ctx, 0.3, HEADS, KV_HEADS,
                              HEAD_DIM, out=out, config={"num_splits": 1})
    assert bool((out[1] == 5.0).all())
    changed = (kc != before_k).any(dim=(1, 3)) | (vc != before_v).any(dim=(1, 3))     # [block, slot]
    written = {(int(blocks[i]), int(slots[i])) for i in (0, 2)}
    assert {tuple(ix) for ix in changed.nonzero().tolist()} == written


def test_the_fused_kernel_runs_only_where_programs_are_many(monkeypatch):
    """llama-1b's 8 KV heads on 132 SMs: 2,048 programs at batch 256 take narrow tiles, 1,024 at batch 128
    wider ones, 512 at batch 64 (and at batch 32, split in two) stay unfused; so do head_dim 128 and the CPU."""
    import gpu_backend.paged_attention as pa

    monkeypatch.setattr(pa, "_num_sms", lambda index: 132)
    monkeypatch.setattr(rda, "_num_sms", lambda index: 132)
    monkeypatch.setattr(rda, "triton", object())
    cuda = torch.device("cuda", 0)
    assert rda.fused_launch(2048, 64, cuda) == {"tile_tokens": 16, "num_warps": 1, "num_stages": 2}
    assert rda.fused_launch(1024, 64, cuda) == {"tile_tokens": 32, "num_warps": 1, "num_stages": 3}
    assert rda.fused_launch(512, 64, cuda) is None
    assert rda.fused_launch(2048, 128, cuda) is None
    assert rda.fused_launch(2048, 64, torch.device("cpu")) is None
    assert [b for b in (32, 64, 128, 160, 256) if rda.fused_applies(b, 8, 64, cuda)] == [128, 160, 256]
    assert not rda.fused_applies(256, 8, 64, torch.device("cpu"))
