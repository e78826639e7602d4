"""The serving engine over ``TorchExecutor`` (CPU, tiny random model, float32): every logit
row of every iteration — chunked prefills mixed with many decodes, prefix-cache hits,
preemption by swap and by recompute — equals transformers' forward over the request's
final token sequence at the same positions, and every request generates transformers'
greedy continuation of its prompt."""

from __future__ import annotations

import pytest
import torch

import baselines  # noqa: F401  (registers the policies)
from envs.engine import ServingEngine
from envs.engine_config import EngineConfig
from envs.policy import make_policy
from envs.request import RequestSpec
from envs.tokens import ConcatTokens, UniqueTokens
from gpu_backend.models import LlamaWeights
from tests.gpu_backend.tiny_model import perturbed_tiny_model
from gpu_backend.torch_executor import TorchExecutor


@pytest.fixture(scope="module")
def hf():
    return perturbed_tiny_model(seed=1, norm_seed=7)


@pytest.fixture(scope="module")
def weights(hf):
    return LlamaWeights.from_hf(hf, "tiny")


class Recorder:
    """Wraps the executor and keeps, per iteration, each sequence's (positions, logits)."""

    def __init__(self, inner: TorchExecutor):
        self.inner = inner
        self.supports_multi_step = inner.supports_multi_step
        self.needs_token_ids = inner.needs_token_ids
        self.needs_block_ids = inner.needs_block_ids
        self.steps: list[dict[int, tuple[list[int], torch.Tensor]]] = []
        self.kinds: list[tuple[int, int, int]] = []     # (prefill chunks, resumed chunks, decodes)
        self.sampled: dict[int, list[int]] = {}
        self.swaps = 0

    def capacity(self):
        return self.inner.capacity()

    def execute(self, plan):
        res = self.inner.execute(plan)
        rows: dict[int, tuple[list[int], torch.Tensor]] = {}
        for c in plan.prefills:
            rows[c.seq_id] = (list(range(c.start, c.start + c.num_tokens)), self.inner.last_logits[c.seq_id])
        for sid, pos in zip(plan.decode_seq_ids, plan.decode_positions):
            rows[sid] = ([pos], self.inner.last_logits[sid])
        self.steps.append(rows)
        self.kinds.append((len(plan.prefills), sum(c.start > 0 for c in plan.prefills), len(plan.decode_seq_ids)))
        self.swaps += len(plan.swap_in) + len(plan.swap_out)
        for sid, tok in (res.sampled_tokens or {}).items():
            self.sampled.setdefault(sid, []).append(tok)
        return res


def run(weights, specs, config, **executor_kw):
    ex = Recorder(TorchExecutor(weights, device="cpu", keep_logits=True, **executor_kw))
    engine = ServingEngine(ex, make_policy("fcfs"), config)
    engine.load(specs)
    while not engine.done:
        engine.step()
        engine.check_integrity()
    return engine, ex


def check_against_hf(hf, specs, ex: Recorder) -> int:
    """Every recorded logit row equals HF's at the same position of the final sequence; returns rows checked."""
    full = {}
    for s in specs:
        out = ex.sampled[s.request_id]
        assert len(out) == s.output_len
        seq = s.prompt.token_ids().tolist() + out
        with torch.no_grad():
            ref = hf(torch.tensor([seq[:-1]])).logits[0]
        full[s.request_id] = ref
        # greedy: each output token is the argmax after the tokens before it
        assert out == ref[s.prompt_len - 1:].argmax(-1).tolist()
    checked = 0
    for rows in ex.steps:
        for sid, (positions, logits) in rows.items():
            torch.testing.assert_close(logits, full[sid][positions], atol=2e-5, rtol=1e-4)
            checked += len(positions)
    return checked


def spec(rid, prompt, out, arrival=0.0, parent=None):
    return RequestSpec(rid, rid % 3, arrival, prompt, out, parent_id=parent)


def test_chunked_prefills_mixed_with_many_decodes(hf, weights):
    specs = [spec(i, UniqueTokens(100 + i, 20 + 13 * i), 25 + 4 * i) for i in range(6)]
    config = EngineConfig(max_num_batched_tokens=24, max_num_seqs=8, batching="sarathi")
    engine, ex = run(weights, specs, config, num_gpu_blocks=64)
    assert all(r.finished for r in engine.records)
    mixed = [k for k in ex.kinds if k[0] and k[2]]
    assert len(mixed) >= 5, ex.kinds               # chunks beside decodes in one forward
    assert any(k[1] for k in ex.kinds)               # chunks resumed over their own earlier chunks
    assert sum(k[2] for k in ex.kinds) >= 100        # many decode steps
    assert check_against_hf(hf, specs, ex) == sum(s.prompt_len + s.output_len - 1 for s in specs)


def test_prefix_cache_hits_reuse_real_kv(hf, weights):
    doc = UniqueTokens(7, 64)
    specs = [spec(0, ConcatTokens([doc, UniqueTokens(8, 9)]), 6),
             spec(1, ConcatTokens([doc, UniqueTokens(9, 21)]), 8, parent=0),
             spec(2, ConcatTokens([doc, UniqueTokens(10, 5)]), 5, parent=1)]
    engine, ex = run(weights, specs, EngineConfig(max_num_batched_tokens=512), num_gpu_blocks=32)
    cached = {r.request_id: r.cached_tokens for r in engine.records}
    assert cached == {0: 0, 1: 64, 2: 64}
    check_against_hf(hf, specs, ex)


@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_preemption_under_memory_pressure(hf, weights, mode):
    specs = [spec(i, UniqueTokens(200 + i, 30 + 7 * i), 30) for i in range(6)]
    config = EngineConfig(max_num_batched_tokens=64, max_num_seqs=8, preemption_mode=mode,
                          enable_prefix_caching=mode == "recompute")
    engine, ex = run(weights, specs, config, num_gpu_blocks=12, num_host_blocks=64)
    c = engine.counters
    if mode == "swap":
        assert c.preemptions_swap > 0 and ex.swaps > 0
    else:
        assert c.preemptions_recompute > 0 and ex.swaps == 0
    assert all(r.finished for r in engine.records)
    check_against_hf(hf, specs, ex)


def test_requests_beyond_the_context_length_are_rejected(weights):
    specs = [spec(0, UniqueTokens(1, 50), 20), spec(1, UniqueTokens(2, 20), 5)]
    engine, _ = run(weights, specs, EngineConfig(), num_gpu_blocks=16, max_model_len=64)
    assert engine.rejections == [(0, "prompt 50 + output 20 tokens exceed max_model_len 64")]
    assert engine.records[1].finished
