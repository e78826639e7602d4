"""VTC and LCF pinned on hand-built queues: counters, the lift, the admission order.

Counters are checked as exact numbers: prompt tokens at admission (w_p = 1), 2 per output
token (w_q = 2), divided by the client's weight, plus the lift.
"""

from __future__ import annotations

import pytest

from baselines.vtc import LCF, VTC
from envs.live_request import RequestState
from envs.policy import list_policies, make_policy
from tests.baselines.builders import EPS, engine, order, run_to_end, spec, states, step_until_preemption


def test_registered_as_non_oracle_policies_whose_order_moves_between_events():
    info = {p.name: p for p in list_policies()}
    assert info["vtc"].oracle is False and info["lcf"].oracle is False
    assert isinstance(make_policy("vtc"), VTC) and make_policy("vtc").lift is True
    assert isinstance(make_policy("lcf"), LCF) and make_policy("lcf").lift is False
    assert VTC.stable_between_events is False


def test_waiting_order_is_the_admission_loop_with_tentative_prompt_charges():
    # all at t=0, so the engine queues them by id; all counters 0: ties go to the earlier head
    # (all equal) then the smaller client id.
    # client 0: 2 (300 tokens) then 7 (10); client 1: 4 (100) then 9 (100); client 2: 5 (250)
    specs = [spec(7, 0.0, 10, 5, client=0), spec(2, 0.0, 300, 5, client=0),
             spec(9, 0.0, 100, 5, client=1), spec(4, 0.0, 100, 5, client=1),
             spec(5, 0.0, 250, 5, client=2)]
    eng = engine("vtc", specs)
    info = eng.step()  # admission only
    assert info.arrived == 5 and info.num_iterations == 0
    # 2 (c0 -> 300), 4 (c1 -> 100), 5 (c2 -> 250), 9 (c1 100 < 250 -> 200), then client 0's 7 (300)
    assert order(eng) == [2, 4, 5, 9, 7]
    assert eng.policy.counters == {}  # nothing charged until admission


def test_counters_charge_the_prompt_at_admission_and_two_per_output_token():
    specs = [spec(3, 0.0, 100, 40, client=0), spec(8, 0.0, 40, 60, client=1)]
    eng = engine("vtc", specs)
    eng.step()
    eng.step(max_iterations=1)  # iteration 0: both admitted, prefilled, first token sampled
    vtc = eng.policy
    assert {rid: r.num_output_tokens for rid, r in eng.live.items()} == {3: 1, 8: 1}
    assert vtc.counter(0) == 100 + 2 and vtc.counter(1) == 40 + 2
    for _ in range(4):
        eng.step(max_iterations=1)
    assert vtc.counter(0) == 100 + 2 * 5 and vtc.counter(1) == 40 + 2 * 5
    info = eng.step()  # a closed-form run of decode steps up to 3's last token: on_tokens(req, 35)
    assert info.num_iterations == 35 and info.finished == 1 and 3 not in eng.live
    assert eng.live[8].num_output_tokens == 40
    assert vtc.counter(0) == 100 + 2 * 40 and vtc.counter(1) == 40 + 2 * 40
    run_to_end(eng)
    assert vtc.counter(0) == 100 + 80 and vtc.counter(1) == 40 + 120


def test_weights_divide_every_increment():
    specs = [spec(3, 0.0, 100, 10, client=0), spec(8, 0.0, 100, 10, client=1)]
    eng = engine(VTC(weights={1: 4.0}), specs)
    run_to_end(eng)
    assert eng.policy.counter(0) == 100 + 20
    assert eng.policy.counter(1) == (100 + 20) / 4.0


def _rejoin_specs():
    # client 0: 1 runs alone (one sequence at a time) while 2 waits: client 0 stays backlogged.
    # client 1 sends its first request (6) during the first iteration.
    return [spec(1, 0.0, 50, 30, client=0), spec(2, 0.0, 50, 30, client=0), spec(6, EPS, 70, 30, client=1)]


def test_lift_raises_a_joining_client_to_the_least_backlogged_counter_and_lcf_does_not():
    vtc = engine("vtc", _rejoin_specs(), max_num_seqs=1)
    lcf = engine("lcf", _rejoin_specs(), max_num_seqs=1)
    for eng in (vtc, lcf):
        eng.step()
        eng.step()  # iteration 0 admits 1 (50 tokens) and samples its first token; 6 arrives at its end
        assert states(eng) == {1: "RUNNING", 2: "WAITING", 6: "WAITING"}
        assert eng.policy.counter(0) == 50 + 2
    # VTC: client 1 joins while client 0 (counter 52) is backlogged: lifted to 52
    assert vtc.policy.counter(1) == 52
    # the tie goes to the earlier head: client 0's request 2 (t=0) before 6
    assert order(vtc) == [1, 2, 6]
    # LCF: no lift; client 1 at 0 is served first
    assert lcf.policy.counter(1) == 0
    assert order(lcf) == [1, 6, 2]


def test_lift_when_nobody_is_backlogged_uses_the_client_that_last_left_the_queue():
    specs = [spec(1, 0.0, 50, 30, client=0), spec(6, EPS, 70, 30, client=1)]
    vtc = engine("vtc", specs)
    lcf = engine("lcf", specs)
    for eng in (vtc, lcf):
        eng.step()
        eng.step()  # 1 admitted (the queue is empty now; client 0 left it last); 6 arrives
    assert vtc.policy.last_left == 0
    assert vtc.policy.counter(1) == vtc.policy.counter(0) == 52
    assert lcf.policy.counter(1) == 0


def test_a_returning_client_keeps_a_higher_counter_than_the_floor():
    # client 1 was served much more (a 900-token prompt); when it rejoins, the floor is lower: no change
    specs = [spec(1, 0.0, 900, 2, client=1), spec(2, 0.0, 50, 400, client=0), spec(3, 0.0, 50, 400, client=0),
             spec(4, 0.0, 50, 400, client=0), spec(6, 0.05, 70, 3, client=1)]
    eng = engine("vtc", specs, max_num_seqs=2)
    while 6 not in eng.live:
        eng.step()
    c = eng.policy
    assert not eng.live.get(1)  # 1 finished before 6 arrived: client 1 rejoins the backlog
    assert eng.live[4].state is RequestState.WAITING   # while client 0 is backlogged at a lower counter
    assert c.counter(0) == 2 * 50 + 2 * sum(eng.live[r].num_output_tokens for r in (2, 3))
    assert c.counter(1) == 900 + 4
    assert c.counter(1) > c.counter(0)


def test_a_request_preempted_by_recompute_keeps_its_started_place_and_is_not_charged_again():
    # one client: the counter must equal the prompts of the admitted requests plus 2 per output token
    specs = [spec(100 - i, EPS * i, 100, 200) for i in range(6)] + [spec(1, 10 * EPS, 400, 10)]
    eng = engine("vtc", specs, num_gpu_blocks=60, preemption_mode="recompute")
    step_until_preemption(eng)
    victim = [rid for rid, r in eng.live.items() if r.state is RequestState.WAITING and r.num_output_tokens]
    assert victim == [95]
    # started requests (the victim included) in arrival order, then 1, which never ran
    assert order(eng) == [100, 99, 98, 97, 96, 95, 1]
    vtc = eng.policy
    started_prompts = 100 * 6
    outputs = sum(r.num_output_tokens for r in eng.live.values())
    assert vtc.counter(0) == started_prompts + 2 * outputs
    run_to_end(eng)
    assert eng.records[5].num_preemptions >= 1
    assert vtc.counter(0) == 600 + 400 + 2 * (6 * 200 + 10)


@pytest.mark.parametrize("kwargs, match", [
    (dict(w_p=-1), "w_p must be a finite number >= 0, got -1"),
    (dict(w_q=float("inf")), "w_q must be a finite number >= 0"),
    (dict(weights={3: 0.0}), "weight of client 3 must be a finite number > 0, got 0.0"),
])
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VTC(**kwargs)


def _admission_loop(vtc: VTC, queues: dict[int, list]) -> list[int]:
    """The paper's loop, literally: pop the least tentative counter's head, charge its prompt."""
    counters = {u: vtc.counter(u) for u in queues}
    heads = {u: 0 for u in queues}
    out = []
    while any(heads[u] < len(q) for u, q in queues.items()):
        u = min((u for u in queues if heads[u] < len(queues[u])),
                key=lambda u: (counters[u], queues[u][heads[u]].arrival_time, u))
        r = queues[u][heads[u]]
        heads[u] += 1
        out.append(r.request_id)
        counters[u] += vtc.w_p * r.prompt_len / vtc._weight(u)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_the_sorted_order_equals_the_literal_admission_loop(seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    n = 60
    times = np.round(rng.uniform(0, 1e-6, n), 9)   # during the first iteration, with ties
    specs = [spec(i + 10, 0.0 if i < 3 else float(times[i]), int(rng.integers(1, 400)), 50,
                  client=int(rng.integers(0, 5))) for i in range(n)]
    pol = VTC(weights={1: 2.0, 3: 0.5})
    eng = engine(pol, specs, max_num_seqs=3)
    eng.step()
    eng.step()  # three requests run; the rest queue
    # give the clients unequal counters, including ties
    for u in range(5):
        pol.counters[u] = float(rng.choice([0.0, 100.0, 250.5, 400.0]))
    queues = {u: list(q.values()) for u, q in pol._books.queues.items()}
    started = [rid for rid in eng.live if rid in pol._books.started]
    assert len(started) == 3 and sum(len(q) for q in queues.values()) == n - 3
    assert order(eng) == started + _admission_loop(pol, queues)
