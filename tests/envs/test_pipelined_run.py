"""Asynchronous scheduling (``EngineConfig.async_scheduling``): whole runs over ``TorchExecutor`` (CPU,
tiny random model) with the next iteration planned while the current one is in flight. Every request
still generates transformers' greedy continuation of its prompt, the decode inputs the plan leaves
pending are filled from the previous iteration's samples, and the synchronous run's tokens and
iteration count come out the same where arrivals and memory do not make the one-iteration lag matter."""

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
from gpu_backend.plan import PENDING_TOKEN, BatchPlan
from gpu_backend.executors import make_executor
from gpu_backend.torch_executor import TorchExecutor
from tests.gpu_backend.tiny_model import perturbed_tiny_model


@pytest.fixture(scope="module")
def hf():
    return perturbed_tiny_model(seed=1, norm_seed=7)


@pytest.fixture(scope="module")
def weights(hf):
    return LlamaWeights.from_hf(hf, "tiny")


class LaunchRecorder:
    """Passes ``launch``/``collect`` (and ``execute``) through, keeping the sampled tokens per sequence,
    how many decode inputs each plan left pending and how many launches found an iteration in flight."""

    def __init__(self, inner: TorchExecutor):
        self.inner = inner
        self.supports_multi_step = inner.supports_multi_step
        self.needs_token_ids = inner.needs_token_ids
        self.needs_block_ids = inner.needs_block_ids
        self.sampled: dict[int, list[int]] = {}
        self.pending_inputs = 0
        self.launched_ahead = 0
        self.swaps_ahead = 0
        self.in_flight = 0

    def capacity(self):
        return self.inner.capacity()

    def _keep(self, res):
        for sid, tok in (res.sampled_tokens or {}).items():
            self.sampled.setdefault(sid, []).append(tok)
        return res

    def execute(self, plan):
        return self._keep(self.inner.execute(plan))

    def launch(self, plan):
        self.pending_inputs += sum(t == PENDING_TOKEN for t in plan.decode_input_ids or ())
        self.launched_ahead += self.in_flight > 0
        self.swaps_ahead += self.in_flight > 0 and bool(plan.swap_in or plan.swap_out)
        self.in_flight += 1
        return self.inner.launch(plan)

    def collect(self, handle):
        self.in_flight -= 1
        return self._keep(self.inner.collect(handle))


def serve(weights, specs, config, **executor_kw):
    ex = LaunchRecorder(TorchExecutor(weights, device="cpu", **executor_kw))
    engine = ServingEngine(ex, make_policy("fcfs"), config)
    engine.load(specs)
    engine.run()
    engine.check_integrity()
    return engine, ex


def greedy_continuations(hf, specs, sampled):
    for s in specs:
        out = sampled[s.request_id]
        assert len(out) == s.output_len
        seq = s.prompt.token_ids().tolist() + out
        with torch.no_grad():
            ref = hf(torch.tensor([seq[:-1]])).logits[0]
        assert out == ref[s.prompt_len - 1:].argmax(-1).tolist(), s.request_id


def spec(rid, prompt, out, arrival=0.0, parent=None):
    return RequestSpec(rid, rid % 3, arrival, prompt, out, parent_id=parent)


def test_async_run_generates_what_the_synchronous_run_does(hf, weights):
    specs = [spec(i, UniqueTokens(100 + i, 20 + 13 * i), 25 + 4 * i) for i in range(6)]
    base = dict(max_num_batched_tokens=24, max_num_seqs=8, batching="sarathi")
    sync_engine, sync_ex = serve(weights, specs, EngineConfig(**base), num_gpu_blocks=64)
    engine, ex = serve(weights, specs, EngineConfig(**base, async_scheduling=True), num_gpu_blocks=64)
    assert ex.sampled == sync_ex.sampled
    assert engine.iteration == sync_engine.iteration
    assert engine.counters.output_tokens == sync_engine.counters.output_tokens == sum(s.output_len for s in specs)
    assert all(r.finished for r in engine.records)
    # the overlap was exercised: most launches found an iteration in flight, and their decodes took
    # the previous iteration's tokens on the device
    assert ex.launched_ahead == engine.iteration - 1
    assert ex.pending_inputs >= 100
    greedy_continuations(hf, specs, ex.sampled)
    times = [(r.arrival_time, r.first_token_time, r.finish_time) for r in engine.records]
    assert all(a <= f <= e for a, f, e in times)
    assert engine.clock == pytest.approx(engine.counters.busy_time_s)


@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_async_run_under_memory_pressure(hf, weights, mode):
    specs = [spec(i, UniqueTokens(200 + i, 30 + 7 * i), 30) for i in range(6)]
    config = EngineConfig(max_num_batched_tokens=64, max_num_seqs=8, preemption_mode=mode,
                          enable_prefix_caching=mode == "recompute", async_scheduling=True)
    engine, ex = serve(weights, specs, config, num_gpu_blocks=12, num_host_blocks=64)
    c = engine.counters
    assert (c.preemptions_swap if mode == "swap" else c.preemptions_recompute) > 0
    # plans with swaps are launched behind the iteration in flight like any other
    assert ex.swaps_ahead > 0 if mode == "swap" else ex.swaps_ahead == 0
    assert all(r.finished for r in engine.records)
    greedy_continuations(hf, specs, ex.sampled)


def test_async_run_with_prefix_hits_and_follow_up_turns(hf, weights):
    doc = UniqueTokens(7, 64)
    specs = [spec(0, ConcatTokens([doc, UniqueTokens(8, 9)]), 6),
             spec(1, ConcatTokens([doc, UniqueTokens(9, 21)]), 8, parent=0),
             spec(2, ConcatTokens([doc, UniqueTokens(10, 5)]), 5, parent=1),
             spec(3, UniqueTokens(11, 12), 40, arrival=0.0)]
    engine, ex = serve(weights, specs, EngineConfig(max_num_batched_tokens=512, async_scheduling=True),
                       num_gpu_blocks=32)
    assert {r.request_id: r.cached_tokens for r in engine.records} == {0: 0, 1: 64, 2: 64, 3: 0}
    by_id = {r.request_id: r for r in engine.records}
    assert by_id[1].arrival_time >= by_id[0].finish_time and by_id[2].arrival_time >= by_id[1].finish_time
    greedy_continuations(hf, specs, ex.sampled)


class ExecuteOnly:
    """An executor without ``launch``/``collect``."""

    def __init__(self, inner):
        self.inner = inner
        self.supports_multi_step = False
        self.needs_token_ids = False
        self.needs_block_ids = False

    def capacity(self):
        return self.inner.capacity()

    def decode_step_affine(self, num_seqs):
        return self.inner.decode_step_affine(num_seqs)

    def execute(self, plan):
        return self.inner.execute(plan)


def test_async_scheduling_needs_an_executor_that_launches():
    with pytest.raises(ValueError, match="async_scheduling needs an executor .* ExecuteOnly"):
        ServingEngine(ExecuteOnly(make_executor("sim")), make_policy("fcfs"), EngineConfig(async_scheduling=True))


def test_on_the_simulator_a_request_arriving_during_an_iteration_joins_one_iteration_later():
    """The simulator runs asynchronous scheduling's order too (``SimExecutor.launch``/``collect``), so a
    fidelity judgement of an asynchronous real run compares like with like. Request 1 arrives while request
    0's prefill runs: synchronously it joins the next iteration, asynchronously the one after (that plan was
    made before the prefill ended), so its first token comes one decode iteration of request 0 later."""
    specs = [spec(0, UniqueTokens(1, 64), 8), spec(1, UniqueTokens(2, 32), 4, arrival=1e-6)]

    def run(async_scheduling):
        engine = ServingEngine(make_executor("sim", profile="h100-llama-1b"), make_policy("fcfs"),
                               EngineConfig(max_num_batched_tokens=512, multi_step=False,
                                            async_scheduling=async_scheduling))
        engine.load(specs)
        return engine, {r.request_id: r for r in engine.run().requests}

    _, sync = run(False)
    _, late = run(True)
    sim = make_executor("sim", profile="h100-llama-1b")
    first = sync[0].first_token_time
    assert late[0].first_token_time == first
    assert sync[1].first_token_time > first and late[1].first_token_time > sync[1].first_token_time
    assert sim.launch is not None and sim.collect(sim.launch(BatchPlan())) == sim.execute(BatchPlan())
