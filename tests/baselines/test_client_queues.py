"""ClientQueues: the backlog per client and the started requests that VTC and DLPM share."""

from __future__ import annotations

import pytest

from baselines.client_queues import ClientQueues
from envs.live_request import Request
from tests.baselines.builders import spec


def test_backlog_joins_leaves_and_readmission():
    q = ClientQueues()
    a, b, c = (Request(spec(i, 0.0, 10, 5, client=cl), 0.0) for i, cl in ((1, 0), (2, 0), (3, 4)))
    assert q.add(a) is True       # client 0 joins the backlog
    assert q.add(b) is False      # already backlogged
    assert q.add(c) is True
    assert list(q.backlogged()) == [0, 4] and q.num_waiting == 3
    assert q.admit(a) is True and list(q.queues[0]) == [2]
    assert q.admit(a) is False    # re-admission after a recompute: no change
    assert q.admit(c) is True and list(q.backlogged()) == [0]
    assert q.started == {1, 3}
    q.finish(a)
    assert q.started == {3}
    stranger = Request(spec(9, 0.0, 10, 5), 0.0)
    with pytest.raises(KeyError, match="request 9 of client 0 was admitted but never queued"):
        q.admit(stranger)
