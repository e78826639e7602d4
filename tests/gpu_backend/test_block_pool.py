"""Pin ``gpu_backend.block_pool``: placement of block groups, free-run merging, reference
counts, errors and the integrity check. Every expected block id is computed by hand in
the comment beside it."""

from __future__ import annotations

import pytest

from gpu_backend.block_pool import BlockGroup, BlockPool, OutOfBlocksError, runs_of


def G(start: int, length: int) -> BlockGroup:
    return BlockGroup(start, length)


def snapshot(pool: BlockPool):
    return (list(pool.ref_counts), pool.free_runs(), pool.num_free)


def full_pool(n: int) -> BlockPool:
    pool = BlockPool(n)
    assert pool.allocate(n) == list(range(n))
    return pool


# --------------------------------------------------------------------------- construction
def test_new_pool_is_one_free_run():
    pool = BlockPool(8, "host")
    assert pool.name == "host"
    assert pool.num_free == 8 and pool.num_used == 0
    assert pool.free_runs() == [G(0, 8)]
    assert pool.ref_counts == [0] * 8
    pool.check_integrity()


@pytest.mark.parametrize("n", [0, -3])
def test_pool_needs_a_block(n):
    with pytest.raises(ValueError, match="gpu pool: num_blocks must be >= 1"):
        BlockPool(n)


def test_block_group_end():
    assert G(3, 4).end == 7


# --------------------------------------------------------------------------- placement
def test_allocation_placement_by_hand():
    pool = BlockPool(32)
    # Nothing precedes the only free run [0, 32): the first group starts at block 0.
    assert pool.allocate(4) == [0, 1, 2, 3]
    assert pool.free_runs() == [G(4, 28)]
    # Largest run [4, 32), 28 long: centred at 4 + (28 - 4) // 2 = 16.
    assert pool.allocate(4) == [16, 17, 18, 19]
    assert pool.free_runs() == [G(4, 12), G(20, 12)]
    # Two runs of 12: the lower start wins the tie; 4 + (12 - 2) // 2 = 9.
    assert pool.allocate(2) == [9, 10]
    assert pool.free_runs() == [G(4, 5), G(11, 5), G(20, 12)]
    # In place after block 3: blocks 4, 5, 6 of the run [4, 9).
    assert pool.allocate(3, after=3) == [4, 5, 6]
    assert pool.free_runs() == [G(7, 2), G(11, 5), G(20, 12)]
    # In place after 6 gives 7, 8 (the run is only 2 long); the other 2 are a new group
    # centred in the largest run [20, 32): 20 + (12 - 2) // 2 = 25.
    assert pool.allocate(4, after=6) == [7, 8, 25, 26]
    assert pool.free_runs() == [G(11, 5), G(20, 5), G(27, 5)]
    # `after` whose successor is taken (block 2): an ordinary new group, centred in the
    # largest run (three runs of 5: the lowest start, 11): 11 + (5 - 3) // 2 = 12.
    assert pool.allocate(3, after=1) == [12, 13, 14]
    assert pool.free_runs() == [G(11, 1), G(15, 1), G(20, 5), G(27, 5)]
    assert pool.num_free == 12 and pool.num_used == 20
    assert pool.ref_counts == [1] * 11 + [0] + [1] * 3 + [0] + [1] * 4 + [0] * 5 + [1, 1] + [0] * 5
    pool.check_integrity()


def test_largest_run_is_preferred_over_an_exact_fit():
    pool = full_pool(12)
    pool.release([1, 2, 3])            # run [1, 4), 3 long
    pool.release([6, 7, 8, 9, 10])     # run [6, 11), 5 long
    # 3 blocks go into the largest run, centred: 6 + (5 - 3) // 2 = 7, not into [1, 4).
    assert pool.allocate(3) == [7, 8, 9]
    assert pool.free_runs() == [G(1, 3), G(6, 1), G(10, 1)]
    pool.check_integrity()


def test_run_at_block_zero_is_not_centred():
    pool = full_pool(10)
    pool.release([0, 1, 2, 3, 4, 5])   # run [0, 6), something follows it
    assert pool.allocate(2) == [0, 1]
    assert pool.free_runs() == [G(2, 4)]


def test_allocate_one_placement():
    pool = BlockPool(16)
    assert pool.allocate_one() == 0                  # nothing precedes: block 0
    assert pool.allocate_one(after=0) == 1           # in place
    # Out of place (after=5: block 6 is inside the free run [2, 16) but not its start):
    # centred in [2, 16): 2 + (14 - 1) // 2 = 8.
    assert pool.allocate_one(after=5) == 8
    assert pool.free_runs() == [G(2, 6), G(9, 7)]
    assert pool.allocate_one(after=8) == 9           # in place
    # after=1: block 2 starts the free run [2, 8), so it is taken in place.
    assert pool.allocate_one(after=1) == 2
    # Largest run now [10, 16): 10 + (6 - 1) // 2 = 12.
    assert pool.allocate_one() == 12
    assert pool.free_runs() == [G(3, 5), G(10, 2), G(13, 3)]
    # A run of one block is taken whole.
    pool2 = full_pool(4)
    pool2.release([2])
    assert pool2.allocate_one() == 2
    pool.check_integrity()
    pool2.check_integrity()


def test_allocate_one_equals_allocate_of_one():
    a, b = BlockPool(40), BlockPool(40)
    for after in (None, 0, None, 17, None, 3, None):
        assert a.allocate_one(after) == b.allocate(1, after)[0]
    assert snapshot(a) == snapshot(b)


def test_allocate_zero_and_negative():
    pool = BlockPool(4)
    assert pool.allocate(0) == []
    assert pool.free_runs() == [G(0, 4)]
    with pytest.raises(ValueError, match="gpu pool: cannot allocate -1 blocks"):
        pool.allocate(-1)


# --------------------------------------------------------------------------- splitting
def test_split_across_runs_fewest_runs_largest_first():
    pool = full_pool(20)
    pool.release([0, 1, 2])            # [0, 3)
    pool.release([4, 5, 6, 7, 8])      # [4, 9)
    pool.release([10, 11])             # [10, 12)
    pool.release([13, 14, 15, 16])     # [13, 17)
    assert pool.free_runs() == [G(0, 3), G(4, 5), G(10, 2), G(13, 4)]
    # 9 blocks: no run holds them; the largest (5) then the next largest (4): two runs.
    assert pool.allocate(9) == [4, 5, 6, 7, 8, 13, 14, 15, 16]
    assert pool.free_runs() == [G(0, 3), G(10, 2)]
    # 4 blocks: all of [0, 3), then 1 centred in [10, 12): 10 + (2 - 1) // 2 = 10.
    assert pool.allocate(4) == [0, 1, 2, 10]
    assert pool.free_runs() == [G(11, 1)]
    assert pool.num_free == 1
    pool.check_integrity()


def test_split_after_in_place_part():
    pool = full_pool(16)
    pool.release([4, 5])               # [4, 6)
    pool.release([8, 9, 10, 11, 12])   # [8, 13)
    # after=3: blocks 4, 5 in place; the remaining 4 centred in [8, 13): 8 + (5 - 4) // 2 = 8.
    assert pool.allocate(6, after=3) == [4, 5, 8, 9, 10, 11]
    assert pool.free_runs() == [G(12, 1)]
    pool.check_integrity()


# --------------------------------------------------------------------------- release
def test_release_merges_neighbours_on_both_sides():
    pool = full_pool(16)
    assert pool.release([5, 6]) == 2
    assert pool.free_runs() == [G(5, 2)]
    assert pool.release([9]) == 1
    assert pool.free_runs() == [G(5, 2), G(9, 1)]
    # Block 8 touches [9, 10) on the right: merged.
    assert pool.release([8]) == 1
    assert pool.free_runs() == [G(5, 2), G(8, 2)]
    # Block 7 touches [5, 7) on the left and [8, 10) on the right: one run.
    assert pool.release([7]) == 1
    assert pool.free_runs() == [G(5, 5)]
    # A list in any order, across several places, in one call.
    assert pool.release([15, 1, 2, 11, 10, 0]) == 6
    assert pool.free_runs() == [G(0, 3), G(5, 7), G(15, 1)]
    assert pool.num_free == 11
    pool.check_integrity()
    # Everything back: a single run again.
    assert pool.release([3, 4, 12, 13, 14]) == 5
    assert pool.free_runs() == [G(0, 16)]
    assert pool.num_free == 16
    pool.check_integrity()


def test_released_space_is_reused_by_placement():
    pool = BlockPool(16)
    a = pool.allocate(4)                 # [0, 4)
    b = pool.allocate(4)                 # centred in [4, 16): 4 + 8 // 2 = 8
    assert b == [8, 9, 10, 11]
    pool.release(a)
    assert pool.free_runs() == [G(0, 8), G(12, 4)]
    # Largest run [0, 8) starts at 0: the new group starts there.
    assert pool.allocate(3) == [0, 1, 2]


# --------------------------------------------------------------------------- ref counts
def test_retain_and_release_reference_counts():
    pool = BlockPool(8)
    blocks = pool.allocate(3)
    assert blocks == [0, 1, 2]
    pool.retain([1])
    pool.retain([1, 2])
    assert pool.ref_counts[:4] == [1, 3, 2, 0]
    # One release each: block 0 is freed, 1 and 2 survive with fewer holders.
    assert pool.release(blocks) == 1
    assert pool.ref_counts[:4] == [0, 2, 1, 0]
    assert pool.free_runs() == [G(0, 1), G(3, 5)]
    assert pool.num_free == 6
    pool.check_integrity()
    assert pool.release([1, 2]) == 1
    assert pool.ref_counts[:4] == [0, 1, 0, 0]
    assert pool.free_runs() == [G(0, 1), G(2, 6)]
    assert pool.release([1]) == 1
    assert pool.free_runs() == [G(0, 8)]
    pool.check_integrity()


def test_block_with_two_holders_survives_one_release():
    pool = BlockPool(4)
    [b] = pool.allocate(1)
    pool.retain([b])
    assert pool.release([b]) == 0
    assert pool.ref_counts[b] == 1
    assert pool.num_free == 3
    assert pool.release([b]) == 1
    assert pool.num_free == 4


def test_same_block_twice_in_one_release():
    pool = BlockPool(4)
    pool.allocate(2)
    pool.retain([1])
    assert pool.release([1, 1]) == 1
    assert pool.ref_counts == [1, 0, 0, 0]
    assert pool.free_runs() == [G(1, 3)]
    pool.check_integrity()


# --------------------------------------------------------------------------- errors
def test_allocating_more_than_free_raises_and_changes_nothing():
    pool = BlockPool(10)
    pool.allocate(3)
    pool.allocate(2)
    before = snapshot(pool)
    with pytest.raises(OutOfBlocksError, match=r"gpu pool: asked for 6 blocks, 5 free"):
        pool.allocate(6)
    with pytest.raises(OutOfBlocksError):
        pool.allocate(6, after=2)
    assert snapshot(pool) == before
    pool.check_integrity()
    full = full_pool(3)
    with pytest.raises(OutOfBlocksError, match="asked for 1 block, 0 free"):
        full.allocate_one()
    with pytest.raises(OutOfBlocksError):
        full.allocate_one(after=2)
    assert snapshot(full) == ([1, 1, 1], [], 0)


def test_release_of_a_free_block_names_it():
    pool = BlockPool(8)
    pool.allocate(2)
    before = snapshot(pool)
    with pytest.raises(ValueError, match="gpu pool: release of free block 5"):
        pool.release([5])
    assert snapshot(pool) == before


def test_retain_of_a_free_block_names_it():
    pool = BlockPool(8, "host")
    pool.allocate(2)
    before = snapshot(pool)
    with pytest.raises(ValueError, match="host pool: retain of free block 6"):
        pool.retain([6])
    assert snapshot(pool) == before


def test_failed_release_or_retain_changes_nothing():
    """A bad id late in the list must not leave the earlier ones half-done."""
    pool = BlockPool(8)
    pool.allocate(4)                     # [0, 4)
    pool.retain([2])
    before = snapshot(pool)
    with pytest.raises(ValueError, match="release of free block 6"):
        pool.release([0, 1, 2, 6])
    assert snapshot(pool) == before
    pool.check_integrity()
    with pytest.raises(ValueError, match="release of free block 3"):
        pool.release([3, 3])             # the second one finds it already free
    assert snapshot(pool) == before
    pool.check_integrity()
    with pytest.raises(ValueError, match="retain of free block 7"):
        pool.retain([0, 1, 7])
    assert snapshot(pool) == before
    pool.check_integrity()


# --------------------------------------------------------------------------- runs_of
@pytest.mark.parametrize("table, runs", [
    ([], []),
    ([7], [G(7, 1)]),
    ([0, 1, 2, 3], [G(0, 4)]),
    ([3, 4, 5, 9, 10, 2], [G(3, 3), G(9, 2), G(2, 1)]),
    ([5, 4, 3], [G(5, 1), G(4, 1), G(3, 1)]),
    ([1, 1], [G(1, 1), G(1, 1)]),
])
def test_runs_of(table, runs):
    assert runs_of(table) == runs


# --------------------------------------------------------------------------- integrity
def _pool_for_corruption() -> BlockPool:
    pool = BlockPool(16)
    pool.allocate(4)                     # [0, 4)
    pool.allocate(4)                     # [8, 12)
    pool.check_integrity()
    assert pool.free_runs() == [G(4, 4), G(12, 4)]
    return pool


def test_integrity_catches_wrong_holder_count():
    pool = _pool_for_corruption()
    expected = list(pool.ref_counts)
    pool.check_integrity(expected)
    pool.ref_counts[9] = 2
    with pytest.raises(AssertionError, match="block 9 has reference count 2, holders account for 1"):
        pool.check_integrity(expected)


def test_integrity_catches_count_on_a_free_block():
    pool = _pool_for_corruption()
    pool.ref_counts[5] = 1
    with pytest.raises(AssertionError, match="block 5 is free but has reference count 1"):
        pool.check_integrity()


def test_integrity_catches_negative_count():
    pool = _pool_for_corruption()
    pool.ref_counts[13] = -1
    with pytest.raises(AssertionError, match="negative reference count at block 13"):
        pool.check_integrity()


def test_integrity_catches_a_lost_free_run():
    pool = _pool_for_corruption()
    del pool._run_len[12]
    del pool._run_start[16]
    with pytest.raises(AssertionError, match="block 12 is not free but has reference count 0"):
        pool.check_integrity()


def test_integrity_catches_touching_runs():
    pool = _pool_for_corruption()
    # Split [4, 8) into [4, 6) and [6, 8): the same blocks, but not maximal.
    del pool._run_len[4]
    del pool._run_start[8]
    pool._add_run(4, 2)
    pool._add_run(6, 2)
    with pytest.raises(AssertionError, match="free run at 6 overlaps or touches the previous one"):
        pool.check_integrity()


def test_integrity_catches_inconsistent_end_index():
    pool = _pool_for_corruption()
    pool._run_start[16] = 11
    with pytest.raises(AssertionError, match="end index of run at 12 is inconsistent"):
        pool.check_integrity()


def test_integrity_catches_missing_heap_entry():
    pool = _pool_for_corruption()
    pool._heap = [e for e in pool._heap if e[1] != 12]
    with pytest.raises(AssertionError, match="run at 12 is missing from the length heap"):
        pool.check_integrity()


def test_integrity_catches_wrong_free_count():
    pool = _pool_for_corruption()
    pool.num_free += 1
    with pytest.raises(AssertionError, match="num_free 9 != 8 free blocks"):
        pool.check_integrity()


def test_heap_compaction_keeps_the_pool_consistent():
    """Many allocations and frees trigger the heap rebuild in ``_take``; placement stays right."""
    pool = BlockPool(64)
    for _ in range(200):
        a = pool.allocate(3)
        b = pool.allocate_one(a[-1])
        pool.release(a + [b])
    assert len(pool._heap) < 100     # 200 rounds push ~600 entries without the rebuild
    assert pool.free_runs() == [G(0, 64)]
    pool.check_integrity()
    assert pool.allocate(5) == [0, 1, 2, 3, 4]
