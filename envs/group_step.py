"""The engine's fast path: the running decoders as one ``DecodeGroup``, the rest as usual.

Under a decode-first batching rule with mixing (Sarathi), the decode pass schedules
every running decoder before any prefill, whatever the policy's order — as long as the
token budget, the sequence cap and KV memory hold them all, so that nobody is
preempted. Then the decode pass is the group in O(1), and only the prefill pass walks
the policy's order, over the requests outside the group (waiting ones, ones part-way
through their prefill), exactly as ``BatchScheduler`` would. With no request outside
the group the policy is not even asked: the batch is the group's, for as many
iterations as fit before the next event.

Conditions (else the engine syncs the group and takes the general path): lazy block
ids (the order of block reservations then changes nothing), a policy whose order moves
only at events and that keeps no per-token counters (its hooks see a member's tokens
when it leaves the group), no swapped request, and room for every member's next block.
The blocks are reserved in the order the general path would take them (the group's
first, then each prefill's), so evictions, and so results, are the same.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from envs.closed_form import steps_to_reach
from envs.decode_group import DecodeGroup
from envs.live_request import Request, RequestState

if TYPE_CHECKING:
    from envs.engine import ServingEngine, StepInfo

_RUNNING = RequestState.RUNNING


def _form_group(eng: "ServingEngine") -> DecodeGroup:
    group = DecodeGroup(eng.kv.block_size, eng.clock)
    for r in eng.live.values():
        if r.state is _RUNNING and r.num_output_tokens and r.num_computed_tokens == r.num_tokens - 1:
            group.join(r)
    return group


def group_step(eng: "ServingEngine", info: "StepInfo", max_iterations: int | None,
               until_time: float | None, chain: bool = False) -> bool:
    """One engine step on the fast path; False (the group synced, nothing changed) to take the general path.

    With ``chain`` it goes on, as the next steps would, while nothing needs the caller: after a
    prefill iteration that leaves every live request in the group, and after a decode run that
    ended at a completion, the next decode run follows at once unless a request has arrived.
    """
    cfg = eng.config
    kv = eng.kv
    group = eng._group
    formed = group is None
    if formed:
        if eng.num_swapped or (len(eng.live) > eng.num_running and not (cfg.decode_first and cfg.mixed)):
            return False  # cheap refusals before the O(running) formation
        group = _form_group(eng)
    n = group.size
    outside = len(eng.live) - n
    if (eng.num_swapped or n > cfg.max_num_seqs or n > cfg.max_num_batched_tokens
            or (outside and not (cfg.decode_first and cfg.mixed))):
        return _give_up(eng, formed)
    if outside == 0:
        return _decode_run(eng, group, formed, max_iterations, until_time, info, chain)
    # the decode pass: every member's next block
    step_blocks = group.blocks_needed(1) if n else 0
    if step_blocks > kv.num_available_blocks:
        return _give_up(eng, formed)
    eng._group = group
    if n:
        if step_blocks:
            kv.reserve(step_blocks)
        group.mark_reserved(1, step_blocks)
    # the prefill pass, over the policy's order
    work = eng.scheduler.schedule_prefills(eng._ordered(), eng.iteration, group.members, n, eng.num_running)
    eng._account_schedule(work, info)
    if not work.prefill_reqs and not work.preempted and not work.plan.swap_out:
        if n == 0:
            from envs.engine import EngineStallError
            raise EngineStallError(eng._stall_report())
        # nothing to prefill (blocked, as the general path would find it): decodes only, and a
        # run of several only if the general path would call the batch steady (every running
        # request in it)
        if eng.num_running > n:
            max_iterations = 1
        return _decode_run(eng, group, False, max_iterations, until_time, info)
    plan = work.plan
    plan.num_decode = n
    plan.decode_context_sum = group.context_sum
    plan.decode_context_max = group.context_max
    result = eng.executor.execute(plan)
    _apply(eng, group, work, 1, result.duration_s, result.duration_s, 0.0, info)
    if chain and eng._group is group and len(eng.live) == group.size and eng.next_arrival_time() > eng.clock:
        _decode_run(eng, group, False, None, None, info, True)
    return True


def _give_up(eng: "ServingEngine", formed: bool) -> bool:
    if not formed:
        eng.sync()
    return False


def _decode_run(eng: "ServingEngine", group: DecodeGroup, formed: bool, max_iterations: int | None,
                until_time: float | None, info: "StepInfo", chain: bool = False) -> bool:
    """As many decode steps of the group as fit before the next event; timed by the executor's
    affine step time (its multi-step contract). With ``chain``, run after run through completions
    while the group is the whole live set and nothing has arrived."""
    if not _one_decode_run(eng, group, formed, max_iterations, until_time, info):
        return False
    if chain:
        live = eng.live
        while eng._group is group and len(live) == group.size and eng.next_arrival_time() > eng.clock:
            if not _one_decode_run(eng, group, False, None, None, info):
                break
    return True


def _one_decode_run(eng: "ServingEngine", group: DecodeGroup, formed: bool, max_iterations: int | None,
                    until_time: float | None, info: "StepInfo") -> bool:
    kv = eng.kv
    n = group.size
    k = group.steps_to_next_finish()
    if max_iterations is not None and max_iterations < k:
        k = max_iterations
    step = eng.executor.decode_step_affine(n)
    first = step.first(group.context_sum, group.context_max)
    inc = step.increment(n)
    if k > 1:
        deadline = eng.next_arrival_time()
        if until_time is not None and until_time < deadline:
            deadline = until_time
        if deadline != math.inf:
            k = min(k, steps_to_reach(first, inc, deadline - eng.clock))
    avail = kv.num_available_blocks
    need = group.blocks_needed(k)
    if need > avail:
        if group.blocks_needed(1) > avail:
            return _give_up(eng, formed)  # somebody would be preempted: the general path decides who
        k = _largest_run(group, k, avail)
        need = group.blocks_needed(k)
    if k > 1 and len(eng.live) > n and need > kv.num_free_unreserved:
        # Requests wait: evicting cached blocks (a waiting request's own prefix, say) can let one
        # in at the next iteration, so only the first step of a run may evict.
        k = _largest_run(group, k, kv.num_free_unreserved)
        need = group.blocks_needed(k)
    eng._group = group
    if need:
        kv.reserve(need)
    group.mark_reserved(k, need)
    duration = first if k == 1 else k * first + inc * (k * (k - 1) / 2)
    _apply(eng, group, None, k, duration, first, inc, info)
    return True


def _largest_run(group: DecodeGroup, k: int, blocks: int) -> int:
    """The largest run length in ``1 .. k`` whose new blocks fit in ``blocks`` (1 if none does)."""
    lo, hi = 1, k
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if group.blocks_needed(mid) <= blocks:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _apply(eng: "ServingEngine", group: DecodeGroup, work, k: int, duration: float, d0: float, inc: float,
           info: "StepInfo") -> None:
    """``ServingEngine._apply`` for a group step: the group in bulk, the prefills one by one.

    The ``k`` steps took ``duration`` in all, step i (0-based) ``d0 + i * inc``.
    """
    n = group.size
    t0 = eng.clock
    end = t0 + duration
    first_end = end if k == 1 else t0 + d0
    cont_gap = first_end - t0
    last_gap = d0 + inc * (k - 1) if k > 1 else cont_gap
    eng.clock = end
    it = eng.iteration
    eng.iteration = it + k
    c = eng.counters
    c.iterations += k
    c.busy_time_s += duration
    c.output_tokens += n * k
    finished: list[Request] = []
    if n:
        itl = eng.itl
        itl.runs.append((cont_gap, 0.0, 1, n))
        if k > 1:
            itl.runs.append((d0 + inc, inc, k - 1, n))
        finished = group.advance(k, end, last_gap if last_gap > cont_gap else cont_gap)
        for req in finished:
            eng._leave_group(req)
    if work is not None:
        for chunk, req in zip(work.plan.prefills, work.prefill_reqs):
            if eng._apply_chunk(req, chunk.num_tokens, chunk.samples, it, end):
                finished.append(req)
            elif chunk.samples:
                group.join(req)  # a new decoder
    for req in finished:
        eng._finish(req, end)
    if not group.members:
        eng._group = None
    info.num_iterations += k
    info.duration_s += duration
    info.finished += len(finished)
    info.finish_time_sum += end * len(finished)
