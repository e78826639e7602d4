"""Pin ``gpu_backend.kv_manager``: prefix reuse, growth with eviction, swap out/in with
exact group moves, kept host copies, host-memory pressure. ``check_integrity`` runs
after every step."""

from __future__ import annotations

import pytest

from gpu_backend.block_pool import BlockGroup
from gpu_backend.kv_manager import KVCacheManager, pair_moves
from gpu_backend.plan import GroupMove


def M(m: GroupMove) -> tuple[int, int, int]:
    return (m.src_start, m.dst_start, m.num_blocks)


def moves_of(moves) -> list[tuple[int, int, int]] | None:
    return None if moves is None else [M(m) for m in moves]


def state(kv: KVCacheManager):
    """Everything a failed call must leave alone."""
    return (list(kv.gpu.ref_counts), kv.gpu.free_runs(),
            list(kv.host.ref_counts) if kv.host else None, kv.host.free_runs() if kv.host else None,
            kv.cache.num_cached_blocks, kv.cache.num_locked_blocks, kv.cache.num_evicted_blocks,
            list(kv._kept),
            {s.seq_id: (list(s.block_table), s.num_shared, s.locked_node, list(s.host_table),
                        s.host_valid, s.swapped) for s in kv.seqs.values()})


def step(kv: KVCacheManager, result=None):
    kv.check_integrity()
    return result


# --------------------------------------------------------------------------- basics
def test_queries_and_argument_errors():
    kv = KVCacheManager(16, 4, 4)
    assert [kv.blocks_for(n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    assert kv.num_available_blocks == 16
    a = kv.new_seq(1)
    with pytest.raises(ValueError, match="sequence 1 already has KV state"):
        kv.new_seq(1)
    assert kv.grow(a, 5)
    with pytest.raises(ValueError, match="already has blocks"):
        kv.match(a, [1])
    with pytest.raises(ValueError, match="3 cache keys for 2 blocks"):
        kv.free(a, [1, 2, 3])
    with pytest.raises(ValueError, match="not swapped out"):
        kv.swap_in(a, [], 5)
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        KVCacheManager(16, 4, 0)
    step(kv)


def test_pair_moves():
    assert pair_moves([], []) == []
    assert moves_of(pair_moves([4], [9])) == [(4, 9, 1)]
    assert moves_of(pair_moves([0, 1, 2, 5, 6], [10, 11, 12, 13, 14])) == [(0, 10, 3), (5, 13, 2)]
    # contiguous on one side only: split where the other side breaks
    assert moves_of(pair_moves([0, 1, 2], [5, 6, 9])) == [(0, 5, 2), (2, 9, 1)]
    assert moves_of(pair_moves([3, 7, 8], [0, 1, 2])) == [(3, 0, 1), (7, 1, 2)]
    # descending runs are not merged
    assert moves_of(pair_moves([2, 1], [2, 1])) == [(2, 2, 1), (1, 1, 1)]


# --------------------------------------------------------------------------- caching
def test_match_grow_free_with_caching():
    kv = KVCacheManager(32, 16, 4)
    a = kv.new_seq(1)
    assert step(kv, kv.match(a, [100, 101])) == 0           # empty cache
    assert a.block_table == [] and a.locked_node is None
    assert step(kv, kv.grow(a, 10))                         # 3 blocks, a new group at 0
    assert a.block_table == [0, 1, 2]
    # 10 tokens computed: the 2 full blocks are cached, the partial tail (block 2) freed.
    kv.free(a, [100, 101])
    step(kv)
    assert a.block_table == []
    assert kv.gpu.ref_counts[:4] == [1, 1, 0, 0]
    assert kv.gpu.free_runs() == [BlockGroup(2, 30)]
    assert kv.cache.num_cached_blocks == 2 and kv.cache.num_evictable_blocks == 2
    assert kv.num_available_blocks == 32
    assert kv.peek_prefix_blocks([100, 101, 102]) == 2
    kv.remove(a)
    assert 1 not in kv.seqs
    step(kv)

    b = kv.new_seq(2)
    assert step(kv, kv.match(b, [100, 101, 102])) == 2      # the same prompt: blocks 0, 1 reused
    assert b.block_table == [0, 1] and b.num_shared == 2
    assert kv.gpu.ref_counts[:3] == [2, 2, 0]
    assert kv.cache.num_locked_blocks == 2 and kv.num_available_blocks == 30
    assert step(kv, kv.grow(b, 10))                         # in place after block 1
    assert b.block_table == [0, 1, 2]
    assert step(kv, kv.grow(b, 12)) and b.block_table == [0, 1, 2]    # already covered
    assert step(kv, kv.grow(b, 13))
    assert b.block_table == [0, 1, 2, 3]
    kv.free(b, [100, 101, 102])                             # 12 of 13 tokens computed
    step(kv)
    assert kv.gpu.ref_counts[:5] == [1, 1, 1, 0, 0]         # 2 adopted by the tree, 3 freed
    assert kv.cache.num_cached_blocks == 3 and kv.cache.num_locked_blocks == 0
    assert b.locked_node is None and b.num_shared == 0

    c = kv.new_seq(3)
    assert step(kv, kv.match(c, [100, 101, 102, 103])) == 3
    assert c.block_table == [0, 1, 2]
    assert kv.gpu.ref_counts[:3] == [2, 2, 2]
    d = kv.new_seq(4)
    assert step(kv, kv.match(d, [100, 555])) == 1           # splits the cached node
    assert d.block_table == [0]
    assert kv.gpu.ref_counts[:3] == [3, 2, 2]
    kv.remove(c)
    kv.remove(d)
    step(kv)
    assert kv.gpu.ref_counts[:3] == [1, 1, 1] and kv.cache.num_locked_blocks == 0


def test_prefix_caching_disabled():
    kv = KVCacheManager(16, 4, 4, enable_prefix_caching=False)
    a = kv.new_seq(1)
    assert kv.grow(a, 8)
    kv.free(a, [1, 2])
    step(kv)
    assert kv.cache.num_cached_blocks == 0 and kv.gpu.num_free == 16
    b = kv.new_seq(2)
    assert kv.match(b, [1, 2]) == 0
    assert kv.peek_prefix_blocks([1, 2]) == 0
    step(kv)


# --------------------------------------------------------------------------- growth
def test_grow_evicts_unlocked_cached_blocks():
    kv = KVCacheManager(8, 0, 4)
    a = kv.new_seq(1)
    assert kv.grow(a, 16) and a.block_table == [0, 1, 2, 3]
    kv.remove(a, [1, 2, 3, 4])
    step(kv)
    assert kv.gpu.num_free == 4 and kv.cache.num_cached_blocks == 4
    b = kv.new_seq(2)
    # 5 blocks, 4 free: one more is needed; the whole cached leaf (4 blocks) goes.
    assert step(kv, kv.grow(b, 20))
    assert b.block_table == [0, 1, 2, 3, 4]
    assert kv.cache.num_cached_blocks == 0 and kv.cache.num_evicted_blocks == 4
    assert kv.gpu.free_runs() == [BlockGroup(5, 3)]


def test_grow_fails_without_change_when_eviction_is_not_enough():
    kv = KVCacheManager(8, 0, 4)
    a = kv.new_seq(1)
    assert kv.grow(a, 8) and a.block_table == [0, 1]
    kv.remove(a, [1, 2])                                     # cached [0, 1] under key 1
    b = kv.new_seq(2)
    assert kv.grow(b, 8) and b.block_table == [2, 3]         # the only run [2, 8), at its start
    kv.remove(b, [3, 4])                                     # cached [2, 3] under key 3
    c = kv.new_seq(3)
    assert kv.match(c, [1, 2]) == 2                          # locks [0, 1]
    step(kv)
    assert (kv.gpu.num_free, kv.cache.num_evictable_blocks) == (4, 2)
    d = kv.new_seq(4)
    before = state(kv)
    assert not kv.grow(d, 28)                                # 7 blocks > 4 free + 2 evictable
    assert state(kv) == before
    assert not kv.grow(c, 36)                                # c needs 7 more: same
    assert state(kv) == before
    step(kv)
    assert kv.grow(d, 24)                                    # 6 = 4 free + 2 evicted
    # Evicting [2, 3] merges it with [4, 8): one run [2, 8), taken whole.
    assert d.block_table == [2, 3, 4, 5, 6, 7]
    assert kv.cache.num_cached_blocks == 2 and kv.cache.num_evicted_blocks == 2
    assert kv.gpu.num_free == 0
    before = state(kv)
    assert not kv.grow(c, 9)                                 # nothing left at all
    assert state(kv) == before
    step(kv)


# --------------------------------------------------------------------------- swapping
def test_swap_out_and_in_contiguous():
    kv = KVCacheManager(32, 16, 4)
    a = kv.new_seq(1)
    assert kv.grow(a, 12) and a.block_table == [0, 1, 2]
    assert moves_of(step(kv, kv.swap_out(a, 12))) == [(0, 0, 3)]
    assert a.swapped and a.block_table == [] and a.host_table == [0, 1, 2] and a.host_valid == 3
    assert kv.gpu.num_free == 32 and kv.host.ref_counts[:4] == [1, 1, 1, 0]
    # Back, one token further: 4 blocks; the first 3 are copied in.
    assert moves_of(step(kv, kv.swap_in(a, [], 13))) == [(0, 0, 3)]
    assert not a.swapped and a.block_table == [0, 1, 2, 3]
    assert a.host_table == [0, 1, 2] and a.host_valid == 3 and list(kv._kept) == [1]


def test_swap_out_fragmented_table_and_failed_swap_in():
    kv = KVCacheManager(4, 8, 4)
    a, b = kv.new_seq(1), kv.new_seq(2)
    assert kv.grow(a, 4) and a.block_table == [0]
    assert kv.grow(b, 4) and b.block_table == [1]            # the only run [1, 4), its first block
    # Block 1 is b's, so a cannot grow in place: 2 blocks at the start of [2, 4).
    assert kv.grow(a, 12) and a.block_table == [0, 2, 3]
    step(kv)
    assert moves_of(step(kv, kv.swap_out(a, 12))) == [(0, 0, 1), (2, 1, 2)]
    assert a.host_table == [0, 1, 2]
    assert kv.gpu.free_runs() == [BlockGroup(0, 1), BlockGroup(2, 2)]
    assert kv.grow(b, 8) and b.block_table == [1, 2]         # in place: block 2 starts [2, 4)
    assert kv.gpu.free_runs() == [BlockGroup(0, 1), BlockGroup(3, 1)]
    before = state(kv)
    assert step(kv, kv.swap_in(a, [], 12)) is None           # 3 blocks, 2 free
    assert state(kv) == before
    kv.remove(b)
    assert moves_of(step(kv, kv.swap_in(a, [], 12))) == [(0, 0, 3)]
    assert a.block_table == [0, 1, 2]


def test_swap_in_into_fragmented_free_space():
    kv = KVCacheManager(4, 8, 4)
    a, b = kv.new_seq(1), kv.new_seq(2)
    kv.grow(a, 4)
    kv.grow(b, 4)
    kv.grow(a, 12)
    assert (a.block_table, b.block_table) == ([0, 2, 3], [1])
    kv.swap_out(a, 12)                                       # GPU free: [0, 1) and [2, 4)
    assert kv.gpu.free_runs() == [BlockGroup(0, 1), BlockGroup(2, 2)]
    # 3 blocks, no run holds them: the largest, [2, 4), whole; the last one in [0, 1).
    assert moves_of(step(kv, kv.swap_in(a, [], 12))) == [(0, 2, 2), (2, 0, 1)]
    assert a.block_table == [2, 3, 0]
    assert kv.gpu.free_runs() == []


def test_swap_out_unlocks_prefix_and_swap_in_reuses_cached_blocks():
    kv = KVCacheManager(32, 16, 4)
    p = kv.new_seq(1)
    kv.grow(p, 8)
    kv.remove(p, [7, 8])                                     # cached [0, 1]
    a = kv.new_seq(2)
    assert kv.match(a, [7, 8]) == 2
    assert kv.grow(a, 10) and a.block_table == [0, 1, 2]
    assert kv.gpu.ref_counts[:3] == [2, 2, 1] and kv.cache.num_locked_blocks == 2
    step(kv)
    # All blocks go, the shared ones too.
    assert moves_of(step(kv, kv.swap_out(a, 10))) == [(0, 0, 3)]
    assert kv.gpu.ref_counts[:3] == [1, 1, 0]
    assert kv.cache.num_locked_blocks == 0 and kv.cache.num_evictable_blocks == 2
    assert a.locked_node is None and a.num_shared == 0 and a.host_valid == 2
    assert kv.gpu.free_runs() == [BlockGroup(2, 30)]
    # Back: blocks 0, 1 are still cached, so only the tail is copied (into a new group,
    # at the start of the only run [2, 32): block 2 again).
    assert moves_of(step(kv, kv.swap_in(a, [7, 8], 11))) == [(2, 2, 1)]
    assert a.block_table == [0, 1, 2] and a.num_shared == 2
    assert kv.gpu.ref_counts[:2] == [2, 2] and kv.cache.num_locked_blocks == 2


def test_swap_in_copies_everything_when_the_prefix_was_evicted():
    kv = KVCacheManager(32, 16, 4)
    p = kv.new_seq(1)
    kv.grow(p, 8)
    kv.remove(p, [7, 8])
    a = kv.new_seq(2)
    kv.match(a, [7, 8])
    kv.grow(a, 10)
    kv.swap_out(a, 10)
    assert kv.cache.clear() == 2
    assert moves_of(step(kv, kv.swap_in(a, [7, 8], 11))) == [(0, 0, 3)]
    assert a.block_table == [0, 1, 2] and a.num_shared == 0 and a.locked_node is None


def test_swap_in_reuses_a_partly_cached_prefix():
    kv = KVCacheManager(32, 16, 4)
    p = kv.new_seq(1)
    kv.grow(p, 4)
    kv.remove(p, [7])                                        # cached [0] under [7]
    a = kv.new_seq(2)
    assert kv.match(a, [7, 8]) == 1
    assert kv.grow(a, 12) and a.block_table == [0, 1, 2]
    assert moves_of(kv.swap_out(a, 12)) == [(0, 0, 3)]
    assert kv.gpu.free_runs() == [BlockGroup(1, 31)]
    # Only [7] is cached: block 0 reused, the other two copied into a new group, at the
    # start of the only run [1, 32).
    assert moves_of(step(kv, kv.swap_in(a, [7, 8, 9], 12))) == [(1, 1, 2)]
    assert a.block_table == [0, 1, 2] and a.num_shared == 1


def test_swap_in_failure_releases_the_prefix_lock():
    kv = KVCacheManager(4, 8, 4)
    p = kv.new_seq(1)
    kv.grow(p, 4)
    kv.remove(p, [7])                                        # cached [0]
    a = kv.new_seq(2)
    kv.match(a, [7])
    kv.grow(a, 8)
    assert a.block_table == [0, 1]
    kv.swap_out(a, 8)
    b = kv.new_seq(3)
    assert kv.grow(b, 12) and b.block_table == [1, 2, 3]     # [1, 4) taken whole
    before = state(kv)
    assert step(kv, kv.swap_in(a, [7], 8)) is None           # 1 block needed, 0 free
    assert state(kv) == before
    assert kv.cache.num_locked_blocks == 0 and kv.cache.num_evictable_blocks == 1


def test_swap_without_a_host_pool():
    kv = KVCacheManager(8, 0, 4)
    assert kv.host is None
    a = kv.new_seq(1)
    kv.grow(a, 8)
    before = state(kv)
    assert kv.swap_out(a, 8) is None
    assert state(kv) == before
    step(kv)


# --------------------------------------------------------------------------- kept copies
def test_kept_host_copy_only_new_blocks_are_copied():
    kv = KVCacheManager(32, 16, 4)
    a = kv.new_seq(1)
    assert kv.grow(a, 10) and a.block_table == [0, 1, 2]
    assert moves_of(step(kv, kv.swap_out(a, 10))) == [(0, 0, 3)]
    assert a.host_table == [0, 1, 2] and a.host_valid == 2   # 2 full blocks at swap-out
    assert moves_of(step(kv, kv.swap_in(a, [], 10))) == [(0, 0, 3)]
    assert a.host_table == [0, 1, 2] and list(kv._kept) == [1]
    assert kv.host.num_free == 13
    assert kv.grow(a, 18) and a.block_table == [0, 1, 2, 3, 4]
    step(kv)
    # Blocks 0, 1 were full and are still on the host; block 2 changed, 3, 4 are new.
    # Two more host blocks: the start of the only host run [3, 16), so one move of 3.
    assert moves_of(step(kv, kv.swap_out(a, 18))) == [(2, 2, 3)]
    assert a.host_table == [0, 1, 2, 3, 4] and a.host_valid == 4
    assert list(kv._kept) == []
    assert kv.gpu.free_runs() == [BlockGroup(0, 32)]
    assert moves_of(step(kv, kv.swap_in(a, [], 19))) == [(0, 0, 5)]
    assert a.block_table == [0, 1, 2, 3, 4]
    # Out again without progress: only the partial last block (index 4) is copied.
    assert moves_of(step(kv, kv.swap_out(a, 19))) == [(4, 4, 1)]
    assert a.host_valid == 4
    kv.remove(a)
    step(kv)
    assert kv.host.num_free == 16 and kv.gpu.num_free == 32


def test_without_kept_copies_every_swap_out_copies_everything():
    kv = KVCacheManager(32, 16, 4, keep_host_copies=False)
    a = kv.new_seq(1)
    kv.grow(a, 10)
    kv.swap_out(a, 10)
    assert moves_of(step(kv, kv.swap_in(a, [], 10))) == [(0, 0, 3)]
    assert a.host_table == [] and a.host_valid == 0 and kv.host.num_free == 16
    assert kv.grow(a, 18)
    assert moves_of(step(kv, kv.swap_out(a, 18))) == [(0, 0, 5)]


def test_host_full_drops_other_kept_copies():
    kv = KVCacheManager(32, 6, 4)
    x = kv.new_seq(1)
    kv.grow(x, 12)
    kv.swap_out(x, 12)
    assert moves_of(kv.swap_in(x, [], 12)) == [(0, 0, 3)]
    assert x.host_table == [0, 1, 2] and kv.host.num_free == 3
    y = kv.new_seq(2)
    assert kv.grow(y, 16) and y.block_table == [3, 4, 5, 6]   # the only run [3, 32), at its start
    step(kv)
    # 4 host blocks needed, 3 free: x's kept copy is dropped to make room; then the only
    # host run [0, 6), at its start.
    assert moves_of(step(kv, kv.swap_out(y, 16))) == [(3, 0, 4)]
    assert y.host_table == [0, 1, 2, 3]
    assert x.host_table == [] and x.host_valid == 0 and list(kv._kept) == []
    assert not x.swapped and x.block_table == [0, 1, 2]
    # x cannot go now: 3 needed, 2 free, nothing kept to drop.
    before = state(kv)
    assert step(kv, kv.swap_out(x, 12)) is None
    assert state(kv) == before


def test_host_still_short_drops_nothing():
    kv = KVCacheManager(32, 6, 4)
    x = kv.new_seq(1)
    kv.grow(x, 8)
    kv.swap_out(x, 8)
    kv.swap_in(x, [], 8)
    assert x.host_table == [0, 1] and list(kv._kept) == [1]
    z = kv.new_seq(3)
    kv.grow(z, 12)
    assert z.block_table == [2, 3, 4]                         # GPU: the only run [2, 32)
    assert moves_of(kv.swap_out(z, 12)) == [(2, 2, 3)]        # host: the only run [2, 6)
    assert kv.host.num_free == 1
    y = kv.new_seq(2)
    assert kv.grow(y, 16) and y.block_table == [2, 3, 4, 5]   # z's GPU blocks were released
    step(kv)
    # 4 needed; 1 free + x's 2 kept = 3: it cannot work, so x's copy must survive.
    before = state(kv)
    assert step(kv, kv.swap_out(y, 16)) is None
    assert state(kv) == before
    assert x.host_table == [0, 1] and list(kv._kept) == [1]


def test_own_kept_copy_is_not_dropped_for_itself():
    kv = KVCacheManager(32, 6, 4)
    x, w = kv.new_seq(1), kv.new_seq(2)
    kv.grow(x, 8)
    kv.swap_out(x, 8)
    kv.swap_in(x, [], 8)
    assert x.block_table == [0, 1] and x.host_table == [0, 1]
    kv.grow(w, 8)
    assert w.block_table == [2, 3]                            # GPU: the only run [2, 32)
    assert moves_of(kv.swap_out(w, 8)) == [(2, 2, 2)]         # host: the only run [2, 6)
    assert moves_of(kv.swap_in(w, [], 8)) == [(2, 2, 2)]      # GPU [2, 32) again
    assert w.block_table == [2, 3] and w.host_table == [2, 3]
    assert list(kv._kept) == [1, 2] and kv.host.num_free == 2
    # Block 2 is w's, so x cannot grow in place: 3 blocks at the start of [4, 32).
    assert kv.grow(x, 20) and x.block_table == [0, 1, 4, 5, 6]
    step(kv)
    # 3 more host blocks, 2 free: x is first in line but is the one swapping out, so w's
    # copy goes; then the host run [2, 6) is free, at its start: 2, 3, 4. Blocks 0, 1 are
    # current on the host (host_valid 2), so GPU 4, 5, 6 go to host 2, 3, 4.
    assert moves_of(step(kv, kv.swap_out(x, 20))) == [(4, 2, 3)]
    assert x.host_table == [0, 1, 2, 3, 4]
    assert w.host_table == [] and list(kv._kept) == []


# --------------------------------------------------------------------------- misuse, reset
def test_swap_out_of_a_swapped_sequence_raises():
    kv = KVCacheManager(16, 8, 4)
    a = kv.new_seq(1)
    kv.grow(a, 8)
    kv.swap_out(a, 8)
    before = state(kv)
    with pytest.raises(ValueError, match="already swapped out"):
        kv.swap_out(a, 8)
    assert state(kv) == before
    step(kv)


def test_free_of_a_swapped_sequence_drops_its_host_copy():
    kv = KVCacheManager(16, 8, 4)
    a = kv.new_seq(1)
    kv.grow(a, 8)
    kv.swap_out(a, 8)
    kv.free(a)
    step(kv)
    assert kv.host.num_free == 8 and a.host_table == [] and not a.swapped
    # It starts over like a new sequence.
    assert kv.match(a, [1]) == 0 and kv.grow(a, 4)
    step(kv)


def test_reset_forgets_everything():
    kv = KVCacheManager(16, 8, 4)
    a, b, c = kv.new_seq(1), kv.new_seq(2), kv.new_seq(3)
    kv.grow(a, 8)
    kv.remove(a, [1, 2])
    kv.match(b, [1, 2])
    kv.grow(b, 12)
    kv.grow(c, 8)
    kv.swap_out(c, 8)
    kv.reset()
    step(kv)
    assert kv.seqs == {} and kv.cache.num_cached_blocks == 0
    assert kv.gpu.num_free == 16 and kv.host.num_free == 8
