"""First come, first served: the order requests arrived in (vLLM's default policy).

Running, swapped and waiting requests all keep their arrival rank, so under memory
pressure the newest running request is the one preempted, and a preempted request
resumes before anything that arrived after it.
"""

from __future__ import annotations

from envs.live_request import Request
from envs.policy import Policy, SchedulerView, register_policy


class FCFS(Policy):
    name = "fcfs"

    def reset(self, view: SchedulerView) -> None:
        super().reset(view)
        self._cached: list[Request] | None = None

    def order(self, view: SchedulerView) -> list[int]:
        return list(view.live)

    def ordered_requests(self, view: SchedulerView) -> list[Request]:
        # The live set is in arrival order and changes only at arrivals and finishes: with
        # thousands queued (an overloaded trace) copying it every iteration would dominate.
        if self._cached is None:
            self._cached = list(view.live.values())
        return self._cached

    def on_arrival(self, req: Request) -> None:
        self._cached = None

    def on_finish(self, req: Request) -> None:
        self._cached = None


register_policy("fcfs", FCFS, "first come, first served (arrival order)")
