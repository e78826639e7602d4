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

    def order(self, view: SchedulerView) -> list[int]:
        return list(view.live)

    def ordered_requests(self, view: SchedulerView) -> list[Request]:
        return list(view.live.values())


register_policy("fcfs", FCFS, "first come, first served (arrival order)")
