"""Pin ``gpu_backend.full_graphs`` on the CPU: the packed input vector of a captured mixed iteration, and the
executor's whole-iteration graph path (static buffers, buckets, padding; graphs replayed eagerly) sampling
the tokens transformers' own forward picks, writing KV only into its blocks and the scratch block, and
falling back when an iteration does not fit a bucket."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpu_backend.full_graphs import FullLayout, decode_ranges
from gpu_backend.models import LlamaWeights
from gpu_backend.paged_prefill import BLOCK_M
from gpu_backend.plan import BatchPlan, PrefillChunk
from gpu_backend.torch_executor import TorchExecutor
from tests.gpu_backend.eager_replay import EagerFullGraphs
from tests.gpu_backend.tiny_model import perturbed_tiny_model


@pytest.fixture(scope="module")
def hf():
    return perturbed_tiny_model(seed=0, norm_seed=123)


def tokens(n: int, seed: int) -> list[int]:
    return torch.randint(0, 32000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def greedy(hf, ids: list[int]) -> int:
    with torch.no_grad():
        return int(hf(torch.tensor([ids])).logits[0, -1].argmax())


def test_layout_packs_decodes_first_then_chunks_with_padding_defaults():
    lay = FullLayout.for_bucket(64, max_decodes=8, max_chunks=3)
    assert (lay.tokens, lay.decodes, lay.tiles, lay.chunks, lay.samples) == (64, 8, 2 + 3, 3, 11)
    chunks = [(np.array([7, 8, 9]), 20, 5, True), (np.arange(100, 100 + BLOCK_M + 2), 0, 6, False)]
    vec, sampled = lay.pack(np.array([11, 12]), np.array([30, 40]), np.array([1, 2]), chunks, pad_slot=99)
    f = {name: vec[o:o + n] for name, (o, n) in lay.offsets().items()}
    assert vec.size == lay.length == 3 * 64 + 8 + 2 * 5 + 4 * 4 + 11
    assert f["ids"][:5].tolist() == [11, 12, 7, 8, 9] and f["ids"][5:7].tolist() == [100, 101]
    assert f["pos"][:7].tolist() == [30, 40, 20, 21, 22, 0, 1]
    assert f["row_slot"][:6].tolist() == [1, 2, 5, 5, 5, 6] and set(f["row_slot"][39:].tolist()) == {99}
    assert f["dctx"].tolist() == [31, 41, 0, 0, 0, 0, 0, 0]
    assert f["tile_seg"].tolist() == [0, 1, 1, 3, 3] and f["tile_row"].tolist() == [0, 0, BLOCK_M, 0, 0]
    assert (f["seg_row"].tolist(), f["seg_start"].tolist(), f["seg_len"].tolist()) == (
        [2, 5, 0, 0], [20, 0, 0, 0], [3, BLOCK_M + 2, 0, 0])
    assert f["seg_slot"].tolist() == [5, 6, 99, 99]
    assert f["logit_rows"][:3].tolist() == [0, 1, 4] and sampled == 3
    assert lay.fits(64, 8, 3, 11) and not lay.fits(64, 9, 1, 9) and not lay.fits(10, 0, 4, 4)
    assert FullLayout.for_bucket(16, max_decodes=256, max_chunks=32).decodes == 16


def test_full_graph_path_samples_what_transformers_picks_and_pads_into_scratch(hf):
    ex = TorchExecutor(LlamaWeights.from_hf(hf, "tiny"), device="cpu", num_gpu_blocks=64, num_host_blocks=0,
                       max_model_len=256)
    ex.full = EagerFullGraphs(ex.model, ex.tables, max_decodes=4, sizes=(16, 64, 128), max_chunks=3)
    calls = []
    run = ex.full.run
    ex.full.run = lambda n, staged, k: calls.append(n) or run(n, staged, k)
    a, b, c = tokens(40, 21), tokens(33, 22), tokens(70, 23)
    ex.store.gpu[ex.store.scratch_block] = 3.0
    snapshot = ex.store.gpu.clone()
    res = ex.execute(BatchPlan(prefills=[PrefillChunk(1, 0, 39, [0, 1, 2], True, a[:39]),     # 49 rows: bucket 64
                                         PrefillChunk(2, 0, 10, [8, 9, 10], False, b[:10])]))
    changed = (ex.store.gpu != snapshot).flatten(1).any(1).nonzero().flatten().tolist()
    assert set(changed) <= {0, 1, 2, 8, ex.store.scratch_block} and calls == [(64, 4)]
    assert res.sampled_tokens == {1: greedy(hf, a[:39])}
    res = ex.execute(BatchPlan(prefills=[PrefillChunk(2, 10, 23, [8, 9, 10], True, b[10:]),    # over its own cache
                                         PrefillChunk(3, 0, 70, [20, 21, 22, 23, 24], True, c)],
                               decode_seq_ids=[1], decode_positions=[39], decode_block_tables=[[0, 1, 2]],
                               decode_input_ids=[a[39]]))                                      # 94 rows: bucket 128
    assert res.sampled_tokens == {1: greedy(hf, a), 2: greedy(hf, b), 3: greedy(hf, c)} and calls[-1] == (128, 4)
    d = c[:48] + tokens(9, 24)       # a prefix-cache hit on c's first three blocks
    res = ex.execute(BatchPlan(prefills=[PrefillChunk(4, 48, 9, [20, 21, 22, 30], True, d[48:])],
                               decode_seq_ids=[2, 1], decode_positions=[33, 40],
                               decode_block_tables=[[8, 9, 10], [0, 1, 2]], decode_input_ids=[7, 9]))
    assert res.sampled_tokens == {4: greedy(hf, d), 2: greedy(hf, b + [7]), 1: greedy(hf, a + [9])}
    assert calls[-1] == (16, 4)
    n_calls = len(calls)
    chunks = [PrefillChunk(10 + i, 0, 5, [40 + i], True, tokens(5, 30 + i)) for i in range(4)]
    res = ex.execute(BatchPlan(prefills=chunks))          # four chunks, the graphs hold three: eager path
    assert len(calls) == n_calls and res.sampled_tokens == {10 + i: greedy(hf, tokens(5, 30 + i)) for i in range(4)}
    assert ex.full.bucket(200, 0, 1, 1) is None and ex.full.bucket(20, 5, 1, 6) is None


def test_each_bucket_has_a_graph_for_a_few_decodes_and_one_for_many(hf):
    ex = TorchExecutor(LlamaWeights.from_hf(hf, "tiny"), device="cpu", num_gpu_blocks=16, num_host_blocks=0,
                       max_model_len=64)
    full = EagerFullGraphs(ex.model, ex.tables, max_decodes=16, sizes=(16, 64), few_decodes=8)
    assert full.keys == [(16, 8), (16, 16), (64, 8), (64, 16)]
    assert full.bucket(10, 3, 1, 4) == (16, 8) and full.bucket(16, 12, 1, 13) == (16, 16)
    assert full.bucket(30, 5, 1, 6) == (64, 8) and full.bucket(30, 12, 1, 13) == (64, 16)
    assert full.bucket(30, 17, 1, 18) is None        # more decodes than the executor takes


def h200_like_splits(rows: int, kv_heads: int = 3) -> int:
    """``wave_splits`` on 132 SMs: a power of two up to 16 giving two waves of (row, KV head, split) programs."""
    want, s = -(-264 // (rows * kv_heads)), 1
    while s < want and s < 16:
        s *= 2
    return s


def test_decode_ranges_keep_each_doubling_that_buys_more_splits():
    # three KV heads: 8 rows -> 16 splits, 16 -> 8, 32 -> 4, 64 -> 2, 128 and 256 -> 1
    assert decode_ranges(256, 8, h200_like_splits) == [8, 16, 32, 64, 256]
    assert decode_ranges(256, 8, h200_like_splits, fine=False) == [8, 256]
    assert decode_ranges(64, 8, h200_like_splits) == [8, 16, 32, 64]
    # eight KV heads: 64 rows already take one split like 256
    assert decode_ranges(256, 8, lambda r: h200_like_splits(r, 8)) == [8, 16, 32, 256]
    assert decode_ranges(12, 8, h200_like_splits) == [8, 12] and decode_ranges(4, 8, h200_like_splits) == [4]
    assert decode_ranges(256, 8, lambda r: 1) == [8, 256]          # off CUDA every batch takes one split


def test_an_iteration_takes_the_smallest_decode_range_holding_its_decodes(hf, monkeypatch):
    import gpu_backend.full_graphs as fg

    monkeypatch.setattr(fg, "decode_splits", lambda rows, kv_heads, device: h200_like_splits(rows, kv_heads))
    ex = TorchExecutor(LlamaWeights.from_hf(hf, "tiny"), device="cpu", num_gpu_blocks=16, num_host_blocks=0,
                       max_model_len=64)
    kv_heads = ex.dims.num_kv_heads
    full = EagerFullGraphs(ex.model, ex.tables, max_decodes=64, sizes=(16, 128))
    want = decode_ranges(64, 8, lambda r: h200_like_splits(r, kv_heads))
    assert full.keys == [(16, 8), (16, 16)] + [(128, r) for r in want] and len(want) > 2
    assert full.bucket(100, 9, 1, 10) == (128, 16) and full.bucket(100, 8, 1, 9) == (128, 8)
    assert full.bucket(100, want[-2] + 1, 1, want[-2] + 2) == (128, want[-1])
    assert full.decode_splits[(128, 16)] == h200_like_splits(16, kv_heads)
    coarse = EagerFullGraphs(ex.model, ex.tables, max_decodes=64, sizes=(128,), fine_ranges=False)
    assert coarse.keys == [(128, 8), (128, 64)] and coarse.bucket(100, 9, 1, 10) == (128, 64)


def test_a_negative_token_limit_for_the_graphs_is_refused():
    with pytest.raises(ValueError, match=r"full_graph_max_tokens must be >= 0 .* got -1"):
        TorchExecutor("tiny", device="cpu", num_gpu_blocks=8, num_host_blocks=0, max_model_len=64,
                      full_graph_max_tokens=-1)


def test_static_attention_launches_the_decode_kernel_with_the_fixed_configuration(monkeypatch):
    """The static decode range's program count says nothing about the live decodes, so the captured iteration
    keeps the fixed launch instead of ``decode_launch``'s pick (a CUDA-only path: the kernels are recorded)."""
    from types import SimpleNamespace

    import gpu_backend.full_graphs as fg
    from gpu_backend.paged_attention import DECODE_CONFIG

    calls = []
    monkeypatch.setattr(fg, "paged_prefill_attention", lambda *a, **k: calls.append(("prefill", k)))
    monkeypatch.setattr(fg, "decode_attention_triton", lambda *a, **k: calls.append(("decode", k)))
    monkeypatch.setattr(fg, "triton", object())
    q = type("CudaRows", (), {"is_cuda": True, "__getitem__": lambda self, s: self})()
    model = SimpleNamespace(store=SimpleNamespace(layers=[(None, None)]), scale=0.125)
    fg.static_attention(model, 0, q, q, tiles=None, decode_tables=None, decode_ctx=torch.zeros(256), decode_splits_=2)
    assert [c[0] for c in calls] == ["prefill", "decode"]
    assert calls[1][1]["config"] == {"num_splits": 2, **DECODE_CONFIG}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_decodes_beside_a_chunk_in_a_middle_decode_range_sample_what_the_eager_path_samples(hf):
    """24 decodes at 300-token contexts beside a 40-token chunk: a captured graph of the 32-row range, whose
    decode kernel takes more key splits than the whole range's, samples the eager executor's tokens (fp32)."""
    import copy

    w = LlamaWeights.from_hf(copy.deepcopy(hf).to("cuda"), "tiny")
    kw = dict(device="cuda", dtype=torch.float32, num_gpu_blocks=600, num_host_blocks=0, max_model_len=512)
    graphs, eager = TorchExecutor(w, **kw), TorchExecutor(w, keep_logits=True, **kw)
    assert graphs.fine_decode_ranges and (64, 32) in graphs.full.keys
    used = []
    run = graphs.full.run
    graphs.full.run = lambda n, staged, k: used.append(n) or run(n, staged, k)
    prompts = {i: tokens(300, 100 + i) for i in range(24)}
    tables = {i: list(range(20 * i, 20 * i + 20)) for i in range(24)}
    first: dict[int, dict[int, int]] = {}
    for name, ex in (("graphs", graphs), ("eager", eager)):
        for start in range(0, 24, 4):
            res = ex.execute(BatchPlan(prefills=[PrefillChunk(i, 0, 300, tables[i], True, prompts[i])
                                                 for i in range(start, start + 4)]))
            first.setdefault(name, {}).update(res.sampled_tokens)
    assert first["graphs"] == first["eager"]
    new = tokens(40, 99)
    mixed = BatchPlan(prefills=[PrefillChunk(50, 0, 40, [580, 581, 582], True, new)],
                      decode_seq_ids=list(range(24)), decode_positions=[300] * 24,
                      decode_block_tables=[tables[i] for i in range(24)],
                      decode_input_ids=[first["eager"][i] for i in range(24)])
    got, want = graphs.execute(mixed).sampled_tokens, eager.execute(mixed).sampled_tokens
    assert used[-1] == (64, 32) and graphs.full.decode_splits[(64, 32)] > graphs.full.decode_splits[(64, 64)]
    assert got == want and len(got) == 25
