"""The serving engine: exact iteration accounting, prefix hits, chunking, preemption, rejection,
batching rules, and the closed-form decode runs against one-iteration stepping."""

from __future__ import annotations

import json
import math

import pytest

import baselines  # noqa: F401
from envs.engine import ServingEngine
from envs.engine_config import EngineConfig
from envs.metrics import compute_metrics
from envs.policy import Policy, make_policy
from envs.request import RequestSpec
from envs.tokens import ConcatTokens, UniqueTokens
from envs.workloads import get_workload, retime_poisson
from gpu_backend.cost_model import BatchShape
from gpu_backend.profiles import PROFILE_DIR
from gpu_backend.sim_executor import SimExecutor

PROFILE = "h100-llama-8b"
FITTED_1B = PROFILE_DIR / "fitted" / "h200-llama-1b-fitted.json"


def spec(i, t, prompt, out, client=0, **kw):
    src = prompt if not isinstance(prompt, int) else UniqueTokens(1000 + i, prompt)
    return RequestSpec(i, client, t, src, out, **kw)


def run(specs, policy="fcfs", check=False, profile=PROFILE, **cfg):
    eng = ServingEngine(SimExecutor(profile), make_policy(policy), EngineConfig(**cfg))
    eng.load(specs)
    while not eng.done:
        eng.step()
        if check:
            eng.check_integrity()
    return eng


def cost():
    return SimExecutor(PROFILE).cost


def test_single_request_times_are_the_cost_model_sums():
    eng = run([spec(0, 0.0, 100, 5)], multi_step=False)
    rec = eng.records[0]
    c = cost()
    prefill = c.compute_time(BatchShape(100, 100 * (0 + 101 / 2), 100, 0, 0, 1))
    assert rec.first_token_time == pytest.approx(prefill, rel=1e-12)
    t = prefill
    for i in range(4):  # decodes read 101, 102, 103, 104 tokens of context
        t += c.decode_affine(1).first(101 + i, 101 + i)
    assert rec.finish_time == pytest.approx(t, rel=1e-12)
    assert eng.iteration == 5
    assert rec.num_output_tokens == 5


def test_chunked_prefill_splits_by_the_token_budget():
    eng = run([spec(0, 0.0, 5000, 2)], max_num_batched_tokens=2048, multi_step=False)
    assert eng.iteration == 3 + 1  # chunks 2048, 2048, 904 then one decode
    assert eng.records[0].prefill_tokens_computed == 5000
    eng2 = run([spec(0, 0.0, 5000, 2)], max_num_batched_tokens=2048, batching="vllm", multi_step=False)
    assert eng2.iteration == 2  # no chunking: the whole prompt runs alone, then one decode


def test_prefix_cache_hit_serves_full_blocks_of_a_repeated_prompt():
    doc = UniqueTokens(7, 1000)
    a = spec(0, 0.0, ConcatTokens([doc, UniqueTokens(8, 30)]), 3)
    b = spec(1, 10.0, ConcatTokens([doc, UniqueTokens(9, 50)]), 3)
    eng = run([a, b])
    # 1000 shared tokens = 62 full blocks of 16 (992 tokens); the second prompt reuses them
    assert eng.records[0].cached_tokens == 0
    assert eng.records[1].cached_tokens == 992
    assert eng.records[1].prefill_tokens_computed == 1050 - 992
    assert eng.counters.prompt_tokens_cached == 992
    assert eng.counters.prompt_tokens_admitted == 1030 + 1050


def test_no_prefix_caching_setting_computes_everything():
    doc = UniqueTokens(7, 1000)
    eng = run([spec(0, 0.0, doc, 3), spec(1, 10.0, doc, 3)], enable_prefix_caching=False)
    assert [r.cached_tokens for r in eng.records] == [0, 0]


def test_request_larger_than_kv_memory_is_rejected_and_the_run_goes_on():
    specs = [spec(0, 0.0, 100, 4), spec(1, 0.5, 3000, 4), spec(2, 1.0, 100, 4)]
    eng = run(specs, num_gpu_blocks=64)  # 1024 tokens of KV
    r = {rec.request_id: rec for rec in eng.records}
    assert r[1].rejected_reason == "needs 188 KV blocks, the GPU has 64"
    assert r[0].finished and r[2].finished
    assert eng.rejections == [(1, "needs 188 KV blocks, the GPU has 64")]


def test_too_long_for_the_model_is_rejected():
    eng = run([spec(0, 0.0, 131000, 100)])
    assert eng.records[0].rejected_reason == "prompt 131000 + output 100 tokens exceed max_model_len 131072"


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_memory_pressure_preempts_the_newest_and_everything_finishes(mode):
    specs = [spec(i, 0.01 * i, 200, 300) for i in range(8)]
    eng = run(specs, check=True, num_gpu_blocks=100, preemption_mode=mode)
    assert all(r.finished for r in eng.records)
    c = eng.counters
    if mode == "swap":
        assert c.preemptions_swap > 0 and c.preemptions_recompute == 0
        assert c.swap_out_bytes > 0 and c.swap_in_bytes > 0
    else:
        assert c.preemptions_recompute > 0 and c.preemptions_swap == 0
    # FCFS preempts from the back: the oldest request is never preempted
    assert eng.records[0].num_preemptions == 0
    assert max(r.num_preemptions for r in eng.records) > 0


def test_swap_falls_back_to_recompute_without_host_memory():
    specs = [spec(i, 0.01 * i, 200, 300) for i in range(8)]
    eng = run(specs, check=True, num_gpu_blocks=100, num_host_blocks=0, preemption_mode="swap")
    assert eng.counters.preemptions_swap == 0 and eng.counters.preemptions_recompute > 0
    assert all(r.finished for r in eng.records)


def _first_iterations(batching):
    """Request 0 decodes when request 1 arrives; which kinds of work share the next iterations?"""
    eng = ServingEngine(SimExecutor(PROFILE), make_policy("fcfs"),
                        EngineConfig(batching=batching, multi_step=False))
    eng.load([spec(0, 0.0, 100, 50), spec(1, 0.0205, 300, 50)])
    kinds = []
    while not eng.done and len(kinds) < 8:
        before = eng.iteration
        eng.step()
        if eng.iteration > before:
            p = eng.scheduler._work.plan
            kinds.append(("P" if p.prefills else "") + ("D" if p.num_decode else ""))
    return kinds


def test_batching_rules():
    # the arrival lands during request 0's decodes; mixed rules put its prefill beside them
    assert "PD" in _first_iterations("sarathi")
    assert "PD" in _first_iterations("orca")
    vllm = _first_iterations("vllm")
    assert "PD" not in vllm and vllm.count("P") == 2  # prefill-only iterations
    ft = _first_iterations("fastertransformer")
    assert ft[0] == "P" and "PD" not in ft and ft.count("P") == 1  # request 1 waits for request 0


class _BadOrder(Policy):
    name = "bad"

    def order(self, view):
        return [12345]


def test_an_invalid_order_names_the_policy():
    eng = ServingEngine(SimExecutor(PROFILE), _BadOrder(), EngineConfig())
    eng.load([spec(0, 0.0, 10, 2)])
    info = eng.step()  # admits the arrival, schedules nothing yet
    assert info.arrived == 1 and info.num_iterations == 0
    with pytest.raises(ValueError, match="policy 'bad' ordered request 12345, which is not live"):
        eng.step()
    assert eng.records[0].first_token_time != eng.records[0].first_token_time  # nothing was lost or run


def test_multi_turn_children_arrive_after_their_parent():
    specs = get_workload("multi-turn-chat").generate(3, 40)
    eng = run(specs)
    by_id = {r.request_id: r for r in eng.records}
    children = [s for s in specs if s.parent_id is not None]
    assert children
    for s in children:
        assert by_id[s.request_id].arrival_time >= by_id[s.parent_id].finish_time + s.think_time_s - 1e-12
    # later turns re-send the history: the cache serves it
    assert sum(by_id[s.request_id].cached_tokens for s in children) > 0


def _compare(specs, policy="fcfs", **cfg):
    fast = run(specs, policy, multi_step=True, **cfg)
    slow = run(specs, policy, multi_step=False, **cfg)
    assert fast.counters.busy_time_s == pytest.approx(slow.counters.busy_time_s, rel=1e-9)
    assert fast.iteration == slow.iteration
    assert len(fast.records) == len(slow.records)
    for a, b in zip(fast.records, slow.records):
        assert (a.request_id, a.num_output_tokens, a.cached_tokens, a.num_preemptions,
                a.prefill_tokens_computed, a.rejected_reason) == \
               (b.request_id, b.num_output_tokens, b.cached_tokens, b.num_preemptions,
                b.prefill_tokens_computed, b.rejected_reason)
        for f in ("arrival_time", "first_token_time", "finish_time", "max_itl_s"):
            x, y = getattr(a, f), getattr(b, f)
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-9, abs=1e-12), (f, a, b)
    ma, mb = compute_metrics(fast.result()).to_dict(), compute_metrics(slow.result()).to_dict()
    for key, va in ma.items():
        vb = mb[key]
        if isinstance(va, float):
            assert va == pytest.approx(vb, rel=1e-7, abs=1e-9), key
        elif not isinstance(va, dict):
            assert va == vb, key
    return fast, slow


def test_closed_form_runs_equal_stepping_on_a_busy_trace():
    specs = retime_poisson(get_workload("azure-conv").generate(0, 300), 8.0, 1)
    fast, slow = _compare(specs)
    assert fast.counters.iterations == slow.counters.iterations


def test_closed_form_runs_equal_stepping_with_prefix_sharing_and_swaps():
    specs = get_workload("shared-doc-qa").generate(0, 120)
    fast, _ = _compare(specs, num_gpu_blocks=1500, preemption_mode="swap")
    assert fast.counters.prompt_tokens_cached > 0


def test_closed_form_runs_equal_stepping_under_memory_pressure_and_many_clients():
    specs = retime_poisson(get_workload("arena-27").generate(0, 400), 20.0, 3)
    fast, _ = _compare(specs, num_gpu_blocks=200)
    assert fast.counters.preemptions_recompute > 0
    fast, _ = _compare(specs, num_gpu_blocks=200, preemption_mode="swap")
    assert fast.counters.preemptions_swap > 0 and fast.counters.swap_in_copies > 0


def test_closed_form_runs_equal_stepping_for_every_policy():
    specs = retime_poisson(get_workload("azure-conv").generate(0, 150), 10.0, 2)
    for policy in ("fcfs", "sjf", "srtf"):
        _compare(specs, policy)


@pytest.fixture
def longest_context_profile(tmp_path):
    """A fitted profile whose decode steps also cost per token of the longest context."""
    data = json.loads(FITTED_1B.read_text())
    table = data["cost_model"]["decode_table"]
    table["per_longest_token_s"] = [2e-8 * (1 + i % 3) for i in range(len(table["num_seqs"]))]
    path = tmp_path / "longest.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_closed_form_runs_and_the_decode_group_track_the_longest_context(longest_context_profile, tmp_path):
    # stepping computes each step's longest context from the requests; the group and the closed form
    # keep it as a heap and a per-step increment: the times must agree
    specs = retime_poisson(get_workload("arena-27").generate(0, 300), 12.0, 4)
    fast, slow = _compare(specs, profile=longest_context_profile, num_gpu_blocks=400)
    data = json.loads(FITTED_1B.read_text())
    del data["cost_model"]["decode_table"]["per_longest_token_s"]
    without = tmp_path / "without.json"
    without.write_text(json.dumps(data))
    plain = run(specs, multi_step=False, num_gpu_blocks=400, profile=str(without))
    assert fast.counters.busy_time_s > plain.counters.busy_time_s       # the longest context costs time
    eager = run(specs, profile=longest_context_profile, lazy_block_ids=False, num_gpu_blocks=400)
    times = [t for r in fast.records for t in (r.first_token_time, r.finish_time)]
    assert [t for r in eager.records for t in (r.first_token_time, r.finish_time)] == pytest.approx(times, rel=1e-9)


def test_decode_group_longest_context_is_its_members_longest(longest_context_profile):
    specs = retime_poisson(get_workload("shared-doc-qa").generate(1, 150), 6.0, 2)
    eng = ServingEngine(SimExecutor(longest_context_profile), make_policy("fcfs"), EngineConfig(num_gpu_blocks=2000))
    eng.load(specs)
    checked = 0
    while not eng.done:
        eng.step()
        g = eng._group
        if g is not None and g.size:
            truth = max(r.num_computed_tokens + 1 + g.steps - g.joined[rid][0] for rid, r in g.members.items())
            assert g.context_max == truth
            checked += 1
    assert checked > 0


def test_same_workload_same_records():
    specs = get_workload("gamma-multi-client").generate(5, 200)
    a, b = run(specs), run(specs)
    assert [(r.first_token_time, r.finish_time) for r in a.records] == \
           [(r.first_token_time, r.finish_time) for r in b.records]


def test_lazy_block_ids_and_the_decode_group_change_no_result():
    # eager ids take the general path every step; lazy ids let running decoders advance as a group
    specs = retime_poisson(get_workload("arena-27").generate(0, 300), 12.0, 4)
    eager = run(specs, lazy_block_ids=False, num_gpu_blocks=400)
    lazy = run(specs, lazy_block_ids=True, num_gpu_blocks=400)
    assert eager.counters.preemptions_recompute > 0
    assert [(r.first_token_time, r.finish_time, r.cached_tokens, r.num_preemptions, r.max_itl_s)
            for r in eager.records] == \
           [(r.first_token_time, r.finish_time, r.cached_tokens, r.num_preemptions, r.max_itl_s)
            for r in lazy.records]
    assert eager.iteration == lazy.iteration


def test_integrity_holds_at_every_step_with_the_decode_group():
    specs = retime_poisson(get_workload("shared-doc-qa").generate(1, 150), 6.0, 2)
    eng = ServingEngine(SimExecutor(PROFILE), make_policy("fcfs"), EngineConfig(num_gpu_blocks=2000))
    eng.load(specs)
    used_group = 0
    while not eng.done:
        eng.step()
        used_group += eng._group is not None
        eng.check_integrity()  # syncs the group first
    assert used_group > 0
    assert all(r.finished for r in eng.records)


def test_run_collects_young_garbage_less_often_and_restores_the_callers_setting():
    import gc

    seen = []

    class Watch(Policy):
        name = "watch"

        def on_arrival(self, req):
            seen.append(gc.get_threshold()[0])

    before = gc.get_threshold()
    gc.set_threshold(700, before[1], before[2])
    try:
        eng = ServingEngine(SimExecutor("h100-llama-8b"), Watch(), EngineConfig())
        eng.load(retime_poisson(get_workload("azure-conv").generate(0, 5), 2.0, 0))
        eng.run()
        assert seen and set(seen) == {20_000}
        assert gc.get_threshold() == (700, before[1], before[2])
        gc.disable()
        seen.clear()
        eng.load(retime_poisson(get_workload("azure-conv").generate(0, 5), 2.0, 0))
        eng.run()
        assert not gc.isenabled()   # a collector the caller turned off stays off
        assert gc.get_threshold() == (700, before[1], before[2])
    finally:
        gc.enable()
        gc.set_threshold(*before)
