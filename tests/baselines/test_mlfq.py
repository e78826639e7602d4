"""MLFQ pinned: skip-join levels from the prompt, demotion points, FCFS within a level,
starvation promotion, and closed-form runs dated as stepping would date them.
"""

from __future__ import annotations

import pytest

from baselines.mlfq import MLFQ
from envs.policy import list_policies, make_policy
from tests.baselines.builders import EPS, engine, order, spec


def test_registered_with_fastserve_like_defaults():
    info = {p.name: p for p in list_policies()}
    assert info["mlfq"].oracle is False
    p = make_policy("mlfq")
    assert p.stable_between_events is False
    assert p.quanta == [1, 2, 4, 8, 16, 32, 64, 128, 256]   # 10 levels, the last without a quantum
    assert p.num_levels == 10 and p.starvation_threshold == 200


@pytest.mark.parametrize("prompt, level", [(1, 0), (256, 0), (257, 1), (512, 1), (513, 2), (1024, 2),
                                           (4096, 4), (65536, 8), (65537, 9), (10**6, 9)])
def test_skip_join_level_from_the_prompt_length(prompt, level):
    assert MLFQ().join_level(prompt) == level


def test_join_level_with_other_parameters():
    p = MLFQ(num_levels=3, base_quantum=4, quantum_ratio=3, prefill_tokens_per_token=100)
    assert p.quanta == [4, 12]
    assert [p.join_level(n) for n in (400, 401, 1200, 1201)] == [0, 1, 1, 2]


def test_demotion_after_each_levels_quantum_of_output_tokens():
    eng = engine("mlfq", [spec(1, 0.0, 10, 40)])
    eng.step()
    mlfq = eng.policy
    assert mlfq.level(1) == 0
    levels = []
    while eng.live:
        eng.step(max_iterations=1)
        if eng.live:
            levels.append((eng.live[1].num_output_tokens, mlfq.level(1)))
    # quanta 1, 2, 4, 8, 16: demoted after 1, 3, 7, 15, 31 tokens
    expected = [(n, sum(1 for edge in (1, 3, 7, 15, 31) if n >= edge)) for n in range(1, 40)]
    assert levels == expected


def test_fcfs_within_a_level_by_the_iteration_it_was_entered():
    # X (10 tokens) joins level 0, Y (600 tokens) level 2 (its prefill counts 2.3 decode iterations)
    specs = [spec(3, 0.0, 10, 50), spec(9, 0.0, 600, 50), spec(6, EPS, 10, 50)]
    eng = engine("mlfq", specs)
    eng.step()
    assert order(eng) == [3, 9]
    eng.step(max_iterations=1)   # iteration 0: 3 and 9 prefill (1 token each): 3 -> level 1; 6 arrives
    lv = eng.policy.level
    assert (lv(3), lv(9), lv(6)) == (1, 2, 0)
    assert order(eng) == [6, 3, 9]
    eng.step(max_iterations=1)   # iteration 1: 6 prefills -> level 1 (after 3, which entered earlier)
    assert (lv(3), lv(9), lv(6)) == (1, 2, 1)
    assert order(eng) == [3, 6, 9]
    eng.step(max_iterations=1)   # iteration 2: 3 uses its 2 tokens at level 1 -> level 2, behind 9
    assert (lv(3), lv(9), lv(6)) == (2, 2, 1)
    assert order(eng) == [6, 9, 3]
    eng.step(max_iterations=1)   # iteration 3: 6 -> level 2 (behind 3); 9 used 4 -> level 3
    assert (lv(3), lv(9), lv(6)) == (2, 3, 2)
    assert order(eng) == [3, 6, 9]


def test_a_closed_form_run_dates_each_demotion_like_stepping():
    specs = [spec(3, 0.0, 10, 300), spec(9, 0.0, 600, 300), spec(6, EPS, 10, 300), spec(4, EPS, 300, 300)]
    stepped = engine("mlfq", specs)
    bulk = engine("mlfq", specs)
    for eng in (stepped, bulk):
        eng.step()
        eng.step()
        eng.step()   # everyone admitted and running
    info = bulk.step()   # one closed-form run over many demotions
    assert info.num_iterations > 40
    while stepped.iteration < bulk.iteration:
        stepped.step(max_iterations=1)
    assert stepped.iteration == bulk.iteration
    assert order(stepped) == order(bulk)
    assert stepped.policy._level == bulk.policy._level
    assert stepped.policy._entered == bulk.policy._entered
    assert stepped.policy._used == bulk.policy._used


def test_a_request_unscheduled_for_200_iterations_is_promoted_to_level_0():
    # one sequence slot, decode first: 1 keeps it; 2 (a 70,000-token prompt: the last level, 9) waits.
    # 1 sinks one level per doubling of its output, to level 7 by iteration 199.
    specs = [spec(1, 0.0, 10, 1000), spec(2, 0.0, 70_000, 10)]
    eng = engine("mlfq", specs, max_num_seqs=1)
    eng.step()
    while eng.iteration < 199:
        eng.step()
        assert eng.iteration <= 199
    # 2 arrived before iteration 0 and never ran: at 199 it has missed 0..198
    assert order(eng) == [1, 2]
    assert eng.policy.level(2) == 9 and eng.policy.level(1) == 7
    eng.step()
    assert eng.iteration == 200
    assert order(eng) == [2, 1]   # missed 200: promoted to level 0, entered now
    assert eng.policy.level(2) == 0 and eng.policy._entered[2] == 200
    off = engine(MLFQ(starvation_threshold=None), specs, max_num_seqs=1)
    off.step()
    while off.iteration < 300:
        off.step()
    assert order(off) == [1, 2] and off.policy.level(2) == 9


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_levels=0), "num_levels must be an int >= 1, got 0"),
    (dict(base_quantum=1.5), "base_quantum must be an int >= 1, got 1.5"),
    (dict(starvation_threshold=0), "starvation_threshold must be an int >= 1 or None, got 0"),
])
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLFQ(**kwargs)
