"""DeficitLedger: the deficit books DLPM uses and D²LPM will use per (client, replica)."""

from __future__ import annotations

import pytest

from baselines.deficit import DeficitLedger


def test_charges_take_w_p_per_uncached_prompt_token_and_w_q_per_output_token():
    led = DeficitLedger(100.0)
    assert led.deficit("a") == 0.0 and not led.has_credit("a")
    assert led.charge_prompt("a", 30) == 30.0
    assert led.charge_output("a", 4) == 8.0
    assert led.deficit("a") == -38.0
    weighted = DeficitLedger(100.0, w_p=0.5, w_q=3.0)
    weighted.charge_prompt(("c", 1), 10)
    weighted.charge_output(("c", 1), 2)
    assert weighted.deficit(("c", 1)) == -11.0
    assert weighted.snapshot() == {("c", 1): -11.0}


def test_refill_gives_every_key_the_fewest_rounds_that_credit_one_of_them():
    led = DeficitLedger(10.0, quanta={"b": 20.0})
    led.charge("a", 35.0)   # needs 4 rounds of 10
    led.charge("b", 45.0)   # needs 3 rounds of 20
    led.charge("c", 0.0)    # at exactly 0: needs 1 round
    assert led.refill(["a", "b"]) == 3
    assert led.deficit("a") == -5.0 and led.deficit("b") == 15.0
    assert led.deficit("c") == 0.0   # not among the keys with waiting work: untouched
    # some key has credit now: no refill
    assert led.refill(["a", "b"]) == 0
    assert led.deficit("a") == -5.0
    # a key at 0 gets one quantum; others at or below 0 get it too
    assert led.refill(["a", "c"]) == 1
    assert led.deficit("a") == 5.0 and led.deficit("c") == 10.0
    assert led.refill([]) == 0


def test_refill_is_a_no_op_when_any_waiting_key_has_credit_so_credit_never_exceeds_the_quantum():
    led = DeficitLedger(50.0)
    led.refill(["a", "b"])
    assert led.snapshot() == {"a": 50.0, "b": 50.0}
    led.charge("a", 60.0)
    assert led.refill(["a", "b"]) == 0
    assert led.snapshot() == {"a": -10.0, "b": 50.0}
    led.charge("b", 50.0)
    assert led.refill(["a", "b"]) == 1
    assert led.snapshot() == {"a": 40.0, "b": 50.0}
    assert max(led.snapshot().values()) <= 50.0


def test_charge_prompts_while_credit_is_one_clients_pass():
    led = DeficitLedger(100.0)
    led.refill(["u"])
    # 40 -> 60 left, 50 -> 10 left, 30 -> -20: stops before the fourth
    assert led.charge_prompts_while_credit("u", [40, 50, 30, 5]) == 3
    assert led.deficit("u") == -20.0
    assert led.charge_prompts_while_credit("u", [40, 50, 30, 5], start=3) == 3
    led.refill(["u"])
    assert led.charge_prompts_while_credit("u", [40, 50, 30, 5], start=3) == 4
    assert led.deficit("u") == 75.0


def test_copy_is_independent():
    led = DeficitLedger(10.0)
    led.charge("a", 3.0)
    trial = led.copy()
    trial.charge("a", 100.0)
    trial.refill(["a", "b"])
    assert led.snapshot() == {"a": -3.0}
    # b (at 0) needs one round, a (at -103) eleven: one round for both
    assert trial.deficit("a") == -93.0 and trial.deficit("b") == 10.0
    led.reset()
    assert led.snapshot() == {} and trial.deficit("b") == 10.0


@pytest.mark.parametrize("build, match", [
    (lambda: DeficitLedger(0.0), "quantum must be a finite number > 0, got 0.0"),
    (lambda: DeficitLedger(float("inf")), "quantum must be a finite number > 0"),
    (lambda: DeficitLedger(5.0, w_p=-1.0), "w_p must be a finite number >= 0, got -1.0"),
    (lambda: DeficitLedger(5.0, quanta={"x": -2.0}), "quanta\\['x'\\] must be a finite number > 0, got -2.0"),
    (lambda: DeficitLedger(5.0).charge("k", -1.0), "charge to 'k' must be a finite amount >= 0, got -1.0"),
    (lambda: DeficitLedger(5.0).charge_prompt("k", -3), "'k' charged for -3 uncached prompt tokens"),
    (lambda: DeficitLedger(5.0).charge_output("k", -1), "'k' charged for -1 output tokens"),
])
def test_bad_values_are_named(build, match):
    with pytest.raises(ValueError, match=match):
        build()
