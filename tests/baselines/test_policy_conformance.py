"""The contract every registered policy must keep, checked on one busy multi-client slice.

Parametrized over ``envs.policy.list_policies()``, so a policy registered later is checked
without touching this file. At every step of a run with queues, prefix hits and
preemptions:

- ``order(view)`` is a permutation of the live ids, and ``ordered_requests(view)``, when it
  returns a list, is the same permutation as request objects;
- asking for the order mutates nothing the engine owns (request states and token counts,
  KV free blocks) and asking twice gives the same answer;
- the engine's bookkeeping holds (``check_integrity``);

and the run finishes every request, with records identical to a second run of the same
specs (which also shows that the extra ``order`` calls did not change the schedule).
"""

from __future__ import annotations

import pytest

import baselines  # noqa: F401  (registers the baselines)
from envs.engine import ServingEngine
from envs.engine_config import EngineConfig
from envs.live_request import RequestState
from envs.policy import list_policies, make_policy
from envs.workloads import get_workload, retime_poisson
from gpu_backend.sim_executor import SimExecutor

PROFILE = "h100-llama-8b"
CONFIG = EngineConfig(num_gpu_blocks=300)
POLICY_NAMES = [p.name for p in list_policies()]


@pytest.fixture(scope="module")
def specs():
    base = get_workload("arena-27").generate(0, 150)
    return retime_poisson(base, 15.0, 0)


def _snapshot(eng: ServingEngine):
    reqs = tuple((rid, r.state, r.num_computed_tokens, r.num_output_tokens, r.num_tokens,
                  None if r.kv is None else (len(r.kv.block_table), r.kv.pending))
                 for rid, r in eng.live.items())
    kv = eng.kv
    return (reqs, kv.gpu.num_free, kv.num_available_blocks,
            None if kv.host is None else kv.host.num_free,
            eng.clock, eng.iteration, eng.num_running, eng.num_swapped)


def _records(eng: ServingEngine):
    return [(r.request_id, r.first_token_time, r.finish_time, r.num_output_tokens, r.num_preemptions,
             r.cached_tokens) for r in eng.records]


def _check_order(eng: ServingEngine, name: str) -> None:
    view = eng.view
    policy = eng.policy
    before = _snapshot(eng)
    order = list(policy.order(view))
    assert _snapshot(eng) == before, f"{name}: order() changed engine state at iteration {eng.iteration}"
    live_ids = list(eng.live)
    assert len(order) == len(live_ids) and sorted(order) == sorted(live_ids), (
        f"{name}: order {order} is not a permutation of the live ids {live_ids} at iteration {eng.iteration}")
    assert all(type(rid) is int for rid in order), f"{name}: order holds non-int ids {order}"
    again = list(policy.order(view))
    assert again == order, f"{name}: asking twice gave {order} then {again}"
    objs = policy.ordered_requests(view)
    assert _snapshot(eng) == before, f"{name}: ordered_requests() changed engine state"
    if objs is not None:
        assert isinstance(objs, list)
        assert [r.request_id for r in objs] == order, f"{name}: ordered_requests disagrees with order"
        assert all(r is eng.live[r.request_id] for r in objs), f"{name}: ordered_requests holds stale objects"


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_policy_conforms_on_a_busy_multi_client_slice(name, specs):
    eng = ServingEngine(SimExecutor(PROFILE), make_policy(name), CONFIG)
    eng.load(specs)
    saw_queue = saw_running_and_waiting = False
    steps = 0
    while not eng.done:
        if eng.live:
            _check_order(eng, name)
            states = {r.state for r in eng.live.values()}
            saw_queue |= RequestState.WAITING in states and len(eng.live) > 1
            saw_running_and_waiting |= {RequestState.RUNNING, RequestState.WAITING} <= states
        eng.step()
        eng.check_integrity()
        steps += 1
        assert steps < 200_000, f"{name}: run does not finish"
    # the slice really exercised queues, preemptions and several clients
    assert saw_queue and saw_running_and_waiting
    assert eng.counters.preemptions_recompute > 0, f"{name}: the slice caused no preemption"
    assert len({s.client_id for s in specs}) > 1
    assert not eng.live and eng.num_running == 0 and eng.num_swapped == 0
    assert len(eng.records) == len(specs) == 150
    assert all(r.finished for r in eng.records), \
        f"{name}: unfinished {[r.request_id for r in eng.records if not r.finished][:5]}"
    assert all(r.num_output_tokens == r.output_len for r in eng.records)

    # same specs, plain run (no extra order calls): identical records
    eng2 = ServingEngine(SimExecutor(PROFILE), make_policy(name), CONFIG)
    eng2.load(specs)
    eng2.run()
    assert _records(eng2) == _records(eng)
    # and the same engine object reloaded gives them again
    eng2.load(specs)
    eng2.run()
    assert _records(eng2) == _records(eng)


def test_every_shipped_policy_is_registered():
    assert {"fcfs", "sjf", "srtf", "vtc", "lcf", "lpm", "dlpm", "ltr", "mlfq"} <= set(POLICY_NAMES)
