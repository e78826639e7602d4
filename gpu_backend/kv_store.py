"""The KV tensors behind the block ids that ``KVCacheManager`` hands out, and the swap engine.

Layout: one device tensor ``[num_blocks + 1, layers, 2 (K, V), kv_heads, block_size, head_dim]``
and one pinned host tensor of the same shape per block. The block is the outermost
dimension so that a *block group* — a run of contiguous block ids, as ``BlockPool``
allocates them — is one contiguous byte range across every layer: a swap is exactly one
copy per ``GroupMove`` (FastSwitch, papers.md §5), never one per block and layer. Within a
block, one head's ``block_size x head_dim`` tile is contiguous, which is what the decode
attention kernel reads.

The extra last device block (``scratch_block``) is never handed out by the bookkeeping:
padding rows of a CUDA-graph decode batch write their KV there.

Swaps run on a side CUDA stream. The side stream first waits for the compute stream (the
blocks being copied out were written by earlier iterations), copies every swap-out and
then every swap-in (one stream, so a block freed by a swap-out and refilled by a swap-in
is copied in that order), and records an event; the compute stream waits for that event
before the iteration's forward pass, so nothing reads or overwrites a block before its
copy has completed. Because both streams keep that order, an iteration with swaps may be
enqueued while the one before it still runs (asynchronous scheduling): its copies start when
that iteration ends. Each iteration's copy events travel with its ``SwapTiming``. On the CPU
the same copies run synchronously.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from gpu_backend.models import LlamaDims
from gpu_backend.plan import GroupMove


@dataclass(slots=True)
class SwapTiming:
    """What the copies of one iteration cost: bytes, copies, and how long they ran."""

    num_copies: int = 0
    num_bytes: int = 0
    seconds: float = 0.0
    events: tuple | None = field(default=None, repr=False)   # CUDA: (start, end) of the copies, until finished


class PagedKVStore:
    """Device KV blocks plus a pinned host pool, addressed by the bookkeeping's block ids."""

    def __init__(self, dims: LlamaDims, num_gpu_blocks: int, num_host_blocks: int, block_size: int,
                 dtype: torch.dtype, device: torch.device | str):
        if num_gpu_blocks < 1:
            raise ValueError(f"num_gpu_blocks must be >= 1, got {num_gpu_blocks}")
        if num_host_blocks < 0:
            raise ValueError(f"num_host_blocks must be >= 0, got {num_host_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.dims = dims
        self.device = torch.device(device)
        self.dtype = dtype
        self.block_size = block_size
        self.num_gpu_blocks = num_gpu_blocks
        self.num_host_blocks = num_host_blocks
        self.block_shape = (dims.num_layers, 2, dims.num_kv_heads, block_size, dims.head_dim)
        self.scratch_block = num_gpu_blocks
        self.gpu = torch.zeros((num_gpu_blocks + 1, *self.block_shape), dtype=dtype, device=self.device)
        self.is_cuda = self.device.type == "cuda"
        pin = self.is_cuda
        self.host = torch.zeros((max(num_host_blocks, 0), *self.block_shape), dtype=dtype, pin_memory=pin)
        self.bytes_per_block = self.gpu[0].numel() * self.gpu.element_size()
        self.copy_stream = torch.cuda.Stream(self.device) if self.is_cuda else None
        # per layer: (K view, V view), each [num_blocks + 1, kv_heads, block_size, head_dim] (strided)
        self.layers = [(self.gpu[:, l, 0], self.gpu[:, l, 1]) for l in range(dims.num_layers)]

    # ------------------------------------------------------------------ swaps
    def _check_moves(self, moves: Sequence[GroupMove], src_n: int, dst_n: int, what: str) -> None:
        for m in moves:
            if m.num_blocks < 1 or m.src_start < 0 or m.dst_start < 0 \
                    or m.src_start + m.num_blocks > src_n or m.dst_start + m.num_blocks > dst_n:
                raise ValueError(f"{what} {m}: outside the pools ({src_n} source, {dst_n} destination blocks)")

    def start_swaps(self, swap_out: Sequence[GroupMove], swap_in: Sequence[GroupMove]) -> SwapTiming:
        """Issue the plan's copies (one per move), swap-outs first; the compute stream waits for them.

        Returns the timing; on CUDA its ``seconds`` is filled by ``finish_swaps`` after the
        iteration has synchronised.
        """
        self._check_moves(swap_out, self.num_gpu_blocks, self.num_host_blocks, "swap-out")
        self._check_moves(swap_in, self.num_host_blocks, self.num_gpu_blocks, "swap-in")
        timing = SwapTiming(len(swap_out) + len(swap_in),
                            sum(m.num_blocks for m in (*swap_out, *swap_in)) * self.bytes_per_block)
        if not timing.num_copies:
            return timing
        gpu, host = self.gpu, self.host
        if not self.is_cuda:
            t0 = time.perf_counter()
            for m in swap_out:
                host[m.dst_start:m.dst_start + m.num_blocks].copy_(gpu[m.src_start:m.src_start + m.num_blocks])
            for m in swap_in:
                gpu[m.dst_start:m.dst_start + m.num_blocks].copy_(host[m.src_start:m.src_start + m.num_blocks])
            timing.seconds = time.perf_counter() - t0
            return timing
        compute = torch.cuda.current_stream(self.device)
        side = self.copy_stream
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        side.wait_stream(compute)  # the blocks going out were written by earlier forward passes
        with torch.cuda.stream(side):
            start.record(side)
            for m in swap_out:
                host[m.dst_start:m.dst_start + m.num_blocks].copy_(
                    gpu[m.src_start:m.src_start + m.num_blocks], non_blocking=True)
            for m in swap_in:
                gpu[m.dst_start:m.dst_start + m.num_blocks].copy_(
                    host[m.src_start:m.src_start + m.num_blocks], non_blocking=True)
            end.record(side)
        compute.wait_event(end)  # nothing reads or overwrites a block before its copy completes
        timing.events = (start, end)
        return timing

    def finish_swaps(self, timing: SwapTiming) -> None:
        """Wait for ``timing``'s copies and read their device time into it."""
        if timing.events is not None:
            start, end = timing.events
            end.synchronize()
            timing.seconds = start.elapsed_time(end) / 1e3
            timing.events = None

    # ------------------------------------------------------------------ inspection (tests)
    def gpu_blocks(self, block_ids: Sequence[int]) -> torch.Tensor:
        """A CPU copy of the listed device blocks (after the device finished)."""
        if self.is_cuda:
            torch.cuda.synchronize(self.device)
        return self.gpu[torch.as_tensor(list(block_ids), dtype=torch.long, device=self.device)].cpu()

    def host_blocks(self, block_ids: Sequence[int]) -> torch.Tensor:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)
        return self.host[torch.as_tensor(list(block_ids), dtype=torch.long)].clone()
