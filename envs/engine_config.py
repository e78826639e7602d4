"""The serving engine's settings: token budget, sequence cap, batching rule, preemption, caching.

The batching rules are the four stylised policies of Dai et al. (papers.md §7.2), named
after the systems that introduced them. Any request order (a Policy) can be combined
with any rule.
"""

from __future__ import annotations

from dataclasses import dataclass

BATCHING_RULES = {
    # name: (decode_first, mixed, chunked prefill by default)
    "sarathi": (True, True, True),              # Sarathi-Serve: decodes first, then prefill chunks
    "orca": (False, True, True),                # Orca: prefill chunks first, then decodes
    "vllm": (False, False, False),              # vanilla vLLM: whole prefills when any, else decodes
    "fastertransformer": (True, False, False),  # FasterTransformer: decodes when any, else whole prefills
}
PREEMPTION_MODES = ("recompute", "swap")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """How the engine builds each iteration's batch.

    ``max_num_batched_tokens`` is the per-iteration token budget (Sarathi's chunk size,
    vLLM's ``max_num_batched_tokens``); ``max_num_seqs`` caps the sequences in one batch.
    Preempted requests are swapped to host memory (``swap``; falls back to recompute when
    host memory is full) or dropped and recomputed later (``recompute``, vLLM V1's only
    mode); with prefix caching a recomputed request usually finds its own blocks cached.
    ``multi_step`` lets a simulator advance identical decode iterations in closed form.
    ``lazy_block_ids`` assigns block ids only when needed (see ``gpu_backend.kv_manager``);
    memory pressure is the same either way, swap copy counts may differ.
    ``async_scheduling`` (vLLM's ``--async-scheduling``): whole runs (``ServingEngine.run``) plan the next
    iteration while the current one runs on the device, on an executor that can launch and collect
    (``TorchExecutor``); arrivals join one iteration later (``envs.pipelined_run``).
    """

    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    batching: str = "sarathi"
    chunked_prefill: bool | None = None   # None: the batching rule's default
    preemption_mode: str = "recompute"
    enable_prefix_caching: bool = True
    keep_host_copies: bool = True
    multi_step: bool = True
    lazy_block_ids: bool | None = None    # None: lazy when the executor does not need block ids (simulator)
    num_gpu_blocks: int | None = None     # override the executor's KV capacity
    num_host_blocks: int | None = None
    async_scheduling: bool = False

    def __post_init__(self) -> None:
        if self.batching not in BATCHING_RULES:
            raise ValueError(f"unknown batching rule {self.batching!r}; choose one of {sorted(BATCHING_RULES)}")
        if self.preemption_mode not in PREEMPTION_MODES:
            raise ValueError(f"unknown preemption_mode {self.preemption_mode!r}; choose one of {PREEMPTION_MODES}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        for name in ("num_gpu_blocks", "num_host_blocks"):
            v = getattr(self, name)
            if v is not None and v < (1 if name == "num_gpu_blocks" else 0):
                raise ValueError(f"{name} must be {'>= 1' if name == 'num_gpu_blocks' else '>= 0'}, got {v}")

    @property
    def decode_first(self) -> bool:
        return BATCHING_RULES[self.batching][0]

    @property
    def mixed(self) -> bool:
        return BATCHING_RULES[self.batching][1]

    @property
    def chunking(self) -> bool:
        return BATCHING_RULES[self.batching][2] if self.chunked_prefill is None else self.chunked_prefill
