"""Counting the iterations a request went unscheduled, for starvation promotion (LTR, MLFQ).

Why: LTR (``../shared/papers.md`` §4.3) and FastServe's MLFQ promote a request that has
not run for a number of iterations. The engine already records, per request, the last
iteration that computed tokens of it (``Request.last_scheduled_iteration``), so the count
needs no per-iteration hook: at iteration ``it`` (the one about to be scheduled,
``SchedulerView.iteration``) a request has gone unscheduled for the iterations since its
last run, its arrival or its last promotion, whichever is latest.

This matches vllm-ltr's per-step counter (reset when the request runs or is promoted,
incremented otherwise): a request that arrives before iteration ``a`` and never runs has
gone unscheduled for ``it - a`` iterations when iteration ``it`` is scheduled.
"""

from __future__ import annotations

from envs.live_request import Request


def iterations_unscheduled(req: Request, iteration: int, since: int) -> int:
    """Iterations before ``iteration`` in which ``req`` computed nothing, counted from iteration ``since``."""
    last = req.last_scheduled_iteration + 1
    return iteration - (last if last > since else since)
