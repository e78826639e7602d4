"""The engine's fast path: a step of the decode group, with at most one request being prefilled.

It applies when the batch the scheduler would build is known without walking the
policy's order: every running request decodes (they form a ``DecodeGroup``) and at most
one other live request (the "guest": just arrived, or part-way through its prefill)
takes a prefill chunk from the budget the decodes leave, under a decode-first mixed
batching rule with chunked prefill (Sarathi), with KV memory to spare so that nobody is
preempted. Then any order gives the same batch; the step does exactly what
``BatchScheduler`` would, in the same order (the group's blocks first, then the guest's
prefix-cache match, then its blocks), so results equal the general path's. Anything
else returns False and the engine takes the general path.

Only with lazy block ids (so the order of block reservations changes nothing) and for
policies whose order moves only at events (so not asking them loses nothing).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from envs.decode_group import DecodeGroup
from envs.live_request import Request, RequestState
from gpu_backend.plan import BatchPlan, PrefillChunk

if TYPE_CHECKING:
    from envs.engine import ServingEngine, StepInfo

_WAITING = RequestState.WAITING
_RUNNING = RequestState.RUNNING


def _find_guest(eng: "ServingEngine", group: DecodeGroup) -> tuple[bool, Request | None]:
    """(possible, guest): the live request outside the group, if exactly one and it can be a guest."""
    live = eng.live
    extra = len(live) - group.size
    if extra == 0:
        return True, None
    if extra > 1:
        return False, None
    guest = eng._guest
    if guest is None or guest.request_id not in live:
        # the newest live request is the one outside a group formed from the older ones
        guest = live[next(reversed(live))]
        if guest.request_id in group.members:
            return False, None
    if guest.state is _WAITING and not (guest.kv is not None and guest.kv.block_table):
        return True, guest
    if guest.state is _RUNNING and guest is eng._guest:
        return True, guest
    return False, None


def group_step(eng: "ServingEngine", info: "StepInfo", max_iterations: int | None,
               until_time: float | None) -> bool:
    cfg = eng.config
    kv = eng.kv
    group = eng._group
    formed = False
    if group is None:
        if len(eng.live) > eng.num_running + 1:
            return False  # more than one request waits: the policy must choose
        # the running requests that decode now form the group; one still in its prefill is the guest
        group = DecodeGroup(kv.block_size, eng.clock)
        prefilling = None
        for r in eng.live.values():
            if r.state is _RUNNING:
                if r.num_output_tokens and r.num_computed_tokens == r.num_tokens - 1:
                    group.join(r)
                elif prefilling is None:
                    prefilling = r
                else:
                    return False
        formed = True
        if prefilling is not None:
            eng._guest = prefilling
    ok, guest = _find_guest(eng, group)
    if ok and guest is not None and not (cfg.decode_first and cfg.mixed and cfg.chunking):
        ok = False
    n = group.size
    if ok and guest is not None and (n + 1 > cfg.max_num_seqs or n >= cfg.max_num_batched_tokens):
        ok = False
    if ok and (n > cfg.max_num_seqs or n > cfg.max_num_batched_tokens):
        ok = False
    if not ok or (n == 0 and guest is None):
        if not formed:
            eng.sync()
        eng._guest = None
        return False
    if guest is None:
        return _decode_run(eng, group, formed, max_iterations, until_time, info)
    bs = kv.block_size
    step_blocks = group.blocks_needed(1) if n else 0
    need = 0
    if guest.state is _RUNNING:
        seq = guest.kv
        remaining = guest.num_tokens - guest.num_computed_tokens
        tokens_left = cfg.max_num_batched_tokens - n
        need = -(-(guest.num_computed_tokens + min(remaining, tokens_left)) // bs) \
            - len(seq.block_table) - seq.pending
    if step_blocks + need > kv.num_available_blocks:
        # somebody would be preempted: the general path decides who
        if not formed:
            eng.sync()
        eng._guest = None
        return False
    eng._group = group
    # the decode pass: the group's blocks for one step
    if n:
        if step_blocks:
            kv.reserve(step_blocks)
        group.mark_reserved(1, step_blocks)
    chunks: list[PrefillChunk] = []
    if not _place_guest(eng, guest, n, chunks):
        # blocked for memory, as the prefill pass would find it: the decodes run on their own
        if n == 0:
            from envs.engine import EngineStallError
            raise EngineStallError(eng._stall_report())
        return _decode_run(eng, group, formed, max_iterations, until_time, info)
    plan = BatchPlan(prefills=chunks, num_decode=n, decode_context_sum=group.context_sum)
    result = eng.executor.execute(plan)
    _apply(eng, group, guest, chunks, 1, result.duration_s, result.duration_s, 0.0, info)
    return True


def _decode_run(eng: "ServingEngine", group: DecodeGroup, formed: bool, max_iterations: int | None,
                until_time: float | None, info: "StepInfo") -> bool:
    """As many decode steps of the group as fit before the next event; timed by the executor's
    affine step time (its multi-step contract)."""
    kv = eng.kv
    n = group.size
    k = group.steps_to_next_finish()
    if max_iterations is not None and max_iterations < k:
        k = max_iterations
    a, b = eng.executor.decode_step_affine(n)
    first = a + b * group.context_sum
    inc = b * n
    if k > 1:
        deadline = eng.next_arrival_time()
        if until_time is not None and until_time < deadline:
            deadline = until_time
        if deadline != math.inf:
            k = min(k, eng._steps_to_reach(first, inc, deadline - eng.clock))
    avail = kv.num_available_blocks
    need = group.blocks_needed(k)
    if need > avail:
        if group.blocks_needed(1) > avail:
            # somebody would be preempted: the general path decides who
            if not formed:
                eng.sync()
            eng._guest = None
            return False
        lo, hi = 1, k  # the largest k whose blocks fit
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if group.blocks_needed(mid) <= avail:
                lo = mid
            else:
                hi = mid - 1
        k = lo
        need = group.blocks_needed(k)
    eng._group = group
    if need:
        kv.reserve(need)
    group.mark_reserved(k, need)
    duration = first if k == 1 else k * first + inc * (k * (k - 1) / 2)
    _apply(eng, group, None, [], k, duration, first, inc, info)
    return True


def _place_guest(eng: "ServingEngine", guest: Request, n: int, chunks: list[PrefillChunk]) -> bool:
    """The prefill pass for the guest: prefix match, chunk, blocks; False (nothing kept) if blocked."""
    kv = eng.kv
    bs = kv.block_size
    seq = guest.kv
    cached = 0
    waiting = guest.state is _WAITING
    if waiting:
        if seq is None:
            seq = guest.kv = kv.new_seq(guest.request_id)
        if kv.enable_prefix_caching:
            cached = kv.match(seq, guest.block_keys((guest.num_tokens - 1) // bs, bs)) * bs
        guest.num_computed_tokens = cached
    start = guest.num_computed_tokens
    remaining = guest.num_tokens - start
    tokens_left = eng.config.max_num_batched_tokens - n
    chunk_n = remaining if remaining <= tokens_left else tokens_left
    if not kv.grow(seq, start + chunk_n):
        if not waiting:
            raise AssertionError(f"{guest!r}: its chunk did not fit after the check")
        kv.free(seq)
        guest.num_computed_tokens = 0
        eng._guest = None
        return False
    if waiting:
        guest.state = _RUNNING
        eng.num_running += 1
        guest.record.cached_tokens += cached
        c = eng.counters
        c.prompt_tokens_admitted += guest.num_tokens
        c.prompt_tokens_cached += cached
        eng.policy.on_admit(guest, cached)
    chunks.append(PrefillChunk(guest.request_id, start, chunk_n, seq.block_table, start + chunk_n == guest.num_tokens))
    eng._guest = guest
    return True


def _apply(eng: "ServingEngine", group: DecodeGroup, guest: Request | None, chunks: list[PrefillChunk],
           k: int, duration: float, d0: float, inc: float, info: "StepInfo") -> None:
    """``ServingEngine._apply`` for a group step: the group in bulk, the guest one by one.

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
    if n:
        itl = eng.itl
        itl.runs.append((cont_gap, 0.0, 1, n))
        if k > 1:
            itl.runs.append((d0 + inc, inc, k - 1, n))
    done = group.advance(k, end, last_gap if last_gap > cont_gap else cont_gap) if n else []
    finished = list(done)
    for req in done:
        eng._leave_group(req)
    if guest is not None:
        chunk = chunks[0]
        if chunk.samples:
            eng._guest = None
        if eng._apply_chunk(guest, chunk.num_tokens, chunk.samples, it, end):
            finished.append(guest)
        elif chunk.samples:
            group.join(guest)
    for req in finished:
        eng._finish(req, end)
    if not group.members and eng._guest is None:
        eng._group = None
    info.num_iterations += k
    info.duration_s += duration
    info.finished += len(finished)
