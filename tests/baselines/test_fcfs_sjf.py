"""FCFS, SJF and SRTF pinned on hand-built queues.

Each test builds an engine on the simulator, loads hand-made requests, steps to a chosen
moment and asks the policy for its order directly, so the assertion is the published rule
itself (not a latency that merely looks right). Request ids are chosen so that id order,
arrival order and length order disagree, which makes every tie-break visible.

Arrival times of 1e-9 s (and multiples) arrive during the first iteration: the engine
admits them at its end, before the next schedule, so which requests have started by the
time of the assertion does not depend on the cost model's numbers.
"""

from __future__ import annotations

import pytest

from envs.live_request import RequestState
from envs.metrics import compute_metrics
from envs.policy import OracleAccessError, Policy, make_policy
from tests.baselines.builders import EPS, engine, run_to_end, spec, states, step_until_preemption


# ============================================================================ FCFS
def test_fcfs_orders_live_requests_by_arrival_not_by_id():
    # ids disagree with arrival times; 4 and 2 arrive together (the engine admits them by id);
    # long outputs keep every request live until the last one has arrived
    specs = [spec(9, 0.0, 50, 2000), spec(4, 0.5, 50, 2000), spec(7, 0.25, 50, 2000), spec(2, 0.5, 50, 2000),
             spec(8, 0.75, 50, 2000)]
    eng = engine("fcfs", specs)
    while len(eng.live) < 5:
        eng.step()
        eng.check_integrity()
    assert states(eng)[9] == "RUNNING" and states(eng)[8] == "WAITING"
    assert eng.policy.order(eng.view) == [9, 7, 2, 4, 8]
    assert [r.request_id for r in eng.policy.ordered_requests(eng.view)] == [9, 7, 2, 4, 8]
    eng.step()  # 8 starts: everyone running, the order does not move
    assert set(states(eng).values()) == {"RUNNING"}
    assert eng.policy.order(eng.view) == [9, 7, 2, 4, 8]


def test_fcfs_all_waiting_at_time_zero_is_id_order_within_a_tie_and_arrival_order_otherwise():
    specs = [spec(5, 0.0, 40, 3), spec(3, 0.0, 40, 3), spec(8, 0.0, 40, 3), spec(1, EPS, 40, 3)]
    eng = engine("fcfs", specs)
    info = eng.step()  # admits the three time-0 arrivals and returns before scheduling
    assert info.arrived == 3 and info.num_iterations == 0
    assert eng.policy.order(eng.view) == [3, 5, 8]
    assert [r.request_id for r in eng.policy.ordered_requests(eng.view)] == [3, 5, 8]


@pytest.mark.parametrize("mode, preempted_state", [("recompute", RequestState.WAITING),
                                                    ("swap", RequestState.SWAPPED)])
def test_fcfs_keeps_running_preempted_and_waiting_requests_in_arrival_order(mode, preempted_state):
    # six 100-token prompts with 200-token outputs: 42 blocks at admission, they outgrow 60 blocks
    # at ~60 tokens each; request 1 (400-token prompt, 25 blocks) never fits and stays waiting.
    specs = [spec(100 - i, EPS * i, 100, 200) for i in range(6)] + [spec(1, 10 * EPS, 400, 10)]
    eng = engine("fcfs", specs, num_gpu_blocks=60, preemption_mode=mode)
    step_until_preemption(eng)
    # FCFS preempts the newest running request
    assert [r.num_preemptions for r in eng.records] == [0, 0, 0, 0, 0, 1, 0]
    assert eng.live[95].state is preempted_state
    assert eng.live[1].state is RequestState.WAITING and eng.live[1].num_output_tokens == 0
    assert all(eng.live[r].state is RequestState.RUNNING for r in (100, 99, 98, 97, 96))
    expected = [100, 99, 98, 97, 96, 95, 1]
    assert eng.policy.order(eng.view) == expected
    assert [r.request_id for r in eng.policy.ordered_requests(eng.view)] == expected
    assert all(a is b for a, b in zip(eng.policy.ordered_requests(eng.view), eng.live.values()))
    run_to_end(eng)
    assert all(r.finished for r in eng.records)


# ============================================================================ SJF
def test_sjf_orders_waiting_by_true_output_length_then_arrival_then_id():
    specs = [
        spec(9, 0.0, 30, 7),      # 9, 6 and 4 tie on length and arrival: id decides
        spec(6, 0.0, 30, 7),
        spec(4, 0.0, 30, 7),
        spec(2, 0.0, 30, 50),
        spec(8, 0.0, 30, 3),      # shortest
        spec(1, 0.0, 30, 7_000),  # longest, smallest id
    ]
    eng = engine("sjf", specs)
    info = eng.step()  # admission only
    assert info.arrived == 6 and info.num_iterations == 0
    assert len(eng.live) == 6 and all(r.state is RequestState.WAITING for r in eng.live.values())
    assert eng.policy.order(eng.view) == [8, 4, 6, 9, 2, 1]


def test_sjf_length_tie_goes_to_the_earlier_arrival_before_the_smaller_id():
    specs = [spec(9, 0.0, 30, 7), spec(3, EPS, 30, 7), spec(5, EPS, 30, 2), spec(12, 0.0, 30, 40),
             spec(2, 2 * EPS, 30, 7)]
    eng = engine("sjf", specs, max_num_seqs=1)
    eng.step()  # admits 9 and 12 (time 0)
    assert eng.policy.order(eng.view) == [9, 12]
    eng.step()  # iteration 1 prefills 9 (shorter); 3, 5 and 2 arrive during it
    assert states(eng) == {9: "RUNNING", 12: "WAITING", 3: "WAITING", 5: "WAITING", 2: "WAITING"}
    # 9 has started: it stays first even though 5 is shorter (non-preemptive);
    # waiting: 5 (len 2), then the length-7 tie 3 (t=1e-9) before 2 (t=2e-9), then 12 (len 40)
    assert eng.policy.order(eng.view) == [9, 5, 3, 2, 12]


def test_sjf_started_requests_come_first_in_arrival_order_not_length_order():
    # 7 (long) starts alone at t=0; the others arrive during its first iteration; the cap of 4
    # sequences lets only the three shortest of them start next.
    specs = [spec(7, 0.0, 40, 60), spec(5, EPS, 40, 20), spec(3, 2 * EPS, 40, 10), spec(1, 3 * EPS, 40, 30),
             spec(2, 4 * EPS, 40, 5), spec(6, 5 * EPS, 40, 4)]
    eng = engine("sjf", specs, max_num_seqs=4)
    eng.step()
    eng.step()
    assert states(eng) == {7: "RUNNING", 5: "WAITING", 3: "WAITING", 1: "WAITING", 2: "WAITING", 6: "WAITING"}
    # waiting by length: 6 (4), 2 (5), 3 (10), 5 (20), 1 (30)
    assert eng.policy.order(eng.view) == [7, 6, 2, 3, 5, 1]
    eng.step()  # admits the three shortest waiting ones in the three free slots: 6, 2, 3
    assert states(eng) == {7: "RUNNING", 5: "WAITING", 3: "RUNNING", 1: "WAITING", 2: "RUNNING", 6: "RUNNING"}
    # started, in arrival order (7 t=0, 3 t=2e-9, 2 t=4e-9, 6 t=5e-9), whatever their lengths; then waiting
    assert eng.policy.order(eng.view) == [7, 3, 2, 6, 5, 1]


def test_sjf_request_preempted_by_recompute_goes_back_among_the_waiting_by_length():
    # 5 starts alone, 6 joins it; 1 and 2 wait behind the cap of 2 sequences. The two running ones
    # outgrow 30 blocks, so 6 (later started) is preempted by recompute; 1 (shortest) takes its slot.
    specs = [spec(5, 0.0, 100, 300), spec(6, EPS, 100, 250), spec(1, EPS, 20, 100), spec(2, EPS, 20, 280)]
    eng = engine("sjf", specs, num_gpu_blocks=30, max_num_seqs=2, preemption_mode="recompute")
    eng.step()
    eng.step()
    assert eng.policy.order(eng.view) == [5, 1, 6, 2]
    step_until_preemption(eng)
    rec = {r.request_id: r for r in eng.records}
    preempted = [rid for rid, r in rec.items() if r.num_preemptions]
    assert len(preempted) == 1
    victim = preempted[0]
    assert eng.live[victim].state is RequestState.WAITING
    assert eng.live[victim].num_computed_tokens == 0
    assert eng.live[victim].num_output_tokens > 0  # it had started producing tokens
    order = eng.policy.order(eng.view)
    started = [rid for rid in order if eng.live[rid].state is not RequestState.WAITING]
    waiting = [rid for rid in order if eng.live[rid].state is RequestState.WAITING]
    assert order == started + waiting
    assert victim in waiting
    assert waiting == sorted(waiting, key=lambda rid: (eng.live[rid]._target_output_len,
                                                       eng.live[rid].arrival_time, rid))
    # pin the exact moment: request 1 (100 tokens) finished, 6 was preempted while 5 kept running,
    # and 2 started in the freed slot; 6 (250) now waits for its turn
    assert rec[1].finished
    assert victim == 6
    assert order == [5, 2, 6]
    # a second preemption of a request started later (2) puts it behind 6 (250 < 280)
    step_until_preemption(eng)
    assert rec[2].num_preemptions == 1 and eng.live[2].state is RequestState.WAITING
    assert eng.policy.order(eng.view) == [5, 6, 2]
    run_to_end(eng)
    assert all(r.finished for r in eng.records)


def test_sjf_request_preempted_by_swap_keeps_its_started_place():
    specs = [spec(100 - i, EPS * i, 100, 200) for i in range(6)] + [spec(1, 10 * EPS, 40, 3)]
    eng = engine("sjf", specs, num_gpu_blocks=60, preemption_mode="swap")
    step_until_preemption(eng)
    swapped = [rid for rid, r in eng.live.items() if r.state is RequestState.SWAPPED]
    assert len(swapped) == 1
    order = eng.policy.order(eng.view)
    started = sorted((rid for rid, r in eng.live.items() if r.state is not RequestState.WAITING),
                     key=lambda rid: eng.live[rid].arrival_time)
    assert order[:len(started)] == started
    assert swapped[0] in started


def test_sjf_started_requests_tied_on_arrival_keep_the_engines_arrival_order():
    """'Started requests first in arrival order': for equal arrival times the engine's arrival order
    (``view.live``, documented as arrival order) puts the smaller id first, as SJF's own waiting tie-break does."""
    specs = [spec(4, 0.0, 30, 50), spec(2, 0.0, 30, 80)]
    eng = engine("sjf", specs)
    eng.step()
    assert eng.policy.order(eng.view) == [4, 2]  # waiting: by length
    eng.step()  # both start in the same iteration
    assert states(eng) == {2: "RUNNING", 4: "RUNNING"}
    assert list(eng.view.live) == [2, 4]
    assert eng.policy.order(eng.view) == [2, 4]


# ============================================================================ SRTF
def test_srtf_ranks_every_live_request_by_remaining_output_tokens():
    assert make_policy("srtf").stable_between_events is False
    assert make_policy("sjf").stable_between_events is True
    # 0 starts alone (output 20); the others arrive during its first iteration, when it has 1 token
    specs = [spec(0, 0.0, 30, 20),
             spec(7, EPS, 30, 19),   # remaining 19 ties with 0 (19 left): 0 arrived first
             spec(3, EPS, 30, 19),   # same arrival as 7: smaller id first
             spec(9, EPS, 30, 18),   # 18 < 19: ahead of the running request
             spec(1, 2 * EPS, 30, 25)]
    eng = engine("srtf", specs)
    eng.step()
    assert eng.policy.order(eng.view) == [0]
    eng.step()
    assert eng.live[0].num_output_tokens == 1 and eng.live[0].state is RequestState.RUNNING
    assert eng.policy.order(eng.view) == [9, 0, 3, 7, 1]
    eng.step()  # one iteration: 0 decodes its 2nd token, the others prefill and sample their 1st
    assert {rid: r.num_output_tokens for rid, r in eng.live.items()} == {0: 2, 7: 1, 3: 1, 9: 1, 1: 1}
    # remaining: 9 -> 17, 0 -> 18, 3 -> 18, 7 -> 18, 1 -> 24
    assert eng.policy.order(eng.view) == [9, 0, 3, 7, 1]
    for _ in range(5):
        eng.step(max_iterations=1)
    # every request decoded one token per iteration: all remaining counts moved by the same 5
    assert {rid: r.num_output_tokens for rid, r in eng.live.items()} == {0: 7, 7: 6, 3: 6, 9: 6, 1: 6}
    assert eng.policy.order(eng.view) == [9, 0, 3, 7, 1]


def test_srtf_a_short_newcomer_outranks_a_long_running_request_and_takes_its_memory():
    # 0 (200-token prompt, 13 blocks) starts alone in 19 blocks; 5 (150-token prompt, 10 blocks,
    # 10 output tokens) arrives during its first iteration and does not fit beside it.
    # Prefill-first batching (orca), so the running request is still a preemption candidate when
    # the newcomer is placed.
    specs = [spec(0, 0.0, 200, 100), spec(5, EPS, 150, 10)]
    cfg = dict(num_gpu_blocks=19, batching="orca", preemption_mode="recompute")
    srtf = engine("srtf", specs, **cfg)
    sjf = engine("sjf", specs, **cfg)
    for eng in (srtf, sjf):
        eng.step()
        eng.step()
        assert eng.live[0].num_output_tokens == 1 and eng.live[5].state is RequestState.WAITING
    # remaining: 0 -> 99, 5 -> 10
    assert srtf.policy.order(srtf.view) == [5, 0]
    assert sjf.policy.order(sjf.view) == [0, 5]  # non-preemptive: the started request keeps its place
    srtf.step(max_iterations=1)
    sjf.step(max_iterations=1)
    assert srtf.records[0].num_preemptions == 1 and srtf.live[0].state is RequestState.WAITING
    assert srtf.live[5].state is RequestState.RUNNING and srtf.live[5].num_output_tokens == 1
    assert srtf.policy.order(srtf.view) == [5, 0]   # 9 left vs 99 left
    assert sjf.records[0].num_preemptions == 0 and sjf.live[5].state is RequestState.WAITING
    for eng in (srtf, sjf):
        run_to_end(eng)
        assert all(r.finished for r in eng.records)
    s_rec = {r.request_id: r for r in srtf.records}
    j_rec = {r.request_id: r for r in sjf.records}
    assert s_rec[5].finish_time < s_rec[0].finish_time
    assert j_rec[0].finish_time < j_rec[5].first_token_time
    assert [r.num_preemptions for r in sjf.records] == [0, 0]


# ============================================================================ end to end
def _mean_e2e(policy: str, specs) -> float:
    eng = engine(policy, specs, max_num_seqs=1)
    run_to_end(eng)
    assert all(r.finished for r in eng.records)
    return compute_metrics(eng.result()).e2e.mean


def test_sjf_beats_fcfs_on_mean_latency_when_short_jobs_queue_behind_a_long_one():
    # the long job has the smallest id, so FCFS serves it first among the simultaneous arrivals
    specs = [spec(0, 0.0, 200, 2000)] + [spec(i, 0.0, 200, 10) for i in range(1, 21)]
    fcfs = _mean_e2e("fcfs", specs)
    sjf = _mean_e2e("sjf", specs)
    srtf = _mean_e2e("srtf", specs)
    assert sjf < fcfs, f"SJF mean E2E {sjf:.4f}s is not below FCFS {fcfs:.4f}s"
    # with everything arriving together SRTF serves the same schedule as SJF (SRTF steps one
    # iteration at a time, SJF in closed-form runs: equal up to floating-point summation order)
    assert srtf == pytest.approx(sjf, rel=1e-12), f"SRTF mean E2E {srtf:.6f}s != SJF {sjf:.6f}s"


# ============================================================================ oracle access
class _Peeker(Policy):
    """A non-oracle policy that tries to read the true output length."""

    name = "peeker"

    def order(self, view):
        return sorted(view.live, key=lambda rid: view.oracle_output_len(view.live[rid]))


def test_non_oracle_policy_reading_the_true_length_raises():
    eng = engine(_Peeker(), [spec(3, 0.0, 30, 5), spec(4, 0.0, 30, 6)])
    assert eng.view.oracle is False
    eng.step()  # admission only: order not asked yet
    with pytest.raises(OracleAccessError, match="request 3"):
        eng.step()
    with pytest.raises(OracleAccessError):
        eng.view.oracle_output_len(eng.live[4])
    assert issubclass(OracleAccessError, PermissionError)


def test_fcfs_view_is_not_an_oracle_and_sjf_view_is():
    specs = [spec(3, 0.0, 30, 5)]
    fcfs = engine("fcfs", specs)
    fcfs.step()
    with pytest.raises(OracleAccessError):
        fcfs.view.oracle_output_len(fcfs.live[3])
    for name in ("sjf", "srtf"):
        eng = engine(name, specs)
        eng.step()
        assert eng.view.oracle is True
        assert eng.view.oracle_output_len(eng.live[3]) == 5
