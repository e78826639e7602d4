"""The contracts between the serving engine and an executor: ``BatchPlan`` in, ``StepResult`` out.

Both executors (the simulator's cost model and the real model on a GPU) take the same
plan, so a schedule that runs in one runs in the other, and the simulator can be judged
against the real thing by replaying identical plans.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, Sequence


@dataclass(frozen=True, slots=True)
class GroupMove:
    """Copy ``num_blocks`` contiguous blocks from ``src_start`` to ``dst_start`` (one copy per move)."""

    src_start: int
    dst_start: int
    num_blocks: int


@dataclass(slots=True)
class PrefillChunk:
    """Compute ``num_tokens`` prompt (or recomputed history) tokens of one sequence."""

    seq_id: int
    start: int                      # tokens whose KV already exists: cached prefix + earlier chunks
    num_tokens: int                 # tokens computed this iteration: positions start .. start+num_tokens-1
    block_table: list[int]          # the sequence's GPU blocks (live list, covers start+num_tokens tokens)
    samples: bool                   # True when the chunk reaches the end, so a token is sampled
    token_ids: Sequence[int] | None = None  # positions start .. start+num_tokens-1; filled for real executors


@dataclass(slots=True)
class BatchPlan:
    """Everything one iteration (or, for the simulator, ``num_steps`` identical decode iterations) does.

    ``num_decode`` sequences decode: each computes the KV of its last token and samples the
    next one; together they read ``decode_context_sum`` KV tokens, the longest of them
    ``decode_context_max``. For executors that run
    the model the parallel lists name them (id, position = context before the step, block
    table); a simulator's plans leave the lists empty. Swap-outs run first, then swap-ins,
    then the compute, which waits for them.
    """

    prefills: list[PrefillChunk] = field(default_factory=list)
    num_decode: int = 0
    decode_seq_ids: list[int] = field(default_factory=list)
    decode_positions: list[int] = field(default_factory=list)     # context length before the step
    decode_block_tables: list[list[int]] = field(default_factory=list)
    decode_input_ids: list[int] | None = None                     # last tokens; filled for real executors
    decode_context_sum: int = 0                                   # sum over decodes of position + 1
    decode_context_max: int = 0                                   # the largest position + 1 (0: not stated)
    swap_in: list[GroupMove] = field(default_factory=list)        # host -> GPU
    swap_out: list[GroupMove] = field(default_factory=list)       # GPU -> host
    num_steps: int = 1                                            # > 1 only for a pure decode run (simulator)

    def __post_init__(self) -> None:
        if self.decode_seq_ids and not self.num_decode:
            self.num_decode = len(self.decode_seq_ids)

    @property
    def num_prefill_tokens(self) -> int:
        return sum(c.num_tokens for c in self.prefills)

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode

    @property
    def is_empty(self) -> bool:
        return not (self.prefills or self.num_decode or self.swap_in or self.swap_out)


@dataclass(slots=True)
class StepResult:
    """What an executor reports for a plan. For ``num_steps = k`` the i-th step (0-based) took
    ``step_first_s + i * step_increment_s`` and ``duration_s`` is their sum plus swap time."""

    duration_s: float
    compute_s: float
    swap_s: float = 0.0
    step_first_s: float = 0.0
    step_increment_s: float = 0.0
    sampled_tokens: dict[int, int] | None = None   # seq_id -> token id, from real executors


def longest_context(context_max: int, context_sum: float, num_decode: int) -> int:
    """The longest decode context as stated, or, where a plan or sample does not state it (0), the
    mean: the least the longest can be. 0 without decodes."""
    if context_max or not num_decode:
        return int(context_max)
    return int(-(-context_sum // num_decode))


class DecodeStepTime(NamedTuple):
    """How long a decode-only step takes, affine in what it reads: ``fixed_s + per_context_token_s *
    context_sum + per_longest_token_s * context_max``.

    Why the longest context: a decode graph splits each sequence's keys into a fixed number of
    parts per batch size, and when all the parts fit on the GPU at once the step lasts as long
    as the longest sequence's parts take, not as long as the sum of the contexts says. Both
    terms grow by a constant per step (the sum by one token per sequence, the longest by one),
    so a run of identical steps still has a closed form."""

    fixed_s: float
    per_context_token_s: float
    per_longest_token_s: float = 0.0

    def first(self, context_sum: int, context_max: int) -> float:
        """The step's time at this context."""
        return self.fixed_s + self.per_context_token_s * context_sum + self.per_longest_token_s * context_max

    def increment(self, num_seqs: int) -> float:
        """How much each further step of the same ``num_seqs`` sequences takes longer."""
        return self.per_context_token_s * num_seqs + self.per_longest_token_s


# A decode input id the previous iteration has not sampled yet (asynchronous scheduling: the engine plans
# iteration k+1 while k runs); an executor with ``launch`` fills it from k's output on the device.
PENDING_TOKEN = -1


@dataclass(frozen=True, slots=True)
class KVCapacity:
    num_gpu_blocks: int
    num_host_blocks: int
    block_size: int
    bytes_per_block: int
    max_model_len: int


class Executor(Protocol):
    """Runs plans. ``supports_multi_step`` executors accept ``num_steps > 1`` decode plans and
    expose ``decode_step_affine`` so the engine can find how many steps fit before an event."""

    supports_multi_step: bool
    needs_token_ids: bool
    needs_block_ids: bool   # False lets the engine assign block ids lazily (plans then carry partial tables)

    def capacity(self) -> KVCapacity: ...

    def execute(self, plan: BatchPlan) -> StepResult: ...

    # optional, for asynchronous scheduling (``EngineConfig.async_scheduling``): ``launch(plan)`` enqueues an
    # iteration and returns a handle, ``collect(handle)`` waits for its ``StepResult``; decode input ids
    # equal to ``PENDING_TOKEN`` take the token the previously launched iteration samples for that sequence.

    def decode_step_affine(self, num_seqs: int) -> DecodeStepTime:
        """A decode-only step's time over ``num_seqs`` sequences, affine in the contexts they read."""
        ...
