"""The fused decode kernel (RoPE + KV write + paged attention) against the unfused torch path.

It runs on CUDA, or on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``); float32 on
the CPU, where the interpreter is exact enough to compare the cache bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from tests.gpu_backend.kernel_device import kernel_device

needs_kernel = pytest.mark.skipif(kernel_device() is None, reason="needs CUDA, or triton with TRITON_INTERPRET=1")


def _rope_tables(max_len: int, head_dim: int, dev, dtype):
    inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    ang = torch.arange(max_len, dtype=torch.float32)[:, None] * inv[None, :]
    emb = torch.cat((ang, ang), dim=-1)
    return emb.cos().to(dev, dtype), emb.sin().to(dev, dtype)


def _case(heads, kv_heads, head_dim, ctx, seed):
    dev = kernel_device()
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    g = torch.Generator().manual_seed(seed)
    blocks, bs = 128, 16
    cache = torch.randn(blocks + 1, 2, kv_heads, bs, head_dim, generator=g).to(dev, dtype)
    B = len(ctx)
    qkv = torch.randn(B, (heads + 2 * kv_heads) * head_dim, generator=g).to(dev, dtype)
    width = max(1, (max(ctx) + bs - 1) // bs)
    # disjoint tables, as serving hands out: the block receiving a decode's KV is that sequence's alone
    tables = torch.randperm(blocks, generator=g)[:B * width].view(B, width).to(dev)
    cl = torch.tensor(ctx, device=dev)
    pos = (cl - 1).clamp(min=0)
    wb = tables.gather(1, (pos // bs).unsqueeze(1)).squeeze(1)
    ws = pos % bs
    cos, sin = _rope_tables(1024, head_dim, dev, dtype)
    return dict(cache=cache, qkv=qkv, tables=tables, cl=cl, pos=pos, wb=wb, ws=ws, cos=cos, sin=sin,
                heads=heads, kv_heads=kv_heads, head_dim=head_dim)


def _reference(c):
    """rope_and_cache's torch path (writes the caches), then the torch decode attention."""
    from gpu_backend.fused_ops import rope_and_cache
    from gpu_backend.paged_attention import decode_attention_torch

    cache = c["cache"].clone()
    kc, vc = cache[:, 0], cache[:, 1]
    live = c["cl"] > 0
    rows = live.nonzero().squeeze(1)
    q, _, _ = rope_and_cache(c["qkv"][rows].cpu().float(), c["cos"].cpu().float(), c["sin"].cpu().float(),
                             c["pos"][rows].cpu(), c["wb"][rows].cpu(), c["ws"][rows].cpu(),
                             kc_cpu := kc.cpu().float(), vc_cpu := vc.cpu().float(), c["heads"], c["kv_heads"],
                             c["head_dim"])
    out = decode_attention_torch(q, kc_cpu, vc_cpu, c["tables"][rows].cpu(), c["cl"][rows].cpu(), c["head_dim"] ** -0.5)
    return rows.cpu(), out, kc_cpu, vc_cpu


@pytest.mark.gpu
@needs_kernel
@pytest.mark.parametrize("heads, kv_heads, head_dim, splits", [(6, 2, 16, 1), (6, 2, 16, 4), (8, 8, 32, 1),
                                                                (4, 1, 64, 2)])
def test_fused_kernel_matches_rope_cache_then_attention(heads, kv_heads, head_dim, splits):
    from gpu_backend.fused_decode import decode_attention_rope

    c = _case(heads, kv_heads, head_dim, [1, 300, 17, 0, 64, 65], seed=heads + splits)
    rows, want, want_k, want_v = _reference(c)
    cache = c["cache"]
    out = torch.full((len(c["cl"]), heads, head_dim), 7.0, dtype=cache.dtype, device=cache.device)
    decode_attention_rope(c["qkv"], c["cos"], c["sin"], c["wb"], c["ws"], cache[:, 0], cache[:, 1], c["tables"],
                          c["cl"], heads, kv_heads, head_dim ** -0.5, out=out, config={"num_splits": splits})
    exact = cache.dtype == torch.float32
    tol = 2e-2 if not exact else 1e-4
    torch.testing.assert_close(out[rows].float().cpu(), want, atol=tol, rtol=tol)
    assert bool((out[3] == 7.0).all())                     # context 0: untouched
    # the new tokens' K and V went where rope_and_cache puts them, and nothing else moved
    if exact:
        assert torch.equal(cache[:, 0].cpu(), want_k) and torch.equal(cache[:, 1].cpu(), want_v)
    else:
        torch.testing.assert_close(cache[:, 0].float().cpu(), want_k, atol=1e-2, rtol=1e-2)
        torch.testing.assert_close(cache[:, 1].float().cpu(), want_v, atol=0, rtol=0)


@needs_kernel
def test_fused_kernel_refuses_a_qkv_of_the_wrong_width():
    from gpu_backend.fused_decode import decode_attention_rope

    c = _case(6, 2, 16, [5], seed=0)
    cache = c["cache"]
    with pytest.raises(ValueError, match=r"qkv \(1, 144\).*6 query and 2 KV heads of 16"):
        decode_attention_rope(c["qkv"][:, :144], c["cos"], c["sin"], c["wb"], c["ws"], cache[:, 0], cache[:, 1],
                              c["tables"], c["cl"], 6, 2, 0.25)


@pytest.mark.gpu
@pytest.mark.skipif(kernel_device() != "cpu", reason="the executor on the CPU with the kernel: TRITON_INTERPRET=1")
def test_executor_decodes_with_the_fused_kernel_like_transformers():
    """Decode steps in a batch through the fused kernel: logits match transformers' forward."""
    from gpu_backend.models import LlamaWeights
    from gpu_backend.plan import BatchPlan, PrefillChunk
    from gpu_backend.torch_executor import TorchExecutor
    from tests.gpu_backend.tiny_model import perturbed_tiny_model

    hf = perturbed_tiny_model(seed=0, norm_seed=123)
    ex = TorchExecutor(LlamaWeights.from_hf(hf, "tiny"), device="cpu", keep_logits=True, num_gpu_blocks=64,
                       num_host_blocks=8)
    ex.model.fuse_decode_rope = True
    g = torch.Generator().manual_seed(5)
    prompts = {1: torch.randint(0, 32000, (20,), generator=g).tolist(),
               2: torch.randint(0, 32000, (33,), generator=g).tolist()}
    tables = {1: [3, 4, 5, 6], 2: [10, 11, 12, 13]}
    res = ex.execute(BatchPlan(prefills=[PrefillChunk(s, 0, len(p), tables[s], True, p) for s, p in prompts.items()]))
    seqs = {s: p + [res.sampled_tokens[s]] for s, p in prompts.items()}
    for _ in range(6):
        order = sorted(seqs)
        res = ex.execute(BatchPlan(decode_seq_ids=order, decode_positions=[len(seqs[s]) - 1 for s in order],
                                   decode_block_tables=[tables[s] for s in order],
                                   decode_input_ids=[seqs[s][-1] for s in order]))
        for s in order:
            with torch.no_grad():
                ref = hf(torch.tensor([seqs[s]])).logits[0, -1]
            torch.testing.assert_close(ex.last_logits[s][-1], ref, atol=2e-5, rtol=1e-4)
            seqs[s].append(res.sampled_tokens[s])
