"""A real run's plans re-timed by other durations (train/fidelity_replay.py): iterations wait for the
arrivals they schedule, and each request's times follow the iterations that produced its tokens."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from train.fidelity_replay import can_replay, replay_metrics, replayed_ends, request_table


def _real() -> dict:
    """Request 7 arrives at 0 and takes iterations 0-1 (two tokens); request 9 arrives at 1.0, after an
    idle gap, and takes iteration 2 (one token); request 11 was rejected."""
    records = [{"new_ids": [7]}, {"new_ids": []}, {"new_ids": [9]}]
    requests = [[7, 0, 0.0, 10, 2, 2, 0, 1, 0], [9, 1, 1.0, 5, 1, 1, 2, 2, 0], [11, 1, 0.5, 99, 3, 0, -1, -1, 1]]
    return {"records": records, "requests": requests}


def test_a_slower_replay_starts_each_iteration_late_and_a_faster_one_waits_for_arrivals():
    real = _real()
    arrivals = {7: 0.0, 9: 1.0, 11: 0.5}
    assert replayed_ends(real["records"], arrivals, np.array([0.5, 0.7, 0.2])).tolist() == [0.5, 1.2, 1.4]
    assert replayed_ends(real["records"], arrivals, np.array([0.25, 0.25, 0.5])).tolist() == [0.25, 0.5, 1.5]


def test_metrics_follow_the_replayed_ends():
    m = replay_metrics(_real(), np.array([0.5, 0.7, 0.2]))
    # request 7: first token at 0.5, finish at 1.2; request 9: both at 1.4, arrived at 1.0
    assert m["ttft_p50_s"] == pytest.approx((0.5 + 0.4) / 2)
    assert m["e2e_p99_s"] == pytest.approx(0.4 + 0.99 * (1.2 - 0.4))
    assert m["tpot_p50_s"] == pytest.approx(0.7)                   # only request 7 has two tokens
    assert m["throughput_tok_s"] == pytest.approx((10 + 2 + 5 + 1) / 1.4)
    assert m["num_rejected"] == 1 and m["num_finished"] == 2


def test_durations_must_cover_every_iteration():
    with pytest.raises(ValueError, match="2 durations for 3 recorded iterations"):
        replay_metrics(_real(), np.array([0.5, 0.7]))


def test_request_table_names_a_time_that_ends_no_iteration():
    done = SimpleNamespace(request_id=4, client_id=0, arrival_time=0.0, prompt_len=3, output_len=2,
                           num_output_tokens=2, first_token_time=0.5, finish_time=0.9, rejected=False)
    waiting = SimpleNamespace(request_id=5, client_id=0, arrival_time=0.2, prompt_len=3, output_len=2,
                              num_output_tokens=0, first_token_time=math.nan, finish_time=math.nan, rejected=False)
    assert request_table([done, waiting], [0.5, 0.9]) == [[4, 0, 0.0, 3, 2, 2, 0, 1, 0], [5, 0, 0.2, 3, 2, 0, -1, -1, 0]]
    with pytest.raises(ValueError, match="request 4: its finish time 0.9 is the end of no recorded iteration"):
        request_table([done], [0.5, 0.8])


def test_recordings_without_the_replay_fields_cannot_be_replayed():
    assert can_replay(_real())
    assert not can_replay({"records": [{"s": 1.0}], "requests": []})
    assert not can_replay({"records": [{"s": 1.0}]})
