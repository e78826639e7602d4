"""Decoding requests advanced together without touching each one every iteration.

When every running request is decoding, each engine iteration adds one token to every
one of them: their counters all move by the same amount. ``DecodeGroup`` anchors each
member at the group step count when it joined and keeps one counter, ``steps``, so a
closed-form decode run costs O(1) instead of O(running requests):

- token counters: value when joined + (``steps`` − step joined);
- KV blocks: a member whose blocks held ``room`` tokens beyond its computed ones when it
  joined at step ``a`` needs a new block at steps ``a + room + 1 + j * block_size``; the
  blocks a run needs are counted per residue of that step modulo the block size (a
  handful of terms, whatever the number of members) and reserved in bulk (the engine
  runs with lazy block ids);
- completions: a heap of the step at which each member finishes;
- the longest context (what a decode step's time also depends on): a heap of each member's
  context minus ``steps`` when it joined;
- inter-token latencies: every member gets a token at the end of every run, so a run's
  gaps are logged once for the group; a member's longest gap is the longest run gap
  since it joined.

A member's true values are written back (``materialize``) when it finishes or when the
engine dissolves the group — before anything else reads the requests.
"""

from __future__ import annotations

import bisect
import heapq

from envs.live_request import Request


class DecodeGroup:
    __slots__ = ("block_size", "members", "joined", "active", "not_yet", "finish_heap", "steps",
                 "covered", "context_sum", "reserved", "gap_log", "last_token_time", "context_keys", "context_heap")

    def __init__(self, block_size: int, now: float):
        self.block_size = block_size
        self.members: dict[int, Request] = {}
        self.joined: dict[int, tuple[int, int, int]] = {}   # id -> (step joined, a + room, gap_log index)
        self.active: dict[int, int] = {}     # residue (a + room + 1) mod block_size -> members whose room is used up
        self.not_yet: list[tuple[int, int]] = []   # sorted (a + room, id) of members with room left
        self.finish_heap: list[tuple[int, int]] = []         # (step it finishes at, id)
        self.steps = 0
        self.covered = 0            # blocks are reserved for every member up to this step
        self.context_sum = 0        # KV tokens the group's next decode step reads
        self.context_keys: dict[int, int] = {}       # id -> its context minus the group's steps
        self.context_heap: list[tuple[int, int]] = []   # (-key, id), stale entries dropped when met
        self.reserved = 0           # blocks reserved for members, not yet attributed to them
        self.gap_log: list[float] = []   # the longest inter-token gap of each run
        self.last_token_time = now

    @property
    def size(self) -> int:
        return len(self.members)

    def join(self, req: Request) -> None:
        """Add a running, decoding request (its counters are true now)."""
        seq = req.kv
        s = self.steps
        room = (len(seq.block_table) + seq.pending) * self.block_size - req.num_computed_tokens
        key = s + room
        rid = req.request_id
        self.members[rid] = req
        self.joined[rid] = (s, key, len(self.gap_log))
        bisect.insort(self.not_yet, (key, rid))
        heapq.heappush(self.finish_heap, (s + req._target_output_len - req.num_output_tokens, rid))
        self.context_sum += req.num_computed_tokens + 1
        key = req.num_computed_tokens + 1 - s
        self.context_keys[rid] = key
        heapq.heappush(self.context_heap, (-key, rid))

    @property
    def context_max(self) -> int:
        """The longest context the group's next decode step reads (0 for an empty group)."""
        heap = self.context_heap
        keys = self.context_keys
        while heap:
            neg, rid = heap[0]
            if keys.get(rid) == -neg:
                return self.steps - neg
            heapq.heappop(heap)
        return 0

    def steps_to_next_finish(self) -> int:
        return self.finish_heap[0][0] - self.steps

    def _activate(self) -> None:
        """Members whose first new block falls at or before ``covered`` count by residue from now on."""
        pending = self.not_yet
        covered = self.covered
        if not pending or pending[0][0] >= covered:
            return
        cut = bisect.bisect_left(pending, (covered, -1))
        joined = self.joined
        bs = self.block_size
        active = self.active
        for key, rid in pending[:cut]:
            if joined.get(rid, (0, -1))[1] == key:
                r = (key + 1) % bs
                active[r] = active.get(r, 0) + 1
        del pending[:cut]

    def blocks_needed(self, k: int) -> int:
        """New blocks the members need, beyond those reserved, to run ``k`` more steps.

        A member needs its blocks at steps ``key + 1 + j * block_size`` (``key`` = the step it
        joined plus its room), so the count over ``(covered, steps + k]`` is a sum over residues.
        """
        self._activate()
        bs = self.block_size
        lo = self.covered
        hi = self.steps + k
        if hi <= lo:
            return 0
        total = 0
        for r, count in self.active.items():
            total += count * ((hi - r) // bs - (lo - r) // bs)
        joined = self.joined
        for key, rid in self.not_yet:   # sorted: the members whose room runs out within the run
            if key >= hi:
                break
            if joined.get(rid, (0, -1))[1] == key:
                r = (key + 1) % bs
                total += (hi - r) // bs - (key - r) // bs
        return total

    def mark_reserved(self, k: int, blocks: int) -> None:
        """``blocks`` (from ``blocks_needed(k)``) are now reserved for the next ``k`` steps."""
        self.covered = max(self.covered, self.steps + k)
        self.reserved += blocks

    def advance(self, k: int, end: float, longest_gap: float) -> list[Request]:
        """Account ``k`` steps ending at ``end``; returns the members that finish (still in the group)."""
        self.steps += k
        self.context_sum += len(self.members) * k
        self.last_token_time = end
        self.gap_log.append(longest_gap)
        done = []
        heap = self.finish_heap
        while heap and heap[0][0] == self.steps:
            done.append(self.members[heapq.heappop(heap)[1]])
        return done

    def materialize(self, req: Request, iteration: int) -> tuple[int, int]:
        """Write ``req``'s true values back and drop it from the group.

        Returns (blocks reserved on its behalf, output tokens since it joined).
        """
        rid = req.request_id
        self._activate()
        a, key, gap_index = self.joined.pop(rid)
        del self.members[rid]
        bs = self.block_size
        r = (key + 1) % bs
        covered = self.covered
        if key < covered:
            left = self.active[r] - 1
            if left:
                self.active[r] = left
            else:
                del self.active[r]
            blocks = (covered - r) // bs - (key - r) // bs
        else:
            blocks = 0
        s = self.steps - a
        if s:
            req.num_computed_tokens += s
            req.num_output_tokens += s
            req.num_tokens += s
            req.last_token_time = self.last_token_time
            req.last_scheduled_iteration = iteration - 1
            longest = max(self.gap_log[gap_index:])
            rec = req.record
            if longest > rec.max_itl_s:
                rec.max_itl_s = longest
        self.reserved -= blocks
        self.context_sum -= req.num_computed_tokens + 1
        del self.context_keys[rid]
        return blocks, s
