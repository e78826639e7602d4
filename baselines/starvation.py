"""Starvation detection for LTR and MLFQ: which requests went N iterations unscheduled.

Why: LTR (``../shared/papers.md`` §4.3) and FastServe's MLFQ promote a request that has
not run for a number of iterations. The engine already records, per request, the last
iteration that computed tokens of it (``Request.last_scheduled_iteration``), so the count
needs no per-iteration hook: at iteration ``it`` (the one about to be scheduled,
``SchedulerView.iteration``) a request has gone unscheduled for the iterations since its
last run, its arrival or its last promotion, whichever is latest.

This matches vllm-ltr's per-step counter (reset when the request runs or is promoted,
incremented otherwise): a request that arrives before iteration ``a`` and never runs has
gone unscheduled for ``it - a`` iterations when iteration ``it`` is scheduled.

With thousands of requests queued, looking at every one each iteration would dominate a
simulation, so ``StarvationWatch`` keeps one deadline per request in a heap: the earliest
iteration at which it could have starved. A deadline only moves later (the request ran
since), so a due entry is checked against the request and either fires or is pushed back.
"""

from __future__ import annotations

import heapq

from envs.live_request import Request


class StarvationWatch:
    """The requests unscheduled for ``threshold`` iterations, found in O(log n) per deadline."""

    __slots__ = ("threshold", "_since", "_deadline", "_heap")

    def __init__(self, threshold: int):
        self.threshold = threshold
        self._since: dict[int, int] = {}      # request id -> arrival or last promotion iteration
        self._deadline: dict[int, int] = {}   # request id -> its one valid heap entry
        self._heap: list[tuple[int, int]] = []

    def _arm(self, rid: int, deadline: int) -> None:
        self._deadline[rid] = deadline
        heapq.heappush(self._heap, (deadline, rid))

    def add(self, rid: int, since: int) -> None:
        """Watch a request that arrived before iteration ``since``."""
        self._since[rid] = since
        self._arm(rid, since + self.threshold)

    def remove(self, rid: int) -> None:
        self._since.pop(rid, None)
        self._deadline.pop(rid, None)   # its heap entry is skipped when it comes up

    def since(self, rid: int) -> int:
        return self._since[rid]

    def starved(self, live: dict[int, Request], iteration: int) -> list[int]:
        """Requests unscheduled for ``threshold`` iterations before ``iteration``, by deadline then id.

        Each is counted from ``iteration`` again (the promotion resets its count).
        """
        heap = self._heap
        deadline = self._deadline
        threshold = self.threshold
        out: list[int] = []
        while heap and heap[0][0] <= iteration:
            d, rid = heapq.heappop(heap)
            if deadline.get(rid) != d:
                continue   # finished, or re-armed since
            due = max(live[rid].last_scheduled_iteration + 1, self._since[rid]) + threshold
            if due > iteration:
                self._arm(rid, due)
                continue
            out.append(rid)
        for rid in out:
            self._since[rid] = iteration
            self._arm(rid, iteration + threshold)
        return out
