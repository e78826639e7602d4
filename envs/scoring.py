"""Output-length scorers: the interface between length predictors and whatever ranks by them.

Why: the LTR scheduler (Fu et al., NeurIPS'24, ``../shared/papers.md`` §4) needs only a
*ranking* of requests by expected output length, and so does the env's predicted-rank
feature. A scorer gives each request one number, higher meaning a shorter expected
output. A calibrated noisy oracle (for runs before a predictor is trained) and the
trained transformers ranker (``agents``) both implement it, so LTR and the env do not
care which one they are given.

Scorers see the immutable ``RequestSpec`` (prompt text when the workload has it, the
prompt's token source, the client), never the live request, and are asked for a batch
at a time so a neural scorer can run one forward pass over all new arrivals.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from envs.request import RequestSpec


@runtime_checkable
class Scorer(Protocol):
    """Scores requests: higher = shorter expected output. Deterministic for given specs."""

    name: str

    def score(self, specs: Sequence[RequestSpec]) -> list[float]:
        """One finite float per spec, in the same order."""
        ...
