"""Pin ``gpu_backend.torch_executor`` on the CPU: its logits equal transformers' own
``LlamaForCausalLM`` forward (float32, tiny random model with llama3 RoPE scaling and GQA)
for plain prefill, chunked prefill, prefill over a prefix-cache hit, and many decode steps
in mixed batches; a swap-out/swap-in round trip restores the KV bit for bit; plans past
the context length or without token ids are refused with a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpu_backend import epilogue_gemms, rope_decode_attention
from gpu_backend.epilogue_gemms import TileConfig
from gpu_backend.mixed_graphs import MixedGraphs
from gpu_backend.models import LlamaWeights
from tests.gpu_backend.eager_replay import EagerDecodeGraphs, EagerReplay
from tests.gpu_backend.kernel_device import kernel_device
from tests.gpu_backend.tiny_model import perturbed_tiny_model
from gpu_backend.plan import BatchPlan, GroupMove, PrefillChunk
from gpu_backend.skinny_gemm import batched_split_linear
from gpu_backend.torch_executor import TorchExecutor

ATOL = 2e-5
RTOL = 1e-4


@pytest.fixture(scope="module")
def hf():
    return perturbed_tiny_model(seed=0, norm_seed=123)


@pytest.fixture(scope="module")
def weights(hf):
    return LlamaWeights.from_hf(hf, "tiny")


def make_executor(weights, **kw) -> TorchExecutor:
    kw.setdefault("num_gpu_blocks", 64)
    kw.setdefault("num_host_blocks", 32)
    return TorchExecutor(weights, device="cpu", keep_logits=True, **kw)


def tokens(n: int, seed: int) -> list[int]:
    return torch.randint(0, 32000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def reference(hf, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0]


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)


def test_dims_come_from_the_hf_config(weights):
    d = weights.dims
    assert (d.num_layers, d.hidden_size, d.num_heads, d.num_kv_heads, d.head_dim) == (2, 64, 4, 2, 16)
    assert d.rope_scaling is not None and d.rope_scaling.factor == 4.0
    assert weights.qkv[0].shape == ((4 + 2 * 2) * 16, 64)
    assert weights.gate_up[0].shape == (2 * 128, 64)


def test_plain_prefill_of_several_sequences_in_one_batch(hf, weights):
    ex = make_executor(weights)
    a, b, c = tokens(37, 1), tokens(20, 2), tokens(20, 3)
    plan = BatchPlan(prefills=[PrefillChunk(1, 0, 37, [5, 6, 9], True, a),
                               PrefillChunk(2, 0, 20, [0, 12], True, b),     # b and c: one batched call
                               PrefillChunk(3, 0, 20, [13, 14], True, c)])
    res = ex.execute(plan)
    for sid, ids in ((1, a), (2, b), (3, c)):
        close(ex.last_logits[sid], reference(hf, ids))
    assert res.sampled_tokens == {sid: int(reference(hf, ids)[-1].argmax()) for sid, ids in ((1, a), (2, b), (3, c))}
    assert res.duration_s >= res.compute_s > 0 and res.swap_s == 0.0


def test_chunked_prefill_then_decodes(hf, weights):
    ex = make_executor(weights)
    ids = tokens(90, 3)
    table = [20, 3, 4, 40, 41, 7]           # scattered blocks: the table, not contiguity, places tokens
    ref = reference(hf, ids)
    start = 0
    for n in (13, 35, 32):                  # chunk ends inside blocks and on a block boundary
        res = ex.execute(BatchPlan(prefills=[PrefillChunk(9, start, n, table, start + n == 80, ids[start:start + n])]))
        close(ex.last_logits[9], ref[start:start + n])
        start += n
    assert res.sampled_tokens == {9: int(ref[79].argmax())}
    for p in range(80, 90):                 # decodes over the chunked prefix, crossing into a new block
        res = ex.execute(BatchPlan(decode_seq_ids=[9], decode_positions=[p], decode_block_tables=[table],
                                   decode_input_ids=[ids[p]]))
        close(ex.last_logits[9], ref[p:p + 1])
        assert res.sampled_tokens == {9: int(ref[p].argmax())}


def test_prefill_over_a_prefix_cache_hit(hf, weights):
    ex = make_executor(weights)
    shared = tokens(48, 4)
    a = shared + tokens(10, 5)
    b = shared + tokens(25, 6)
    ex.execute(BatchPlan(prefills=[PrefillChunk(1, 0, len(a), [10, 11, 12, 13], True, a)]))
    # b reuses a's three full blocks and computes only its own tail
    table_b = [10, 11, 12, 30, 31]
    res = ex.execute(BatchPlan(prefills=[PrefillChunk(2, 48, 25, table_b, True, b[48:])]))
    ref = reference(hf, b)
    close(ex.last_logits[2], ref[48:])
    assert res.sampled_tokens == {2: int(ref[-1].argmax())}


def test_mixed_batch_prefill_chunk_beside_decodes(hf, weights):
    ex = make_executor(weights)
    a, b, c = tokens(40, 7), tokens(33, 8), tokens(50, 9)
    ex.execute(BatchPlan(prefills=[PrefillChunk(1, 0, 39, [0, 1, 2], True, a[:39]),
                                   PrefillChunk(2, 0, 32, [8, 9, 10], True, b[:32])]))
    plan = BatchPlan(prefills=[PrefillChunk(3, 0, 30, [20, 21], False, c[:30])],
                     decode_seq_ids=[1, 2], decode_positions=[39, 32], decode_block_tables=[[0, 1, 2], [8, 9, 10]],
                     decode_input_ids=[a[39], b[32]])
    res = ex.execute(plan)
    close(ex.last_logits[1], reference(hf, a)[39:40])
    close(ex.last_logits[2], reference(hf, b)[32:33])
    close(ex.last_logits[3], reference(hf, c)[:30])
    assert set(res.sampled_tokens) == {1, 2}   # the unfinished chunk samples nothing


def prefill_then_mixed_match_transformers(ex: TorchExecutor, hf) -> None:
    """A 39-token prefill, then a 30-token chunk beside that sequence's first decode: logits as transformers'."""
    a, c = tokens(40, 7), tokens(50, 9)
    ex.execute(BatchPlan(prefills=[PrefillChunk(1, 0, 39, [0, 1, 2], True, a[:39])]))
    ex.execute(BatchPlan(prefills=[PrefillChunk(3, 0, 30, [20, 21], False, c[:30])], decode_seq_ids=[1],
                         decode_positions=[39], decode_block_tables=[[0, 1, 2]], decode_input_ids=[a[39]]))
    close(ex.last_logits[1], reference(hf, a)[39:40])
    close(ex.last_logits[3], reference(hf, c)[:30])


def test_products_split_over_k_are_summed_by_every_consumer(hf, weights):
    """With each QKV, output and down product handed on as 2 split-K partials (what ``split_gemms``
    does on CUDA), prefill chunks and decodes still match transformers."""
    ex = make_executor(weights)
    split = []

    def two_partials(x, w):
        split.append(w.shape)
        return batched_split_linear(x, w, 2)

    ex.model.linear.partials = two_partials
    prefill_then_mixed_match_transformers(ex, hf)
    w = weights
    assert split == [w.qkv[0].shape, w.o_proj[0].shape, w.down[0].shape] * 4    # 2 layers x 2 iterations


@pytest.mark.skipif(kernel_device() != "cpu" or epilogue_gemms.TensorDescriptor is None,
                    reason="the executor runs the kernel on the CPU only under TRITON_INTERPRET=1")
def test_gate_up_with_swiglu_in_its_epilogue_matches_transformers(hf, weights, monkeypatch):
    """What ``epilogue_gemms`` does on CUDA (the gate/up product applying SwiGLU itself), forced on for
    every batch: prefill chunks and decodes still match transformers."""
    ex = make_executor(weights)
    ex.model.epilogues = True
    ran = []
    monkeypatch.setattr(epilogue_gemms, "applies", lambda x, w: True)
    monkeypatch.setattr(epilogue_gemms, "swiglu_config", lambda rows: TileConfig(16, 32, 2, 2, 64))
    kernel = epilogue_gemms.gate_up_silu_kernel

    def counted(x, w, cfg):
        ran.append(x.shape[0])
        return kernel(x, w, cfg)

    monkeypatch.setattr(epilogue_gemms, "gate_up_silu_kernel", counted)
    prefill_then_mixed_match_transformers(ex, hf)
    assert ran == [39, 39, 31, 31]      # 2 layers x 2 iterations, every row of each


@pytest.mark.skipif(kernel_device() != "cpu", reason="the executor runs the kernel on the CPU only under TRITON_INTERPRET=1")
def test_decode_only_batches_rotate_inside_the_attention_kernel(hf, weights, monkeypatch):
    """What ``fused_rope`` does on CUDA: a decode-only batch's RoPE, KV write and attention in one kernel per
    layer; mixed batches keep the separate kernels. Logits still match transformers, and the KV the kernel
    writes is what later decodes read."""
    ex = make_executor(weights)
    ex.model.fused_rope = True
    ran = []
    kernel = rope_decode_attention._rope_decode_kernel

    class Counted:
        def __getitem__(self, grid):
            ran.append(grid)
            return kernel[grid]

    monkeypatch.setattr(rope_decode_attention, "_use_triton", lambda t: True)
    monkeypatch.setattr(rope_decode_attention, "_rope_decode_kernel", Counted())
    prefill_then_mixed_match_transformers(ex, hf)
    assert ran == []                                       # a prefill and a mixed batch: not fused
    a, c = tokens(40, 7), tokens(50, 9)
    ex.execute(BatchPlan(prefills=[PrefillChunk(3, 30, 15, [20, 21, 22], True, c[30:45])]))
    for p in range(45, 50):                                # two sequences decoding together, one crossing a block
        ex.execute(BatchPlan(decode_seq_ids=[1, 3], decode_positions=[p - 5, p],
                             decode_block_tables=[[0, 1, 2], [20, 21, 22, 23]], decode_input_ids=[0, c[p]]))
        close(ex.last_logits[3], reference(hf, c)[p:p + 1])
    close(ex.last_logits[1], reference(hf, a + [0] * 5)[44:45])
    assert len(ran) == 5 * weights.dims.num_layers


def test_swap_round_trip_restores_kv_bit_for_bit(hf, weights):
    ex = make_executor(weights, num_gpu_blocks=32, num_host_blocks=16)
    ids = tokens(70, 10)
    table = [3, 4, 5, 6, 7]
    ex.execute(BatchPlan(prefills=[PrefillChunk(1, 0, 66, table, True, ids[:66])]))
    before = ex.store.gpu_blocks(table)
    # out to host blocks 8..12 in one group copy; a second sequence then overwrites the GPU blocks
    res = ex.execute(BatchPlan(swap_out=[GroupMove(3, 8, 5)]))
    assert res.swap_s > 0 and ex.last_swap.num_copies == 1
    assert torch.equal(ex.store.host_blocks(range(8, 13)), before)
    ex.execute(BatchPlan(prefills=[PrefillChunk(2, 0, 80, [3, 4, 5, 6, 7], True, tokens(80, 11))]))
    assert not torch.equal(ex.store.gpu_blocks(table), before)
    # back in to other GPU blocks, in two groups, and a decode in the same iteration reads them
    new_table = [20, 21, 22, 25, 26]
    plan = BatchPlan(swap_in=[GroupMove(8, 20, 3), GroupMove(11, 25, 2)], decode_seq_ids=[1],
                     decode_positions=[66], decode_block_tables=[new_table], decode_input_ids=[ids[66]])
    res = ex.execute(plan)
    assert ex.last_swap.num_copies == 2 and ex.last_swap.num_bytes == 5 * ex.store.bytes_per_block
    after = ex.store.gpu_blocks(new_table)
    # the decode wrote position 66 (block 4 of the table, slot 2): every other byte is the restored copy
    untouched = torch.ones(after.shape, dtype=torch.bool)
    untouched[4, :, :, :, 2] = False
    assert torch.equal(after[untouched], before[untouched])
    ref = reference(hf, ids)
    close(ex.last_logits[1], ref[66:67])
    for p in range(67, 70):
        ex.execute(BatchPlan(decode_seq_ids=[1], decode_positions=[p], decode_block_tables=[new_table],
                             decode_input_ids=[ids[p]]))
        close(ex.last_logits[1], ref[p:p + 1])


def test_capacity_reports_the_store(weights):
    ex = make_executor(weights, num_gpu_blocks=10, num_host_blocks=4, max_model_len=512)
    cap = ex.capacity()
    assert (cap.num_gpu_blocks, cap.num_host_blocks, cap.block_size, cap.max_model_len) == (10, 4, 16, 512)
    assert cap.bytes_per_block == 2 * 2 * 2 * 16 * 16 * 4   # K and V, layers, kv heads, slots, head dim, fp32
    assert ex.store.gpu.shape == (11, 2, 2, 2, 16, 16)        # one scratch block beyond the ten


def test_positions_beyond_the_context_length_are_refused(weights):
    ex = make_executor(weights, max_model_len=64)
    with pytest.raises(ValueError, match=r"sequence 4: prefill up to position 69 exceeds the model's context "
                                         r"length \(max_model_len 64\)"):
        ex.execute(BatchPlan(prefills=[PrefillChunk(4, 0, 70, list(range(5)), True, tokens(70, 1))]))
    with pytest.raises(ValueError, match=r"sequence 5: decode at position 64 exceeds"):
        ex.execute(BatchPlan(decode_seq_ids=[5], decode_positions=[64], decode_block_tables=[list(range(5))],
                             decode_input_ids=[1]))
    with pytest.raises(ValueError, match=r"max_model_len 5000 must be in \[1, 4096\]"):
        make_executor(weights, max_model_len=5000)


def test_bad_plans_are_refused_with_the_culprit_named(weights):
    ex = make_executor(weights, num_gpu_blocks=8)
    with pytest.raises(ValueError, match=r"sequence 3: prefill chunk of 4 tokens carries None token ids"):
        ex.execute(BatchPlan(prefills=[PrefillChunk(3, 0, 4, [0], True)]))
    with pytest.raises(ValueError, match=r"input token id 32000 is outside \[0, 32000\)"):
        ex.execute(BatchPlan(prefills=[PrefillChunk(3, 0, 2, [0], True, [5, 32000])]))
    with pytest.raises(ValueError, match=r"block id 8 is outside \[0, 8\)"):
        ex.execute(BatchPlan(prefills=[PrefillChunk(3, 0, 2, [8], True, [5, 6])]))
    with pytest.raises(ValueError, match=r"sequence 3: 1 blocks cannot hold 20 tokens"):
        ex.execute(BatchPlan(prefills=[PrefillChunk(3, 0, 20, [0], True, tokens(20, 2))]))
    with pytest.raises(ValueError, match=r"swap-out GroupMove\(src_start=6, dst_start=0, num_blocks=4\): outside"):
        ex.execute(BatchPlan(swap_out=[GroupMove(6, 0, 4)]))
    with pytest.raises(ValueError, match="one iteration per plan, got num_steps=3"):
        ex.execute(BatchPlan(decode_seq_ids=[1], decode_positions=[0], decode_block_tables=[[0]],
                             decode_input_ids=[1], num_steps=3))
    with pytest.raises(NotImplementedError, match="supports_multi_step is False"):
        ex.decode_step_affine(4)


def test_graph_decode_path_pads_into_the_scratch_block_only(hf, weights):
    ex = TorchExecutor(weights, device="cpu", num_gpu_blocks=64, num_host_blocks=0, max_model_len=256)
    ex.graphs = EagerDecodeGraphs(ex.model, ex.tables, max_batch=16)
    assert ex.graphs.sizes == [1, 2, 4, 8, 16]
    seqs = {i: tokens(20 + 9 * i, 40 + i) for i in range(5)}
    tables = {i: [10 * i + j for j in range(3 + i)] for i in range(5)}   # tables of different lengths
    ex.execute(BatchPlan(prefills=[PrefillChunk(i, 0, len(s), tables[i], True, s) for i, s in seqs.items()]))
    ex.store.gpu[ex.store.scratch_block] = 7.0
    for step, members in enumerate([[0, 1, 2], [3, 4, 0, 1, 2], [2], [1, 3, 4]]):   # buckets 4, 8, 1, 4
        snapshot = ex.store.gpu.clone()
        plan = BatchPlan(decode_seq_ids=members, decode_positions=[len(seqs[i]) for i in members],
                         decode_block_tables=[tables[i] for i in members],
                         decode_input_ids=[tokens(1, 100 * step + i)[0] for i in members])
        res = ex.execute(plan)
        changed = (ex.store.gpu != snapshot).flatten(1).any(1).nonzero().flatten().tolist()
        written = {tables[i][len(seqs[i]) // 16] for i in members}
        assert set(changed) <= written | {ex.store.scratch_block}
        for i, tok in zip(members, plan.decode_input_ids):
            seqs[i].append(tok)
            assert res.sampled_tokens[i] == int(reference(hf, seqs[i])[-1].argmax())


class _EagerMixed(MixedGraphs):
    """The piecewise-graph path (static buffers, buckets, padding) with eager "replays", on the CPU."""

    def _capture(self) -> None:
        self.graphs = {n: [EagerReplay(lambda n=n, i=i: self._piece(n, i)) for i in range(self.model.dims.num_layers + 1)]
                       for n in self.sizes}


def test_piecewise_graph_path_matches_transformers_and_pads_into_scratch(hf, weights):
    ex = make_executor(weights)
    ex.mixed = _EagerMixed(ex.model, sizes=(16, 64, 128))
    a, b, c = tokens(40, 21), tokens(33, 22), tokens(70, 23)
    ex.store.gpu[ex.store.scratch_block] = 3.0
    snapshot = ex.store.gpu.clone()
    ex.execute(BatchPlan(prefills=[PrefillChunk(1, 0, 39, [0, 1, 2], True, a[:39]),      # 39 + 10 rows: bucket 64
                                   PrefillChunk(2, 0, 10, [8, 9, 10], False, b[:10])]))
    changed = (ex.store.gpu != snapshot).flatten(1).any(1).nonzero().flatten().tolist()
    assert set(changed) <= {0, 1, 2, 8, ex.store.scratch_block}
    close(ex.last_logits[1], reference(hf, a)[:39])
    plan = BatchPlan(prefills=[PrefillChunk(2, 10, 23, [8, 9, 10], True, b[10:]),          # over its own cache
                               PrefillChunk(3, 0, 70, [20, 21, 22, 23, 24], True, c)],
                     decode_seq_ids=[1], decode_positions=[39], decode_block_tables=[[0, 1, 2]],
                     decode_input_ids=[a[39]])                                             # 94 rows: bucket 128
    res = ex.execute(plan)
    close(ex.last_logits[1], reference(hf, a)[39:40])
    close(ex.last_logits[2], reference(hf, b)[10:])
    close(ex.last_logits[3], reference(hf, c))
    assert res.sampled_tokens[3] == int(reference(hf, c)[-1].argmax())
    ex.execute(BatchPlan(prefills=[PrefillChunk(4, 0, 200, list(range(30, 43)), True, tokens(200, 24))]))
    assert ex.mixed.bucket(200) is None       # past the largest bucket: the eager path ran


def test_staged_parts_start_16_byte_aligned_when_asked():
    """Triton compiles one kernel variant per pointer alignment; the eager path stages its kernel inputs
    at even int64 offsets so every iteration meets the variant compiled at start."""
    ex = TorchExecutor("tiny", device="cpu", num_gpu_blocks=16, num_host_blocks=0, max_model_len=64)
    parts = [np.arange(3), np.arange(10, 15), np.zeros(0, dtype=np.int64), np.arange(20, 21)]
    staged, offsets = ex._stage(parts, align=2)
    assert offsets == [0, 4, 10, 10]
    for o, p in zip(offsets, parts):
        assert staged[o:o + p.size].tolist() == p.tolist()
        assert staged[o:o + p.size].data_ptr() % 16 == 0 or p.size == 0
    packed, packed_offsets = ex._stage(parts)
    assert packed_offsets == [0, 3, 8, 8] and packed.tolist() == [0, 1, 2, 10, 11, 12, 13, 14, 20]
