"""Shortest job first and shortest remaining time first, on oracle output lengths.

These are the LTR paper's upper references (Fu et al., NeurIPS'24, §4.3: ``sjf`` and
``srtf`` schedule types of vllm-ltr): they read the true output length, which a real
scheduler never has, to show how much ordering by length can gain.

- SJF is non-preemptive: requests already started keep their place, in arrival order,
  ahead of every waiting request; waiting requests go shortest output first.
- SRTF is preemptive: every live request is ranked by output tokens still to generate,
  so a short new request outranks a long running one and, under a prefill-first batching
  rule (``orca``, ``vllm``), takes its memory under pressure. Under decode-first rules
  (the default ``sarathi``) running decodes are placed before any prefill, so a running
  request keeps its place. Its ranking moves with every generated token.
"""

from __future__ import annotations

import bisect

from envs.live_request import Request, RequestState
from envs.policy import Policy, SchedulerView, register_policy

_WAITING = RequestState.WAITING


class SJF(Policy):
    name = "sjf"
    oracle = True

    def reset(self, view: SchedulerView) -> None:
        super().reset(view)
        self._waiting: list[tuple[int, float, int]] = []   # (output length, arrival, id), sorted
        self._started: dict[int, None] = {}                # ids in arrival order

    def _key(self, req: Request) -> tuple[int, float, int]:
        return (self.view.oracle_output_len(req), req.arrival_time, req.request_id)

    def on_arrival(self, req: Request) -> None:
        bisect.insort(self._waiting, self._key(req))

    def on_admit(self, req: Request, cached_tokens: int) -> None:
        key = self._key(req)
        i = bisect.bisect_left(self._waiting, key)
        del self._waiting[i]
        self._started[req.request_id] = None

    def on_preempt(self, req: Request) -> None:
        if req.state is _WAITING:  # recompute: it starts over as a waiting request
            del self._started[req.request_id]
            bisect.insort(self._waiting, self._key(req))

    def on_finish(self, req: Request) -> None:
        del self._started[req.request_id]

    def order(self, view: SchedulerView) -> list[int]:
        live = view.live
        started = sorted(self._started, key=lambda rid: (live[rid].arrival_time, rid)) \
            if len(self._started) > 1 else list(self._started)
        return started + [rid for _, _, rid in self._waiting]


class SRTF(Policy):
    name = "srtf"
    oracle = True
    stable_between_events = False

    def order(self, view: SchedulerView) -> list[int]:
        oracle = view.oracle_output_len
        return sorted(view.live, key=lambda rid: (oracle(view.live[rid]) - view.live[rid].num_output_tokens,
                                                   view.live[rid].arrival_time, rid))


register_policy("sjf", SJF, "shortest job first on oracle output lengths (non-preemptive)", oracle=True)
register_policy("srtf", SRTF, "shortest remaining time first on oracle output lengths (preemptive)", oracle=True)
