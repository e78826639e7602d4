"""CUDA graphs for pure-decode iterations, one per padded batch size.

Why: a decode step of a small model is hundreds of small kernels whose launch cost, not
their work, sets the step time. Capturing the whole decode forward (and the greedy
argmax) once per batch-size bucket and replaying it makes a step one launch. The graphs
read static input buffers: token ids, positions and a block-table matrix that is as wide
as the longest sequence the executor admits; each step copies only the columns it needs.
A batch is padded up to its bucket with rows that point at the store's scratch block, so
padding never writes into a block the bookkeeping handed out.
"""

from __future__ import annotations

import torch

from gpu_backend.block_tables import DeviceBlockTables
from gpu_backend.fused_ops import greedy_tokens
from gpu_backend.llama_forward import ForwardBatch, LlamaForward


def capture_graph(body, pool, side: "torch.cuda.Stream") -> "torch.cuda.CUDAGraph":
    """Run ``body`` once on the ``side`` stream (the warm-up compiles its kernels and must write only the
    scratch block), then capture it into a graph drawing on the memory ``pool``."""
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        body()
    return graph


def bucket_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then steps of 8 to 32, of 16 to 128, of 32 beyond (vLLM-like)."""
    sizes = [s for s in (1, 2, 4) if s < max_batch]
    s = 8
    while s < max_batch:
        sizes.append(s)
        s += 8 if s < 32 else 16 if s < 128 else 32
    sizes.append(max_batch)
    return sizes


class DecodeGraphs:
    """Captured decode steps for every bucket up to ``max_batch`` sequences.

    Static inputs: token ids, positions and each row's slot in the device block table
    (``DeviceBlockTables``, whose tensor must not be reallocated after capture).
    """

    def __init__(self, model: LlamaForward, tables: DeviceBlockTables, max_batch: int):
        store = model.store
        dev = store.device
        self.model = model
        self.tables = tables
        self.block_size = store.block_size
        self.max_batch = max_batch
        self.sizes = bucket_sizes(max_batch)
        self.ids = torch.zeros(max_batch, dtype=torch.long, device=dev)
        self.pos = torch.zeros(max_batch, dtype=torch.long, device=dev)
        self.slots = torch.full((max_batch,), tables.pad_slot, dtype=torch.long, device=dev)
        self.out = torch.zeros(max_batch, dtype=torch.long, device=dev)
        self.graphs: dict = {}
        self._table_ptr = tables.table.data_ptr()
        self._capture()

    def _body(self, n: int) -> None:
        pos = self.pos[:n]
        tables = self.tables.table.index_select(0, self.slots[:n])
        blocks = tables.gather(1, (pos // self.block_size).unsqueeze(1)).squeeze(1)
        batch = ForwardBatch(self.ids[:n], pos, blocks, pos % self.block_size, [], 0, tables, pos + 1, None)
        greedy_tokens(self.model(batch), self.out[:n])

    def _capture(self) -> None:
        torch.cuda.synchronize()
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        for n in reversed(self.sizes):      # largest first: the pool's blocks then fit the rest
            self.graphs[n] = capture_graph(lambda: self._body(n), pool, side)
        torch.cuda.synchronize()

    def bucket(self, n: int) -> int:
        for s in self.sizes:
            if s >= n:
                return s
        raise ValueError(f"decode batch of {n} exceeds the largest captured graph ({self.max_batch})")

    def run(self, staged: torch.Tensor, n: int, bucket: int) -> torch.Tensor:
        """``staged`` (device, int64): ``bucket`` ids, positions and slots, padding rows included
        (padding slots point at the all-scratch row). Returns the device tensor of the ``n`` greedy tokens."""
        if self.tables.table.data_ptr() != self._table_ptr:
            raise RuntimeError("the device block table was reallocated after the graphs were captured")
        self.ids[:bucket].copy_(staged[:bucket])
        self.pos[:bucket].copy_(staged[bucket:2 * bucket])
        self.slots[:bucket].copy_(staged[2 * bucket:3 * bucket])
        self.graphs[bucket].replay()
        return self.out[:n]
