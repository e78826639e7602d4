"""Per-client FIFO queues of requests not yet admitted, and the requests admitted so far.

Why: the fair schedulers (VTC, ``../shared/papers.md`` §2; DLPM, §3.2) reason about a
client's *backlog* — its requests that wait for their first admission — while the
requests they have admitted keep their place, as in the papers' non-preemptive engines.
Both keep the same books, so they share this class.

A request preempted by recompute goes back to the engine's waiting state, but for these
schedulers it stays *started*: it was admitted and charged once, and it resumes before
any request that has never run (as vLLM puts preempted requests at the front of its
waiting queue). It is not charged again when it is re-admitted.
"""

from __future__ import annotations

from typing import Iterator

from envs.live_request import Request
from envs.policy import SchedulerView


class ClientQueues:
    """Backlog per client (arrival order) and the live requests admitted at least once."""

    __slots__ = ("queues", "started", "_started_order")

    def __init__(self) -> None:
        self.queues: dict[int, dict[int, Request]] = {}   # client -> {request id: request}, only non-empty
        self.started: set[int] = set()
        self._started_order: list[Request] | None = []

    def add(self, req: Request) -> bool:
        """Queue a new arrival; True if its client had no backlog (it joins or rejoins it)."""
        q = self.queues.get(req.client_id)
        if q is None:
            self.queues[req.client_id] = {req.request_id: req}
            return True
        q[req.request_id] = req
        return False

    def admit(self, req: Request) -> bool:
        """Record an admission; True the first time (it leaves its client's backlog), False on re-admission."""
        rid = req.request_id
        if rid in self.started:
            return False
        q = self.queues.get(req.client_id)
        if q is None or rid not in q:
            raise KeyError(f"request {rid} of client {req.client_id} was admitted but never queued")
        del q[rid]
        if not q:
            del self.queues[req.client_id]
        self.started.add(rid)
        self._started_order = None
        return True

    def finish(self, req: Request) -> None:
        self.started.discard(req.request_id)
        self._started_order = None

    def backlogged(self) -> Iterator[int]:
        """Clients with at least one request waiting for its first admission."""
        return iter(self.queues)

    @property
    def num_waiting(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def started_in_arrival_order(self, view: SchedulerView) -> list[Request]:
        """The started requests in arrival order (a new list: the caller may extend it)."""
        if self._started_order is None:
            started = self.started
            self._started_order = [r for rid, r in view.live.items() if rid in started] if started else []
        return list(self._started_order)
