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
requests to bound its cost; we do not): ``PrefixRanker`` keeps it cheap by looking a
request's prefix up again only after the cache changed. The cached prefixes change when requests finish
or are preempted (their blocks enter the cache) and when the cache evicts blocks to make
room, which can happen at any iteration, so ``stable_between_events`` is False.
"""

from __future__ import annotations

from typing import Callable, Iterable

from envs.live_request import Request, RequestState
from envs.policy import Policy, SchedulerView, register_policy

_WAITING = RequestState.WAITING


class PrefixRanker:
    """LPM's sort of a set of waiting requests, memoised.

    The cached prefixes are the expensive part (a walk down the radix tree per request,
    hundreds of blocks for a long document), yet they change only when blocks enter or leave
    the cache (``SchedulerView.prefix_cache_version``) or the request grows (a recompute adds
    its generated tokens). So each request's value is kept until one of those happens, and the
    whole sort until the cache or the set changes (the owner calls ``invalidate`` then).
    """

    __slots__ = ("_version", "_values", "_ranked")

    def __init__(self) -> None:
        self._version: tuple[int, int] | None = None
        self._values: dict[int, tuple[int, int]] = {}   # request id -> (num_tokens, cached prefix tokens)
        self._ranked: list[tuple[Request, int]] | None = None

    def invalidate(self) -> None:
        """The set of requests to rank changed."""
        self._ranked = None

    def ranked(self, view: SchedulerView, waiting: Callable[[], Iterable[Request]]) -> list[tuple[Request, int]]:
        """``waiting()`` with each one's cached prefix tokens, longest first, then arrival, then id.

        The list is shared until the next change: callers must not modify it.
        """
        version = view.prefix_cache_version
        if version != self._version:
            self._version = version
            self._values = {}
            self._ranked = None
        elif self._ranked is not None:
            return self._ranked
        values = self._values
        cached_prefix = view.cached_prefix_tokens
        keyed = []
        for r in waiting():
            rid = r.request_id
            hit = values.get(rid)
            if hit is not None and hit[0] == r.num_tokens:
                c = hit[1]
            else:
                c = cached_prefix(r)
                values[rid] = (r.num_tokens, c)
            keyed.append((-c, r.arrival_time, rid, r))
        keyed.sort(key=lambda e: e[:3])
        self._ranked = [(e[3], -e[0]) for e in keyed]
        return self._ranked


class LPM(Policy):
    name = "lpm"
    stable_between_events = False

    def reset(self, view: SchedulerView) -> None:
        super().reset(view)
        self._ranker = PrefixRanker()
        self._order: list[Request] | None = None
        self._version: tuple[int, int] | None = None

    def _changed(self, req: Request, *args) -> None:
        self._ranker.invalidate()
        self._order = None

    on_arrival = on_admit = on_preempt = on_finish = _changed

    def ordered_requests(self, view: SchedulerView) -> list[Request]:
        version = view.prefix_cache_version
        if self._order is not None and version == self._version:
            return self._order   # the engine only reads it
        resident: list[Request] = []
        for r in view.live.values():
            if r.state is not _WAITING:
                resident.append(r)
        ranked = self._ranker.ranked(view, lambda: (r for r in view.live.values() if r.state is _WAITING))
        resident.extend(r for r, _ in ranked)
        self._order = resident
        self._version = version
        return resident

    def order(self, view: SchedulerView) -> list[int]:
        return [r.request_id for r in self.ordered_requests(view)]


register_policy("lpm", LPM, "longest cached prefix first, FCFS ties (SGLang's LPM)")
