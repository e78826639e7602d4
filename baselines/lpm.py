"""LPM, longest prefix match first: SGLang's cache-aware order.

The baseline of DLPM (Cao et al. 2025, ``../shared/papers.md`` §3.1): serve first the
waiting request with the most prompt tokens already in the prefix cache, so that
requests sharing a prefix run while it is resident and the cache hit rate is highest.
It ignores fairness, which is what DLPM adds.

- Requests holding KV (running or swapped) come first, in arrival order: SGLang sorts
  only its waiting queue; the running batch continues.
- Waiting requests (new ones and ones preempted by recompute, as SGLang re-queues a
  retracted request) by cached prefix length, longest first
  (``SchedulerView.cached_prefix_tokens``: the full blocks the radix cache holds now),
  ties by arrival time, then request id (FCFS).

The sort is exact at any queue length (SGLang falls back to FCFS beyond 128 waiting
requests to bound its cost; we do not). The cached prefixes change when requests finish
or are preempted (their blocks enter the cache) and when the cache evicts blocks to make
room, which can happen at any iteration, so ``stable_between_events`` is False.
"""

from __future__ import annotations

from envs.live_request import Request, RequestState
from envs.policy import Policy, SchedulerView, register_policy

_WAITING = RequestState.WAITING


def lpm_sorted(view: SchedulerView, waiting: list[Request]) -> list[tuple[Request, int]]:
    """``waiting`` with each one's cached prefix tokens, longest prefix first, then FCFS."""
    cached = view.cached_prefix_tokens
    keyed = [(-cached(r), r.arrival_time, r.request_id, r) for r in waiting]
    keyed.sort(key=lambda e: e[:3])
    return [(e[3], -e[0]) for e in keyed]


class LPM(Policy):
    name = "lpm"
    stable_between_events = False

    def ordered_requests(self, view: SchedulerView) -> list[Request]:
        resident: list[Request] = []
        waiting: list[Request] = []
        for r in view.live.values():
            (waiting if r.state is _WAITING else resident).append(r)
        if waiting:
            resident.extend(r for r, _ in lpm_sorted(view, waiting))
        return resident

    def order(self, view: SchedulerView) -> list[int]:
        return [r.request_id for r in self.ordered_requests(view)]


register_policy("lpm", LPM, "longest cached prefix first, FCFS ties (SGLang's LPM)")
