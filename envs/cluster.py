"""Several serving replicas on one clock, with a router in front: the data-parallel setting of D²LPM.

Why: a scheduler for data-parallel serving (D²LPM, ``../shared/papers.md`` §3.3; the
RR+LPM and least-loaded baselines of §3.4) decides twice — which replica gets a request,
then in what order each replica serves its queue — and the first decision is only
meaningful if each replica keeps its own KV memory and prefix cache. ``ClusterEngine``
holds N ``ServingEngine``s, each with its own executor, KV memory, prefix cache and
policy, and a ``Router`` (``envs.routers``) that places each request when it arrives.

Time. All replicas advance on one simulated clock by always handling the earliest event:
either the next arrival (routed at its arrival time) or the next iteration of the replica
whose clock is earliest. A replica's multi-iteration decode runs are cut at the next
arrival (``ServingEngine.step(until_time=...)``), so when a request is routed every busy
replica has run to the end of the iteration in progress at that time: the router sees
each replica as of that iteration's end, at most one iteration (milliseconds) late, as a
dispatcher that reads queue lengths reported at iteration boundaries would. A routed
request reaches the replica's engine at its arrival time (``ServingEngine.add_arrival``)
and is admitted at the replica's next iteration boundary, exactly as a plain engine
admits an arrival that lands mid-iteration.

Dependent requests (a conversation's next turn, an agent's next call) are held by the
cluster, not by a replica: when the parent finishes on any replica, the child is released
``think_time_s`` later and routed then like any arrival, so a router can send it where the
history is cached, or elsewhere. A child whose parent was rejected is rejected too, with
its record kept by the cluster.

Results. ``result()`` merges the replicas: every request's record comes from the replica
that served it, inter-token gaps are pooled, engine counters summed (so ``iterations`` is
the total over replicas), and the run ends at the latest replica clock; one
``RunRecord``, so ``envs.metrics.compute_metrics`` reads a cluster run like any other.
Each replica's own ``RunRecord`` and the request-to-replica assignment are kept beside it.
With one replica the records equal a plain ``ServingEngine``'s (a test checks it).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from envs.engine import ServingEngine
from envs.engine_config import EngineConfig
from envs.live_request import Request
from envs.policy import Policy
from envs.records import EngineCounters, ItlLog, RequestRecord, RunRecord
from envs.request import RequestSpec
from envs.routers import ReplicaLoad, ReplicaView, Router


@dataclass(frozen=True, slots=True)
class ClusterResult:
    """A cluster run: the merged record, each replica's own record, and who served what."""

    merged: RunRecord
    replicas: tuple[RunRecord, ...]
    assignment: dict[int, int]            # request id -> replica index (requests that reached a replica)
    routed_per_replica: tuple[int, ...]


@dataclass(slots=True)
class ClusterStepInfo:
    """What one call to ``ClusterEngine.step`` did: routed one arrival, or stepped one replica."""

    routed: int = 0                       # requests routed (0 or 1)
    replica: int | None = None            # the replica stepped, if any
    finished: int = 0
    rejected: int = 0
    num_iterations: int = 0


class ClusterEngine:
    """N serving replicas on one clock behind a router; see the module docstring for the timing rules."""

    def __init__(self, engines: Sequence[ServingEngine], router: Router):
        if not engines:
            raise ValueError("a cluster needs at least one replica")
        if len({id(e) for e in engines}) != len(engines):
            raise ValueError("each replica needs its own ServingEngine")
        self.engines: tuple[ServingEngine, ...] = tuple(engines)
        self.router = router
        self.loads = [ReplicaLoad() for _ in self.engines]
        self.views = tuple(ReplicaView(i, e, load) for i, (e, load) in enumerate(zip(self.engines, self.loads)))
        self._reset_state()

    @classmethod
    def build(cls, num_replicas: int, make_executor: Callable[[], object],
              make_policy: Callable[[int], Policy], router: Router,
              config: EngineConfig | None = None, validate_orders: bool = True) -> "ClusterEngine":
        """``num_replicas`` engines, each with a fresh executor and ``make_policy(replica_index)``."""
        if isinstance(num_replicas, bool) or int(num_replicas) != num_replicas or num_replicas < 1:
            raise ValueError(f"num_replicas must be an integer >= 1, got {num_replicas!r}")
        engines = [ServingEngine(make_executor(), make_policy(i), config, validate_orders=validate_orders)
                   for i in range(int(num_replicas))]
        return cls(engines, router)

    @property
    def num_replicas(self) -> int:
        return len(self.engines)

    # ------------------------------------------------------------------ setup
    def _reset_state(self) -> None:
        self._pending: list[tuple[float, int, RequestSpec]] = []   # (time, id, spec) to route
        self._children: dict[int, list[RequestSpec]] = {}
        self.assignment: dict[int, int] = {}
        self._seen = [0] * len(self.engines)      # completed records already collected, per replica
        self.cluster_rejected: list[RequestRecord] = []
        self._num_specs = 0
        self._num_done = 0
        self._num_finished = 0
        self.wall_time_s = 0.0

    def load(self, specs: Sequence[RequestSpec]) -> None:
        """Start a run of ``specs`` from time 0: empty replicas, reset policies and router."""
        ids: set[int] = set()
        for s in specs:
            if s.request_id in ids:
                raise ValueError(f"workload lists request id {s.request_id} twice")
            ids.add(s.request_id)
        self._reset_state()
        for load in self.loads:
            load.num_routed = load.num_outstanding = load.outstanding_prompt_tokens = 0
        roots = []
        for s in specs:
            if s.parent_id is None:
                roots.append((s.arrival_time, s.request_id, s))
            elif s.parent_id not in ids:
                raise ValueError(f"request {s.request_id}: parent {s.parent_id} is not in the workload")
            else:
                self._children.setdefault(s.parent_id, []).append(s)
        heapq.heapify(roots)
        self._pending = roots
        self._num_specs = len(specs)
        for eng in self.engines:
            eng.load([])
        self.router.reset(self.views)

    # ------------------------------------------------------------------ state
    @property
    def done(self) -> bool:
        return self._num_done == self._num_specs

    @property
    def num_finished(self) -> int:
        return self._num_finished

    @property
    def clock(self) -> float:
        """The latest replica clock."""
        return max(e.clock for e in self.engines)

    def next_arrival_time(self) -> float:
        heap = self._pending
        return heap[0][0] if heap else math.inf

    def _event_time(self, eng: ServingEngine) -> float:
        """When the replica next has something to do: now if it has live requests, else its next arrival."""
        if eng.live:
            return eng.clock
        return max(eng.next_arrival_time(), eng.clock)  # a request routed mid-iteration is due at once

    # ------------------------------------------------------------------ stepping
    def step(self) -> ClusterStepInfo:
        """Handle the earliest event: route the next arrival (ties go to the arrival, so a replica's next
        iteration sees every request that arrived by its start) or step the earliest replica."""
        info = ClusterStepInfo()
        t_arrival = self.next_arrival_time()
        best, t_best = -1, math.inf
        for i, eng in enumerate(self.engines):
            t = self._event_time(eng)
            if t < t_best:
                best, t_best = i, t
        if t_arrival <= t_best:
            if t_arrival == math.inf:
                return info
            at, _, spec = heapq.heappop(self._pending)
            self._route(spec, at)
            info.routed = 1
            return info
        eng = self.engines[best]
        step = eng.step(until_time=None if t_arrival == math.inf else t_arrival)
        info.replica = best
        info.num_iterations = step.num_iterations
        self._collect(best, info)
        return info

    def _route(self, spec: RequestSpec, at: float) -> None:
        i = self.router.route(spec, self.views, at)
        if isinstance(i, bool) or not isinstance(i, int) or not (0 <= i < len(self.engines)):
            raise ValueError(f"router {getattr(self.router, 'name', type(self.router).__name__)!r} chose "
                             f"replica {i!r} for request {spec.request_id}; the cluster has replicas "
                             f"0..{len(self.engines) - 1}")
        load = self.loads[i]
        load.num_routed += 1
        load.num_outstanding += 1
        load.outstanding_prompt_tokens += spec.prompt_len
        self.assignment[spec.request_id] = i
        self.engines[i].add_arrival(spec, at)

    def _collect(self, i: int, info: ClusterStepInfo) -> None:
        """Book the requests replica ``i`` finished or rejected in its last step; release their children."""
        eng = self.engines[i]
        done = eng.completed
        start = self._seen[i]
        if start == len(done):
            return
        self._seen[i] = len(done)
        load = self.loads[i]
        router = self.router
        for rec in done[start:]:
            load.num_outstanding -= 1
            load.outstanding_prompt_tokens -= rec.prompt_len
            self._num_done += 1
            router.on_finish(rec, i)
            if rec.rejected_reason is not None:
                info.rejected += 1
                self._reject_children(rec.request_id, eng.clock)
            else:
                info.finished += 1
                self._num_finished += 1
                for child in self._children.pop(rec.request_id, ()):
                    at = max(child.arrival_time, rec.finish_time + child.think_time_s)
                    heapq.heappush(self._pending, (at, child.request_id, child))

    def _reject_children(self, parent_id: int, now: float) -> None:
        for child in self._children.pop(parent_id, ()):
            req = Request(child, now)
            req.record.rejected_reason = f"parent request {parent_id} was rejected"
            self.cluster_rejected.append(req.record)
            self._num_done += 1
            self._reject_children(child.request_id, now)

    # ------------------------------------------------------------------ whole runs
    def run(self, progress: Callable[[int, int], None] | None = None,
            stop_after_finished: int | None = None) -> ClusterResult:
        """Handle events until every request finished or was rejected (or ``stop_after_finished``
        requests finished); ``progress(done, total)`` after each replica step."""
        if stop_after_finished is not None and stop_after_finished < 1:
            raise ValueError(f"stop_after_finished must be >= 1, got {stop_after_finished}")
        t_start = time.perf_counter()
        total = self._num_specs
        while not self.done:
            info = self.step()
            if info.replica is None and not info.routed:
                raise RuntimeError(f"cluster has {total - self._num_done} requests left but no event to handle")
            if progress is not None and info.replica is not None:
                progress(self._num_done, total)
            if stop_after_finished is not None and self._num_finished >= stop_after_finished:
                break
        self.wall_time_s += time.perf_counter() - t_start
        return self.result()

    def result(self) -> ClusterResult:
        replica_records = tuple(e.result() for e in self.engines)
        records = [rec for rr in replica_records for rec in rr.requests] + list(self.cluster_rejected)
        records.sort(key=lambda r: r.request_id)
        itl = ItlLog()
        counters = EngineCounters()
        for rr in replica_records:
            itl.samples.extend(rr.itl.samples)
            itl.runs.extend(rr.itl.runs)
            for f in dataclasses.fields(EngineCounters):
                setattr(counters, f.name, getattr(counters, f.name) + getattr(rr.counters, f.name))
        end = max(rr.end_time for rr in replica_records)
        merged = RunRecord(records, itl, counters, 0.0, end)
        return ClusterResult(merged, replica_records, dict(self.assignment),
                             tuple(load.num_routed for load in self.loads))

    def check_integrity(self) -> None:
        """Every replica's own checks, plus the cluster's load counters against the replicas."""
        for i, eng in enumerate(self.engines):
            eng.check_integrity()
            outstanding = self.loads[i].num_routed - len(eng.completed)
            if outstanding != self.loads[i].num_outstanding:
                raise AssertionError(f"replica {i}: {self.loads[i].num_outstanding} outstanding counted, "
                                     f"{outstanding} routed and not completed")
