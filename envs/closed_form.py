"""Closed-form decode runs on the engine's general path: how many identical iterations fit.

When the batch is decode-only, holds every running request and nothing can change it
before the next event (``ServingEngine._steady``), an executor that supports it runs
``k`` iterations in one step. ``run_length`` finds the largest ``k`` that stops at the
first of: a completion, the next arrival (or a caller's time limit), running out of KV
blocks, or a caller's iteration limit; with requests waiting, only the run's first step
may evict cached blocks. The decode group's fast path (``envs.group_step``) uses
``steps_to_reach`` too.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from envs.live_request import Request

if TYPE_CHECKING:
    from envs.engine import ServingEngine
    from envs.scheduler import ScheduledWork


def run_length(eng: "ServingEngine", work: "ScheduledWork", max_iterations: int | None,
               until_time: float | None) -> int:
    """How many identical decode iterations to run at once; grows the block tables to match."""
    reqs = work.decode_reqs
    k = min(r._target_output_len - r.num_output_tokens for r in reqs)
    if max_iterations is not None and max_iterations < k:
        k = max_iterations
    if k <= 1:
        return 1
    n = len(reqs)
    step = eng.executor.decode_step_affine(n)
    first = step.first(work.plan.decode_context_sum, work.plan.decode_context_max)
    inc = step.increment(n)
    deadline = eng.next_arrival_time()
    if until_time is not None and until_time < deadline:
        deadline = until_time
    if deadline != math.inf:
        k = min(k, steps_to_reach(first, inc, deadline - eng.clock))
        if k <= 1:
            return 1
    kv = eng.kv
    bs = kv.block_size
    extra = extra_blocks(reqs, k, bs)
    if extra:
        # With requests waiting, evicting cached blocks (a waiting request's own prefix, say) can
        # let one in at the next iteration: then the run's later steps may not evict.
        avail = kv.num_available_blocks if len(eng.live) == n else kv.num_free_unreserved
        if extra > avail:
            lo, hi = 1, k  # the largest k whose extra blocks fit; k=1 is covered by the schedule
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if extra_blocks(reqs, mid, bs) <= avail:
                    lo = mid
                else:
                    hi = mid - 1
            k = lo
            if k <= 1:
                return 1
        grow_in_step_order(eng, reqs, k, bs)
    return k


def steps_to_reach(first: float, inc: float, span: float) -> int:
    """Smallest k >= 1 with sum_{i<k} (first + i*inc) >= span."""
    if span <= first:
        return 1
    if inc <= 0.0:
        k = max(1, math.ceil(span / first))
    else:
        # inc/2 k^2 + (first - inc/2) k - span >= 0
        p = first - inc / 2
        k = max(1, math.ceil((-p + math.sqrt(p * p + 2 * inc * span)) / inc))
    while k > 1 and (k - 1) * first + inc * ((k - 1) * (k - 2) / 2) >= span:
        k -= 1
    while k * first + inc * (k * (k - 1) / 2) < span:
        k += 1
    return k


def grow_in_step_order(eng: "ServingEngine", reqs: list[Request], k: int, bs: int) -> None:
    """Give the run its blocks in the order stepping would: step by step, batch order within a step.

    Same order, same block ids, same groups: swap copies and eviction then match stepping exactly.
    With lazy block ids only the counts matter, and whole-leaf LRU eviction frees the same
    leaves whatever the order, so each request grows once.
    """
    from envs.engine import EngineStallError  # the engine imports this module

    kv = eng.kv
    if kv.lazy_block_ids:
        for r in reqs:
            if not kv.grow(r.kv, r.num_computed_tokens + k):
                raise EngineStallError(f"request {r.request_id}: closed-form run of {k} steps ran out of blocks")
        return
    needs: list[tuple[int, int, Request]] = []
    for pos, r in enumerate(reqs):
        covered = len(r.kv.block_table) * bs     # tokens the table holds
        # step j (0-based) writes position computed + j; it needs a block when that reaches `covered`
        j = covered - r.num_computed_tokens
        while j < k:
            needs.append((j, pos, r))
            j += bs
    needs.sort(key=lambda e: (e[0], e[1]))
    for j, _, r in needs:
        if not kv.grow(r.kv, r.num_computed_tokens + j + 1):
            raise EngineStallError(
                f"request {r.request_id}: closed-form run of {k} steps ran out of blocks at step {j}")


def extra_blocks(reqs: list[Request], k: int, bs: int) -> int:
    """Blocks a k-step run needs beyond the tables (which the schedule made cover computed + 1)."""
    extra = 0
    for r in reqs:
        end = r.num_computed_tokens + k
        have = (len(r.kv.block_table) + r.kv.pending) * bs
        if end > have:
            extra += -(-(end - have) // bs)
    return extra
