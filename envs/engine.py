"""The serving engine: arrivals in, iterations out, on any executor.

Each iteration the engine admits the requests that have arrived, asks the policy for an
order over the live requests, lets ``BatchScheduler`` build a ``BatchPlan`` within the
token budget, sequence cap and KV memory, hands the plan to the executor, and applies
the result: computed tokens advance, tokens are sampled, requests finish, the clock
moves by the iteration's duration, and every request's record is kept for the metrics.

When nothing can change the batch — a decode-only batch with every running request in
it, no arrival, completion or preemption before the next event, and a policy whose order
only moves at events — an executor that supports it (the simulator) runs ``k``
identical decode iterations in one closed-form step. ``k`` is the largest number that
stops at the first of: the next arrival, the first completion, running out of KV blocks,
or a caller's limit. The result equals stepping one iteration at a time.

On the simulator the running decoders are moreover kept as one ``DecodeGroup``
(``envs.group_step``): their counters advance together, so an iteration costs O(1) in
them, and the policy's order is walked only for the requests outside the group.
``sync()`` writes their true values back; the engine does it before anything else reads
the requests (the general path, ``result``, ``check_integrity``).
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from envs.closed_form import run_length
from envs.decode_group import DecodeGroup
from envs.group_step import group_step
from envs.pipelined_run import run_pipelined, supports_async
from envs.engine_config import EngineConfig
from envs.live_request import Request, RequestState
from envs.policy import Policy, SchedulerView, validate_order
from envs.records import EngineCounters, ItlLog, RunRecord
from envs.request import RequestSpec
from envs.scheduler import BatchScheduler, ScheduledWork
from gpu_backend.kv_manager import KVCacheManager
from gpu_backend.plan import Executor

_WAITING = RequestState.WAITING
_RUNNING = RequestState.RUNNING
_SWAPPED = RequestState.SWAPPED
_FINISHED = RequestState.FINISHED
_REJECTED = RequestState.REJECTED


# The loop allocates and drops many short-lived objects (plans, chunks, step records) that
# reference counting frees; Python's default young-generation pass every 700 allocations
# finds almost nothing and cost ~15% of a simulation loop. During ``run`` it runs every
# 20,000 (cycles are still collected); the caller's setting is restored afterwards.
_GC_YOUNG_THRESHOLD = 20_000


@contextlib.contextmanager
def _young_collections_every(allocations: int):
    before = gc.get_threshold()
    if before[0] and before[0] < allocations:   # 0 means the collector is off: leave it so
        gc.set_threshold(allocations, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


@dataclass(slots=True)
class Advanced:
    """What ``ServingEngine._advance`` learnt of an iteration before it ran, for its ``_stamp``."""

    iteration: int
    finished: list            # requests whose last token the iteration samples
    first_tokens: list        # per prefill chunk: it samples the request's first output token


class EngineStallError(RuntimeError):
    """Live requests exist but the engine could schedule nothing (a bug, reported with the state)."""


@dataclass(slots=True)
class StepInfo:
    """What one call to ``ServingEngine.step`` did."""

    num_iterations: int = 0
    duration_s: float = 0.0
    arrived: int = 0
    arrival_time_sum: float = 0.0   # sum of the arrival times of the requests admitted
    finished: int = 0
    finish_time_sum: float = 0.0    # sum of the finish times of the requests that finished
    preempted: int = 0
    rejected: int = 0

    @property
    def had_event(self) -> bool:
        return bool(self.arrived or self.finished or self.preempted or self.rejected)


class ServingEngine:
    """Serves one workload (a list of ``RequestSpec``) under one policy on one executor."""

    def __init__(self, executor: Executor, policy: Policy, config: EngineConfig | None = None,
                 validate_orders: bool = True):
        self.executor = executor
        self.policy = policy
        self.config = config or EngineConfig()
        self.validate_orders = validate_orders
        cap = executor.capacity()
        cfg = self.config
        self.capacity = cap
        self.kv = KVCacheManager(
            cfg.num_gpu_blocks if cfg.num_gpu_blocks is not None else cap.num_gpu_blocks,
            cfg.num_host_blocks if cfg.num_host_blocks is not None else cap.num_host_blocks,
            cap.block_size, enable_prefix_caching=cfg.enable_prefix_caching,
            keep_host_copies=cfg.keep_host_copies,
            lazy_block_ids=(cfg.lazy_block_ids if cfg.lazy_block_ids is not None
                            else not getattr(executor, "needs_block_ids", True)))
        self.bytes_per_block = cap.bytes_per_block
        self.multi_step = cfg.multi_step and executor.supports_multi_step
        if cfg.async_scheduling and not supports_async(executor):
            raise ValueError(f"async_scheduling needs an executor that launches iterations and collects them later "
                             f"(launch/collect: TorchExecutor); {type(executor).__name__} runs them one at a time")
        self.view = SchedulerView(self, oracle=getattr(policy, "oracle", False))
        self._reset_state()

    # ------------------------------------------------------------------ setup
    def _reset_state(self) -> None:
        self.clock = 0.0
        self.iteration = 0
        self.live: dict[int, Request] = {}
        self.num_running = 0
        self.num_swapped = 0
        self.counters = EngineCounters()
        self.itl = ItlLog()
        self.records: list = []
        self.completed: list = []   # records of finished and rejected requests, in completion order
        self.rejections: list[tuple[int, str]] = []
        self._roots: list[RequestSpec] = []
        self._root_pos = 0
        self._next_root_time = math.inf
        self._released: list[tuple[float, int, RequestSpec]] = []   # children whose parent finished
        self._children: dict[int, list[RequestSpec]] = {}
        self._num_specs = 0
        self._num_done = 0
        self.scheduler = BatchScheduler(self.config, self.kv, self.counters, self._on_preempt,
                                        fill_token_ids=self.executor.needs_token_ids,
                                        fill_decode_lists=getattr(self.executor, "needs_block_ids", True))
        self.scheduler.bytes_per_block = self.bytes_per_block
        self.wall_time_s = 0.0
        self._on_tokens = None
        self._fast_path_ok = False
        self._group: DecodeGroup | None = None

    def load(self, specs: Sequence[RequestSpec]) -> None:
        """Start a run of ``specs`` from time 0 with empty KV memory and a reset policy."""
        self.sync()
        self.kv.reset()
        self._reset_state()
        ids = set()
        roots = []
        for s in specs:
            if s.request_id in ids:
                raise ValueError(f"workload lists request id {s.request_id} twice")
            ids.add(s.request_id)
        for s in specs:
            if s.parent_id is None:
                roots.append(s)
            elif s.parent_id not in ids:
                raise ValueError(f"request {s.request_id}: parent {s.parent_id} is not in the workload")
            else:
                self._children.setdefault(s.parent_id, []).append(s)
        roots.sort(key=lambda s: (s.arrival_time, s.request_id))
        self._roots = roots
        self._root_pos = -1
        self._advance_roots()
        self._num_specs = len(specs)
        self.policy.reset(self.view)
        # skip calling hooks a policy does not override (the decode loop runs them per request)
        self._on_tokens = self.policy.on_tokens if type(self.policy).on_tokens is not Policy.on_tokens else None
        self._fast_path_ok = (self.multi_step and self.kv.lazy_block_ids and self._on_tokens is None
                              and getattr(self.policy, "stable_between_events", False))

    # ------------------------------------------------------------------ state
    @property
    def done(self) -> bool:
        return self._num_done == self._num_specs

    def next_arrival_time(self) -> float:
        t = self._next_root_time
        if self._released and self._released[0][0] < t:
            t = self._released[0][0]
        return t

    def add_arrival(self, spec: RequestSpec, at: float) -> None:
        """Hand the engine one more request after ``load``, arriving at ``at`` (a cluster's router does
        this when it routes a request here). It is admitted like a released child: at the first iteration
        boundary at or after ``at``. The caller keeps ids unique and handles ``spec.parent_id`` itself."""
        heapq.heappush(self._released, (at, spec.request_id, spec))
        self._num_specs += 1

    def _advance_roots(self) -> None:
        self._root_pos += 1
        self._next_root_time = self._roots[self._root_pos].arrival_time \
            if self._root_pos < len(self._roots) else math.inf

    # ------------------------------------------------------------------ arrivals
    def _admit_arrivals(self, info: StepInfo) -> None:
        now = self.clock
        released = self._released
        while True:
            t_root = self._next_root_time
            if released and released[0][0] < t_root:
                if released[0][0] > now:
                    return
                t, _, spec = heapq.heappop(released)
                self._arrive(spec, t, info)
            elif t_root <= now:
                spec = self._roots[self._root_pos]
                self._advance_roots()
                self._arrive(spec, t_root, info)
            else:
                return

    def _arrive(self, spec: RequestSpec, t: float, info: StepInfo) -> None:
        req = Request(spec, t)
        self.records.append(req.record)
        reason = self._rejection_reason(req)
        if reason is not None:
            self._reject(req, reason, info)
            return
        self.live[req.request_id] = req
        info.arrived += 1
        info.arrival_time_sum += t
        self.policy.on_arrival(req)

    def _rejection_reason(self, req: Request) -> str | None:
        cap = self.capacity
        total = req.prompt_len + req._target_output_len
        if total > cap.max_model_len:
            return (f"prompt {req.prompt_len} + output {req._target_output_len} tokens exceed "
                    f"max_model_len {cap.max_model_len}")
        need = self.kv.blocks_for(total - 1)
        if need > self.kv.gpu.num_blocks:
            return f"needs {need} KV blocks, the GPU has {self.kv.gpu.num_blocks}"
        return None

    def _reject(self, req: Request, reason: str, info: StepInfo) -> None:
        req.state = _REJECTED
        req.record.rejected_reason = reason
        self.rejections.append((req.request_id, reason))
        self.completed.append(req.record)
        info.rejected += 1
        self._num_done += 1
        for child in self._children.pop(req.request_id, ()):
            child_req = Request(child, self.clock)
            self.records.append(child_req.record)
            self._reject(child_req, f"parent request {req.request_id} was rejected", info)

    # ------------------------------------------------------------------ stepping
    def step(self, max_iterations: int | None = None, until_time: float | None = None,
             chain: bool = False) -> StepInfo:
        """Run one iteration, or a closed-form decode run of several, or admit arrivals.

        Arrivals due by the end are admitted before returning, so the live set a caller sees
        is the one the next iteration schedules. A call that finds arrivals due at its start
        (the first call, or after idling until the next arrival) only admits them.

        ``max_iterations`` caps a multi-iteration run; ``until_time`` makes a run stop at
        the first iteration that ends at or after that time (as an arrival would).
        ``chain`` (no limit given) lets the decode-group fast path go on through completions,
        and from a prefill iteration into the decode run after it, while every live request is
        decoding and nothing arrives: for callers with nothing to decide until a request
        waits (``run``, an env deciding at events). ``StepInfo.finish_time_sum`` then tells
        when the requests finished inside the step.
        """
        chain = chain and max_iterations is None and until_time is None
        info = StepInfo()
        self._admit_arrivals(info)
        if not self.live:
            t = self.next_arrival_time()
            if t == math.inf:
                return info
            if until_time is not None and until_time < t:
                self.clock = max(self.clock, until_time)
                return info
            self.clock = t  # idle until the next arrival
            self._admit_arrivals(info)
        if info.arrived or info.rejected:
            return info  # let the caller see who arrived before anything is scheduled
        if self._fast_path_ok and group_step(self, info, max_iterations, until_time, chain):
            self._admit_arrivals(info)
            return info
        self.sync()
        work = self._schedule(info)
        k = 1
        if self.multi_step and self._steady(work):
            k = run_length(self, work, max_iterations, until_time)
            if k > 1:
                work.plan.num_steps = k
        result = self.executor.execute(work.plan)
        self._apply(work, result, info)
        self._admit_arrivals(info)  # so a caller (the env) sees arrivals before the next schedule
        return info

    def _ordered(self) -> list[Request]:
        """The policy's order as request objects (validated when it gives ids)."""
        ordered = self.policy.ordered_requests(self.view)
        if ordered is None:
            order = self.policy.order(self.view)
            live = self.live
            if self.validate_orders and (len(order) != len(live) or live.keys() != set(order)):
                validate_order(order, live, getattr(self.policy, "name", type(self.policy).__name__))
            ordered = [live[rid] for rid in order]
        return ordered

    def _schedule(self, info: StepInfo, stall_ok: bool = False) -> ScheduledWork:
        """The policy's order turned into a batch by the scheduler (an empty one only when ``stall_ok``)."""
        ordered = self._ordered()
        work = self.scheduler.schedule(ordered, self.iteration, self.num_running + self.num_swapped)
        self._account_schedule(work, info)
        if work.num_scheduled == 0 and not work.plan.swap_out and not stall_ok:
            raise EngineStallError(self._stall_report())
        return work

    def sync(self) -> None:
        """Write the decode group's members' true values back (before anything reads requests)."""
        group = self._group
        if group is None:
            return
        for req in list(group.members.values()):
            self._leave_group(req)
        self._group = None

    def in_group(self, req: Request) -> bool:
        """True while ``req``'s counters are held by the decode group (stale on the request itself)."""
        return self._group is not None and req.request_id in self._group.members

    def output_tokens_of(self, req: Request) -> int:
        """``req``'s true output token count, without dissolving the decode group."""
        group = self._group
        if group is not None and req.request_id in group.members:
            return req.num_output_tokens + group.steps - group.joined[req.request_id][0]
        return req.num_output_tokens

    def _leave_group(self, req: Request) -> None:
        blocks, produced = self._group.materialize(req, self.iteration)
        if blocks:
            self.kv.attribute_reserved(req.kv, blocks)
        if produced and self._on_tokens is not None:
            self._on_tokens(req, produced)

    def _account_schedule(self, work: ScheduledWork, info: StepInfo) -> None:
        c = self.counters
        policy = self.policy
        for req, cached in work.admitted:
            self.num_running += 1
            rec = req.record
            rec.cached_tokens += cached
            c.prompt_tokens_admitted += req.num_tokens
            c.prompt_tokens_cached += cached
            policy.on_admit(req, cached)
        n_in = len(work.swapped_in)
        self.num_running += n_in
        self.num_swapped -= n_in
        info.preempted += len(work.preempted)

    def _on_preempt(self, req: Request) -> None:
        self.num_running -= 1
        if req.state is _SWAPPED:
            self.num_swapped += 1
        req.record.num_preemptions += 1
        self.policy.on_preempt(req)

    def _steady(self, work: ScheduledWork) -> bool:
        plan = work.plan
        if plan.prefills or plan.swap_in or plan.swap_out or work.preempted:
            return False
        if len(work.decode_reqs) != self.num_running:
            return False
        if len(self.live) != self.num_running and not self.policy.stable_between_events:
            return False
        return True

    # ------------------------------------------------------------------ results
    def _apply(self, work: ScheduledWork, result, info: StepInfo) -> None:
        self._stamp(work, result, self._advance(work), info)

    def _advance(self, work: ScheduledWork) -> "Advanced":
        """What ``work`` does to the requests' counts, known before it runs: computed and output tokens,
        the policy's token hook, which requests finish. The times and token values are ``_stamp``'s."""
        plan = work.plan
        k = plan.num_steps
        it = self.iteration
        self.iteration = it + k
        c = self.counters
        c.iterations += k
        c.output_tokens += k * len(work.decode_reqs)
        on_tokens = self._on_tokens
        finished: list[Request] = []
        last_it = it + k - 1
        for req in work.decode_reqs:
            req.last_scheduled_iteration = last_it
            req.num_computed_tokens += k
            req.num_output_tokens += k
            req.num_tokens += k
            if on_tokens is not None:
                on_tokens(req, k)
            if req.num_output_tokens >= req._target_output_len:
                finished.append(req)
        first_tokens = []
        for chunk, req in zip(plan.prefills, work.prefill_reqs):
            first = self._advance_chunk(req, chunk.num_tokens, chunk.samples, it)
            first_tokens.append(first)
            if chunk.samples and req.num_output_tokens >= req._target_output_len:
                finished.append(req)
        return Advanced(it, finished, first_tokens)

    def _stamp(self, work: ScheduledWork, result, adv: "Advanced", info: StepInfo) -> None:
        """``work``'s result on the clock and the records: token times and values, finished requests."""
        plan = work.plan
        k = plan.num_steps
        t0 = self.clock
        end = t0 + result.duration_s
        if k == 1:
            d0 = result.duration_s
            inc = 0.0
            first_end = end
        else:
            d0 = result.step_first_s
            inc = result.step_increment_s
            first_end = t0 + d0
        self.clock = end
        self.counters.busy_time_s += result.duration_s
        sampled = result.sampled_tokens
        itl = self.itl
        itl_samples = itl.samples
        # decodes: k tokens each, the first at first_end, the last at end. A request that also
        # got a token at the end of the previous iteration ("continuing") waited exactly the
        # first step; its gaps are logged in bulk.
        cont_gap = first_end - t0
        last_gap = d0 + inc * (k - 1) if k > 1 else cont_gap
        cont_max = last_gap if last_gap > cont_gap else cont_gap
        n_cont = 0
        for req in work.decode_reqs:
            rec = req.record
            if req.last_token_time == t0:
                n_cont += 1
                if cont_max > rec.max_itl_s:
                    rec.max_itl_s = cont_max
            else:
                gap = first_end - req.last_token_time
                itl_samples.append(gap)
                m = gap if gap > last_gap else last_gap
                if m > rec.max_itl_s:
                    rec.max_itl_s = m
            req.last_token_time = end
            if sampled is not None:
                req.output_token_ids.append(sampled[req.request_id])
        if n_cont:
            itl.runs.append((cont_gap, 0.0, 1, n_cont))
        if k > 1:
            itl.runs.append((d0 + inc, inc, k - 1, len(work.decode_reqs)))
        for chunk, req, first in zip(plan.prefills, work.prefill_reqs, adv.first_tokens):
            if chunk.samples:
                self._stamp_chunk(req, first, end, sampled[req.request_id] if sampled is not None else None)
        for req in adv.finished:
            self._finish(req, end)
        info.num_iterations += k
        info.duration_s += result.duration_s
        info.finished += len(adv.finished)
        info.finish_time_sum += end * len(adv.finished)

    def _advance_chunk(self, req: Request, num_tokens: int, samples: bool, iteration: int) -> bool:
        """A prefill chunk's counts; True when it samples the request's first output token."""
        req.last_scheduled_iteration = iteration
        req.num_computed_tokens += num_tokens
        req.record.prefill_tokens_computed += num_tokens
        if not samples:
            return False
        self.counters.output_tokens += 1
        req.num_output_tokens += 1
        req.num_tokens += 1
        if self._on_tokens is not None:
            self._on_tokens(req, 1)
        return req.num_output_tokens == 1

    def _stamp_chunk(self, req: Request, first: bool, end: float, token: int | None) -> None:
        """The time (and value) of the token a prefill chunk sampled, ending at ``end``."""
        rec = req.record
        if first:
            rec.first_token_time = end
        else:  # the end of a recompute: the gap since its last token includes the wait
            gap = end - req.last_token_time
            self.itl.samples.append(gap)
            if gap > rec.max_itl_s:
                rec.max_itl_s = gap
        req.last_token_time = end
        if token is not None:
            if req.output_token_ids is None:
                req.output_token_ids = []
            req.output_token_ids.append(token)

    def _apply_chunk(self, req: Request, num_tokens: int, samples: bool, iteration: int, end: float,
                     token: int | None = None) -> bool:
        """A prefill chunk of ``req`` ran in ``iteration``, ending at ``end``; True if the request is done."""
        first = self._advance_chunk(req, num_tokens, samples, iteration)
        if not samples:
            return False
        self._stamp_chunk(req, first, end, token)
        return req.num_output_tokens >= req._target_output_len

    def _finish(self, req: Request, t: float) -> None:
        if req.state is not _FINISHED:
            self._retire(req)
        self._close(req, t)

    def _retire(self, req: Request) -> None:
        """``req`` leaves the live set and the policy's books (the scheduler never sees it again)."""
        req.state = _FINISHED
        del self.live[req.request_id]
        self.num_running -= 1
        self.policy.on_finish(req)

    def _close(self, req: Request, t: float) -> None:
        """``req``'s record at its finish time ``t``; its KV leaves (into the prefix cache), its children arrive."""
        rec = req.record
        rec.finish_time = t
        rec.num_output_tokens = req.num_output_tokens
        self.completed.append(rec)
        kv = self.kv
        keys = None
        if kv.enable_prefix_caching:
            keys = req.block_keys(req.num_computed_tokens // kv.block_size, kv.block_size)
        kv.remove(req.kv, keys)
        req.kv = None
        req.drop_keys()
        self._num_done += 1
        for child in self._children.pop(req.request_id, ()):
            at = max(child.arrival_time, t + child.think_time_s)
            heapq.heappush(self._released, (at, child.request_id, child))

    # ------------------------------------------------------------------ whole runs
    def run(self, progress: Callable[[int, int], None] | None = None,
            max_iterations: int | None = None) -> RunRecord:
        """Step until every request finished or was rejected; ``progress(done, total)`` after each step."""
        t_start = time.perf_counter()
        total = self._num_specs
        if self.config.async_scheduling:
            with _young_collections_every(_GC_YOUNG_THRESHOLD):
                run_pipelined(self, progress, max_iterations)
            self.wall_time_s += time.perf_counter() - t_start
            return self.result()
        with _young_collections_every(_GC_YOUNG_THRESHOLD):
            while not self.done:
                self.step(chain=max_iterations is None)
                if progress is not None:
                    progress(self._num_done, total)
                if max_iterations is not None and self.iteration >= max_iterations:
                    break
        self.wall_time_s += time.perf_counter() - t_start
        return self.result()

    def result(self) -> RunRecord:
        self.sync()
        for req in self.live.values():
            req.record.num_output_tokens = req.num_output_tokens
        return RunRecord(self.records, self.itl, self.counters, 0.0, self.clock)

    def check_integrity(self) -> None:
        """KV bookkeeping plus the engine's own counts and every live request's blocks."""
        self.sync()
        self.kv.check_integrity()
        running = sum(1 for r in self.live.values() if r.state is _RUNNING)
        swapped = sum(1 for r in self.live.values() if r.state is _SWAPPED)
        if running != self.num_running or swapped != self.num_swapped:
            raise AssertionError(f"engine counts running={self.num_running} swapped={self.num_swapped}, "
                                 f"live requests say {running} and {swapped}")
        bs = self.kv.block_size
        for r in self.live.values():
            if r.state is _RUNNING:
                if len(r.kv.block_table) + r.kv.pending < -(-r.num_computed_tokens // bs):
                    raise AssertionError(f"{r!r}: {len(r.kv.block_table)} blocks cannot hold its computed tokens")
            elif r.state is _SWAPPED:
                if not r.kv.swapped:
                    raise AssertionError(f"{r!r} is swapped but its KV is not")
            elif r.state is _WAITING and r.num_computed_tokens:
                raise AssertionError(f"{r!r} is waiting with computed tokens")

    def _stall_report(self) -> str:
        states = {}
        for r in self.live.values():
            states[r.state.name] = states.get(r.state.name, 0) + 1
        return (f"engine stalled at t={self.clock:.6f}s iteration {self.iteration}: live {states}, "
                f"free GPU blocks {self.kv.gpu.num_free}, evictable {self.kv.cache.num_evictable_blocks}, "
                f"policy {getattr(self.policy, 'name', '?')}")
