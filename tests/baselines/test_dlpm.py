"""DLPM pinned on the hand-built prefix scene (``builders.prefix_scene``): with a huge quantum
it is LPM's order, with a tiny one the deficits decide (least-charged client first, as VTC);
charges are the uncached prompt at admission and 2 per output token; the refill happens
when the order is asked and no backlogged client has credit.
"""

from __future__ import annotations

import pytest

from baselines.dlpm import DEFAULT_QUANTUM, DLPM
from envs.policy import list_policies, make_policy
from tests.baselines.builders import LPM_ORDER, engine, order, prefix_scene, run_to_end, to_prefix_scene_order

HUGE = 1e9


def test_registered_with_the_default_quantum():
    info = {p.name: p for p in list_policies()}
    assert info["dlpm"].oracle is False
    p = make_policy("dlpm")
    assert isinstance(p, DLPM) and p.quantum == DEFAULT_QUANTUM == 2048.0
    assert p.stable_between_events is False
    assert make_policy("dlpm", quantum=7.0).quantum == 7.0


def test_seeds_are_charged_their_uncached_prompt_and_output_after_the_first_refill():
    eng = engine(DLPM(quantum=HUGE), prefix_scene())
    eng.step()
    assert order(eng) == [1, 2, 3]    # nothing cached yet; all three clients refilled once
    assert eng.policy.ledger.snapshot() == {0: HUGE, 1: HUGE, 2: HUGE}
    eng.step()
    assert eng.iteration == 1 and sorted(eng.live) == [30, 40, 45, 50, 60]
    # seeds: 340, 180 and 100 uncached prompt tokens, one output token each (w_q = 2)
    assert eng.policy.ledger.snapshot() == {0: HUGE - 342, 1: HUGE - 182, 2: HUGE - 102}


def test_a_huge_quantum_gives_lpms_order():
    eng = engine(DLPM(quantum=HUGE), prefix_scene())
    to_prefix_scene_order(eng)
    assert order(eng) == LPM_ORDER
    lpm = engine("lpm", prefix_scene())
    to_prefix_scene_order(lpm)
    assert order(lpm) == LPM_ORDER


def test_a_tiny_quantum_follows_the_deficits():
    eng = engine(DLPM(quantum=1.0), prefix_scene())
    to_prefix_scene_order(eng)
    # after the seeds: client 0 at 1 - 342, client 1 at 1 - 182, client 2 at 1 - 102: nobody has credit,
    # so asking for the order refills 102 rounds (client 2 reaches 1)
    got = order(eng)
    assert eng.policy.ledger.snapshot() == {0: -341 + 102, 1: -181 + 102, 2: -101 + 102}
    # trial: client 2 (credit) takes 50 (ext 500); refill 80 rounds puts client 1 at 1: 40 (ext 30);
    # then client 0 alone: 45 (ext 40), refill, 60 (ext 30), refill, 30: LPM order within the client
    assert got == [50, 40, 45, 60, 30]
    # asking again finds credit: no second refill, same order
    assert order(eng) == got
    assert eng.policy.ledger.snapshot() == {0: -239.0, 1: -79.0, 2: 1.0}


def test_between_the_extremes_a_credited_client_takes_requests_until_its_deficit_is_spent():
    eng = engine(DLPM(quantum=400.0), prefix_scene())
    to_prefix_scene_order(eng)
    # seeds charged after one refill of 400: client 0 at 58, client 1 at 218, client 2 at 298: all credited.
    # pass 1 in LPM order: client 0 takes 45 (58 -> 18), 60 (18 -> -12), stops; client 1 takes 40;
    # client 2 takes 50. Pass 2 (after a refill): 30.
    assert eng.policy.ledger.snapshot() == {0: 58.0, 1: 218.0, 2: 298.0}
    assert order(eng) == [45, 60, 40, 50, 30]


def test_admission_charges_only_the_uncached_prompt_and_decode_charges_two_per_token():
    eng = engine(DLPM(quantum=HUGE), prefix_scene())
    to_prefix_scene_order(eng)
    eng.step(max_iterations=1)   # all five admitted: 625 uncached tokens fit the 2048-token budget
    assert all(r.state.name == "RUNNING" and r.num_output_tokens == 1 for r in eng.live.values())
    snap = eng.policy.ledger.snapshot()
    # client 0: 45, 60, 30 -> 40 + 30 + 25 uncached, 3 tokens; client 1: 40 -> 30, 1; client 2: 50 -> 500, 1
    assert snap == {0: HUGE - 342 - 95 - 6, 1: HUGE - 182 - 30 - 2, 2: HUGE - 102 - 500 - 2}
    run_to_end(eng)
    snap = eng.policy.ledger.snapshot()
    assert snap == {0: HUGE - 342 - 95 - 2 * 60, 1: HUGE - 182 - 30 - 2 * 20, 2: HUGE - 102 - 500 - 2 * 20}


@pytest.mark.parametrize("quantum", [1.0, 400.0, HUGE])
def test_every_quantum_serves_everything(quantum):
    eng = engine(DLPM(quantum=quantum), prefix_scene())
    run_to_end(eng)
    assert all(r.finished for r in eng.records)


def test_a_bad_quantum_is_named():
    with pytest.raises(ValueError, match="quantum must be a finite number > 0, got -5"):
        DLPM(quantum=-5)
