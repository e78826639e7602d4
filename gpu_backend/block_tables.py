"""Decode block tables kept on the device, one row per sequence, updated incrementally.

Why: a decode batch of 256 sequences at 512 tokens of context names 8,000+ block ids.
Converting them from Python lists to a tensor every iteration costs more host time than
the GPU needs for the whole step. But between two iterations a sequence's table changes
by at most one appended block (every ``block_size`` tokens), so the device keeps a copy
of each sequence's table in a row (a *slot*) and each iteration only sends the new
entries, plus the row index of each sequence in the batch. In the steady state (the same
sequences as the last iteration) the host work is a handful of C-level comparisons.

Contract relied on: the engine's block tables are *live lists that only grow in place*
(``KVCacheManager`` appends to them, and replaces the list object whenever a table is
rebuilt: a new admission, a swap-in, a preemption). A slot is therefore valid while its
sequence presents the same list object, and its first ``synced`` entries are current.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(slots=True)
class TableUpdate:
    """Host arrays for one iteration: the slot of each batch row, and the entries to write."""

    slots: np.ndarray          # [n] row of each sequence in the device table
    upd_slots: np.ndarray      # [u] entries to write: row ...
    upd_cols: np.ndarray       # ... column ...
    upd_vals: np.ndarray       # ... block id
    lens: np.ndarray           # [n] blocks each sequence's table holds (for validation)


class DeviceBlockTables:
    """A ``[slots, width]`` block-id matrix on the device plus the host bookkeeping of which row is whose.

    Row ``pad_slot`` is all ``fill`` (the scratch block): padding rows of a graph batch use it.
    """

    def __init__(self, num_slots: int, width: int, fill: int, device: torch.device, growable: bool = True):
        if num_slots < 1 or width < 1:
            raise ValueError(f"DeviceBlockTables needs >= 1 slot and column, got {num_slots} x {width}")
        self.width = width
        self.fill = fill
        self.growable = growable     # False once CUDA graphs hold the tensor's address
        self.device = device
        self.table = torch.full((num_slots + 1, width), fill, dtype=torch.long, device=device)
        self.pad_slot = num_slots
        self._free = list(range(num_slots - 1, -1, -1))
        self._entries: dict[int, list] = {}       # seq id -> [slot, table list object, synced, last step]
        self._step = 0
        self._last_ids: list[int] | None = None
        self._last_tables: list | None = None
        self._last_lens: np.ndarray | None = None
        self._last_slots: np.ndarray | None = None

    def _grow(self) -> None:
        """Double the rows (rare: more live sequences than slots, none evictable)."""
        n = self.pad_slot
        new = torch.full((2 * n + 1, self.width), self.fill, dtype=torch.long, device=self.device)
        new[:n] = self.table[:n]
        self.table = new
        self._free.extend(range(2 * n - 1, n - 1, -1))
        self.pad_slot = 2 * n

    def _take_slot(self, keep: set[int]) -> int:
        if not self._free:
            stale = sorted((e[3], sid) for sid, e in self._entries.items() if sid not in keep)
            for _, sid in stale[:max(1, len(stale) // 2)]:
                self._free.append(self._entries.pop(sid)[0])
            if not self._free:
                if not self.growable:
                    raise ValueError(f"one batch decodes more than the {self.pad_slot} sequences the device "
                                     f"block table holds; raise the executor's max_num_seqs")
                self._grow()
        return self._free.pop()

    def prepare(self, seq_ids: list[int], tables: list[list[int]]) -> TableUpdate:
        """Assign rows to this iteration's sequences and collect the entries the device lacks."""
        self._step += 1
        n = len(seq_ids)
        width = self.width
        lens = np.fromiter(map(len, tables), dtype=np.int64, count=n)
        us: list[int] = []
        uc: list[int] = []
        uv: list[int] = []
        if (self._last_ids is not None and seq_ids == self._last_ids
                and all(map(operator.is_, tables, self._last_tables))):
            slots = self._last_slots
            for i in np.flatnonzero(lens != self._last_lens).tolist():     # grew since the last iteration
                e = self._entries[seq_ids[i]]
                t = tables[i]
                end = min(len(t), width)
                if end > e[2]:
                    us.extend([e[0]] * (end - e[2]))
                    uc.extend(range(e[2], end))
                    uv.extend(t[e[2]:end])
                    e[2] = end
        else:
            keep = set(seq_ids)
            slot_list = []
            step = self._step
            for sid, t in zip(seq_ids, tables):
                e = self._entries.get(sid)
                if e is None or e[1] is not t:
                    if e is None:
                        e = [self._take_slot(keep), t, 0, step]
                        self._entries[sid] = e
                    e[1] = t
                    e[2] = 0
                end = min(len(t), width)
                if end > e[2]:
                    us.extend([e[0]] * (end - e[2]))
                    uc.extend(range(e[2], end))
                    uv.extend(t[e[2]:end])
                    e[2] = end
                e[3] = step
                slot_list.append(e[0])
            slots = np.asarray(slot_list, dtype=np.int64)
        self._last_ids = list(seq_ids)
        self._last_tables = list(tables)
        self._last_lens = lens
        self._last_slots = slots
        return TableUpdate(slots, np.asarray(us, dtype=np.int64), np.asarray(uc, dtype=np.int64),
                           np.asarray(uv, dtype=np.int64), lens)

    def apply(self, upd_slots: torch.Tensor, upd_cols: torch.Tensor, upd_vals: torch.Tensor) -> None:
        """Write the staged entries (device tensors) into the table."""
        if upd_slots.numel():
            self.table[upd_slots, upd_cols] = upd_vals

    def forget(self) -> None:
        """Drop every row (the device table's contents are then never read before being rewritten)."""
        self._free = list(range(self.pad_slot - 1, -1, -1))
        self._entries.clear()
        self._last_ids = self._last_tables = self._last_lens = self._last_slots = None
