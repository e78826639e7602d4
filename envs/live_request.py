"""A request while the engine serves it: its spec plus "computed tokens catching up to total tokens".

Every kind of work is one number: a prefill computes prompt tokens, a chunked prefill
some of them, a prefix-cache hit starts ``num_computed_tokens`` above zero, a decode
computes the one token sampled last, and a recompute after preemption starts again
from zero over prompt *and* generated tokens. A step that brings ``num_computed_tokens``
up to ``num_tokens`` samples a new token.
"""

from __future__ import annotations

import math
from enum import IntEnum

from envs.records import RequestRecord
from envs.request import RequestSpec
from envs.tokens import ConcatTokens, ExplicitTokens


class RequestState(IntEnum):
    PENDING = 0    # not arrived yet (or waiting for its parent)
    WAITING = 1    # arrived, holds no KV (new, or preempted by recompute)
    RUNNING = 2    # KV on the GPU
    SWAPPED = 3    # KV in host memory
    FINISHED = 4
    REJECTED = 5


class Request:
    """The engine's mutable view of one request. Policies read it; only the engine writes it.

    The target output length is kept in ``_target_output_len``: policies must not read it
    unless they are oracles (``SchedulerView.oracle_output_len``).
    """

    __slots__ = ("spec", "request_id", "client_id", "arrival_time", "prompt_len", "_target_output_len",
                 "state", "num_tokens", "num_computed_tokens", "num_output_tokens", "kv", "record",
                 "last_token_time", "last_scheduled_iteration", "touched", "output_token_ids", "_keys")

    def __init__(self, spec: RequestSpec, arrival_time: float):
        self.spec = spec
        self.request_id = spec.request_id
        self.client_id = spec.client_id
        self.arrival_time = arrival_time
        self.prompt_len = spec.prompt.length
        self._target_output_len = spec.output_len
        self.state = RequestState.WAITING
        self.num_tokens = self.prompt_len
        self.num_computed_tokens = 0
        self.num_output_tokens = 0
        self.kv = None
        self.record = RequestRecord(spec.request_id, spec.client_id, arrival_time, self.prompt_len,
                                    spec.output_len, spec.online, spec.slo_ttft_s, spec.slo_tpot_s)
        self.last_token_time = math.nan
        self.last_scheduled_iteration = -1   # the last iteration that computed tokens of it
        self.touched = -1                    # the last iteration the scheduler placed or preempted it
        self.output_token_ids: list[int] | None = None   # real tokens, when a real executor samples them
        self._keys: list[int] | None = None

    # ------------------------------------------------------------ read-only helpers
    @property
    def is_prefilling(self) -> bool:
        """Still computing prompt (or, after a recompute, history) tokens. For policies; the engine
        inlines it. (A running decoder's counters may lag inside a simulator's decode group.)"""
        return self.num_output_tokens == 0 or self.num_computed_tokens < self.num_tokens - 1

    @property
    def remaining_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    def __repr__(self) -> str:
        return (f"Request({self.request_id}, client={self.client_id}, {self.state.name}, "
                f"computed={self.num_computed_tokens}/{self.num_tokens}, out={self.num_output_tokens})")

    # ------------------------------------------------------------ content keys
    def block_keys(self, num_blocks: int, block_size: int) -> list[int]:
        """Content keys of the first ``num_blocks`` full blocks of prompt + generated tokens."""
        keys = self._keys
        if keys is None:
            keys = self.spec.prompt.block_keys(block_size)
            self._keys = keys
        if num_blocks == len(keys):
            return keys  # callers never modify it
        if num_blocks < len(keys):
            return keys[:num_blocks]
        spec = self.spec
        if spec.output_tokens is not None:
            full = ConcatTokens([spec.prompt, spec.output_tokens]).block_keys(block_size)
        elif self.output_token_ids is not None:
            full = ConcatTokens([spec.prompt, ExplicitTokens(self.output_token_ids)]).block_keys(block_size)
        else:
            # Generated content is unknown to the simulator: blocks past the prompt are unique
            # to this request (it may hit them itself after a recompute, nobody else can).
            # Content keys are >= 0, so negative ones, distinct per request and block, never clash.
            base = -(self.request_id << 24) - 1
            full = keys + list(range(base - len(keys), base - num_blocks, -1))
        self._keys = full
        if num_blocks > len(full):
            raise ValueError(f"request {self.request_id}: {num_blocks} blocks asked, content covers {len(full)}")
        return full if num_blocks == len(full) else full[:num_blocks]

    def drop_keys(self) -> None:
        self._keys = None
