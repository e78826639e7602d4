"""An iteration in flight: what ``TorchExecutor.launch`` enqueued and ``collect`` waits for.

With asynchronous scheduling (``EngineConfig.async_scheduling``, vLLM's ``--async-scheduling``) the
engine builds iteration k+1 while iteration k runs on the GPU, so the host's scheduling and input
staging hide behind the device's work. Two things make that safe here:

- Iteration k+1's decode inputs include the tokens iteration k has not yet sampled. The plan carries
  ``PENDING_TOKEN`` for them, and the executor copies them on the device from k's output
  (``pending_rows``, ``fill_pending``): the copy is ordered after k on the same stream.
- Host buffers that a queued copy still reads are not written again until that copy has run: the
  pinned staging buffer and the pinned buffer the sampled tokens come back in alternate between two
  (``PinnedPair``), and at most one iteration is in flight while another is launched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from gpu_backend.plan import PENDING_TOKEN


@dataclass(slots=True)
class LaunchedStep:
    """One launched iteration. On CUDA its events mark the device timeline; on the CPU it ran at launch."""

    t0: float                                   # host clock at launch
    swap: object                                # the store's swap ticket
    seq_ids: list[int]                          # sequences sampled, in the order of ``tokens``
    tokens: torch.Tensor | None = None          # pinned host copy (CUDA) or the tokens themselves (CPU)
    begin: torch.cuda.Event | None = None       # recorded before anything of this iteration
    compute: tuple | None = None                # (start, end) events of the forward pass
    done: torch.cuda.Event | None = None        # after the sampled tokens reached the host buffer
    after: "LaunchedStep | None" = None         # the iteration still in flight when this one was launched
    host_s: float = 0.0                         # CPU: seconds the iteration took (it ran inside launch)
    compute_s: float = 0.0                      # CPU: seconds of the forward pass
    collected: bool = field(default=False)


class PinnedPair:
    """Two pinned int64 host buffers used in turn: one may still feed (or be fed by) a queued copy while
    the other is written. ``next(n)`` returns the one not used last, grown to ``n`` elements."""

    def __init__(self, size: int, pinned: bool):
        self.pinned = pinned
        self.buffers = [torch.empty(size, dtype=torch.long, pin_memory=pinned) for _ in range(2)]
        self.turn = 0

    def next(self, n: int) -> torch.Tensor:
        self.turn ^= 1
        buf = self.buffers[self.turn]
        if buf.numel() < n:
            buf = torch.empty(max(n, 2 * buf.numel()), dtype=torch.long, pin_memory=self.pinned)
            self.buffers[self.turn] = buf
        return buf


def pending_rows(seq_ids, ids: np.ndarray, last_seq_ids: list[int]) -> np.ndarray | None:
    """For each decode row, the row of the previous iteration's sampled tokens (of ``last_seq_ids``, in order)
    its input comes from (``PENDING_TOKEN`` ids), -1 where the plan gives the id; None when no id is pending."""
    waiting = np.flatnonzero(ids == PENDING_TOKEN)
    if not waiting.size:
        return None
    last_rows = {sid: i for i, sid in enumerate(last_seq_ids)}
    src = np.full(ids.size, -1, dtype=np.int64)
    for i in waiting.tolist():
        row = last_rows.get(seq_ids[i])
        if row is None:
            raise ValueError(f"sequence {seq_ids[i]}: its decode input id is pending ({PENDING_TOKEN}) but the "
                             f"previous iteration did not sample it")
        src[i] = row
    return src


def fill_pending(ids: torch.Tensor, src: torch.Tensor, last_tokens: torch.Tensor) -> None:
    """``ids[i] = last_tokens[src[i]]`` where ``src[i] >= 0`` (device ops, ordered after the iteration that
    wrote ``last_tokens``)."""
    ids.copy_(torch.where(src >= 0, last_tokens.index_select(0, src.clamp(min=0)), ids))
