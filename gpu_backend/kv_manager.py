"""KV bookkeeping for the serving engine: GPU blocks, the prefix cache and host swap space.

One object owns the GPU ``BlockPool``, the ``RadixCache`` over it and the host
``BlockPool``, and keeps for every live sequence its block table (``SeqKV``). The
engine asks it in sequence terms ("match this prompt", "grow to N tokens", "swap this
one out") and gets back block ids and copy lists for the ``BatchPlan``; it never touches
blocks directly. Both executors use this same bookkeeping, so the simulator's memory
pressure is the real one.

Swapping follows vLLM's model (all of a sequence's blocks go to host memory, so a
swapped sequence pins no GPU memory) with two refinements:
- FastSwitch's reuse: after a swap-in the host copy is kept; if the sequence is swapped
  out again, blocks whose content has not changed since are not copied again. Kept
  copies are dropped, least recently kept first, when host memory runs short.
- at swap-in the prefix cache is asked again: blocks still cached on the GPU are
  re-used instead of copied in.

Lazy block ids (``lazy_block_ids=True``, for the simulator): growing a sequence only
*reserves* blocks — counts, eviction and therefore memory pressure are exactly those of
eager allocation — and ids are assigned when something needs them (caching the blocks,
a swap). A simulator never reads KV, so this saves one allocation per 16 generated
tokens, and a sequence's blocks, assigned at once, form one group. A real executor
writes KV every step and uses eager ids.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np

from gpu_backend.block_pool import BlockPool
from gpu_backend.plan import GroupMove
from gpu_backend.radix_cache import RadixCache, RadixNode


class SeqKV:
    """The KV of one sequence: GPU block table, its cached-prefix lock and its host copy."""

    __slots__ = ("seq_id", "block_table", "pending", "num_shared", "locked_node", "host_table", "host_valid",
                 "swapped")

    def __init__(self, seq_id: int):
        self.seq_id = seq_id
        self.block_table: list[int] = []      # GPU blocks by position (empty while swapped)
        self.pending = 0                      # blocks reserved after the table, ids not assigned yet (lazy mode)
        self.num_shared = 0                   # leading blocks owned by the prefix cache (locked)
        self.locked_node: RadixNode | None = None
        self.host_table: list[int] = []       # host blocks by position (a full copy while swapped)
        self.host_valid = 0                   # leading host blocks whose content is current
        self.swapped = False

    def __repr__(self) -> str:
        return (f"SeqKV({self.seq_id}, gpu={len(self.block_table)}+{self.pending}, shared={self.num_shared}, "
                f"host={len(self.host_table)}/{self.host_valid}, swapped={self.swapped})")


def pair_moves(src: Sequence[int], dst: Sequence[int]) -> list[GroupMove]:
    """Merge per-block copies ``src[i] -> dst[i]`` into moves of runs contiguous on both sides."""
    moves: list[GroupMove] = []
    n = len(src)
    i = 0
    while i < n:
        s0, d0 = src[i], dst[i]
        j = i + 1
        while j < n and src[j] == s0 + (j - i) and dst[j] == d0 + (j - i):
            j += 1
        moves.append(GroupMove(s0, d0, j - i))
        i = j
    return moves


class KVCacheManager:
    """Block tables, prefix cache and swap space for every live sequence."""

    def __init__(self, num_gpu_blocks: int, num_host_blocks: int, block_size: int,
                 enable_prefix_caching: bool = True, keep_host_copies: bool = True,
                 lazy_block_ids: bool = False):
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.gpu = BlockPool(num_gpu_blocks, "gpu")
        self.host = BlockPool(num_host_blocks, "host") if num_host_blocks > 0 else None
        self.cache = RadixCache(self.gpu)
        self.enable_prefix_caching = enable_prefix_caching
        self.keep_host_copies = keep_host_copies
        self.lazy_block_ids = lazy_block_ids
        self.reserved = 0                     # blocks promised to sequences' ``pending`` (free in the pool)
        self.seqs: dict[int, SeqKV] = {}
        self._kept: OrderedDict[int, SeqKV] = OrderedDict()   # sequences on GPU holding a host copy

    # ---------------------------------------------------------------- queries
    @property
    def num_available_blocks(self) -> int:
        """Blocks a new allocation can get: free unreserved ones plus cached ones nobody is using."""
        return self.gpu.num_free - self.reserved + self.cache.num_evictable_blocks

    @property
    def num_free_unreserved(self) -> int:
        """Blocks an allocation can get without evicting anything from the prefix cache."""
        return self.gpu.num_free - self.reserved

    def _make_room(self, need: int) -> bool:
        """Ensure ``need`` unreserved free blocks, evicting cached ones; False (nothing evicted) if impossible."""
        free = self.gpu.num_free - self.reserved
        if free >= need:
            return True
        short = need - free
        if short > self.cache.num_evictable_blocks:
            return False
        self.cache.evict(short)
        return True

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def peek_prefix_blocks(self, keys: Sequence[int]) -> int:
        return self.cache.peek_prefix_len(keys) if self.enable_prefix_caching else 0

    # ---------------------------------------------------------------- lifecycle
    def new_seq(self, seq_id: int) -> SeqKV:
        if seq_id in self.seqs:
            raise ValueError(f"sequence {seq_id} already has KV state")
        seq = SeqKV(seq_id)
        self.seqs[seq_id] = seq
        return seq

    def match(self, seq: SeqKV, keys: Sequence[int]) -> int:
        """Start ``seq`` on the longest cached prefix of ``keys``; returns the blocks reused."""
        if seq.block_table or seq.swapped:
            raise ValueError(f"match on {seq!r}: it already has blocks")
        if not self.enable_prefix_caching or not keys:
            return 0
        m = self.cache.match_prefix(keys)
        if m.num_blocks == 0:
            return 0
        self.cache.lock(m.node)
        self.gpu.retain(m.block_ids)
        seq.locked_node = m.node
        seq.num_shared = m.num_blocks
        seq.block_table = m.block_ids
        return m.num_blocks

    def grow(self, seq: SeqKV, num_tokens: int) -> bool:
        """Make ``seq``'s table cover ``num_tokens`` tokens, evicting cached blocks if needed.

        Returns False, changing nothing, when even eviction cannot find enough blocks.
        """
        table = seq.block_table
        need = -(-num_tokens // self.block_size) - len(table) - seq.pending
        if need <= 0:
            return True
        if not self._make_room(need):
            return False
        if self.lazy_block_ids:
            seq.pending += need
            self.reserved += need
        elif need == 1:
            table.append(self.gpu.allocate_one(table[-1] if table else None))
        else:
            table.extend(self.gpu.allocate(need, table[-1] if table else None))
        return True

    def reserve(self, n: int) -> bool:
        """Reserve ``n`` blocks for sequences named later (``attribute_reserved``); lazy mode only.

        For the simulator's decode groups, which grow many sequences at once. False (nothing
        reserved or evicted) when even eviction cannot find them.
        """
        if not self.lazy_block_ids:
            raise ValueError("reserve() needs lazy_block_ids")
        if n <= 0:
            return True
        if not self._make_room(n):
            return False
        self.reserved += n
        return True

    def attribute_reserved(self, seq: SeqKV, n: int) -> None:
        """Hand ``n`` blocks reserved with ``reserve`` to ``seq`` (as if it had grown by them)."""
        seq.pending += n

    def materialize(self, seq: SeqKV, n: int | None = None) -> None:
        """Assign ids to ``n`` (default: all) of ``seq``'s reserved blocks, in one group where possible."""
        k = seq.pending if n is None else n
        if k <= 0:
            return
        table = seq.block_table
        table.extend(self.gpu.allocate(k, table[-1] if table else None))
        seq.pending -= k
        self.reserved -= k

    def _drop_pending(self, seq: SeqKV) -> None:
        self.reserved -= seq.pending
        seq.pending = 0

    def free(self, seq: SeqKV, cache_keys: Sequence[int] | None = None) -> None:
        """Drop ``seq``'s GPU blocks; first cache its first ``len(cache_keys)`` blocks (full, computed ones)."""
        table = seq.block_table
        if cache_keys and self.enable_prefix_caching:
            n = len(cache_keys)
            if n > len(table) + seq.pending:
                raise ValueError(f"free {seq!r}: {n} cache keys for {len(table) + seq.pending} blocks")
            if n > len(table):
                self.materialize(seq, n - len(table))
            self._drop_pending(seq)
            # The tree adopts table[done:n] with the sequence's own reference; the sequence
            # drops its references on the rest (the shared prefix, duplicates, the partial tail).
            done = self.cache.insert(cache_keys, table[:n], transfer=True)
            if done:
                self.gpu.release(table[:done])
            if n < len(table):
                self.gpu.release(table[n:])
        else:
            self._drop_pending(seq)
            if table:
                self.gpu.release(table)
        seq.block_table = []
        self._unlock(seq)
        self.drop_host_copy(seq)
        seq.swapped = False  # a swapped sequence freed here has no KV left anywhere

    def remove(self, seq: SeqKV, cache_keys: Sequence[int] | None = None) -> None:
        """The sequence is done: free everything it holds and forget it."""
        self.free(seq, cache_keys)
        del self.seqs[seq.seq_id]

    def _unlock(self, seq: SeqKV) -> None:
        if seq.locked_node is not None:
            self.cache.unlock(seq.locked_node)
            seq.locked_node = None
        seq.num_shared = 0

    # ---------------------------------------------------------------- swapping
    def drop_host_copy(self, seq: SeqKV) -> None:
        if seq.host_table:
            self.host.release(seq.host_table)
            seq.host_table = []
        seq.host_valid = 0
        self._kept.pop(seq.seq_id, None)

    def _host_blocks(self, n: int, keep: SeqKV) -> list[int] | None:
        host = self.host
        if host is None:
            return None if n else []
        if host.num_free < n and host.num_free + sum(
                len(s.host_table) for sid, s in self._kept.items() if sid != keep.seq_id) < n:
            return None  # dropping every other kept copy would not be enough: drop none
        while host.num_free < n and self._kept:
            victim_id = next(iter(self._kept))
            if victim_id == keep.seq_id:
                self._kept.move_to_end(victim_id)
                if len(self._kept) == 1:
                    break
                continue
            self.drop_host_copy(self._kept[victim_id])
        if host.num_free < n:
            return None
        return host.allocate(n)

    def swap_out(self, seq: SeqKV, num_computed_tokens: int) -> list[GroupMove] | None:
        """Move ``seq``'s KV to host memory; None (nothing changed) if host memory is short.

        Only blocks whose host copy is missing or stale are copied.
        """
        if seq.swapped:
            raise ValueError(f"swap_out of {seq!r}: it is already swapped out")
        table = seq.block_table
        n = len(table) + seq.pending
        have = len(seq.host_table)
        extra = n - have if n > have else 0
        new_host = self._host_blocks(extra, seq)
        if new_host is None:
            return None
        if extra:
            seq.host_table.extend(new_host)
        elif n < have:  # the sequence shrank (cannot happen today); drop the surplus copy
            self.host.release(seq.host_table[n:])
            del seq.host_table[n:]
        self.materialize(seq)  # the copies need ids
        start = min(seq.host_valid, n)
        moves = pair_moves(table[start:], seq.host_table[start:n])
        self.gpu.release(table)
        seq.block_table = []
        self._unlock(seq)
        seq.host_valid = num_computed_tokens // self.block_size
        seq.swapped = True
        self._kept.pop(seq.seq_id, None)
        return moves

    def swap_in(self, seq: SeqKV, keys: Sequence[int], num_tokens: int) -> list[GroupMove] | None:
        """Bring ``seq`` back so its table covers ``num_tokens``; None (nothing changed) if GPU memory is short.

        ``keys`` are the content keys of its full computed blocks, to re-use what the
        prefix cache still holds.
        """
        if not seq.swapped:
            raise ValueError(f"swap_in of {seq!r}: it is not swapped out")
        n_host = len(seq.host_table)
        total = max(n_host, -(-num_tokens // self.block_size))
        m = 0
        if keys and self.enable_prefix_caching:
            if self.cache.peek_prefix_len(keys) > 0:
                match = self.cache.match_prefix(keys, record=False)
                m = min(match.num_blocks, n_host)
                if m:
                    self.cache.lock(match.node)
                    seq.locked_node = match.node
                    prefix = match.block_ids[:m]
        need = total - m
        if not self._make_room(need):
            self._unlock(seq)
            return None
        fresh = self.gpu.allocate(need) if need else []
        if m:
            self.gpu.retain(prefix)
            seq.block_table = prefix + fresh
        else:
            seq.block_table = fresh
        seq.num_shared = m
        moves = pair_moves(seq.host_table[m:n_host], seq.block_table[m:n_host])
        seq.swapped = False
        if self.keep_host_copies and seq.host_table:
            self._kept[seq.seq_id] = seq
        else:
            self.drop_host_copy(seq)
        return moves

    # ---------------------------------------------------------------- episodes
    def reset(self) -> None:
        """Forget every sequence and cached block (a new episode on the same pools)."""
        for seq in list(self.seqs.values()):
            self.remove(seq)
        if self.reserved:
            raise AssertionError(f"reset: {self.reserved} blocks still reserved with no sequence left")
        self.cache.clear()

    # ---------------------------------------------------------------- checking
    def check_integrity(self) -> None:
        """Reference counts, free lists, tree locks and sequence tables all agree."""
        expected = np.zeros(self.gpu.num_blocks, dtype=np.int32)
        for node in self.cache.nodes():
            np.add.at(expected, np.asarray(node.blocks, dtype=np.int64), 1)
        locks: dict[int, int] = {}
        pending = sum(seq.pending for seq in self.seqs.values())
        if pending != self.reserved or self.reserved > self.gpu.num_free:  # (a decode group must be synced)
            raise AssertionError(f"{self.reserved} blocks reserved, sequences hold {pending} pending, "
                                 f"{self.gpu.num_free} free")
        host_expected = np.zeros(self.host.num_blocks, dtype=np.int32) if self.host else None
        for seq in self.seqs.values():
            if seq.swapped and (seq.block_table or seq.pending):
                raise AssertionError(f"{seq!r} is swapped out but holds GPU blocks")
            if seq.block_table:
                if len(set(seq.block_table)) != len(seq.block_table):
                    raise AssertionError(f"{seq!r} lists a GPU block twice")
                np.add.at(expected, np.asarray(seq.block_table, dtype=np.int64), 1)
            if seq.locked_node is not None:
                if not seq.locked_node.alive:
                    raise AssertionError(f"{seq!r} locks an evicted radix node")
                locks[id(seq.locked_node)] = locks.get(id(seq.locked_node), 0) + 1
                path: list[int] = []
                node = seq.locked_node
                while node is not None:
                    path[:0] = node.blocks
                    node = node.parent
                if seq.block_table[:seq.num_shared] != path or len(path) != seq.num_shared:
                    raise AssertionError(f"{seq!r}: shared prefix differs from its locked radix path")
            elif seq.num_shared:
                raise AssertionError(f"{seq!r} claims shared blocks without a lock")
            if seq.host_table:
                if host_expected is None:
                    raise AssertionError(f"{seq!r} has host blocks but there is no host pool")
                np.add.at(host_expected, np.asarray(seq.host_table, dtype=np.int64), 1)
            if seq.host_valid > len(seq.host_table) and seq.host_table:
                raise AssertionError(f"{seq!r}: more valid host blocks than host blocks")
            if (seq.seq_id in self._kept) != (bool(seq.host_table) and not seq.swapped):
                raise AssertionError(f"{seq!r}: kept-copy list disagrees with its host table")
        self.gpu.check_integrity(expected)
        if self.host is not None:
            self.host.check_integrity(host_expected)
        self.cache.check_integrity(locks)
