"""VTC, the Virtual Token Counter, and LCF, its ablation without the counter lift.

Sheng et al., "Fairness in Serving Large Language Models", OSDI'24 (``../shared/papers.md``
§2.1-2.2, Algorithm 2): each client has a counter of the service it received; the next
request admitted is the head of the backlogged client with the smallest counter.

- Input tokens are charged at admission, ``w_p = 1`` per prompt token (every prompt
  token, cached or not), so one client cannot take a whole new batch; output tokens are
  charged as they are produced, ``w_q = 2`` each (the first, sampled by the prefill, included).
- Counter lift: when a client with no waiting request gets one (it joins or rejoins the
  backlog), its counter is raised to the smallest counter among the backlogged clients,
  or, if nobody is backlogged, to the counter of the client whose request last left the
  backlog (the paper's ``last_left``; the artifact skips this case). So an idle client
  cannot bank service and monopolise the server when it returns.
- Weighted VTC: every increment of client ``u`` is divided by its weight ``f[u]``
  (``weights``; clients not listed weigh 1).
- LCF (Least Counter First, §2.2) is the same without the lift: the paper's ablation.

The order: requests already admitted first, in arrival order (VTC does not preempt: the
running batch is never reordered; a request the engine preempted by recompute keeps its
place and is not charged again, see ``baselines.client_queues``). Then the waiting
requests in the order VTC's admission loop would admit them if all fitted: take the head
of the client with the smallest counter (ties: the earlier head arrival, then the smaller
client id), charge its prompt tentatively, repeat. Each client's tentative counter only
rises along its queue, so that loop is one stable sort of the waiting requests by
(counter + prompt charges ahead of it in its client's queue, arrival, client id), which is
how it is computed. The engine admits a prefix of that order, stopping at the first
request that does not fit, as the paper's loop does; the hooks then charge for real.

Engine differences from the artifact (S-LoRA): admission is tried every iteration rather
than every 10 decode steps, memory is not reserved for ``max_output_len`` (the engine
preempts instead), and no extra output token is charged at a finish.
Counters move with every token, so ``stable_between_events`` is False.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from baselines.client_queues import ClientQueues
from envs.live_request import Request
from envs.policy import Policy, SchedulerView, register_policy


class VTC(Policy):
    """Fair sharing by least service received; ``lift=False`` gives LCF."""

    name = "vtc"
    stable_between_events = False

    def __init__(self, w_p: float = 1.0, w_q: float = 2.0, weights: Mapping[int, float] | None = None,
                 lift: bool = True):
        for label, v in (("w_p", w_p), ("w_q", w_q)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 <= v < math.inf):
                raise ValueError(f"{type(self).__name__}: {label} must be a finite number >= 0, got {v!r}")
        self.w_p = float(w_p)
        self.w_q = float(w_q)
        self.weights: dict[int, float] = {}
        for client, f in (weights or {}).items():
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not (0.0 < f < math.inf):
                raise ValueError(f"{type(self).__name__}: weight of client {client!r} must be a finite "
                                 f"number > 0, got {f!r}")
            self.weights[client] = float(f)
        self.lift = lift
        self.counters: dict[int, float] = {}
        self.last_left: int | None = None
        self._books = ClientQueues()
        self._merged = None

    def reset(self, view: SchedulerView) -> None:
        super().reset(view)
        self.counters = {}
        self.last_left = None
        self._books = ClientQueues()
        self._merged = None

    def counter(self, client: int) -> float:
        return self.counters.get(client, 0.0)

    def _weight(self, client: int) -> float:
        return self.weights.get(client, 1.0)

    # ------------------------------------------------------------------ hooks
    def on_arrival(self, req: Request) -> None:
        u = req.client_id
        books = self._books
        if u not in books.queues and self.lift:
            c = self.counters
            others = [c.get(v, 0.0) for v in books.backlogged()]
            if others:
                floor = min(others)
            elif self.last_left is not None:
                floor = c.get(self.last_left, 0.0)
            else:
                floor = None
            if floor is not None and floor > c.get(u, 0.0):
                c[u] = floor
        books.add(req)
        self._merged = None

    def on_admit(self, req: Request, cached_tokens: int) -> None:
        if not self._books.admit(req):
            return  # re-admission after a recompute: charged already
        self._merged = None
        u = req.client_id
        if not self._books.queues:
            self.last_left = u
        self.counters[u] = self.counters.get(u, 0.0) + self.w_p * req.prompt_len / self._weight(u)

    def on_tokens(self, req: Request, n: int) -> None:
        u = req.client_id
        self.counters[u] = self.counters.get(u, 0.0) + self.w_q * n / self._weight(u)

    def on_finish(self, req: Request) -> None:
        self._books.finish(req)

    # ------------------------------------------------------------------ order
    def _merged_queues(self) -> tuple[list[Request], np.ndarray, np.ndarray, np.ndarray, list[int]]:
        """Every waiting request, client by client in queue order, with its charge offset (the
        tentative charges of the requests ahead of it in its client's queue), its arrival time
        and its client's position; rebuilt only after the queues changed."""
        merged = self._merged
        if merged is None:
            reqs: list[Request] = []
            offsets: list[float] = []
            clients = list(self._books.queues)
            pos: list[int] = []
            w_p = self.w_p
            for i, (u, q) in enumerate(self._books.queues.items()):
                f = self._weight(u)
                acc = 0.0
                for r in q.values():
                    reqs.append(r)
                    offsets.append(acc)
                    acc += w_p * r.prompt_len / f
                pos.extend([i] * len(q))
            merged = (reqs, np.array(offsets), np.array([r.arrival_time for r in reqs]),
                      np.array(pos, dtype=np.intp), clients)
            self._merged = merged
        return merged

    def ordered_requests(self, view: SchedulerView) -> list[Request]:
        books = self._books
        out = books.started_in_arrival_order(view)
        if not books.queues:
            return out
        reqs, offsets, arrivals, pos, clients = self._merged_queues()
        counters = self.counters
        base = np.array([counters.get(u, 0.0) for u in clients])
        keys = base[pos] + offsets
        # VTC's loop pops the least tentative counter; ties: earlier arrival, then smaller client id
        idx = np.lexsort((np.asarray(clients)[pos], arrivals, keys))
        out.extend([reqs[i] for i in idx.tolist()])
        return out

    def order(self, view: SchedulerView) -> list[int]:
        return [r.request_id for r in self.ordered_requests(view)]


class LCF(VTC):
    """Least Counter First: VTC without the counter lift (the paper's ablation)."""

    name = "lcf"

    def __init__(self, w_p: float = 1.0, w_q: float = 2.0, weights: Mapping[int, float] | None = None):
        super().__init__(w_p, w_q, weights, lift=False)


register_policy("vtc", VTC, "Virtual Token Counter: least-served client first, with the counter lift (Sheng et al. OSDI'24)")
register_policy("lcf", LCF, "Least Counter First: VTC without the counter lift (VTC's ablation)")
