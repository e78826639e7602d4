"""A pool of fixed-size KV blocks with reference counts, handed out as contiguous runs.

Why runs: moving a request's KV between the GPU and host memory costs a fixed latency
per copy plus bytes over bandwidth (FastSwitch, papers.md §5). If a request's blocks
are scattered one by one, a swap is hundreds of 64 KB copies; if they form a few long
runs ("block groups"), it is a few large copies. So the pool keeps its free space as
maximal runs (split on allocation, merged with both neighbours on free), grows an
existing run in place whenever the next block is free, and places new blocks best-fit:
at the start of the smallest free run that holds them all (what is left of that run
follows them, room to grow in place), or, when no run is big enough, in the largest
runs whole. Best fit keeps large runs for large prompts; it matters because with
prefix caching the pool is nearly always full of cached blocks, so every placement
decision is reused by the allocations that follow the eviction of its blocks.

The same class serves the GPU pool and the pinned host pool; the real executor maps
block ids to tensor slots, the simulator maps them to nothing.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


class OutOfBlocksError(RuntimeError):
    """Raised when an allocation asks for more blocks than are free."""


@dataclass(frozen=True, slots=True)
class BlockGroup:
    """A run of contiguous blocks ``start .. start+length-1``."""

    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


def runs_of(block_ids: Sequence[int]) -> list[BlockGroup]:
    """Split a block table into its maximal runs of consecutive ids, in table order."""
    groups: list[BlockGroup] = []
    if not block_ids:
        return groups
    start = prev = block_ids[0]
    for b in block_ids[1:]:
        if b != prev + 1:
            groups.append(BlockGroup(start, prev - start + 1))
            start = b
        prev = b
    groups.append(BlockGroup(start, prev - start + 1))
    return groups


class BlockPool:
    """Fixed set of ``num_blocks`` blocks; ids ``0 .. num_blocks-1``.

    A block is free exactly when its reference count is 0. ``allocate*`` returns blocks
    with count 1; ``retain`` adds holders; ``release`` drops them and frees blocks that
    reach 0. The free space is kept as maximal runs in two dicts (by start and by end)
    and a list of (length, start) kept sorted, which answers "smallest run that holds n"
    and "largest run" by bisection.
    """

    def __init__(self, num_blocks: int, name: str = "gpu"):
        if num_blocks < 1:
            raise ValueError(f"{name} pool: num_blocks must be >= 1, got {num_blocks}")
        self.name = name
        self.num_blocks = int(num_blocks)
        self.ref_counts: list[int] = [0] * self.num_blocks
        # Every id as one shared int object: tables are slices of it (no new ints per allocation),
        # and comparing a table with a slice of it is a cheap test for "one contiguous run".
        self._ids: list[int] = list(range(self.num_blocks))
        self._run_len: dict[int, int] = {0: self.num_blocks}      # free run start -> length
        self._run_start: dict[int, int] = {self.num_blocks: 0}    # free run end -> start
        self._by_size: list[tuple[int, int]] = [(self.num_blocks, 0)]   # (length, start), sorted
        self.num_free = self.num_blocks

    # ------------------------------------------------------------------ queries
    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def free_runs(self) -> list[BlockGroup]:
        return [BlockGroup(s, n) for s, n in sorted(self._run_len.items())]

    # ------------------------------------------------------------- allocation
    def allocate(self, n: int, after: int | None = None) -> list[int]:
        """``n`` blocks: in place after ``after`` if its successor is free, then best fit, then largest runs whole."""
        if n <= 0:
            if n == 0:
                return []
            raise ValueError(f"{self.name} pool: cannot allocate {n} blocks")
        if n > self.num_free:
            raise OutOfBlocksError(f"{self.name} pool: asked for {n} blocks, {self.num_free} free")
        out: list[int] = []
        run_len = self._run_len
        if after is not None:
            nxt = after + 1
            run = run_len.get(nxt)
            if run is not None:
                take = n if n < run else run
                self._take(nxt, run, take)
                out += self._ids[nxt:nxt + take]
                n -= take
        by_size = self._by_size
        while n:
            i = bisect.bisect_left(by_size, (n, -1))
            if i < len(by_size):
                length, start = by_size[i]
                self._take(start, length, n)
                out += self._ids[start:start + n]
                return out
            length, start = by_size.pop()   # no run holds the rest: the largest, whole
            del run_len[start]
            del self._run_start[start + length]
            self.ref_counts[start:start + length] = [1] * length
            self.num_free -= length
            out += self._ids[start:start + length]
            n -= length
        return out

    def allocate_one(self, after: int | None = None) -> int:
        """One block (the decode hot path): in place after ``after`` when possible, else the smallest run's first."""
        if after is not None:
            nxt = after + 1
            run = self._run_len.get(nxt)
            if run is not None:
                self._take(nxt, run, 1)
                return self._ids[nxt]
        if not self.num_free:
            raise OutOfBlocksError(f"{self.name} pool: asked for 1 block, 0 free")
        length, start = self._by_size[0]
        self._take(start, length, 1)
        return start

    def _take(self, start: int, length: int, n: int) -> None:
        """Allocate the first ``n`` blocks of the free run ``[start, start+length)``."""
        by_size = self._by_size
        del by_size[bisect.bisect_left(by_size, (length, start))]
        del self._run_len[start]
        end = start + length
        if n < length:
            rest = start + n
            self._run_len[rest] = length - n
            self._run_start[end] = rest
            bisect.insort(by_size, (length - n, rest))
        else:
            del self._run_start[end]
        self.ref_counts[start:start + n] = [1] * n
        self.num_free -= n

    # ------------------------------------------------------- reference counts
    def retain(self, block_ids: Iterable[int]) -> None:
        """Add one holder to each block; all or nothing (a free block raises ValueError, nothing retained)."""
        rc = self.ref_counts
        block_ids = list(block_ids)
        for i, b in enumerate(block_ids):
            c = rc[b]
            if c <= 0:
                for x in block_ids[:i]:
                    rc[x] -= 1
                raise ValueError(f"{self.name} pool: retain of free block {b}")
            rc[b] = c + 1

    def release(self, block_ids: Sequence[int]) -> int:
        """Drop one reference from each block; free those that reach 0. Returns how many were freed.

        All or nothing: a block that is (or becomes, by an earlier entry) free raises
        ValueError with every count restored and nothing freed.
        """
        rc = self.ref_counts
        n = len(block_ids)
        if n > 4:
            b0 = block_ids[0]
            if block_ids[-1] == b0 + n - 1 and rc[b0:b0 + n] == [1] * n and block_ids == self._ids[b0:b0 + n]:
                # one run whose only holder lets go (a cached leaf evicted, a finished request's tail)
                rc[b0:b0 + n] = [0] * n
                self._free_run(b0, n)
                return n
        zeroed: list[int] = []
        for i, b in enumerate(block_ids):
            c = rc[b]
            if c <= 0:
                for x in block_ids[:i]:
                    rc[x] += 1
                raise ValueError(f"{self.name} pool: release of free block {b}")
            rc[b] = c - 1
            if c == 1:
                zeroed.append(b)
        freed = 0
        run_start = -2
        run_end = -2
        for b in zeroed:
            if b == run_end:
                run_end += 1
            else:
                if run_end > run_start:
                    self._free_run(run_start, run_end - run_start)
                    freed += run_end - run_start
                run_start = b
                run_end = b + 1
        if run_end > run_start:
            self._free_run(run_start, run_end - run_start)
            freed += run_end - run_start
        return freed

    def _free_run(self, start: int, length: int) -> None:
        """Return ``[start, start+length)`` (already at count 0) to the free runs, merging neighbours."""
        end = start + length
        by_size = self._by_size
        run_len = self._run_len
        prev_start = self._run_start.pop(start, None)
        if prev_start is not None:
            prev_len = run_len.pop(prev_start)
            del by_size[bisect.bisect_left(by_size, (prev_len, prev_start))]
            start = prev_start
        next_len = run_len.pop(end, None)
        if next_len is not None:
            del self._run_start[end + next_len]
            del by_size[bisect.bisect_left(by_size, (next_len, end))]
            end += next_len
        run_len[start] = end - start
        self._run_start[end] = start
        bisect.insort(by_size, (end - start, start))
        self.num_free += length

    # ---------------------------------------------------------------- checking
    def check_integrity(self, expected_counts: np.ndarray | None = None) -> None:
        """Free runs are maximal, disjoint and exactly the blocks with count 0; counts match the holders."""
        rc = np.asarray(self.ref_counts, dtype=np.int64)
        if (rc < 0).any():
            raise AssertionError(f"{self.name} pool: negative reference count at block {int(np.argmax(rc < 0))}")
        if expected_counts is not None and not np.array_equal(rc, np.asarray(expected_counts)):
            bad = int(np.flatnonzero(rc != expected_counts)[0])
            raise AssertionError(
                f"{self.name} pool: block {bad} has reference count {int(rc[bad])}, "
                f"holders account for {int(expected_counts[bad])}")
        free_mask = np.zeros(self.num_blocks, dtype=bool)
        prev_end = -1
        for start, length in sorted(self._run_len.items()):
            if length <= 0:
                raise AssertionError(f"{self.name} pool: empty free run at {start}")
            if start <= prev_end:
                raise AssertionError(f"{self.name} pool: free run at {start} overlaps or touches the previous one")
            if self._run_start.get(start + length) != start:
                raise AssertionError(f"{self.name} pool: end index of run at {start} is inconsistent")
            i = bisect.bisect_left(self._by_size, (length, start))
            if i >= len(self._by_size) or self._by_size[i] != (length, start):
                raise AssertionError(f"{self.name} pool: run at {start} is missing from the size index")
            free_mask[start:start + length] = True
            prev_end = start + length
        if len(self._run_start) != len(self._run_len) or len(self._by_size) != len(self._run_len):
            raise AssertionError(f"{self.name} pool: the run indexes differ in size")
        if not np.array_equal(free_mask, rc == 0):
            bad = int(np.flatnonzero(free_mask != (rc == 0))[0])
            raise AssertionError(
                f"{self.name} pool: block {bad} is {'free' if free_mask[bad] else 'not free'} "
                f"but has reference count {int(rc[bad])}")
        if int(free_mask.sum()) != self.num_free:
            raise AssertionError(f"{self.name} pool: num_free {self.num_free} != {int(free_mask.sum())} free blocks")
