"""The multi-replica cluster: one replica equals a plain engine; routers place requests on exactly the
replicas their rules name; dependent turns are routed when released; the merged record adds up."""

from __future__ import annotations

import math

import pytest

import baselines  # noqa: F401
from envs.cluster import ClusterEngine
from envs.engine import ServingEngine
from envs.engine_config import EngineConfig
from envs.metrics import compute_metrics
from envs.policy import make_policy
from envs.records import RunRecord
from envs.request import RequestSpec
from envs.routers import LeastLoaded, RoundRobin, Router, UnknownRouterError, list_routers, make_router
from envs.tokens import ConcatTokens, UniqueTokens
from envs.workloads import get_workload, retime_poisson
from gpu_backend.sim_executor import SimExecutor

PROFILE = "h100-llama-8b"


def spec(i, t, prompt, out, client=0, **kw):
    src = prompt if not isinstance(prompt, int) else UniqueTokens(1000 + i, prompt)
    return RequestSpec(i, client, t, src, out, **kw)


def cluster(n, router="round-robin", policy="fcfs", **cfg):
    return ClusterEngine.build(n, lambda: SimExecutor(PROFILE), lambda i: make_policy(policy),
                               make_router(router) if isinstance(router, str) else router, EngineConfig(**cfg))


def plain(specs, policy="fcfs", **cfg):
    eng = ServingEngine(SimExecutor(PROFILE), make_policy(policy), EngineConfig(**cfg))
    eng.load(specs)
    return eng.run()


def by_id(records):
    return sorted(records, key=lambda r: r.request_id)


# ------------------------------------------------------------------ one replica = a plain engine
@pytest.mark.parametrize("workload,count,rate,blocks", [
    ("arena-27", 300, 25.0, 300),          # queues and preemptions
    ("multi-turn-chat", 400, None, 2000),  # children released at their parent's finish
    ("shared-doc-qa", 300, None, 3000),    # prefix hits
])
def test_one_replica_cluster_gives_the_plain_engines_records(workload, count, rate, blocks):
    specs = get_workload(workload).generate(0, count)
    if rate is not None:
        specs = retime_poisson(specs, rate, 0)
    ref = plain(specs, num_gpu_blocks=blocks)
    c = cluster(1, num_gpu_blocks=blocks)
    c.load(specs)
    got = c.run()
    assert got.merged.requests == by_id(ref.requests)
    assert got.merged.counters == ref.counters
    assert got.merged.end_time == ref.end_time
    assert sorted(got.merged.itl.to_array()) == sorted(ref.itl.to_array())
    assert got.assignment == {s.request_id: 0 for s in specs}
    ref_sorted = RunRecord(by_id(ref.requests), ref.itl, ref.counters, ref.start_time, ref.end_time)
    assert compute_metrics(got.merged).to_dict() == compute_metrics(ref_sorted).to_dict()
    if workload == "arena-27":
        assert ref.counters.preemptions > 0  # the case is a real test of the shared path


def test_one_replica_cluster_rejects_like_a_plain_engine_children_included():
    # request 0 cannot fit in 10 blocks of 16 tokens; its child must be rejected with it
    specs = [spec(0, 0.0, 400, 10), spec(1, 0.5, 30, 5),
             spec(2, 0.0, ConcatTokens([UniqueTokens(1000, 400), UniqueTokens(5, 20)]), 4, parent_id=0),
             spec(3, 0.0, 30, 4, parent_id=1, think_time_s=1.0)]
    ref = plain(specs, num_gpu_blocks=10)
    c = cluster(1, num_gpu_blocks=10)
    c.load(specs)
    got = c.run()
    assert got.merged.requests == by_id(ref.requests)
    assert [r.rejected_reason is not None for r in got.merged.requests] == [True, False, True, False]
    assert got.merged.requests[2].rejected_reason == "parent request 0 was rejected"
    assert got.merged.requests[3].arrival_time == pytest.approx(got.merged.requests[1].finish_time + 1.0)
    assert 2 not in got.assignment  # a rejected parent's child never reaches a replica


# ------------------------------------------------------------------ routers
def test_round_robin_routes_in_turn_in_arrival_order():
    specs = [spec(i, 0.1 * i, 50, 5) for i in range(7)]
    c = cluster(3)
    c.load(specs)
    res = c.run()
    assert [res.assignment[i] for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert res.routed_per_replica == (3, 2, 2)
    for i, rr in enumerate(res.replicas):
        assert sorted(r.request_id for r in rr.requests) == [j for j in range(7) if j % 3 == i]


def test_least_loaded_counts_outstanding_requests_then_prompt_tokens():
    # t=0: four requests while nothing finishes; then one at t=100 when all are idle again
    specs = [spec(0, 0.0, 100, 50), spec(1, 0.0, 50, 50), spec(2, 0.0, 200, 50), spec(3, 0.0, 10, 50),
             spec(4, 0.0, 10, 50), spec(5, 100.0, 10, 5)]
    c = cluster(3, "least-loaded")
    c.load(specs)
    res = c.run()
    # 0 -> r0 (all empty, lowest index); 1 -> r1; 2 -> r2; 3: one each, fewest prompt tokens r1 (50);
    # 4: r0 and r2 have one request, r0 has fewer prompt tokens (100 < 200); 5: all idle -> r0
    assert [res.assignment[i] for i in range(6)] == [0, 1, 2, 1, 0, 0]


def test_least_tokens_counts_prompt_tokens_first():
    specs = [spec(0, 0.0, 1000, 50), spec(1, 0.0, 50, 50), spec(2, 0.0, 60, 50), spec(3, 0.0, 10, 50)]
    c = cluster(2, "least-tokens")
    c.load(specs)
    res = c.run()
    # 0 -> r0; 1 -> r1 (0 tokens); 2 -> r1 (50 < 1000); 3 -> r1 (110 < 1000)
    assert [res.assignment[i] for i in range(4)] == [0, 1, 1, 1]


def test_least_loaded_sees_finishes_on_other_replicas():
    # request 0 finishes long before request 2 arrives; request 1 is still running on r1 then
    specs = [spec(0, 0.0, 20, 2), spec(1, 0.0, 20, 3000), spec(2, 1.0, 20, 2)]
    c = cluster(2, "least-loaded")
    c.load(specs)
    res = c.run()
    assert res.merged.requests[0].finish_time < 1.0 < res.merged.requests[1].finish_time
    assert [res.assignment[i] for i in range(3)] == [0, 1, 0]


def test_conversation_turns_are_routed_when_released():
    seen = []

    class Recorder(RoundRobin):
        def route(self, s, replicas, now):
            seen.append((s.request_id, now, tuple(r.num_outstanding for r in replicas)))
            return super().route(s, replicas, now)

    specs = [spec(0, 0.0, 40, 4), spec(1, 0.0, 30, 4, parent_id=0, think_time_s=2.0)]
    c = cluster(2, Recorder())
    c.load(specs)
    res = c.run()
    parent_finish = res.merged.requests[0].finish_time
    assert seen[0] == (0, 0.0, (0, 0))
    assert seen[1][0] == 1 and seen[1][1] == pytest.approx(parent_finish + 2.0)
    assert seen[1][2] == (0, 0)  # the parent is done when its child is routed
    assert res.assignment == {0: 0, 1: 1}
    assert res.merged.requests[1].arrival_time == pytest.approx(parent_finish + 2.0)


def test_router_sees_each_busy_replica_no_more_than_one_iteration_ahead():
    seen = []

    class Recorder(LeastLoaded):
        def route(self, s, replicas, now):
            seen.append((now, [r.now for r in replicas], [r.num_outstanding for r in replicas]))
            return super().route(s, replicas, now)

    specs = retime_poisson(get_workload("arena-27").generate(0, 200), 30.0, 0)
    c = cluster(3, Recorder())
    c.load(specs)
    c.run()
    max_iter = 0.2  # a single iteration of these small batches is far shorter
    for now, clocks, outstanding in seen:
        for clock, n in zip(clocks, outstanding):
            if n:  # a busy replica has run to the end of the iteration in progress, no further
                assert now <= clock < now + max_iter


def test_router_choosing_a_missing_replica_is_an_error():
    class Bad(Router):
        name = "bad"

        def route(self, s, replicas, now):
            return len(replicas)

    c = cluster(2, Bad())
    c.load([spec(0, 0.0, 10, 2)])
    with pytest.raises(ValueError, match=r"router 'bad' chose replica 2 for request 0; the cluster has replicas 0\.\.1"):
        c.run()


def test_router_registry_names_and_errors():
    names = [r.name for r in list_routers()]
    assert {"round-robin", "least-loaded", "least-tokens"} <= set(names)
    with pytest.raises(UnknownRouterError, match="unknown router 'nope'; available: .*round-robin"):
        make_router("nope")
    with pytest.raises(ValueError, match="by must be 'requests' or 'tokens', got 'load'"):
        LeastLoaded(by="load")


# ------------------------------------------------------------------ many replicas
def test_multi_replica_run_keeps_integrity_and_merges_exactly():
    specs = retime_poisson(get_workload("shared-doc-qa").generate(1, 300), 20.0, 1)
    c = cluster(3, "least-loaded", policy="fcfs", num_gpu_blocks=1500)
    c.load(specs)
    steps = 0
    while not c.done:
        c.step()
        steps += 1
        if steps % 7 == 0:
            c.check_integrity()
    c.check_integrity()
    res = c.result()
    assert [r.request_id for r in res.merged.requests] == [s.request_id for s in specs]
    assert all(r.finished for r in res.merged.requests)
    assert sum(res.routed_per_replica) == len(specs)
    assert min(res.routed_per_replica) > 0
    for i, rr in enumerate(res.replicas):
        assert {r.request_id for r in rr.requests} == {rid for rid, k in res.assignment.items() if k == i}
    assert res.merged.counters.iterations == sum(rr.counters.iterations for rr in res.replicas)
    assert res.merged.counters.output_tokens == sum(s.output_len for s in specs)
    assert res.merged.end_time == max(rr.end_time for rr in res.replicas)
    assert len(res.merged.itl.to_array()) == sum(len(rr.itl.to_array()) for rr in res.replicas)
    # determinism: the same specs give the same records
    c2 = cluster(3, "least-loaded", policy="fcfs", num_gpu_blocks=1500)
    c2.load(specs)
    assert c2.run().merged.requests == res.merged.requests


def test_replicas_keep_their_own_prefix_caches():
    doc = UniqueTokens(7, 1000)
    specs = [spec(i, 1.0 * i, ConcatTokens([doc, UniqueTokens(50 + i, 20)]), 3) for i in range(4)]
    c = cluster(2)  # round-robin: 0,2 on r0 and 1,3 on r1
    c.load(specs)
    res = c.run()
    cached = [r.cached_tokens for r in res.merged.requests]
    assert cached == [0, 0, 992, 992]  # each replica computes the document once


def test_stop_after_finished_and_bad_arguments():
    specs = [spec(i, 0.0, 20, 5 + 50 * i) for i in range(5)]
    c = cluster(2)
    c.load(specs)
    res = c.run(stop_after_finished=2)
    assert c.num_finished == 2 and sum(r.finished for r in res.merged.requests) == 2
    with pytest.raises(ValueError, match="stop_after_finished must be >= 1, got 0"):
        c.run(stop_after_finished=0)
    with pytest.raises(ValueError, match="num_replicas must be an integer >= 1, got 0"):
        cluster(0)
    c = cluster(2)
    with pytest.raises(ValueError, match="request id 0 twice"):
        c.load([spec(0, 0.0, 5, 2), spec(0, 1.0, 5, 2)])
    with pytest.raises(ValueError, match="parent 9 is not in the workload"):
        c.load([spec(0, 0.0, 5, 2, parent_id=9)])
    assert math.isinf(cluster(1).next_arrival_time())
