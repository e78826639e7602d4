"""LTR pinned with a hand-written scorer: score order, batched scoring, preemptive re-ranking,
and starvation promotion after exactly 200 unscheduled iterations, for 10 scheduled ones.
"""

from __future__ import annotations

import pytest

from baselines.ltr import LTR
from envs.live_request import RequestState
from envs.policy import list_policies, make_policy
from envs.scoring import NoisyOracleScorer
from tests.baselines.builders import EPS, engine, order, run_to_end, spec, states


class TableScorer:
    """Scores from a table by request id; records every call."""

    name = "table"

    def __init__(self, table: dict[int, float]):
        self.table = table
        self.calls: list[list[int]] = []

    def score(self, specs):
        self.calls.append([s.request_id for s in specs])
        return [self.table[s.request_id] for s in specs]


def test_registered_as_an_oracle_with_the_noisy_oracle_by_default():
    info = {p.name: p for p in list_policies()}
    assert info["ltr"].oracle is True
    p = make_policy("ltr")
    assert isinstance(p.scorer, NoisyOracleScorer) and p.scorer.kendall_tau == 0.6 and p.scorer.seed == 0
    assert p.oracle is True and p.stable_between_events is False
    assert p.starvation_threshold == 200 and p.starvation_quota == 10
    q = make_policy("ltr", kendall_tau=0.3, seed=4, reference_lengths=[10, 20])
    assert q.scorer.kendall_tau == 0.3 and q.scorer.seed == 4 and q.scorer.name.endswith("ref2)")
    # a scorer that is no oracle makes the policy none; no starvation control: stable between events
    r = LTR(scorer=TableScorer({}), starvation_threshold=None)
    assert r.oracle is False and r.stable_between_events is True
    eng = engine(r, [spec(1, 0.0, 10, 3)])
    assert eng.view.oracle is False


def test_orders_by_score_then_arrival_then_id_and_scores_each_batch_of_arrivals_once():
    scorer = TableScorer({5: 1.0, 3: 9.0, 8: 1.0, 2: 4.0, 7: 1.0, 6: 9.5})
    specs = [spec(5, 0.0, 30, 50), spec(3, 0.0, 30, 50), spec(8, EPS, 30, 50), spec(7, 0.0, 30, 50),
             spec(2, 2 * EPS, 30, 50), spec(6, 2 * EPS, 30, 50)]
    eng = engine(LTR(scorer=scorer), specs, max_num_seqs=1)
    eng.step()
    assert scorer.calls == []      # scored when the order is first asked
    assert order(eng) == [3, 5, 7]  # 5 and 7 tie on score and arrival: id
    assert order(eng) == [3, 5, 7]
    assert scorer.calls == [[3, 5, 7]]
    eng.step()  # iteration 0 runs 3; 8, 2 and 6 arrive during it
    assert states(eng)[3] == "RUNNING"
    # preemptive ranking: 6 (9.5) outranks the running 3; 8 ties 5 and 7 on score, arrived later
    assert order(eng) == [6, 3, 2, 5, 7, 8]
    assert scorer.calls == [[3, 5, 7], [8, 2, 6]]


def test_a_higher_scored_newcomer_takes_the_memory_of_a_running_request_under_prefill_first_batching():
    # as SRTF's test: 0 (200-token prompt) fills 19 blocks with 5 beside it impossible
    specs = [spec(0, 0.0, 200, 100), spec(5, EPS, 150, 10)]
    eng = engine(LTR(scorer=TableScorer({0: 0.0, 5: 1.0})), specs, num_gpu_blocks=19, batching="orca",
                 preemption_mode="recompute")
    eng.step()
    eng.step()
    assert eng.live[5].state is RequestState.WAITING
    assert order(eng) == [5, 0]
    eng.step(max_iterations=1)
    assert eng.records[0].num_preemptions == 1 and eng.live[5].state is RequestState.RUNNING
    run_to_end(eng)
    rec = {r.request_id: r for r in eng.records}
    assert rec[5].finish_time < rec[0].finish_time


def _starving_pair(**ltr_kwargs):
    # one token of budget per iteration: only the first running decoder in the order runs.
    # orca (prefill first): 1 prefills in iteration 0, 2 in iteration 1; from iteration 2 both decode,
    # so only 1 (higher score) runs and 2 starves.
    pol = LTR(scorer=TableScorer({1: 10.0, 2: 1.0}), **ltr_kwargs)
    return engine(pol, [spec(1, 0.0, 1, 2000), spec(2, 0.0, 1, 2000)],
                  max_num_batched_tokens=1, batching="orca")


def _step_to(eng, iteration):
    while eng.iteration < iteration:
        eng.step()
        assert eng.iteration <= iteration, "a closed-form run skipped past the iteration"


def test_a_request_unscheduled_for_200_iterations_is_promoted_for_10_scheduled_ones():
    eng = _starving_pair()
    eng.step()
    _step_to(eng, 2)
    assert eng.live[2].last_scheduled_iteration == 1
    ltr = eng.policy
    # 2 last ran in iteration 1: at iteration 201 it has missed 2..200 (199 iterations)
    _step_to(eng, 201)
    assert order(eng) == [1, 2] and not ltr.is_promoted(2)
    out1 = eng.live[1].num_output_tokens
    eng.step()  # iteration 201: 1 runs
    assert eng.live[1].num_output_tokens == out1 + 1
    # iteration 202: 2 has missed 200 iterations: promoted ahead of 1
    assert order(eng) == [2, 1] and ltr.is_promoted(2)
    out2 = eng.live[2].num_output_tokens
    _step_to(eng, 212)   # iterations 202..211: 2 runs, 1 does not
    assert eng.live[2].num_output_tokens == out2 + 10
    assert eng.live[1].num_output_tokens == out1 + 1
    # its quota of 10 is used: back behind 1
    assert order(eng) == [1, 2] and not ltr.is_promoted(2)
    # it last ran in iteration 211: promoted again at 412, not at 411
    _step_to(eng, 411)
    assert order(eng) == [1, 2]
    eng.step()
    assert order(eng) == [2, 1]


def test_promotion_parameters_and_no_promotion_when_off():
    eng = _starving_pair(starvation_threshold=5, starvation_quota=2)
    eng.step()
    _step_to(eng, 6)           # 2 last ran in iteration 1: missed 2..5 (4)
    assert order(eng) == [1, 2]
    eng.step()                 # iteration 7: missed 5
    assert order(eng) == [2, 1]
    _step_to(eng, 9)           # ran in 7 and 8
    assert order(eng) == [1, 2]
    off = _starving_pair(starvation_threshold=None)
    off.step()
    _step_to(off, 300)
    assert order(off) == [1, 2] and off.live[2].num_output_tokens == 1


def test_promotion_counts_from_arrival_for_a_request_that_never_ran():
    # 9 waits behind the cap of one sequence from its arrival (it is admitted before iteration 0)
    pol = LTR(scorer=TableScorer({1: 10.0, 9: 1.0}), starvation_threshold=50)
    eng = engine(pol, [spec(1, 0.0, 10, 2000), spec(9, 0.0, 10, 20)], max_num_seqs=1)
    eng.step()
    _step_to(eng, 49)
    assert order(eng) == [1, 9]
    eng.step()
    assert eng.iteration == 50 and order(eng) == [9, 1]


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(scorer=TableScorer({}), kendall_tau=0.5), ValueError, "give either scorer="),
    (dict(scorer=object()), TypeError, "scorer must implement envs.scoring.Scorer"),
    (dict(starvation_threshold=0), ValueError, "starvation_threshold must be an int >= 1 or None, got 0"),
    (dict(starvation_quota=2.5), ValueError, "starvation_quota must be an int >= 1, got 2.5"),
    (dict(kendall_tau=2.0), ValueError, "kendall_tau must be a number in"),
])
def test_bad_settings_are_named(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        LTR(**kwargs)


def test_a_scorer_giving_the_wrong_count_or_a_non_finite_score_is_named():
    class Short(TableScorer):
        def score(self, specs):
            return [1.0]

    eng = engine(LTR(scorer=Short({})), [spec(1, 0.0, 10, 3), spec(2, 0.0, 10, 3)])
    eng.step()
    with pytest.raises(ValueError, match="scorer 'table' returned 1 scores for 2 requests"):
        order(eng)
    eng = engine(LTR(scorer=TableScorer({1: float("nan")})), [spec(1, 0.0, 10, 3)])
    eng.step()
    with pytest.raises(ValueError, match="gave request 1 the score nan"):
        order(eng)
