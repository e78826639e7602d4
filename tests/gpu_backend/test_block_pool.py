"""Pin ``gpu_backend.block_pool``: placement of block groups, free-run merging, reference
counts, errors and the integrity check. Every expected block id is computed by hand in
the comment beside it."""

from __future__ import annotations

import bisect
import random

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
    # The only free run [0, 32): a new group starts at its start.
    assert pool.allocate(4) == [0, 1, 2, 3]
    assert pool.free_runs() == [G(4, 28)]
    # In place after block 3: block 4 starts the free run [4, 32).
    assert pool.allocate(4, after=3) == [4, 5, 6, 7]
    assert pool.free_runs() == [G(8, 24)]
    assert pool.allocate(2) == [8, 9]
    assert pool.free_runs() == [G(10, 22)]
    assert pool.release([4, 5, 6]) == 3
    assert pool.free_runs() == [G(4, 3), G(10, 22)]
    # Best fit: [4, 7) (3 long) is the smallest run that holds 2; its start, 4.
    assert pool.allocate(2) == [4, 5]
    assert pool.free_runs() == [G(6, 1), G(10, 22)]
    # In place after 5 gives 6 (the run is only 1 long); the other 2 go to the start of
    # the only run that holds them, [10, 32).
    assert pool.allocate(3, after=5) == [6, 10, 11]
    assert pool.free_runs() == [G(12, 20)]
    # `after` whose successor is taken (block 2): an ordinary new group, at the start of
    # the only run [12, 32).
    assert pool.allocate(3, after=1) == [12, 13, 14]
    assert pool.free_runs() == [G(15, 17)]
    assert pool.release([8, 9]) == 2
    assert pool.free_runs() == [G(8, 2), G(15, 17)]
    # In place comes first: block 15 starts [15, 32), although [8, 10) would fit exactly.
    assert pool.allocate(2, after=14) == [15, 16]
    assert pool.free_runs() == [G(8, 2), G(17, 15)]
    # Out of place: [8, 10) holds exactly 2 and is smaller than [17, 32).
    assert pool.allocate(2) == [8, 9]
    assert pool.free_runs() == [G(17, 15)]
    assert pool.num_free == 15 and pool.num_used == 17
    assert pool.ref_counts == [1] * 17 + [0] * 15
    pool.check_integrity()


def test_best_fit_prefers_a_small_exact_run_over_a_big_one():
    pool = full_pool(12)
    pool.release([1, 2, 3])            # run [1, 4), 3 long
    pool.release([6, 7, 8, 9, 10])     # run [6, 11), 5 long
    # 3 blocks: [1, 4) holds exactly 3, so they go there, not into the larger [6, 11).
    assert pool.allocate(3) == [1, 2, 3]
    assert pool.free_runs() == [G(6, 5)]
    # 2 blocks: the only run, at its start; the rest of it follows them.
    assert pool.allocate(2) == [6, 7]
    assert pool.free_runs() == [G(8, 3)]
    pool.check_integrity()


def test_best_fit_takes_the_smallest_run_that_holds_it_at_its_start():
    pool = full_pool(20)
    pool.release([0, 1])               # [0, 2), 2 long
    pool.release([4, 5, 6, 7, 8, 9])   # [4, 10), 6 long
    pool.release([12, 13, 14, 15])     # [12, 16), 4 long
    assert pool.free_runs() == [G(0, 2), G(4, 6), G(12, 4)]
    # 3 blocks: [0, 2) is too small; of [12, 16) (4) and [4, 10) (6), the smaller, at its
    # start: 12, 13, 14; block 15 is left.
    assert pool.allocate(3) == [12, 13, 14]
    assert pool.free_runs() == [G(0, 2), G(4, 6), G(15, 1)]
    # 2 blocks: [0, 2) fits exactly (smaller than [4, 10)).
    assert pool.allocate(2) == [0, 1]
    assert pool.free_runs() == [G(4, 6), G(15, 1)]
    # 1 block: the smallest run is [15, 16), not the lower [4, 10).
    assert pool.allocate(1) == [15]
    assert pool.free_runs() == [G(4, 6)]
    assert pool.allocate(5) == [4, 5, 6, 7, 8]
    assert pool.free_runs() == [G(9, 1)]
    assert pool.num_free == 1
    pool.check_integrity()


def test_best_fit_ties_go_to_the_lowest_start():
    pool = full_pool(12)
    pool.release([9, 10])              # [9, 11)
    pool.release([1, 2])               # [1, 3)
    pool.release([5, 6])               # [5, 7)
    assert pool.free_runs() == [G(1, 2), G(5, 2), G(9, 2)]
    # Three runs of 2, each holds 2: the lowest start first, whatever the release order.
    assert pool.allocate(2) == [1, 2]
    assert pool.allocate(2) == [5, 6]
    assert pool.allocate(2) == [9, 10]
    assert pool.free_runs() == []
    # A 1-block request among equal runs: the first block of the lowest one.
    pool.release([9, 10])
    pool.release([5, 6])
    assert pool.allocate(1) == [5]
    assert pool.free_runs() == [G(6, 1), G(9, 2)]
    pool.check_integrity()


def test_new_group_starts_at_the_start_of_its_run():
    pool = full_pool(10)
    pool.release([0, 1, 2, 3, 4, 5])   # run [0, 6), something follows it
    assert pool.allocate(2) == [0, 1]
    assert pool.free_runs() == [G(2, 4)]
    pool = full_pool(10)
    pool.release([3, 4, 5, 6, 7])      # run [3, 8), not at block 0: still its start
    assert pool.allocate(2) == [3, 4]
    assert pool.free_runs() == [G(5, 3)]
    pool.check_integrity()


def test_allocate_one_placement():
    pool = BlockPool(16)
    assert pool.allocate_one() == 0                  # the only run's first block
    assert pool.allocate_one(after=0) == 1           # in place
    assert pool.allocate(4) == [2, 3, 4, 5]
    assert pool.allocate(3) == [6, 7, 8]
    pool.release([3, 4])
    assert pool.free_runs() == [G(3, 2), G(9, 7)]
    # after=8: block 9 starts [9, 16), so it is taken in place although [3, 5) is smaller.
    assert pool.allocate_one(after=8) == 9
    assert pool.free_runs() == [G(3, 2), G(10, 6)]
    # after=11: block 12 is free but inside [10, 16), not its start: out of place, the
    # first block of the smallest run [3, 5).
    assert pool.allocate_one(after=11) == 3
    assert pool.free_runs() == [G(4, 1), G(10, 6)]
    assert pool.allocate_one() == 4                  # smallest run [4, 5), taken whole
    assert pool.free_runs() == [G(10, 6)]
    # after=3: block 4 is taken: the smallest (only) run's first block.
    assert pool.allocate_one(after=3) == 10
    assert pool.free_runs() == [G(11, 5)]
    pool.check_integrity()
    # The smallest run wins over a lower, larger one; ties between equal runs go to the
    # lowest start.
    pool2 = full_pool(10)
    pool2.release([8])
    pool2.release([0, 1, 2])
    pool2.release([5])
    assert pool2.free_runs() == [G(0, 3), G(5, 1), G(8, 1)]
    assert pool2.allocate_one() == 5
    assert pool2.allocate_one() == 8
    assert pool2.allocate_one() == 0                 # now [0, 3) is the only run
    assert pool2.free_runs() == [G(1, 2)]
    pool2.check_integrity()


def test_allocate_one_equals_allocate_of_one():
    a, b = BlockPool(40), BlockPool(40)
    for after in (None, 0, None, 17, None, 3, None):
        assert a.allocate_one(after) == b.allocate(1, after)[0]
    assert snapshot(a) == snapshot(b)
    # On fragmented free space too: blocks 0..6 are held; free [1, 3), [5, 6), [10, 13),
    # [20, 21) and [27, 40).
    for pool in (a, b):
        assert pool.allocate(20) == list(range(7, 27))
        pool.release([1, 2, 5, 10, 11, 12, 20])
        assert pool.free_runs() == [G(1, 2), G(5, 1), G(10, 3), G(20, 1), G(27, 13)]
    for after in (None, 0, 4, None, None, 30, None):
        assert a.allocate_one(after) == b.allocate(1, after)[0]
    assert snapshot(a) == snapshot(b)
    a.check_integrity()


def test_allocate_zero_and_negative():
    pool = BlockPool(4)
    assert pool.allocate(0) == []
    assert pool.free_runs() == [G(0, 4)]
    with pytest.raises(ValueError, match="gpu pool: cannot allocate -1 blocks"):
        pool.allocate(-1)


# --------------------------------------------------------------------------- splitting
def test_split_across_runs_largest_whole_then_best_fit():
    pool = full_pool(20)
    pool.release([0, 1, 2])            # [0, 3)
    pool.release([4, 5, 6, 7, 8])      # [4, 9)
    pool.release([10, 11])             # [10, 12)
    pool.release([13, 14, 15, 16])     # [13, 17)
    assert pool.free_runs() == [G(0, 3), G(4, 5), G(10, 2), G(13, 4)]
    # 9 blocks: no run holds them; the largest, [4, 9), whole; the other 4 best fit:
    # [13, 17) holds exactly 4.
    assert pool.allocate(9) == [4, 5, 6, 7, 8, 13, 14, 15, 16]
    assert pool.free_runs() == [G(0, 3), G(10, 2)]
    # 4 blocks: no run holds them; the largest, [0, 3), whole; the last 1 at the start of
    # the only run left, [10, 12).
    assert pool.allocate(4) == [0, 1, 2, 10]
    assert pool.free_runs() == [G(11, 1)]
    assert pool.num_free == 1
    pool.check_integrity()


def test_split_across_runs_ties_between_largest_runs_go_to_the_highest_start():
    pool = full_pool(12)
    pool.release([0, 1, 2])            # [0, 3)
    pool.release([4, 5, 6])            # [4, 7)
    pool.release([8, 9])               # [8, 10)
    assert pool.free_runs() == [G(0, 3), G(4, 3), G(8, 2)]
    # 7 blocks, no run holds them: of the two largest runs (3 each) the higher, [4, 7),
    # whole; 4 left, still no run holds them: [0, 3) whole; the last 1 best fit, [8, 10).
    assert pool.allocate(7) == [4, 5, 6, 0, 1, 2, 8]
    assert pool.free_runs() == [G(9, 1)]
    assert pool.ref_counts == [1] * 9 + [0] + [1, 1]
    pool.check_integrity()


def test_split_after_in_place_part():
    pool = full_pool(16)
    pool.release([4, 5])               # [4, 6)
    pool.release([8, 9, 10, 11, 12])   # [8, 13)
    # after=3: blocks 4, 5 in place; the remaining 4 at the start of [8, 13), the only
    # run that holds them.
    assert pool.allocate(6, after=3) == [4, 5, 8, 9, 10, 11]
    assert pool.free_runs() == [G(12, 1)]
    pool.check_integrity()


def test_in_place_part_then_largest_runs_whole():
    pool = full_pool(16)
    pool.release([2, 3])               # [2, 4)
    pool.release([6, 7, 8])            # [6, 9)
    pool.release([11, 12, 13, 14])     # [11, 15)
    # after=1: 2, 3 in place (all of [2, 4)); 6 left, no run holds them: [11, 15) whole,
    # then the last 2 best fit at the start of [6, 9).
    assert pool.allocate(8, after=1) == [2, 3, 11, 12, 13, 14, 6, 7]
    assert pool.free_runs() == [G(8, 1)]
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
    b = pool.allocate(4)                 # the start of the only run [4, 16)
    assert (a, b) == ([0, 1, 2, 3], [4, 5, 6, 7])
    pool.release(a)
    assert pool.free_runs() == [G(0, 4), G(8, 8)]
    # 5 blocks do not fit in [0, 4): the start of [8, 16).
    assert pool.allocate(5) == [8, 9, 10, 11, 12]
    # 3 blocks: [13, 16) holds exactly 3 and is smaller than the released [0, 4): it wins.
    assert pool.free_runs() == [G(0, 4), G(13, 3)]
    assert pool.allocate(3) == [13, 14, 15]
    # The released run is reused at its start.
    assert pool.allocate(3) == [0, 1, 2]
    assert pool.free_runs() == [G(3, 1)]
    pool.check_integrity()


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
    assert pool.allocate(4) == [0, 1, 2, 3]
    b = pool.allocate(4)
    assert b == [4, 5, 6, 7]
    assert pool.allocate(4) == [8, 9, 10, 11]
    pool.release(b)
    pool.check_integrity()
    assert pool.free_runs() == [G(4, 4), G(12, 4)]
    assert pool._by_size == [(4, 4), (4, 12)]
    return pool


def _add_run(pool: BlockPool, start: int, length: int) -> None:
    """File a free run in all three indexes (no merging, no count changes)."""
    pool._run_len[start] = length
    pool._run_start[start + length] = start
    bisect.insort(pool._by_size, (length, start))


def _drop_run(pool: BlockPool, start: int) -> None:
    """Remove a free run from all three indexes (no count changes)."""
    length = pool._run_len.pop(start)
    del pool._run_start[start + length]
    pool._by_size.remove((length, start))


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
    _drop_run(pool, 12)                  # gone from every index, counts still 0
    with pytest.raises(AssertionError, match="block 12 is not free but has reference count 0"):
        pool.check_integrity()


def test_integrity_catches_touching_runs():
    pool = _pool_for_corruption()
    # Split [4, 8) into [4, 6) and [6, 8): the same blocks, but not maximal.
    _drop_run(pool, 4)
    _add_run(pool, 4, 2)
    _add_run(pool, 6, 2)
    with pytest.raises(AssertionError, match="free run at 6 overlaps or touches the previous one"):
        pool.check_integrity()


def test_integrity_catches_inconsistent_end_index():
    pool = _pool_for_corruption()
    pool._run_start[16] = 11
    with pytest.raises(AssertionError, match="end index of run at 12 is inconsistent"):
        pool.check_integrity()


def test_integrity_catches_missing_size_index_entry():
    pool = _pool_for_corruption()
    pool._by_size.remove((4, 12))
    with pytest.raises(AssertionError, match="run at 12 is missing from the size index"):
        pool.check_integrity()


def test_integrity_catches_wrong_length_in_size_index():
    pool = _pool_for_corruption()
    pool._by_size[1] = (5, 12)           # still sorted, but the run is 4 long
    with pytest.raises(AssertionError, match="run at 12 is missing from the size index"):
        pool.check_integrity()


def test_integrity_catches_a_stale_size_index_entry():
    pool = _pool_for_corruption()
    bisect.insort(pool._by_size, (2, 0))  # no such run
    with pytest.raises(AssertionError, match="the run indexes differ in size"):
        pool.check_integrity()


def test_integrity_catches_wrong_free_count():
    pool = _pool_for_corruption()
    pool.num_free += 1
    with pytest.raises(AssertionError, match="num_free 9 != 8 free blocks"):
        pool.check_integrity()


# --------------------------------------------------------------------------- against a model
def _model_runs(counts: list[int]) -> list[tuple[int, int]]:
    """Maximal runs of zero counts as (start, length), recomputed from scratch."""
    runs: list[tuple[int, int]] = []
    i, n = 0, len(counts)
    while i < n:
        if counts[i]:
            i += 1
            continue
        j = i
        while j < n and not counts[j]:
            j += 1
        runs.append((i, j - i))
        i = j
    return runs


def _model_allocate(counts: list[int], n: int, after: int | None) -> list[int]:
    """The placement policy written out plainly on the counts (which it updates): in place
    after ``after`` if block ``after + 1`` starts a free run; then best fit, the smallest run
    that holds the rest (lowest start on ties), at its start; else the largest run whole
    (highest start on ties), and again."""
    out: list[int] = []

    def take(start: int, k: int) -> None:
        out.extend(range(start, start + k))
        counts[start:start + k] = [1] * k

    if after is not None:
        length = dict(_model_runs(counts)).get(after + 1)
        if length:
            k = min(n, length)
            take(after + 1, k)
            n -= k
    while n:
        runs = [(length, start) for start, length in _model_runs(counts)]
        fits = [r for r in runs if r[0] >= n]
        if fits:
            take(min(fits)[1], n)
            return out
        length, start = max(runs)
        take(start, length)
        n -= length
    return out


def test_placement_matches_a_plain_model_of_the_policy():
    """Random allocations (some after a held group's last block, some of one block through
    ``allocate_one``), retains and releases on a small pool; every returned id list, the
    counts, the free runs and the size index equal a from-scratch model."""
    rng = random.Random(11)
    pool = BlockPool(48)
    counts = [0] * 48
    held: list[list[int]] = []
    seen = {"allocations": 0, "refused": 0}
    for step in range(4000):
        op = rng.random()
        if op < 0.5:
            n = rng.randint(1, 9)
            after = None
            r = rng.random()
            if held and r < 0.5:
                after = rng.choice(held)[-1]
            elif r < 0.6:
                after = rng.randrange(48)
            one = n == 1 and rng.random() < 0.5
            if n > pool.num_free:
                before = snapshot(pool)
                with pytest.raises(OutOfBlocksError):
                    pool.allocate_one(after) if one else pool.allocate(n, after)
                assert snapshot(pool) == before
                seen["refused"] += 1
                continue
            want = _model_allocate(counts, n, after)
            got = [pool.allocate_one(after)] if one else pool.allocate(n, after)
            assert got == want, (step, n, after)
            held.append(got)
            seen["allocations"] += 1
        elif op < 0.6 and held:
            blocks = rng.choice(held)
            pool.retain(blocks)
            for b in blocks:
                counts[b] += 1
            held.append(list(blocks))
        elif held:
            blocks = held.pop(rng.randrange(len(held)))
            pool.release(blocks)
            for b in blocks:
                counts[b] -= 1
        assert pool.ref_counts == counts
        assert pool.free_runs() == [G(s, l) for s, l in _model_runs(counts)]
        assert pool._by_size == sorted((l, s) for s, l in _model_runs(counts))
        assert pool.num_free == counts.count(0)
    assert seen["allocations"] > 1000 and seen["refused"] > 100
    pool.check_integrity()
    for blocks in held:
        pool.release(blocks)
    assert pool.free_runs() == [G(0, 48)]
    pool.check_integrity()
    assert pool.allocate(5) == [0, 1, 2, 3, 4]
