"""The radix prefix cache over KV blocks (SGLang's RadixAttention, at block granularity).

Why a radix tree: prompts that share a prefix (a system prompt, a long document, a
conversation's history) can reuse the KV of that prefix instead of recomputing it. A
tree whose edges are runs of block content keys finds the longest cached prefix of a
new prompt in time proportional to the prefix, holds many prompts' shared parts once,
and makes eviction natural: a leaf no running request uses can go, least recently used
first, without breaking any other cached prefix.

Keys are 64-bit keys of full blocks, equal exactly when the content is (``envs.tokens``);
the tree's position encodes the prefix, so equal keys under different parents are
different cache entries, as they must be.

Ownership: the tree holds one reference on every block it caches (``BlockPool``
counts); a request that uses a cached prefix *locks* the deepest node of its match,
which pins that node and all its ancestors against eviction.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Iterator, Sequence

from gpu_backend.block_pool import BlockPool


class RadixNode:
    """An edge of the tree: a run of block keys and the blocks holding their KV."""

    __slots__ = ("keys", "blocks", "children", "parent", "lock_ref", "last_access", "hits", "alive")

    def __init__(self, keys: list[int], blocks: list[int], parent: "RadixNode | None"):
        self.keys = keys
        self.blocks = blocks
        self.children: dict[int, RadixNode] = {}
        self.parent = parent
        self.lock_ref = 0
        self.last_access = 0
        self.hits = 0
        self.alive = True

    def __repr__(self) -> str:  # for test failure messages
        return f"RadixNode(blocks={self.blocks}, lock={self.lock_ref}, children={len(self.children)})"


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    """The longest cached prefix of a key sequence: its deepest node and its blocks, root first."""

    node: RadixNode
    num_blocks: int
    block_ids: list[int]


class RadixCache:
    """Match, insert, lock and evict cached KV blocks of one ``BlockPool``."""

    def __init__(self, pool: BlockPool):
        self.pool = pool
        self.root = RadixNode([], [], None)
        self.root.lock_ref = 1  # the root is never evicted
        self._tick = 0
        self._evictable: list[tuple[int, int, RadixNode]] = []
        self._seq = 0
        self.num_cached_blocks = 0
        self.num_locked_blocks = 0   # blocks in nodes with lock_ref > 0
        self.num_evicted_blocks = 0
        self.lookup_blocks = 0       # blocks asked for by match_prefix(record=True)
        self.hit_blocks = 0          # of those, blocks found

    # ------------------------------------------------------------------ queries
    @property
    def num_evictable_blocks(self) -> int:
        return self.num_cached_blocks - self.num_locked_blocks

    def _descend(self, keys: Sequence[int]) -> tuple[list[RadixNode], int, RadixNode | None, int]:
        """Walk ``keys`` down the tree, changing nothing.

        Returns (nodes matched whole, blocks they cover, the node where the match ends
        part-way or None, how many of its blocks match).
        """
        node = self.root
        path: list[RadixNode] = []
        pos = 0
        n = len(keys)
        while pos < n:
            child = node.children.get(keys[pos])
            if child is None:
                break
            ck = child.keys
            length = len(ck)
            if keys[pos:pos + length] == ck:
                pos += length
                path.append(child)
                node = child
                continue
            i = 1
            limit = min(length, n - pos)
            while i < limit and ck[i] == keys[pos + i]:
                i += 1
            return path, pos, child, i
        return path, pos, None, 0

    def peek_prefix_len(self, keys: Sequence[int]) -> int:
        """Blocks of ``keys`` that are cached, without touching LRU state or splitting nodes."""
        _, pos, _, extra = self._descend(keys)
        return pos + extra

    # ------------------------------------------------------------------ match
    def match_prefix(self, keys: Sequence[int], record: bool = True) -> PrefixMatch:
        """Longest cached prefix of ``keys``; splits a node where the match ends inside it."""
        self._tick += 1
        tick = self._tick
        path, pos, partial, extra = self._descend(keys)
        if partial is not None:
            path.append(self._split(partial, extra))
            pos += extra
        blocks: list[int] = []
        for node in path:
            node.last_access = tick
            node.hits += 1
            blocks.extend(node.blocks)
        node = path[-1] if path else self.root
        if record:
            self.lookup_blocks += len(keys)
            self.hit_blocks += pos
        if node is not self.root and node.lock_ref == 0 and not node.children:
            self._push_evictable(node)
        return PrefixMatch(node, pos, blocks)

    def _split(self, node: RadixNode, at: int) -> RadixNode:
        """Cut ``node`` after ``at`` blocks; return the new upper part (which keeps node's locks)."""
        parent = node.parent
        upper = RadixNode(node.keys[:at], node.blocks[:at], parent)
        upper.lock_ref = node.lock_ref
        upper.last_access = node.last_access
        upper.hits = node.hits
        parent.children[upper.keys[0]] = upper
        node.keys = node.keys[at:]
        node.blocks = node.blocks[at:]
        node.parent = upper
        upper.children[node.keys[0]] = node
        return upper

    # ------------------------------------------------------------------ locks
    def lock(self, node: RadixNode) -> None:
        while node is not None:
            if node.lock_ref == 0:
                self.num_locked_blocks += len(node.blocks)
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: RadixNode) -> None:
        first = node
        while node is not None:
            if node.lock_ref <= 0:
                raise ValueError(f"unlock of an unlocked radix node {node!r}")
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self.num_locked_blocks -= len(node.blocks)
            node = node.parent
        if first.lock_ref == 0 and not first.children:
            self._push_evictable(first)

    # ----------------------------------------------------------------- insert
    def insert(self, keys: Sequence[int], block_ids: Sequence[int], transfer: bool = False) -> int:
        """Cache ``block_ids`` under ``keys``; returns how many leading blocks were already cached.

        The tree takes a reference on the blocks it adopts (those after the returned
        count); the caller keeps its own references and releases them as usual, so a
        block the tree already had a copy of is simply freed by the caller. With
        ``transfer=True`` the caller hands over its reference on the adopted blocks instead
        (and must not release them): no count changes, which is what a finishing request does.
        """
        if len(keys) != len(block_ids):
            raise ValueError(f"insert: {len(keys)} keys for {len(block_ids)} blocks")
        match = self.match_prefix(keys, record=False)
        node, done = match.node, match.num_blocks
        if done == len(keys):
            return done
        new_blocks = list(block_ids[done:])
        leaf = RadixNode(list(keys[done:]), new_blocks, node)
        leaf.last_access = self._tick
        node.children[leaf.keys[0]] = leaf
        if not transfer:
            self.pool.retain(new_blocks)
        self.num_cached_blocks += len(new_blocks)
        self._push_evictable(leaf)
        return done

    # ----------------------------------------------------------------- evict
    def _push_evictable(self, node: RadixNode) -> None:
        self._seq += 1
        heap = self._evictable
        heapq.heappush(heap, (node.last_access, self._seq, node))
        if len(heap) > 64 + 2 * self.num_cached_blocks:
            # Entries go stale (lazy deletion) on every match and unlock of a leaf; without
            # eviction they would pile up forever. Keep each live leaf's first entry, the one
            # ``evict`` would act on, so the eviction order is unchanged. In place: ``evict``
            # holds a reference to this list.
            first: dict[int, tuple[int, int, RadixNode]] = {}
            for e in heap:
                n = e[2]
                if n.alive and not n.lock_ref and not n.children and e[0] == n.last_access:
                    f = first.get(id(n))
                    if f is None or e[1] < f[1]:
                        first[id(n)] = e
            heap[:] = first.values()
            heapq.heapify(heap)

    def evict(self, num_blocks: int) -> int:
        """Free at least ``num_blocks`` unlocked blocks (if there are that many), whole least recently used leaves first.

        Whole leaves, as SGLang does: a leaf is one cached prompt's tail, and freeing it in
        one go keeps the free space in long runs and makes the next allocations free of
        eviction work. Returns the number of blocks freed (may exceed ``num_blocks``).
        """
        freed = 0
        heap = self._evictable
        pool = self.pool
        root = self.root
        while freed < num_blocks and heap:
            access, _, node = heapq.heappop(heap)
            if not node.alive or node.lock_ref or node.children or access != node.last_access:
                continue
            pool.release(node.blocks)
            freed += len(node.blocks)
            node.alive = False
            parent = node.parent
            del parent.children[node.keys[0]]
            node.parent = None
            if parent is not root and parent.lock_ref == 0 and not parent.children:
                self._push_evictable(parent)
        self.num_cached_blocks -= freed
        self.num_evicted_blocks += freed
        return freed

    def evictable_order(self) -> list[RadixNode]:
        """The leaves that ``evict`` would take, in order (for tests and debugging)."""
        seen: set[int] = set()
        out: list[RadixNode] = []
        for access, _, node in sorted(self._evictable, key=lambda e: (e[0], e[1])):
            if (node.alive and not node.lock_ref and not node.children
                    and access == node.last_access and id(node) not in seen):
                seen.add(id(node))
                out.append(node)
        return out

    # ----------------------------------------------------------------- walk
    def nodes(self) -> Iterator[RadixNode]:
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def clear(self) -> int:
        """Drop every unlocked block (used between episodes)."""
        return self.evict(self.num_evictable_blocks)

    def check_integrity(self, expected_locks: dict[int, int]) -> None:
        """Tree shape, counters and locks; ``expected_locks`` maps id(node) -> locks placed on it directly."""
        cached = 0
        locked = 0
        order: list[RadixNode] = []
        stack = [self.root]
        while stack:
            node = stack.pop()
            order.append(node)
            for first, child in node.children.items():
                if child.parent is not node or not child.alive:
                    raise AssertionError(f"radix node {child!r} has a wrong parent link or is dead")
                if not child.keys or child.keys[0] != first:
                    raise AssertionError(f"radix node {child!r} is filed under key {first}")
                if len(child.keys) != len(child.blocks):
                    raise AssertionError(f"radix node {child!r}: {len(child.keys)} keys, {len(child.blocks)} blocks")
                stack.append(child)
            if node is not self.root:
                cached += len(node.blocks)
                if node.lock_ref:
                    locked += len(node.blocks)
        # lock_ref(node) = direct locks on node + sum of lock_ref over children
        for node in reversed(order):
            want = expected_locks.get(id(node), 0) + sum(c.lock_ref for c in node.children.values())
            if node is self.root:
                want += 1
            if node.lock_ref != want:
                raise AssertionError(f"radix node {node!r}: lock_ref {node.lock_ref}, holders account for {want}")
        if cached != self.num_cached_blocks:
            raise AssertionError(f"radix cache counts {self.num_cached_blocks} blocks, tree holds {cached}")
        if locked != self.num_locked_blocks:
            raise AssertionError(f"radix cache counts {self.num_locked_blocks} locked blocks, tree has {locked}")
        unlocked_leaves = [n for n in order if n is not self.root and not n.lock_ref and not n.children]
        listed = {id(n) for n in self.evictable_order()}
        for leaf in unlocked_leaves:
            if id(leaf) not in listed:
                raise AssertionError(f"unlocked leaf {leaf!r} is missing from the eviction queue")
