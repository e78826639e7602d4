"""LPM pinned on a hand-built prefix cache: longest cached prefix first, FCFS ties, resident first."""

from __future__ import annotations

import pytest

from envs.live_request import RequestState
from envs.policy import list_policies, make_policy
from envs.workloads import get_workload, retime_poisson
from tests.baselines.builders import (EPS, LPM_ORDER, doc_prompt, engine, order, prefix_scene, run_to_end, spec,
                                      states, to_prefix_scene_order)


def test_registered_and_not_stable_between_events():
    info = {p.name: p for p in list_policies()}
    assert info["lpm"].oracle is False
    assert make_policy("lpm").stable_between_events is False


def test_longest_cached_prefix_first_then_arrival_then_id():
    eng = engine("lpm", prefix_scene())
    to_prefix_scene_order(eng)
    cached = {rid: eng.view.cached_prefix_tokens(r) for rid, r in eng.live.items()}
    assert cached == {50: 0, 40: 160, 60: 320, 45: 320, 30: 320}
    assert order(eng) == LPM_ORDER
    assert [r.request_id for r in eng.policy.ordered_requests(eng.view)] == LPM_ORDER


def test_without_prefix_caching_it_is_fcfs():
    eng = engine("lpm", prefix_scene(), enable_prefix_caching=False)
    to_prefix_scene_order(eng)
    assert order(eng) == [50, 40, 45, 60, 30]  # arrival order (45 and 60 tie: id)


def test_running_requests_come_first_in_arrival_order_then_the_waiting_by_prefix():
    eng = engine("lpm", prefix_scene(), max_num_seqs=3)
    to_prefix_scene_order(eng)
    eng.step()  # admits the first three of the LPM order (the cap of three sequences)
    assert states(eng) == {50: "WAITING", 40: "WAITING", 60: "RUNNING", 45: "RUNNING", 30: "RUNNING"}
    assert order(eng) == [45, 60, 30, 40, 50]
    rec = {r.request_id: r for r in eng.records}
    assert rec[45].cached_tokens == rec[60].cached_tokens == rec[30].cached_tokens == 320


def test_a_newcomer_with_a_longer_cached_prefix_overtakes_older_waiting_requests():
    # 7 waits behind the cap (no prefix); 8 arrives later but its document is cached by then
    specs = [spec(1, 0.0, doc_prompt(501, 320, 9001, 20), 1), spec(2, 0.0, 50, 200),
             spec(7, EPS, 300, 20), spec(8, 2 * EPS, doc_prompt(501, 320, 9008, 10), 20)]
    eng = engine("lpm", specs, max_num_seqs=2)
    eng.step()
    eng.step()  # 1 and 2 run; 1 finishes (its document enters the cache); 7 and 8 arrive
    assert states(eng) == {2: "RUNNING", 7: "WAITING", 8: "WAITING"}
    assert order(eng) == [2, 8, 7]
    fcfs = engine("fcfs", specs, max_num_seqs=2)
    fcfs.step()
    fcfs.step()
    assert fcfs.policy.order(fcfs.view) == [2, 7, 8]
    run_to_end(eng)
    assert {r.request_id: r.cached_tokens for r in eng.records}[8] == 320


def test_a_request_preempted_by_recompute_is_ranked_among_the_waiting_by_its_cached_prefix():
    # as in the FCFS test: 1 (400 tokens, 25 blocks) cannot fit beside the others and waits
    specs = [spec(100 - i, EPS * i, 100, 200) for i in range(6)] + [spec(1, 10 * EPS, 400, 10)]
    eng = engine("lpm", specs, num_gpu_blocks=60, preemption_mode="recompute")
    while not any(r.num_preemptions for r in eng.records):
        eng.step()
        eng.check_integrity()
    victim = next(r.request_id for r in eng.records if r.num_preemptions)
    assert eng.live[victim].state is RequestState.WAITING
    got = order(eng)
    resident = [rid for rid in got if eng.live[rid].state is not RequestState.WAITING]
    assert got[:len(resident)] == [rid for rid in eng.live if rid in resident]  # arrival order
    # its computed blocks went back to the cache; the waiting are ranked by cached prefix, then FCFS
    assert eng.view.cached_prefix_tokens(eng.live[victim]) > 0
    waiting = got[len(resident):]
    assert victim in waiting and 1 in waiting
    assert waiting == sorted(waiting, key=lambda rid: (-eng.view.cached_prefix_tokens(eng.live[rid]),
                                                       eng.live[rid].arrival_time, rid))


def test_prefix_cache_version_moves_when_blocks_enter_or_leave_the_cache():
    eng = engine("lpm", prefix_scene())
    eng.step()
    v0 = eng.view.prefix_cache_version
    assert v0 == (0, 0)
    eng.step()   # the seeds finish: their full blocks enter the cache
    v1 = eng.view.prefix_cache_version
    assert v1[0] > 0 and v1[1] == 0
    # a cache that evicts: a small GPU that long documents overflow
    specs = retime_poisson(get_workload("shared-doc-qa").generate(0, 60), 8.0, 1)
    eng = engine("lpm", specs, num_gpu_blocks=1500)
    seen = set()
    while not eng.done:
        eng.step()
        seen.add(eng.view.prefix_cache_version)
    evicted = eng.kv.cache.num_evicted_blocks
    assert evicted > 0 and eng.view.prefix_cache_version[1] == evicted
    assert len(seen) > 20


@pytest.mark.parametrize("policy", ["lpm", "dlpm"])
def test_the_memoised_sort_equals_a_fresh_one_at_every_step_while_the_cache_evicts(policy):
    specs = retime_poisson(get_workload("shared-doc-qa").generate(0, 60), 8.0, 1)
    eng = engine(policy, specs, num_gpu_blocks=1500)
    view = eng.view
    checked = 0
    while not eng.done:
        if eng.live:
            got = order(eng)
            if policy == "lpm":
                resident = [rid for rid, r in eng.live.items() if r.state is not RequestState.WAITING]
                waiting = [r for r in eng.live.values() if r.state is RequestState.WAITING]
            else:
                resident = [rid for rid in eng.live if rid in eng.policy._books.started]
                waiting = [r for q in eng.policy._books.queues.values() for r in q.values()]
            fresh = sorted(waiting, key=lambda r: (-view.cached_prefix_tokens(r), r.arrival_time, r.request_id))
            if policy == "lpm":
                assert got == resident + [r.request_id for r in fresh]
            else:
                memo = eng.policy._ranker.ranked(view, lambda: iter(waiting))
                assert [(r.request_id, c) for r, c in memo] == \
                       [(r.request_id, view.cached_prefix_tokens(r)) for r in fresh]
                assert got[:len(resident)] == resident and sorted(got) == sorted(eng.live)
            checked += 1
        eng.step()
    assert checked > 100 and eng.kv.cache.num_evicted_blocks > 0
