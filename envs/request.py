"""What a workload hands the engine: one immutable ``RequestSpec`` per request.

A spec is the request as a client sent it (who, when, what prompt, how long the answer
will be, which SLOs); the engine wraps it in a mutable ``envs.engine.Request`` that
tracks the serving state. Keeping the two apart lets one generated workload be replayed
under many policies, seeds and backends without copying.
"""

from __future__ import annotations

from dataclasses import dataclass

from envs.tokens import TokenSource


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request of a workload.

    ``output_len`` is the number of tokens the response will have (taken from the trace,
    as in every serving benchmark). Policies never see it unless they are oracles.
    ``parent_id`` makes this request wait for another one to finish; it then arrives
    ``think_time_s`` after that finish or at ``arrival_time``, whichever is later
    (a conversation's next turn, an agent's next call).
    """

    request_id: int
    client_id: int
    arrival_time: float
    prompt: TokenSource
    output_len: int
    prompt_text: str | None = None
    output_tokens: TokenSource | None = None  # the response's content, when a workload knows it
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    online: bool = True
    parent_id: int | None = None
    think_time_s: float = 0.0

    def __post_init__(self) -> None:
        if self.output_len < 1:
            raise ValueError(f"request {self.request_id}: output_len must be >= 1, got {self.output_len}")
        if self.prompt.length < 1:
            raise ValueError(f"request {self.request_id}: the prompt must have at least 1 token")
        if not (self.arrival_time >= 0.0):  # also rejects NaN
            raise ValueError(f"request {self.request_id}: arrival_time must be >= 0, got {self.arrival_time}")
        if self.output_tokens is not None and self.output_tokens.length < self.output_len:
            raise ValueError(
                f"request {self.request_id}: output_tokens has {self.output_tokens.length} tokens, "
                f"fewer than output_len {self.output_len}")
        for name in ("slo_ttft_s", "slo_tpot_s"):
            v = getattr(self, name)
            if v is not None and not (v > 0.0):
                raise ValueError(f"request {self.request_id}: {name} must be > 0, got {v}")
        if self.think_time_s < 0.0 or self.think_time_s != self.think_time_s:
            raise ValueError(f"request {self.request_id}: think_time_s must be >= 0, got {self.think_time_s}")

    @property
    def prompt_len(self) -> int:
        return self.prompt.length
