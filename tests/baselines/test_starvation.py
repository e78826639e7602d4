"""StarvationWatch and SortedRequests: the bookkeeping that keeps LTR and MLFQ cheap per iteration."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from baselines.sorted_requests import SortedRequests
from baselines.starvation import StarvationWatch


def req(rid: int, last: int = -1):
    return SimpleNamespace(request_id=rid, last_scheduled_iteration=last)


def test_a_request_starves_after_exactly_threshold_unscheduled_iterations_and_is_rearmed():
    w = StarvationWatch(3)
    live = {7: req(7)}
    w.add(7, 5)                     # arrived before iteration 5
    assert w.starved(live, 7) == []  # missed 5, 6
    assert w.starved(live, 8) == [7]  # missed 5, 6, 7
    assert w.since(7) == 8
    assert w.starved(live, 8) == []   # asked again in the same iteration: nothing new
    assert w.starved(live, 10) == []
    assert w.starved(live, 11) == [7]  # counted from the promotion at 8


def test_running_pushes_the_deadline_back():
    w = StarvationWatch(3)
    r = req(4)
    live = {4: r}
    w.add(4, 0)
    r.last_scheduled_iteration = 1     # ran in iteration 1
    assert w.starved(live, 3) == []    # missed only 2
    assert w.starved(live, 4) == []    # missed 2, 3
    r.last_scheduled_iteration = 4
    assert w.starved(live, 7) == []    # missed 5, 6
    assert w.starved(live, 8) == [4]   # missed 5, 6, 7


def test_removed_requests_never_fire_and_simultaneous_ones_come_by_deadline_then_id():
    w = StarvationWatch(2)
    live = {rid: req(rid) for rid in (9, 3, 5, 1)}
    w.add(9, 0)
    w.add(3, 0)
    w.add(5, 1)
    w.add(1, 0)
    w.remove(1)
    assert w.starved(live, 5) == [3, 9, 5]


def test_sorted_requests_keeps_key_order_through_inserts_moves_and_removals():
    s = SortedRequests()
    a, b, c = req(1), req(2), req(3)
    s.insert(a, (2, 1))
    s.insert(b, (0, 2))
    s.insert(c, (1, 3))
    assert [r.request_id for r in s.requests()] == [2, 3, 1]
    s.rekey(b, (5, 2))
    assert [r.request_id for r in s.requests()] == [3, 1, 2]
    assert s.key(2) == (5, 2) and 2 in s and len(s) == 3
    s.remove(3)
    assert [r.request_id for r in s.requests()] == [1, 2] and 3 not in s
    with pytest.raises(ValueError, match="request 1 is already in the sorted list"):
        s.insert(a, (0, 1))
