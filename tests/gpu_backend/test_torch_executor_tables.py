"""Pin ``gpu_backend.block_tables.DeviceBlockTables``: rows follow their sequences' live block
tables with only the new entries sent, a replaced table is resent whole, stale rows are
reused, and the device matrix always equals the tables it mirrors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpu_backend.block_tables import DeviceBlockTables


def sync(t: DeviceBlockTables, ids, tables):
    upd = t.prepare(ids, tables)
    t.apply(torch.from_numpy(upd.upd_slots), torch.from_numpy(upd.upd_cols), torch.from_numpy(upd.upd_vals))
    rows = t.table[torch.from_numpy(upd.slots)]
    for i, tab in enumerate(tables):
        assert rows[i, :len(tab)].tolist() == tab[:t.width]
    return upd


def test_steady_state_sends_only_appended_entries():
    t = DeviceBlockTables(8, 6, fill=99, device=torch.device("cpu"))
    a, b = [3, 4], [7]
    upd = sync(t, [10, 11], [a, b])
    assert upd.upd_vals.tolist() == [3, 4, 7] and upd.lens.tolist() == [2, 1]
    upd = sync(t, [10, 11], [a, b])
    assert upd.upd_vals.size == 0                       # nothing changed: nothing sent
    b.append(8)
    upd = sync(t, [10, 11], [a, b])
    assert (upd.upd_slots.tolist(), upd.upd_cols.tolist(), upd.upd_vals.tolist()) == ([upd.slots[1]], [1], [8])
    assert t.table[t.pad_slot].tolist() == [99] * 6


def test_a_replaced_table_is_resent_and_a_reordered_batch_keeps_rows():
    t = DeviceBlockTables(8, 6, fill=99, device=torch.device("cpu"))
    a, b = [3, 4, 5], [7]
    first = sync(t, [1, 2], [a, b]).slots.tolist()
    a2 = [20, 21, 22]                                   # same length, new list (a swap-in, a recompute)
    upd = sync(t, [2, 1], [b, a2])
    assert upd.slots.tolist() == first[::-1]
    assert upd.upd_vals.tolist() == [20, 21, 22]


def test_stale_rows_are_reused_and_the_table_grows_only_when_allowed():
    t = DeviceBlockTables(2, 4, fill=99, device=torch.device("cpu"))
    sync(t, [1, 2], [[1], [2]])
    upd = sync(t, [3], [[5, 6]])                        # no free row: a stale one is taken
    assert upd.slots[0] in (0, 1)
    sync(t, [1, 2, 3, 4, 5], [[1], [2], [5, 6], [8], [9]])   # more live sequences than rows: grows
    assert t.pad_slot >= 5 and t.table[t.pad_slot].tolist() == [99] * 4
    fixed = DeviceBlockTables(1, 4, fill=99, device=torch.device("cpu"), growable=False)
    with pytest.raises(ValueError, match="more than the 1 sequences the device block table holds"):
        fixed.prepare([1, 2], [[1], [2]])


def test_tables_longer_than_the_width_are_cut():
    t = DeviceBlockTables(4, 3, fill=0, device=torch.device("cpu"))
    upd = sync(t, [1], [[4, 5, 6, 7]])
    assert upd.upd_vals.tolist() == [4, 5, 6] and np.array_equal(upd.lens, [4])
