"""What one simulated or real run leaves behind, before any statistic is taken.

The engine fills these plain records as it goes; ``envs.metrics`` turns them into the
numbers a user reads (TTFT, TPOT, ITL, latency percentiles, throughput, fairness, SLO
attainment). Keeping raw records separate from statistics means a new metric never
needs a new run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class RequestRecord:
    """The life of one request. Times are seconds on the run's clock; NaN where it never happened."""

    request_id: int
    client_id: int
    arrival_time: float
    prompt_len: int
    output_len: int                   # tokens the response was to have
    online: bool = True
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    num_output_tokens: int = 0        # tokens produced so far (== output_len once finished)
    first_token_time: float = math.nan
    finish_time: float = math.nan
    cached_tokens: int = 0            # prompt tokens served from the prefix cache, summed over admissions
    prefill_tokens_computed: int = 0  # tokens actually computed in prefill, recomputation included
    num_preemptions: int = 0
    max_itl_s: float = 0.0            # the longest gap between two consecutive output tokens
    rejected_reason: str | None = None

    @property
    def finished(self) -> bool:
        return not math.isnan(self.finish_time)

    @property
    def rejected(self) -> bool:
        return self.rejected_reason is not None


@dataclass(slots=True)
class ItlLog:
    """Every inter-token latency of the run, stored compactly.

    ``samples`` holds single gaps. A closed-form decode run of ``k`` iterations whose
    durations are ``first + i * step`` (``i = 0..k-1``), each producing one token for each
    of ``width`` requests, is one row of ``runs`` instead of ``k * width`` samples.
    """

    samples: list[float] = field(default_factory=list)
    runs: list[tuple[float, float, int, int]] = field(default_factory=list)  # (first, step, k, width)

    def to_array(self) -> np.ndarray:
        parts = [np.asarray(self.samples, dtype=np.float64)]
        for first, step, k, width in self.runs:
            if k > 0 and width > 0:
                parts.append(np.repeat(first + step * np.arange(k, dtype=np.float64), width))
        return np.concatenate(parts) if parts else np.zeros(0)


@dataclass(slots=True)
class EngineCounters:
    """Totals the engine accumulates over a run."""

    iterations: int = 0
    busy_time_s: float = 0.0
    output_tokens: int = 0            # tokens sampled (all requests, finished or not)
    preemptions_swap: int = 0
    preemptions_recompute: int = 0
    swap_out_bytes: int = 0
    swap_in_bytes: int = 0
    swap_out_copies: int = 0
    swap_in_copies: int = 0
    prompt_tokens_admitted: int = 0   # prompt (and history) tokens looked up in the prefix cache at admission
    prompt_tokens_cached: int = 0     # of those, tokens found in the cache

    @property
    def preemptions(self) -> int:
        return self.preemptions_swap + self.preemptions_recompute


@dataclass(slots=True)
class RunRecord:
    """Everything ``envs.metrics.compute_metrics`` needs."""

    requests: list[RequestRecord]
    itl: ItlLog
    counters: EngineCounters
    start_time: float = 0.0
    end_time: float = 0.0             # the clock when the run stopped
