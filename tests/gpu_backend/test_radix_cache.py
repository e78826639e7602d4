"""Pin ``gpu_backend.radix_cache``: matching, node splits, shared-prefix inserts, locks,
LRU eviction of whole leaves, the side-effect-free peek and the hit counters."""

from __future__ import annotations

import pytest

from gpu_backend.block_pool import BlockGroup, BlockPool
from gpu_backend.radix_cache import RadixCache, RadixNode


def shape(node: RadixNode) -> dict:
    """The tree below ``node`` as ``{first key: (keys, blocks, shape of children)}``."""
    return {k: (c.keys, c.blocks, shape(c)) for k, c in sorted(node.children.items())}


def cache_prompt(pool: BlockPool, cache: RadixCache, keys: list[int]) -> tuple[list[int], int]:
    """What a finished request does: allocate, compute, insert, release. Returns (blocks, shared)."""
    blocks = pool.allocate(len(keys))
    shared = cache.insert(keys, blocks)
    pool.release(blocks)
    return blocks, shared


@pytest.fixture
def pc():
    pool = BlockPool(32)
    return pool, RadixCache(pool)


def three_prompts(pool: BlockPool, cache: RadixCache) -> dict[str, RadixNode]:
    """S=[1,2] shared by P1=[1,2,3,4], P2=[1,2,5], P3=[1,2,6,7,8]; Q=[50,51] on its own."""
    blocks, shared = cache_prompt(pool, cache, [1, 2, 3, 4])
    assert (blocks, shared) == ([0, 1, 2, 3], 0)            # the only run [0, 32), at its start
    blocks, shared = cache_prompt(pool, cache, [1, 2, 5])
    assert (blocks, shared) == ([4, 5, 6], 2)               # the only run [4, 32), at its start
    # The tree keeps 6; 4, 5 are released: free [4, 6) and [7, 32).
    # 5 blocks: only [7, 32) holds them; at its start.
    blocks, shared = cache_prompt(pool, cache, [1, 2, 6, 7, 8])
    assert (blocks, shared) == ([7, 8, 9, 10, 11], 2)
    assert pool.free_runs() == [BlockGroup(4, 2), BlockGroup(7, 2), BlockGroup(12, 20)]
    # 2 blocks: [4, 6) and [7, 9) both hold them exactly; the lower start wins.
    blocks, shared = cache_prompt(pool, cache, [50, 51])
    assert (blocks, shared) == ([4, 5], 0)
    assert pool.free_runs() == [BlockGroup(7, 2), BlockGroup(12, 20)]
    assert shape(cache.root) == {
        1: ([1, 2], [0, 1], {
            3: ([3, 4], [2, 3], {}),
            5: ([5], [6], {}),
            6: ([6, 7, 8], [9, 10, 11], {}),
        }),
        50: ([50, 51], [4, 5], {}),
    }
    cached = [0, 1, 2, 3, 6, 9, 10, 11, 4, 5]
    assert [b for b in range(32) if pool.ref_counts[b]] == sorted(cached)
    assert all(pool.ref_counts[b] == 1 for b in cached)
    assert cache.num_cached_blocks == 10
    cache.check_integrity({})
    pool.check_integrity()
    s = cache.root.children[1]
    return {"S": s, "P1": s.children[3], "P2": s.children[5], "P3": s.children[6],
            "Q": cache.root.children[50]}


# --------------------------------------------------------------------------- match / insert
def test_match_on_empty_tree(pc):
    pool, cache = pc
    m = cache.match_prefix([1, 2, 3])
    assert m.node is cache.root and m.num_blocks == 0 and m.block_ids == []
    assert cache.root.children == {}
    m = cache.match_prefix([])
    assert m.node is cache.root and m.num_blocks == 0
    assert cache.evictable_order() == []
    cache.check_integrity({})


def test_insert_then_match_exact_blocks(pc):
    pool, cache = pc
    blocks = pool.allocate(4)
    assert blocks == [0, 1, 2, 3]
    assert cache.insert([10, 11, 12, 13], blocks) == 0
    assert pool.ref_counts[:5] == [2, 2, 2, 2, 0]         # caller's and the tree's
    pool.release(blocks)
    assert pool.ref_counts[:5] == [1, 1, 1, 1, 0]
    assert cache.num_cached_blocks == 4
    m = cache.match_prefix([10, 11, 12, 13, 14])
    assert m.num_blocks == 4 and m.block_ids == [0, 1, 2, 3]
    assert m.node.keys == [10, 11, 12, 13] and m.node.parent is cache.root
    assert cache.match_prefix([10, 11, 12, 13]).block_ids == [0, 1, 2, 3]
    assert cache.match_prefix([11, 12]).num_blocks == 0   # keys are a prefix, not a substring
    assert shape(cache.root) == {10: ([10, 11, 12, 13], [0, 1, 2, 3], {})}
    cache.check_integrity({})


def test_partial_match_splits_the_node(pc):
    pool, cache = pc
    cache_prompt(pool, cache, [10, 11, 12, 13])
    leaf = cache.root.children[10]
    m = cache.match_prefix([10, 11, 99])
    assert m.num_blocks == 2 and m.block_ids == [0, 1]
    assert shape(cache.root) == {10: ([10, 11], [0, 1], {12: ([12, 13], [2, 3], {})})}
    upper = cache.root.children[10]
    assert m.node is upper and upper is not leaf
    assert upper.children[12] is leaf and leaf.parent is upper   # the old node keeps the tail
    assert cache.num_cached_blocks == 4
    assert pool.ref_counts[:4] == [1, 1, 1, 1]
    # A match that ends where the keys end also splits.
    m = cache.match_prefix([10, 11, 12])
    assert m.num_blocks == 3 and m.block_ids == [0, 1, 2]
    assert shape(cache.root) == {10: ([10, 11], [0, 1], {12: ([12], [2], {13: ([13], [3], {})})})}
    cache.check_integrity({})


def test_insert_shared_prefix_adopts_only_the_rest(pc):
    pool, cache = pc
    cache_prompt(pool, cache, [10, 11, 12, 13])
    blocks = pool.allocate(3)
    assert blocks == [4, 5, 6]                             # the only run [4, 32), at its start
    assert cache.insert([10, 11, 20], blocks) == 2
    assert [pool.ref_counts[b] for b in (0, 1, 2, 3, 4, 5, 6)] == [1, 1, 1, 1, 1, 1, 2]
    assert pool.release(blocks) == 2                       # 4, 5: the tree has 0, 1 already
    assert pool.ref_counts[6] == 1
    assert pool.free_runs() == [BlockGroup(4, 2), BlockGroup(7, 25)]
    assert shape(cache.root) == {10: ([10, 11], [0, 1], {
        12: ([12, 13], [2, 3], {}),
        20: ([20], [6], {}),
    })}
    assert cache.num_cached_blocks == 5
    # Everything already cached: nothing adopted, no reference taken.
    assert cache.insert([10, 11, 12], [7, 8, 9]) == 3
    assert cache.num_cached_blocks == 5
    assert pool.ref_counts[7:10] == [0, 0, 0]
    cache.check_integrity({})
    pool.check_integrity()


def test_insert_length_mismatch(pc):
    _, cache = pc
    with pytest.raises(ValueError, match="insert: 2 keys for 3 blocks"):
        cache.insert([1, 2], [0, 1, 2])


def test_equal_keys_under_different_parents_are_different_entries(pc):
    pool, cache = pc
    cache_prompt(pool, cache, [1, 7])
    cache_prompt(pool, cache, [2, 7])
    assert cache.match_prefix([1, 7]).block_ids == [0, 1]
    assert cache.match_prefix([2, 7]).block_ids == [2, 3]     # the only run [2, 32), at its start
    assert cache.match_prefix([7]).num_blocks == 0


# --------------------------------------------------------------------------- locks
def test_lock_pins_node_and_ancestors(pc):
    pool, cache = pc
    n = three_prompts(pool, cache)
    m = cache.match_prefix([1, 2, 3, 4])
    assert m.node is n["P1"] and m.block_ids == [0, 1, 2, 3]
    cache.lock(m.node)
    assert (n["P1"].lock_ref, n["S"].lock_ref, cache.root.lock_ref) == (1, 1, 2)
    assert cache.num_locked_blocks == 4 and cache.num_evictable_blocks == 6
    cache.lock(m.node)                                       # a second holder
    assert n["P1"].lock_ref == 2 and cache.num_locked_blocks == 4
    cache.check_integrity({id(n["P1"]): 2})
    # Everything unlocked goes (P3, Q, P2: 3 + 2 + 1 blocks); S and P1 stay.
    assert cache.evict(100) == 6
    assert shape(cache.root) == {1: ([1, 2], [0, 1], {3: ([3, 4], [2, 3], {})})}
    assert cache.num_cached_blocks == 4 and cache.num_evictable_blocks == 0
    assert cache.evictable_order() == []
    assert cache.evict(1) == 0
    # S and P1 held; the first blocks of P3, P2 and Q free.
    assert [pool.ref_counts[b] for b in (0, 1, 2, 3, 9, 6, 4)] == [1, 1, 1, 1, 0, 0, 0]
    assert pool.free_runs() == [BlockGroup(4, 28)]
    cache.unlock(m.node)
    assert cache.num_locked_blocks == 4
    cache.unlock(m.node)
    assert cache.num_locked_blocks == 0 and cache.num_evictable_blocks == 4
    assert cache.evictable_order() == [n["P1"]]
    cache.check_integrity({})
    assert cache.evict(1) == 2                               # the whole leaf P1
    assert cache.evictable_order() == [n["S"]]
    assert cache.evict(1) == 2
    assert cache.root.children == {} and cache.num_cached_blocks == 0
    assert pool.free_runs() == [BlockGroup(0, 32)]
    cache.check_integrity({})


def test_locked_inner_node_becomes_evictable_only_when_unlocked(pc):
    pool, cache = pc
    n = three_prompts(pool, cache)
    s = cache.match_prefix([1, 2]).node
    assert s is n["S"]
    cache.lock(s)
    assert cache.num_locked_blocks == 2
    assert cache.evict(100) == 8                             # all four leaves, not S
    assert shape(cache.root) == {1: ([1, 2], [0, 1], {})}
    assert cache.evictable_order() == []                     # a leaf now, but locked
    cache.check_integrity({id(s): 1})
    cache.unlock(s)
    assert cache.evictable_order() == [s]
    assert cache.evict(1) == 2
    cache.check_integrity({})


def test_unlock_of_unlocked_node_raises(pc):
    pool, cache = pc
    cache_prompt(pool, cache, [1, 2])
    with pytest.raises(ValueError, match="unlock of an unlocked radix node"):
        cache.unlock(cache.root.children[1])


def test_split_of_locked_node_keeps_the_lock(pc):
    pool, cache = pc
    cache_prompt(pool, cache, [10, 11, 12, 13])
    leaf = cache.root.children[10]
    cache.lock(leaf)
    assert cache.num_locked_blocks == 4
    m = cache.match_prefix([10, 11])
    assert m.node is not leaf and m.node.lock_ref == 1 and leaf.lock_ref == 1
    assert cache.num_locked_blocks == 4 and cache.num_evictable_blocks == 0
    cache.check_integrity({id(leaf): 1})
    assert cache.evict(4) == 0
    cache.unlock(leaf)
    assert cache.num_locked_blocks == 0
    assert cache.evict(1) == 2 and cache.evict(1) == 2
    cache.check_integrity({})


def test_lock_then_unlock_requeues_a_leaf_skipped_by_evict(pc):
    pool, cache = pc
    cache_prompt(pool, cache, [1, 2])
    leaf = cache.root.children[1]
    cache.lock(leaf)
    assert cache.evict(2) == 0                                # its queue entry is dropped
    cache.unlock(leaf)
    assert cache.evictable_order() == [leaf]
    assert cache.evict(2) == 2
    assert not leaf.alive and leaf.parent is None


# --------------------------------------------------------------------------- eviction order
def test_eviction_is_lru_over_whole_leaves(pc):
    pool, cache = pc
    n = three_prompts(pool, cache)
    for keys in ([1, 2, 6, 7, 8], [50, 51], [1, 2, 3, 4], [1, 2, 5]):   # P3, Q, P1, P2
        cache.match_prefix(keys)
    assert cache.evictable_order() == [n["P3"], n["Q"], n["P1"], n["P2"]]
    # One block asked: the least recently used leaf goes whole (3 blocks).
    assert cache.evict(1) == 3
    assert [pool.ref_counts[b] for b in (9, 10, 11)] == [0, 0, 0]
    assert pool.free_runs() == [BlockGroup(7, 25)]      # P3's blocks join [7, 9) and [12, 32)
    assert not n["P3"].alive
    assert cache.evictable_order() == [n["Q"], n["P1"], n["P2"]]
    # Three asked: Q (2), then P1 (2).
    assert cache.evict(3) == 4
    assert shape(cache.root) == {1: ([1, 2], [0, 1], {5: ([5], [6], {})})}
    assert cache.evictable_order() == [n["P2"]]                # S still has a child
    # P2 goes; its parent S becomes an evictable leaf.
    assert cache.evict(1) == 1
    assert cache.evictable_order() == [n["S"]]
    assert cache.evict(1) == 2
    assert cache.root.children == {}
    assert cache.num_cached_blocks == 0 and cache.num_evicted_blocks == 10
    assert pool.free_runs() == [BlockGroup(0, 32)]
    cache.check_integrity({})
    pool.check_integrity()


def test_a_new_touch_moves_a_leaf_to_the_back(pc):
    pool, cache = pc
    n = three_prompts(pool, cache)
    for keys in ([1, 2, 6, 7, 8], [50, 51], [1, 2, 3, 4], [1, 2, 5], [1, 2, 6, 7, 8]):
        cache.match_prefix(keys)
    assert cache.evictable_order() == [n["Q"], n["P1"], n["P2"], n["P3"]]
    # A match that stops in S touches S, not its children.
    cache.match_prefix([1, 2, 99])
    assert cache.evictable_order() == [n["Q"], n["P1"], n["P2"], n["P3"]]
    assert cache.evict(1) == 2 and not n["Q"].alive


def test_emptied_parent_is_ordered_by_its_own_last_access(pc):
    pool, cache = pc
    cache_prompt(pool, cache, [1, 2, 3])
    cache_prompt(pool, cache, [1, 2, 4])
    cache_prompt(pool, cache, [9])
    s = cache.root.children[1]
    q = cache.root.children[9]
    cache.match_prefix([1, 2, 3])      # S and [3] touched ...
    cache.match_prefix([1, 2, 4])      # ... S and [4] touched later ...
    cache.match_prefix([9])            # ... Q last
    assert cache.evictable_order() == [s.children[3], s.children[4], q]
    assert cache.evict(2) == 2         # both children of S (one block each)
    # S was last touched before Q: it goes before Q.
    assert cache.evictable_order() == [s, q]
    assert cache.evict(1) == 2
    assert list(cache.root.children) == [9]
    cache.check_integrity({})


def test_clear_drops_every_unlocked_block(pc):
    pool, cache = pc
    n = three_prompts(pool, cache)
    cache.lock(n["P2"])
    assert cache.clear() == 7                                  # P1, P3, Q
    assert shape(cache.root) == {1: ([1, 2], [0, 1], {5: ([5], [6], {})})}
    cache.unlock(n["P2"])
    assert cache.clear() == 3
    assert cache.num_cached_blocks == 0 and pool.num_free == 32


# --------------------------------------------------------------------------- peek, counters
def test_peek_changes_nothing(pc):
    pool, cache = pc
    n = three_prompts(pool, cache)
    cache.match_prefix([1, 2, 6, 7, 8])
    cache.match_prefix([50, 51])
    before_shape = shape(cache.root)
    before_access = {id(x): (x.last_access, x.hits) for x in cache.nodes()}
    before_order = cache.evictable_order()
    before_counts = (cache.lookup_blocks, cache.hit_blocks, cache._tick, len(cache._evictable))
    assert cache.peek_prefix_len([1, 2, 6, 99]) == 3          # ends inside P3: no split
    assert cache.peek_prefix_len([1, 2, 6, 7, 8, 9]) == 5
    assert cache.peek_prefix_len([1, 2, 3]) == 3
    assert cache.peek_prefix_len([1]) == 1
    assert cache.peek_prefix_len([7]) == 0
    assert cache.peek_prefix_len([]) == 0
    assert cache.peek_prefix_len([1, 2, 3, 4]) == 4           # P1, the oldest leaf
    assert shape(cache.root) == before_shape
    assert {id(x): (x.last_access, x.hits) for x in cache.nodes()} == before_access
    assert cache.evictable_order() == before_order
    assert before_order[0] is n["P1"]
    assert (cache.lookup_blocks, cache.hit_blocks, cache._tick, len(cache._evictable)) == before_counts
    # The same queries with match_prefix do split and reorder.
    assert cache.match_prefix([1, 2, 6, 99]).num_blocks == 3
    assert shape(cache.root) != before_shape


def test_hit_counters(pc):
    pool, cache = pc
    cache_prompt(pool, cache, [10, 11, 12, 13])             # insert does not count
    assert (cache.lookup_blocks, cache.hit_blocks) == (0, 0)
    cache.match_prefix([10, 11, 12, 13, 14])
    assert (cache.lookup_blocks, cache.hit_blocks) == (5, 4)
    cache.match_prefix([7, 8])
    assert (cache.lookup_blocks, cache.hit_blocks) == (7, 4)
    cache.match_prefix([10, 11, 99])
    assert (cache.lookup_blocks, cache.hit_blocks) == (10, 6)
    cache.match_prefix([10, 11, 12], record=False)
    cache.peek_prefix_len([10, 11, 12])
    assert (cache.lookup_blocks, cache.hit_blocks) == (10, 6)
    # Node hits count every match through the node (record=False too), and a split's upper
    # part inherits the old node's count: [10, 11] was passed by the 1st, 3rd and 4th
    # matches; [12] split off at the 4th, inheriting 1; [13] was only passed by the 1st.
    upper = cache.root.children[10]
    assert upper.hits == 3
    assert upper.children[12].hits == 2
    assert upper.children[12].children[13].hits == 1


# --------------------------------------------------------------------------- integrity
def test_integrity_catches_wrong_counters_and_locks(pc):
    pool, cache = pc
    n = three_prompts(pool, cache)
    cache.lock(n["P1"])
    with pytest.raises(AssertionError, match="lock_ref 1, holders account for 0"):
        cache.check_integrity({})
    cache.check_integrity({id(n["P1"]): 1})
    cache.num_cached_blocks += 1
    with pytest.raises(AssertionError, match="radix cache counts 11 blocks, tree holds 10"):
        cache.check_integrity({id(n["P1"]): 1})
    cache.num_cached_blocks -= 1
    cache.num_locked_blocks -= 1
    with pytest.raises(AssertionError, match="radix cache counts 3 locked blocks, tree has 4"):
        cache.check_integrity({id(n["P1"]): 1})
    cache.num_locked_blocks += 1
    cache._evictable = [e for e in cache._evictable if e[2] is not n["Q"]]
    with pytest.raises(AssertionError, match="missing from the eviction queue"):
        cache.check_integrity({id(n["P1"]): 1})


# --------------------------------------------------------------------------- queue compaction
def test_eviction_queue_stays_bounded(pc):
    pool, cache = pc
    cache_prompt(pool, cache, [1, 2, 3, 4])
    for _ in range(5000):                       # every request: match, lock, unlock a cached leaf
        m = cache.match_prefix([1, 2, 3, 4])
        cache.lock(m.node)
        cache.unlock(m.node)
    assert len(cache._evictable) <= 64 + 2 * cache.num_cached_blocks + 1
    cache.check_integrity({})
    assert cache.evict(1) == 4


def test_queue_compaction_does_not_change_eviction_order():
    """Same random operations on a cache and on one that never compacts its queue; then
    both are drained one leaf at a time and must evict the same blocks in the same order."""
    import heapq
    import random
    from collections import Counter

    def plain_push(cache):
        def push(node):
            cache._seq += 1
            heapq.heappush(cache._evictable, (node.last_access, cache._seq, node))
        return push

    rng = random.Random(7)
    pools = [BlockPool(400), BlockPool(400)]     # roomy: no eviction, as in a healthy run
    caches = [RadixCache(pools[0]), RadixCache(pools[1])]
    caches[1]._push_evictable = plain_push(caches[1])
    locks: list[list[RadixNode]] = [[], []]
    stems = [[1, 2, 3], [1, 2, 4], [5], [5, 6, 7, 8], [9, 9]]
    max_heap = [0, 0]
    for _ in range(3000):
        op, pick = rng.random(), rng.random()
        keys = rng.choice(stems) + [rng.randrange(3) for _ in range(rng.randrange(3))]
        results = []
        for j, (pool, cache) in enumerate(zip(pools, caches)):
            if op < 0.1:
                results.append(cache_prompt(pool, cache, keys))
            elif op < 0.6:
                m = cache.match_prefix(keys)
                results.append((m.num_blocks, m.block_ids))
            elif op < 0.8:
                m = cache.match_prefix(keys)
                if m.num_blocks:
                    cache.lock(m.node)
                    locks[j].append(m.node)
                results.append(m.block_ids)
            elif locks[j]:
                node = locks[j].pop(int(pick * len(locks[j])))
                cache.unlock(node)
                results.append(node.blocks)
            else:
                results.append(None)
            max_heap[j] = max(max_heap[j], len(cache._evictable))
        assert results[0] == results[1]
        assert shape(caches[0].root) == shape(caches[1].root)
        assert [n.blocks for n in caches[0].evictable_order()] == [n.blocks for n in caches[1].evictable_order()]
    assert caches[0].num_evicted_blocks == 0
    bound = 64 + 2 * caches[0].num_cached_blocks
    assert max_heap[0] <= bound + 1
    assert max_heap[1] > 3 * bound                          # compaction had plenty to do
    caches[0].check_integrity(Counter(id(n) for n in locks[0]))
    # Drain: unlock everything, then evict one leaf at a time; record the blocks each call frees.
    order: list[list[list[int]]] = [[], []]
    for j, (pool, cache) in enumerate(zip(pools, caches)):
        while locks[j]:
            cache.unlock(locks[j].pop())
        while cache.num_cached_blocks:
            held = [b for b in range(400) if pool.ref_counts[b]]
            assert cache.evict(1) > 0
            order[j].append([b for b in held if not pool.ref_counts[b]])
    assert order[0] == order[1] and len(order[0]) > 10
    assert pools[0].free_runs() == pools[1].free_runs() == [BlockGroup(0, 400)]
