"""CUDA-graph replays of a ranker's scoring forward, one graph per padded batch shape.

Why: SmolLM2-135M's forward launches about 2,000 kernels (30 decoder layers, run eagerly by
transformers). On an H200 the host spends 21-28 ms launching them whatever the batch
(BENCHMARKS.md, issue #5), several simulated engine iterations per arrival batch. Captured
once per padded shape and replayed, a call costs one graph launch plus the GPU's own time.

A batch is padded to a bucket: rows to the next power of two (at most ``max_rows``; larger
batches run in chunks), tokens to the next multiple of ``token_step`` (at most the ranker's
``max_length``). A padding row is one pad token with mask 1 (a row with no unmasked token
would make a fully masked softmax); padding columns have mask 0, and with right padding and
causal attention no real token attends to them, so a prompt's score does not depend on its
bucket beyond floating-point rounding. A bucket is captured the first time it is used, after
a warm-up run on a side stream; all graphs share one memory pool.

``capture=False`` runs the same padded buckets eagerly (no graphs): how the padding is
checked on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


def right_padded(id_lists: Sequence[Sequence[int]], pad_token_id: int, rows: int, tokens: int):
    """``(input_ids, attention_mask)`` long tensors of shape ``(rows, tokens)``, each list right-padded.

    Rows past the lists (padding rows) hold one unmasked pad token: a row with no unmasked
    token would make a fully masked softmax.
    """
    import torch

    ids = torch.full((rows, tokens), pad_token_id, dtype=torch.long)
    mask = torch.zeros((rows, tokens), dtype=torch.long)
    for row, seq in enumerate(id_lists):
        if not seq:
            raise ValueError(f"batch row {row} has no tokens")
        ids[row, :len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, :len(seq)] = 1
    mask[len(id_lists):, 0] = 1
    return ids, mask


@dataclass
class _Bucket:
    input_ids: Any          # (rows, tokens) long tensor on the device, refilled before each replay
    attention_mask: Any     # (rows, tokens) long tensor on the device
    graph: Any = None       # torch.cuda.CUDAGraph, None when not capturing
    scores: Any = None      # the graph's output tensor (rows,)


class GraphedScorer:
    """Scores token-id lists with ``module`` through per-bucket CUDA graphs (see the module docstring)."""

    def __init__(self, module: Any, pad_token_id: int, max_length: int, max_rows: int = 64, token_step: int = 64,
                 capture: bool = True):
        import torch

        if max_rows < 1 or max_rows & (max_rows - 1):
            raise ValueError(f"max_rows must be a power of two >= 1, got {max_rows}")
        if token_step < 1:
            raise ValueError(f"token_step must be >= 1 token, got {token_step}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1 token, got {max_length}")
        self.device = next(module.parameters()).device
        if capture and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the ranker on a CUDA device; it is on {self.device}")
        self.module = module
        self.pad_token_id = int(pad_token_id)
        self.max_length = int(max_length)
        self.max_rows = int(max_rows)
        self.token_step = int(token_step)
        self.capture = capture
        self._buckets: dict[tuple[int, int], _Bucket] = {}
        self._pool = torch.cuda.graph_pool_handle() if capture else None

    @property
    def num_graphs(self) -> int:
        """How many bucket shapes have been captured (or, without capture, used)."""
        return len(self._buckets)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """The (rows, tokens) buckets captured so far, sorted."""
        return sorted(self._buckets)

    def bucket_shape(self, rows: int, tokens: int) -> tuple[int, int]:
        """The padded (rows, tokens) a batch of ``rows`` prompts of at most ``tokens`` tokens runs as."""
        if not 1 <= rows <= self.max_rows:
            raise ValueError(f"a bucket holds 1 to {self.max_rows} rows, got {rows}")
        if not 1 <= tokens <= self.max_length:
            raise ValueError(f"a prompt has 1 to {self.max_length} tokens here, got {tokens}")
        padded_rows = 1 << (rows - 1).bit_length()
        padded_tokens = min(-(-tokens // self.token_step) * self.token_step, self.max_length)
        return padded_rows, padded_tokens

    def prepare(self, rows: int) -> None:
        """Capture now every bucket a batch of ``rows`` prompts can take (so no capture lands in a timed call)."""
        import torch

        self.bucket_shape(rows, 1)  # checks rows
        with torch.inference_mode():
            for tokens in range(1, self.max_length + 1, self.token_step):
                shape = self.bucket_shape(rows, tokens)
                if shape not in self._buckets:
                    self._new_bucket(shape)

    def __call__(self, id_lists: Sequence[Sequence[int]]) -> np.ndarray:
        """One float64 score per token-id list, in the lists' order."""
        import torch

        out = np.empty(len(id_lists), dtype=np.float64)
        order = sorted(range(len(id_lists)), key=lambda i: (len(id_lists[i]), i))
        with torch.inference_mode():
            for start in range(0, len(order), self.max_rows):
                rows = order[start:start + self.max_rows]
                out[rows] = self._run([id_lists[i] for i in rows])
        return out

    def _run(self, id_lists: list[Sequence[int]]) -> np.ndarray:
        # an empty prompt is refused by right_padded, naming its row
        shape = self.bucket_shape(len(id_lists), max(1, *(len(ids) for ids in id_lists)))
        ids_host, mask_host = right_padded(id_lists, self.pad_token_id, *shape)
        bucket = self._buckets.get(shape)
        if bucket is None:
            bucket = self._new_bucket(shape)
        bucket.input_ids.copy_(ids_host)
        bucket.attention_mask.copy_(mask_host)
        if bucket.graph is not None:
            bucket.graph.replay()
            scores = bucket.scores
        else:
            scores = self.module(bucket.input_ids, bucket.attention_mask)
        return scores[:len(id_lists)].double().cpu().numpy()

    def _new_bucket(self, shape: tuple[int, int]) -> _Bucket:
        import torch

        ids, mask = right_padded([], self.pad_token_id, *shape)
        bucket = _Bucket(ids.to(self.device), mask.to(self.device))
        if self.capture:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up: kernel selection and allocations happen outside the capture
                    self.module(bucket.input_ids, bucket.attention_mask)
            torch.cuda.current_stream(self.device).wait_stream(side)
            bucket.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(bucket.graph, pool=self._pool):
                bucket.scores = self.module(bucket.input_ids, bucket.attention_mask)
        self._buckets[shape] = bucket
        return bucket
