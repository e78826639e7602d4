"""Turning a policy's order into one iteration's batch.

Two passes over the order, decodes then prefills (decode-first rules) or the other way
round (prefill-first rules); rules without mixing stop after the first pass that
scheduled anything. Each unit of work takes its tokens from the budget, a sequence slot
and KV blocks:

- a running request in decode: one token, maybe one new block;
- a running request in prefill: a chunk (as much of the rest as the budget allows, or
  all of it when chunked prefill is off);
- a waiting request: its longest cached prefix first (prefix-cache hits are tokens not
  computed), then a chunk;
- a swapped request: its blocks back from host memory, then its unit.

When blocks run out, cached blocks nobody uses are evicted (LRU), then running requests
of *lower* priority than the unit are preempted, lowest first (by swap, or by
recompute: the victim drops its KV, its computed full blocks stay in the prefix cache).
A running request that still cannot grow preempts itself; a waiting or swapped one
blocks the pass (strict priority, as vLLM).

Without chunked prefill a prompt longer than the budget runs alone in its iteration
(vLLM instead requires the budget to cover the longest prompt).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envs.engine_config import EngineConfig
from envs.live_request import Request, RequestState
from envs.records import EngineCounters
from gpu_backend.kv_manager import KVCacheManager
from gpu_backend.plan import PENDING_TOKEN, BatchPlan, PrefillChunk

_RUNNING = RequestState.RUNNING
_WAITING = RequestState.WAITING
_SWAPPED = RequestState.SWAPPED


@dataclass(slots=True)
class ScheduledWork:
    """A plan plus who is in it, so the engine can apply the result."""

    plan: BatchPlan
    prefill_reqs: list[Request] = field(default_factory=list)   # parallel to plan.prefills
    decode_reqs: list[Request] = field(default_factory=list)    # parallel to plan.decode_seq_ids
    admitted: list[tuple[Request, int]] = field(default_factory=list)  # (request, cached tokens)
    preempted: list[Request] = field(default_factory=list)
    swapped_in: list[Request] = field(default_factory=list)

    @property
    def num_scheduled(self) -> int:
        return len(self.prefill_reqs) + len(self.decode_reqs)


class BatchScheduler:
    """Builds ``ScheduledWork`` from an ordered list of live requests."""

    def __init__(self, config: EngineConfig, kv: KVCacheManager, counters: EngineCounters,
                 on_preempt, fill_token_ids: bool = False, fill_decode_lists: bool = False):
        self.config = config
        self.kv = kv
        self.counters = counters
        self.on_preempt = on_preempt          # engine callback: (request, mode) after a preemption
        self.fill_token_ids = fill_token_ids
        self.fill_decode_lists = fill_decode_lists or fill_token_ids
        self.pending_tokens_ok = False        # asynchronous scheduling: a decode input may still be sampled
        self.bytes_per_block = 0              # set by the engine (for swap byte counters)
        self._order: list[Request] = []
        self._tail = 0
        self._iteration = 0
        self._work: ScheduledWork | None = None
        self._members: dict | None = None   # a decode group's members: scheduled already, never victims
        self._victims_left = -1             # with a group: running non-members not yet placed (-1: unknown)
        self._victim_pos: list[int] = []    # with a group: positions in the order of the running non-members

    # ---------------------------------------------------------------- entry
    def _begin(self, ordered: list[Request], iteration: int) -> ScheduledWork:
        self._work = ScheduledWork(BatchPlan())
        self._order = ordered
        self._tail = len(ordered) - 1
        self._iteration = iteration
        return self._work

    def schedule(self, ordered: list[Request], iteration: int, num_resident: int) -> ScheduledWork:
        """``num_resident``: running + swapped requests (the decode pass stops once it has seen them all)."""
        cfg = self.config
        work = self._begin(ordered, iteration)
        budget = [cfg.max_num_batched_tokens, cfg.max_num_seqs]
        first, second = (self._decode_pass, self._prefill_pass) if cfg.decode_first else \
            (self._prefill_pass, self._decode_pass)
        first(budget, num_resident)
        if cfg.mixed or work.num_scheduled == 0:
            second(budget, num_resident)
        return work

    def schedule_prefills(self, ordered: list[Request], iteration: int, members: dict,
                          num_members: int, num_running: int) -> ScheduledWork:
        """The prefill pass alone, beside a decode group whose members take the first
        ``num_members`` tokens and sequence slots (``envs.group_step``)."""
        cfg = self.config
        work = self._begin(ordered, iteration)
        self._members = members
        self._victims_left = num_running - num_members
        self._victim_pos = []
        if self._victims_left > 0:
            # the few running requests outside the group, by position (usually near the front)
            want = self._victims_left
            for i, r in enumerate(ordered):
                if r.state is _RUNNING and r.request_id not in members:
                    self._victim_pos.append(i)
                    if len(self._victim_pos) == want:
                        break
        try:
            self._prefill_pass([cfg.max_num_batched_tokens - num_members, cfg.max_num_seqs - num_members], 0)
        finally:
            self._members = None
            self._victims_left = -1
        return work

    # ---------------------------------------------------------------- passes
    def _decode_pass(self, budget: list[int], num_resident: int) -> None:
        it = self._iteration
        seen = 0
        bs = self.kv.block_size
        plan = self._work.plan
        decode_reqs = self._work.decode_reqs
        context = 0
        longest = 0
        last_resident = -1
        tokens_left, seqs_left = budget
        for idx, req in enumerate(self._order):
            if seen >= num_resident or tokens_left <= 0 or seqs_left <= 0:
                break
            st = req.state
            if st is _WAITING:
                continue
            seen += 1
            last_resident = idx
            computed = req.num_computed_tokens
            if req.touched == it or req.num_output_tokens == 0 or computed != req.num_tokens - 1:
                continue
            if st is _SWAPPED:
                if not self._swap_in(idx, req, computed + 1):
                    break
            else:
                seq = req.kv
                if computed >= (len(seq.block_table) + seq.pending) * bs and not self._grow(idx, req, computed + 1):
                    self._preempt(req)
                    continue
            req.touched = it
            tokens_left -= 1
            seqs_left -= 1
            decode_reqs.append(req)
            context += computed + 1
            if computed >= longest:
                longest = computed + 1
        budget[0] = tokens_left
        budget[1] = seqs_left
        if seen >= num_resident and last_resident < self._tail:
            self._tail = last_resident  # no running request (no preemption victim) ranks lower
        plan.num_decode = len(decode_reqs)
        plan.decode_context_sum = context
        plan.decode_context_max = longest
        if self.fill_decode_lists:
            self.fill_decode_fields(plan, decode_reqs)

    def fill_decode_fields(self, plan: BatchPlan, decode_reqs: list[Request]) -> None:
        """The per-sequence decode lists an executor that runs the model needs."""
        plan.decode_seq_ids = [r.request_id for r in decode_reqs]
        plan.decode_positions = [r.num_computed_tokens for r in decode_reqs]
        plan.decode_block_tables = [r.kv.block_table for r in decode_reqs]
        if self.fill_token_ids:
            last = self._last_token_or_pending if self.pending_tokens_ok else self._last_token
            plan.decode_input_ids = [last(r) for r in decode_reqs]

    def _prefill_pass(self, budget: list[int], num_resident: int) -> None:
        it = self._iteration
        chunking = self.config.chunking
        kv = self.kv
        bs = kv.block_size
        work = self._work
        members = self._members
        for idx, req in enumerate(self._order):
            tokens_left, seqs_left = budget
            if tokens_left <= 0 or seqs_left <= 0:
                return
            if req.touched == it or (members is not None and req.request_id in members):
                continue
            if req.num_output_tokens > 0 and req.num_computed_tokens == req.num_tokens - 1:
                continue  # a decode unit
            st = req.state
            cached = 0
            if st is _WAITING:
                if req.kv is None:
                    req.kv = kv.new_seq(req.request_id)
                if kv.enable_prefix_caching:
                    keys = req.block_keys((req.num_tokens - 1) // bs, bs)
                    cached = kv.match(req.kv, keys) * bs
                req.num_computed_tokens = cached
            remaining = req.num_tokens - req.num_computed_tokens
            if remaining <= tokens_left:
                n = remaining
            elif chunking:
                n = tokens_left
            elif tokens_left == self.config.max_num_batched_tokens:
                n = remaining  # without chunking, a prompt longer than the budget runs alone
            else:
                if st is _WAITING:
                    kv.free(req.kv)
                    req.num_computed_tokens = 0
                return
            target = req.num_computed_tokens + n
            if st is _SWAPPED:
                if not self._swap_in(idx, req, target):
                    return
            elif not self._grow(idx, req, target):
                if st is _RUNNING:
                    if self._victims_left > 0:
                        self._victims_left -= 1
                    self._preempt(req)
                    continue
                kv.free(req.kv)
                req.num_computed_tokens = 0
                return
            if st is _WAITING:
                req.state = _RUNNING
                work.admitted.append((req, cached))
            elif self._victims_left > 0:
                self._victims_left -= 1  # a running request placed in the batch is no victim
            req.touched = it
            budget[0] = tokens_left - n if n < tokens_left else 0
            budget[1] = seqs_left - 1
            start = req.num_computed_tokens
            chunk = PrefillChunk(req.request_id, start, n, req.kv.block_table, start + n == req.num_tokens)
            if self.fill_token_ids:
                chunk.token_ids = self._token_ids(req, start, n)
            work.plan.prefills.append(chunk)
            work.prefill_reqs.append(req)

    # ---------------------------------------------------------------- memory
    def _grow(self, idx: int, req: Request, num_tokens: int) -> bool:
        kv = self.kv
        seq = req.kv
        while not kv.grow(seq, num_tokens):
            if not self._preempt_below(idx):
                return False
        return True

    def _swap_in(self, idx: int, req: Request, num_tokens: int) -> bool:
        kv = self.kv
        bs = kv.block_size
        keys = req.block_keys(req.num_computed_tokens // bs, bs) if kv.enable_prefix_caching else ()
        while True:
            moves = kv.swap_in(req.kv, keys, num_tokens)
            if moves is not None:
                break
            if not self._preempt_below(idx):
                return False
        req.state = _RUNNING
        self._work.plan.swap_in.extend(moves)
        self._work.swapped_in.append(req)
        c = self.counters
        c.swap_in_copies += len(moves)
        c.swap_in_bytes += sum(m.num_blocks for m in moves) * self.bytes_per_block
        return True

    def _preempt_below(self, idx: int) -> bool:
        """Preempt the lowest-priority running request ranked after ``idx`` that is not in the batch."""
        if self._victims_left == 0:
            return False
        if self._members is not None:
            return self._preempt_outside_group(idx)
        order = self._order
        it = self._iteration
        members = self._members
        t = self._tail
        while t > idx:
            v = order[t]
            t -= 1
            if v.state is _RUNNING and v.touched != it and (members is None or v.request_id not in members):
                self._tail = t
                if self._victims_left > 0:
                    self._victims_left -= 1
                self._preempt(v)
                return True
        self._tail = t
        return False

    def _preempt_outside_group(self, idx: int) -> bool:
        """``_preempt_below`` beside a decode group: the candidates are the listed running non-members."""
        order = self._order
        it = self._iteration
        positions = self._victim_pos
        while positions and positions[-1] > idx:
            v = order[positions.pop()]
            if v.state is _RUNNING and v.touched != it:
                self._victims_left -= 1
                self._preempt(v)
                return True
        return False

    def _preempt(self, req: Request) -> None:
        kv = self.kv
        bs = kv.block_size
        work = self._work
        c = self.counters
        if self.config.preemption_mode == "swap" and kv.host is not None:
            moves = kv.swap_out(req.kv, req.num_computed_tokens)
            if moves is not None:
                req.state = _SWAPPED
                work.plan.swap_out.extend(moves)
                c.preemptions_swap += 1
                c.swap_out_copies += len(moves)
                c.swap_out_bytes += sum(m.num_blocks for m in moves) * self.bytes_per_block
                req.touched = self._iteration  # not again in this iteration
                work.preempted.append(req)
                self.on_preempt(req)
                return
        keys = req.block_keys(req.num_computed_tokens // bs, bs) if kv.enable_prefix_caching else None
        kv.free(req.kv, keys)
        req.state = _WAITING
        req.num_computed_tokens = 0
        c.preemptions_recompute += 1
        req.touched = self._iteration
        work.preempted.append(req)
        self.on_preempt(req)

    @staticmethod
    def _last_token_or_pending(req: Request) -> int:
        """The input of ``req``'s next decode, or ``PENDING_TOKEN`` while the iteration sampling it runs."""
        i = req.num_computed_tokens - req.prompt_len
        if i >= 0 and (req.output_token_ids is None or i >= len(req.output_token_ids)):
            return PENDING_TOKEN
        return BatchScheduler._last_token(req)

    @staticmethod
    def _last_token(req: Request) -> int:
        pos = req.num_computed_tokens
        if pos < req.prompt_len:
            return int(req.spec.prompt.token_ids()[pos])
        return req.output_token_ids[pos - req.prompt_len]

    @staticmethod
    def _token_ids(req: Request, start: int, n: int) -> list[int]:
        prompt = req.spec.prompt.token_ids()
        end = start + n
        if end <= len(prompt):
            return prompt[start:end].tolist()
        out = list(req.output_token_ids or [])
        full = prompt.tolist() + out
        return full[start:end]
