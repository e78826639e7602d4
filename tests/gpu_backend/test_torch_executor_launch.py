"""``TorchExecutor.launch`` / ``collect`` on the CPU: an iteration launched while another is in flight
takes the decode inputs that one samples (``PENDING_TOKEN``) from its output, on every compute path
(eager, decode graph, whole-iteration graph, replayed eagerly here), and a plan with swaps launched
behind one copies what that one wrote (also on the GPU); misuse is refused by name."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from gpu_backend.models import LlamaWeights
from gpu_backend.plan import PENDING_TOKEN, BatchPlan, GroupMove, PrefillChunk
from gpu_backend.torch_executor import TorchExecutor
from tests.gpu_backend.eager_replay import EagerDecodeGraphs, EagerFullGraphs
from tests.gpu_backend.tiny_model import perturbed_tiny_model


@pytest.fixture(scope="module")
def hf():
    return perturbed_tiny_model(seed=0, norm_seed=123)


@pytest.fixture(scope="module")
def weights(hf):
    return LlamaWeights.from_hf(hf, "tiny")


def tokens(n: int, seed: int) -> list[int]:
    return torch.randint(0, 32000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def greedy(hf, ids: list[int]) -> int:
    with torch.no_grad():
        return int(hf(torch.tensor([ids])).logits[0, -1].argmax())


def executor(weights, path: str) -> TorchExecutor:
    ex = TorchExecutor(weights, device="cpu", num_gpu_blocks=64, num_host_blocks=8, max_model_len=256)
    if path == "decode_graph":
        ex.graphs = EagerDecodeGraphs(ex.model, ex.tables, max_batch=8)
    elif path == "full_graph":
        ex.full = EagerFullGraphs(ex.model, ex.tables, max_decodes=4, sizes=(16, 64), max_chunks=3)
    return ex


@pytest.mark.parametrize("path", ["eager", "decode_graph", "full_graph"])
def test_pending_decode_inputs_come_from_the_iteration_in_flight(hf, weights, path):
    ex = executor(weights, path)
    a, b = tokens(20, 1), tokens(27, 2)
    first = ex.launch(BatchPlan(prefills=[PrefillChunk(1, 0, 20, [0, 1], True, a),
                                          PrefillChunk(2, 0, 27, [4, 5], True, b)]))
    # planned before the prefill's tokens are known: both decode inputs are pending
    decode = BatchPlan(decode_seq_ids=[2, 1], decode_positions=[27, 20], decode_block_tables=[[4, 5], [0, 1]],
                       decode_input_ids=[PENDING_TOKEN, PENDING_TOKEN])
    if path == "full_graph":   # a chunk beside the decodes keeps the iteration on the whole-iteration graphs
        c = tokens(9, 3)
        decode.prefills = [PrefillChunk(3, 0, 9, [8], True, c)]
    second = ex.launch(decode)
    r1 = ex.collect(first)
    r2 = ex.collect(second)
    ta, tb = r1.sampled_tokens[1], r1.sampled_tokens[2]
    assert (ta, tb) == (greedy(hf, a), greedy(hf, b))
    assert r2.sampled_tokens[1] == greedy(hf, a + [ta]) and r2.sampled_tokens[2] == greedy(hf, b + [tb])
    if path == "full_graph":
        assert r2.sampled_tokens[3] == greedy(hf, c)
    # one pending, one given: only the pending one is taken from the previous iteration
    third = ex.launch(BatchPlan(decode_seq_ids=[1, 2], decode_positions=[21, 28], decode_block_tables=[[0, 1], [4, 5]],
                                decode_input_ids=[PENDING_TOKEN, 77]))
    r3 = ex.collect(third)
    assert r3.sampled_tokens == {1: greedy(hf, a + [ta, r2.sampled_tokens[1]]), 2: greedy(hf, b + [tb, 77])}
    assert r3.duration_s > 0 and r3.compute_s > 0


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])]


def swap_behind_plans(a: list[int]) -> list[BatchPlan]:
    """Prefill 20 tokens into blocks 0-1; decode position 20 (its KV goes into block 1); then swap blocks 0-1
    out to the host and back in as blocks 10-11, and decode position 21 over those."""
    return [BatchPlan(prefills=[PrefillChunk(1, 0, 20, [0, 1], True, a)]),
            BatchPlan(decode_seq_ids=[1], decode_positions=[20], decode_block_tables=[[0, 1]],
                      decode_input_ids=[PENDING_TOKEN]),
            BatchPlan(decode_seq_ids=[1], decode_positions=[21], decode_block_tables=[[10, 11]],
                      decode_input_ids=[PENDING_TOKEN], swap_out=[GroupMove(0, 0, 2)], swap_in=[GroupMove(0, 10, 2)])]


@pytest.mark.parametrize("device", DEVICES)
def test_a_plan_with_swaps_launched_behind_an_iteration_copies_what_that_iteration_wrote(hf, weights, device):
    """The swap plan is launched while the decode that writes position 20 is in flight: its token is the one a
    synchronous run gives only if the copies waited for that decode and the forward pass for the copies."""
    w = weights if device == "cpu" else LlamaWeights.from_hf(copy.deepcopy(hf).to(device), "tiny")

    def executor_on_device():
        return TorchExecutor(w, device=device, dtype=torch.float32, num_gpu_blocks=64, num_host_blocks=8,
                             max_model_len=256)

    a = tokens(20, 1)
    plans = swap_behind_plans(a)
    ex = executor_on_device()
    first = ex.launch(plans[0])
    second = ex.launch(plans[1])
    t1 = ex.collect(first).sampled_tokens[1]
    third = ex.launch(plans[2])
    t2 = ex.collect(second).sampled_tokens[1]
    r3 = ex.collect(third)
    assert ex.last_swap.num_copies == 2 and ex.last_swap.num_bytes == 4 * ex.store.bytes_per_block
    assert r3.swap_s > 0 and r3.duration_s >= r3.compute_s > 0
    assert torch.equal(ex.store.host_blocks([0]), ex.store.gpu_blocks([10]))
    sync = executor_on_device()
    s1 = sync.execute(plans[0]).sampled_tokens[1]
    s2 = sync.execute(replace(plans[1], decode_input_ids=[s1])).sampled_tokens[1]
    s3 = sync.execute(replace(plans[2], decode_input_ids=[s2])).sampled_tokens[1]
    assert (t1, t2, r3.sampled_tokens[1]) == (s1, s2, s3)
    if device == "cpu":
        assert (t1, t2, r3.sampled_tokens[1]) == (greedy(hf, a), greedy(hf, a + [t1]), greedy(hf, a + [t1, t2]))


def test_misuse_of_launch_and_collect_is_refused(weights):
    ex = executor(weights, "eager")
    prefill = BatchPlan(prefills=[PrefillChunk(1, 0, 5, [0], True, tokens(5, 4))])
    with pytest.raises(ValueError, match=r"sequence 9: its decode input id is pending \(-1\) but the previous "
                                         r"iteration did not sample it"):
        ex.launch(BatchPlan(decode_seq_ids=[9], decode_positions=[3], decode_block_tables=[[2]],
                            decode_input_ids=[PENDING_TOKEN]))
    one = ex.launch(prefill)
    two = ex.launch(BatchPlan(prefills=[PrefillChunk(2, 0, 5, [1], True, tokens(5, 5))]))
    with pytest.raises(RuntimeError, match=r"2 iteration\(s\) in flight: collect them first"):
        ex.launch(BatchPlan(swap_out=[GroupMove(0, 0, 1)]))
    ex.collect(one)
    ex.collect(two)
    with pytest.raises(RuntimeError, match="collected already"):
        ex.collect(one)
    with pytest.raises(ValueError, match=r"decode input token id -2 is outside"):
        ex.execute(BatchPlan(decode_seq_ids=[1], decode_positions=[5], decode_block_tables=[[0]],
                             decode_input_ids=[-2]))
