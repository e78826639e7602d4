"""The paged prefill kernel's layout (``PrefillTiles``) and its result against the torch path, and the
decode kernel that shares its pieces.

The kernel runs on a CUDA device, or on the CPU under Triton's interpreter
(``TRITON_INTERPRET=1 python -m pytest tests/gpu_backend/test_paged_prefill.py`` with triton
installed); elsewhere that test is skipped."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpu_backend.paged_prefill import DevicePrefillTiles, PrefillTiles, paged_prefill_reference
from tests.gpu_backend.kernel_device import kernel_device


def test_tiles_lay_out_chunks_for_the_kernel():
    tiles = PrefillTiles.build([(0, 40, 16, np.array([3, 4, 5, 6])), (40, 5, 100, np.arange(7, 14)),
                                (45, 32, 32, np.array([1, 2, 9]))], block_m=32)
    np.testing.assert_array_equal(tiles.tables, [[3, 4, 5, 6, 0, 0, 0], [7, 8, 9, 10, 11, 12, 13],
                                                 [1, 2, 9, 0, 0, 0, 0]])
    np.testing.assert_array_equal(tiles.seg_row, [0, 40, 45])
    np.testing.assert_array_equal(tiles.seg_start, [16, 100, 32])
    np.testing.assert_array_equal(tiles.seg_len, [40, 5, 32])
    np.testing.assert_array_equal(tiles.tile_seg, [0, 0, 1, 2])     # 40 rows take two tiles of 32
    np.testing.assert_array_equal(tiles.tile_row, [0, 32, 0, 0])
    assert tiles.max_keys == 105
    assert [a.dtype for a in tiles.arrays()] == [np.int64] * 6 and tiles.arrays()[0].shape == (21,)


@pytest.mark.gpu
@pytest.mark.skipif(kernel_device() is None, reason="needs CUDA, or triton with TRITON_INTERPRET=1")
@pytest.mark.parametrize("heads, kv_heads, head_dim, splits", [(4, 2, 16, 1), (6, 2, 64, 1), (4, 2, 16, 4),
                                                                (6, 2, 64, 0)])
def test_kernel_matches_the_torch_path(heads, kv_heads, head_dim, splits):
    from gpu_backend.paged_prefill import paged_prefill_attention

    dev = kernel_device()
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    bs, num_blocks = 16, 64
    k_cache = torch.randn(num_blocks, kv_heads, bs, head_dim, generator=g).to(dev, dtype)
    v_cache = torch.randn(num_blocks, kv_heads, bs, head_dim, generator=g).to(dev, dtype)
    perm = torch.randperm(num_blocks, generator=g).numpy()
    # (tokens, cached before): a short question over a long document, a chunk crossing a block edge,
    # one spanning several query tiles, a one-token chunk
    shapes = [(7, 200), (20, 13), (70, 64), (1, 31)]
    chunks, row, used = [], 0, 0
    for n, start in shapes:
        nb = -(-(start + n) // bs)
        chunks.append((row, n, start, perm[used:used + nb]))
        row += n
        used += nb
    q = torch.randn(row, heads, head_dim, generator=g).to(dev, dtype)
    tiles = PrefillTiles.build(chunks)
    # splits: 1 and 4 forced (4 leaves splits past some rows' positions, with no key for them); 0 chosen
    dev_tiles = DevicePrefillTiles.from_views([torch.as_tensor(a, device=dev) for a in tiles.arrays()], tiles, splits)
    got = paged_prefill_attention(q, k_cache, v_cache, dev_tiles, head_dim ** -0.5, torch.zeros_like(q))
    want = paged_prefill_reference(q.float(), k_cache.float(), v_cache.float(), tiles, head_dim ** -0.5,
                                   torch.zeros(q.shape, dtype=torch.float32, device=dev))
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)


@pytest.mark.gpu
@pytest.mark.skipif(kernel_device() != "cpu", reason="the executor on the CPU with the kernel: TRITON_INTERPRET=1")
def test_executor_with_the_kernel_matches_transformers():
    """Chunked prefill and a prefix-cache hit through the executor with the kernel on (the GPU
    benchmark's part (a) checks the same on CUDA in bf16)."""
    from gpu_backend.models import LlamaWeights
    from gpu_backend.plan import BatchPlan, PrefillChunk
    from gpu_backend.torch_executor import TorchExecutor
    from tests.gpu_backend.tiny_model import perturbed_tiny_model

    hf = perturbed_tiny_model(seed=0, norm_seed=123)
    ex = TorchExecutor(LlamaWeights.from_hf(hf, "tiny"), device="cpu", keep_logits=True, num_gpu_blocks=64,
                       num_host_blocks=8)
    ex.paged_prefill_kernel = True
    ids = torch.randint(0, 32000, (90,), generator=torch.Generator().manual_seed(3)).tolist()
    other = ids[:48] + torch.randint(0, 32000, (25,), generator=torch.Generator().manual_seed(4)).tolist()
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
        ref_other = hf(torch.tensor([other])).logits[0]
    table = [20, 3, 4, 40, 41, 7]
    start = 0
    for n in (13, 35, 32):
        ex.execute(BatchPlan(prefills=[PrefillChunk(9, start, n, table, start + n == 80, ids[start:start + n])]))
        torch.testing.assert_close(ex.last_logits[9], ref[start:start + n], atol=2e-5, rtol=1e-4)
        start += n
    # two chunks over cached tokens in one iteration: sequence 9's next chunk and a prefix hit on its blocks
    res = ex.execute(BatchPlan(prefills=[PrefillChunk(9, 80, 10, table, True, ids[80:90]),
                                         PrefillChunk(5, 48, 25, [20, 3, 4, 50, 51], True, other[48:])]))
    torch.testing.assert_close(ex.last_logits[9], ref[80:90], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ex.last_logits[5], ref_other[48:], atol=2e-5, rtol=1e-4)
    assert res.sampled_tokens == {9: int(ref[89].argmax()), 5: int(ref_other[-1].argmax())}


@pytest.mark.gpu
@pytest.mark.skipif(kernel_device() is None, reason="needs CUDA, or triton with TRITON_INTERPRET=1")
def test_every_split_variant_compiles_up_front():
    from gpu_backend.paged_prefill import compile_kernel_variants

    dev = kernel_device()
    cache = torch.zeros(4, 2, 16, 16, device=dev)
    compile_kernel_variants(cache, cache, num_heads=4, block=3)   # raises if a variant fails to build


@pytest.mark.gpu
@pytest.mark.skipif(kernel_device() is None, reason="needs CUDA, or triton with TRITON_INTERPRET=1")
@pytest.mark.parametrize("batch, heads, kv_heads, head_dim, splits, heads_fastest",
                         [(3, 8, 2, 16, 1, False), (2, 6, 2, 64, 4, False), (3, 8, 2, 16, 2, True)])
def test_decode_kernel_sharing_the_pieces_matches_the_torch_path(batch, heads, kv_heads, head_dim, splits,
                                                                 heads_fastest):
    """The decode kernel uses the same tile loader and softmax step as the prefill kernel."""
    from gpu_backend.paged_attention import decode_attention_torch, decode_attention_triton

    dev = kernel_device()
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    g = torch.Generator().manual_seed(1)
    kc = torch.randn(64, kv_heads, 16, head_dim, generator=g).to(dev, dtype)
    vc = torch.randn(64, kv_heads, 16, head_dim, generator=g).to(dev, dtype)
    q = torch.randn(batch, heads, head_dim, generator=g).to(dev, dtype)
    ctx = torch.tensor([1, 300, 17][:batch], device=dev)
    width = int((ctx.max() + 15) // 16)
    tables = torch.stack([torch.randperm(64, generator=g)[:width] for _ in range(batch)]).to(dev)
    want = decode_attention_torch(q.float(), kc.float(), vc.float(), tables, ctx, head_dim ** -0.5)
    got = decode_attention_triton(q, kc, vc, tables, ctx, head_dim ** -0.5,
                                  config={"num_splits": splits, "heads_fastest": heads_fastest})
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)


@pytest.mark.gpu
@pytest.mark.skipif(kernel_device() is None, reason="needs CUDA, or triton with TRITON_INTERPRET=1")
@pytest.mark.parametrize("splits", [1, 4])
def test_decode_kernel_leaves_rows_of_context_zero_untouched(splits):
    """Captured mixed iterations run the decode kernel over a static row range; rows that are not decodes
    there carry context 0 and must keep what the prefill kernel wrote."""
    from gpu_backend.paged_attention import decode_attention_torch, decode_attention_triton

    dev = kernel_device()
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    g = torch.Generator().manual_seed(2)
    kc = torch.randn(16, 2, 16, 16, generator=g).to(dev, dtype)
    vc = torch.randn(16, 2, 16, 16, generator=g).to(dev, dtype)
    q = torch.randn(4, 4, 16, generator=g).to(dev, dtype)
    ctx = torch.tensor([40, 0, 7, 0], device=dev)
    tables = torch.stack([torch.randperm(16, generator=g)[:3] for _ in range(4)]).to(dev)
    out = torch.full_like(q, 5.0)
    decode_attention_triton(q, kc, vc, tables, ctx, 0.25, out=out, config={"num_splits": splits})
    assert bool((out[1] == 5.0).all()) and bool((out[3] == 5.0).all())
    want = decode_attention_torch(q.float(), kc.float(), vc.float(), tables, ctx.clamp(min=1), 0.25)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(out[[0, 2]].float(), want[[0, 2]], atol=tol, rtol=tol)


def test_split_counts_fill_two_waves_and_keep_two_key_tiles_per_split(monkeypatch):
    import gpu_backend.paged_attention as pa
    from gpu_backend.paged_prefill import prefill_splits

    monkeypatch.setattr(pa, "_num_sms", lambda index: 132)
    cuda = torch.device("cuda", 0)
    assert pa.decode_splits(1, 8, cuda) == 16          # 33 wanted, capped at 16
    assert pa.decode_splits(16, 8, cuda) == 4          # ceil(264 / 128) = 3 -> the next power of two
    assert pa.decode_splits(256, 8, cuda) == 1
    assert prefill_splits(18, 7940, cuda) == 16        # a short chunk over a long prefix
    assert prefill_splits(18, 300, cuda) == 2          # 300 keys hold two splits of two 64-key tiles
    assert prefill_splits(18, 255, cuda) == 1
    assert prefill_splits(18, 7940, torch.device("cpu")) == 1


def test_decode_launch_follows_programs_per_sm(monkeypatch):
    import gpu_backend.paged_attention as pa

    monkeypatch.setattr(pa, "_num_sms", lambda index: 132)
    cuda = torch.device("cuda", 0)
    many = {"tile_tokens": 32, "num_warps": 1, "num_stages": 3}
    middle = {"tile_tokens": 64, "num_warps": 2, "num_stages": 2}
    few = {"tile_tokens": 128, "num_warps": 4, "num_stages": 3}
    assert pa.decode_launch(256 * 8 * 1, 64, cuda) == many        # 15.5 programs per SM
    assert pa.decode_launch(8 * 132, 64, cuda) == many            # 8 per SM
    assert pa.decode_launch(8 * 132 - 1, 64, cuda) == middle
    assert pa.decode_launch(256 * 3 * 1, 64, cuda) == middle      # smollm2 at batch 256: 5.8 per SM
    assert pa.decode_launch(4 * 132 + 1, 64, cuda) == middle
    assert pa.decode_launch(4 * 132, 64, cuda) == few             # 4 per SM
    assert pa.decode_launch(64 * 8 * 1, 64, cuda) == few
    assert pa.decode_launch(1 * 8 * 16, 64, cuda) == few          # one sequence, 16 splits
    assert pa.decode_launch(1 * 8 * 16, 128, cuda) == middle      # head_dim 128: the middle one everywhere
    assert pa.decode_launch(256 * 8, 64, torch.device("cpu")) == middle
    pa.decode_launch(256 * 8, 64, cuda)["num_warps"] = 99          # a copy: the table stays as it was
    assert pa.MANY_PROGRAMS_CONFIG["num_warps"] == 1
