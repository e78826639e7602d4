"""For the counter- and cache-based policies, closed-form decode runs change no result.

These policies move their order between events (``stable_between_events`` False) and most
count tokens (``on_tokens``), so the engine runs several decode iterations at once only
when every live request is in the batch. Their books must then come out as if stepped one
iteration at a time: same records, same metrics, on a slice with preemptions and on one
with heavy prefix sharing.
"""

from __future__ import annotations

import math

import pytest

import baselines  # noqa: F401  (registers the baselines)
from envs.engine import ServingEngine
from envs.engine_config import EngineConfig
from envs.metrics import compute_metrics
from envs.policy import make_policy
from envs.workloads import get_workload, retime_poisson
from gpu_backend.sim_executor import SimExecutor

# LTR without starvation control declares its order stable between events: the engine's decode
# group then runs beside it, which must change nothing either
POLICIES = ["vtc", "lcf", "lpm", "dlpm", "ltr", "mlfq", "ltr-no-starvation"]


def _make(policy: str):
    if policy == "ltr-no-starvation":
        return make_policy("ltr", starvation_threshold=None)
    return make_policy(policy)


def _run(specs, policy: str, **cfg) -> ServingEngine:
    eng = ServingEngine(SimExecutor("h100-llama-8b"), _make(policy), EngineConfig(**cfg))
    eng.load(specs)
    eng.run()
    return eng


def _same(specs, policy: str, **cfg) -> ServingEngine:
    fast = _run(specs, policy, multi_step=True, **cfg)
    slow = _run(specs, policy, multi_step=False, **cfg)
    assert fast.iteration == slow.iteration
    for a, b in zip(fast.records, slow.records, strict=True):
        assert (a.request_id, a.num_output_tokens, a.cached_tokens, a.num_preemptions) == \
               (b.request_id, b.num_output_tokens, b.cached_tokens, b.num_preemptions)
        for f in ("first_token_time", "finish_time"):
            assert math.isclose(getattr(a, f), getattr(b, f), rel_tol=1e-9, abs_tol=1e-12), (policy, f, a, b)
    ma, mb = compute_metrics(fast.result()).to_dict(), compute_metrics(slow.result()).to_dict()
    for key, va in ma.items():
        if isinstance(va, float):
            assert va == pytest.approx(mb[key], rel=1e-7, abs=1e-9), (policy, key)
    return fast


@pytest.mark.parametrize("policy", POLICIES)
def test_closed_form_runs_equal_stepping_under_memory_pressure(policy):
    specs = retime_poisson(get_workload("arena-27").generate(0, 150), 15.0, 3)
    fast = _same(specs, policy, num_gpu_blocks=200)
    assert fast.counters.preemptions_recompute > 0


def test_ltr_without_starvation_control_uses_the_decode_group():
    specs = retime_poisson(get_workload("arena-27").generate(0, 150), 15.0, 3)
    eng = ServingEngine(SimExecutor("h100-llama-8b"), _make("ltr-no-starvation"), EngineConfig())
    eng.load(specs)
    grouped = 0
    while not eng.done:
        eng.step()
        grouped += eng._group is not None
    assert grouped > 0


# A policy stable between events lets the engine run decode steps in closed form while requests
# wait. A waiting request blocked by memory while its prefix is cached (matching it locks those
# blocks) becomes admissible once decode growth evicts that prefix: such runs stop evicting after
# their first step, which this slice exercises.
@pytest.mark.parametrize("policy", POLICIES)
def test_closed_form_runs_equal_stepping_with_shared_prefixes(policy):
    specs = retime_poisson(get_workload("shared-doc-qa").generate(0, 80), 8.0, 1)
    fast = _same(specs, policy, num_gpu_blocks=2000)
    assert fast.counters.prompt_tokens_cached > 0


@pytest.mark.parametrize("seed, num_gpu_blocks", [(s, b) for s in (0, 1, 2) for b in (1500, 2000, 2500, 3000)])
def test_fcfs_closed_form_runs_equal_stepping_while_cached_prefixes_are_evicted(seed, num_gpu_blocks):
    """FCFS is stable between events, so runs go on while requests wait blocked by memory: the
    runs may not evict after their first step (see above) on any of these memory sizes."""
    specs = retime_poisson(get_workload("shared-doc-qa").generate(seed, 80), 8.0, seed + 1)
    _same(specs, "fcfs", num_gpu_blocks=num_gpu_blocks, preemption_mode="recompute")
