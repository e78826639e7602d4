"""Serve a trained output-length ranker inside the simulator: an ``envs.scoring.Scorer``.

Why: the LTR scheduler (Fu et al., NeurIPS'24, ``../shared/papers.md`` §4.2-4.3) runs the
predictor once per newly arrived request, batching the new arrivals into one forward
pass, and ranks by the static score. ``RankerScorer`` does that for any consumer of the
``Scorer`` protocol (the ``ltr`` policy, the env's predicted-rank feature): it reads each
request's prompt text, scores the prompts it has not seen before in batches, and caches
scores per prompt text, so a repeated prompt costs nothing and every request is scored
exactly once per scorer.

``EnsembleScorer`` serves several checkpoints as one (the weighted mean of their calibrated
ranks); ``make_ranker_scorer`` builds either from the command line's checkpoints.

``rank_feature()`` adapts it to the env's ``scorer`` argument (one request -> a value in
[0, 1], 1 = shortest): the raw score's position among the checkpoint's validation scores.
Call ``prime(specs)`` first to score a whole workload in batches.

The scorer's own wall time is recorded (``seconds``, ``calls``, ``batches``, ``prompts_scored``) so the
predictor's overhead can be set against the simulated iteration time.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Sequence

from agents.ranker import Ranker
from envs.request import RequestSpec


class RankerScorer:
    """A trained ranker checkpoint behind the ``Scorer`` protocol (higher = shorter)."""

    def __init__(self, checkpoint: str | Path | Ranker, batch_size: int = 64, cache: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.ranker = checkpoint if isinstance(checkpoint, Ranker) else Ranker.load(checkpoint)
        meta = self.ranker.meta
        self.name = f"ranker[{meta.backbone}/{meta.loss or 'untrained'}" + \
            (f" for {meta.target_model}]" if meta.target_model else "]")
        self.batch_size = batch_size
        self.cache = cache  # False: score every request's prompt anew (to measure the predictor's full cost)
        self._cache: dict[str, float] = {}
        self.seconds = 0.0
        self.calls = 0  # score() calls that ran the model (had new prompts)
        self.batches = 0
        self.prompts_scored = 0

    def _text(self, spec: RequestSpec) -> str:
        if spec.prompt_text is None:
            raise ValueError(f"{self.name}: request {spec.request_id} has no prompt text; the ranker reads "
                             "prompts, so serve a workload that carries them (e.g. alpaca-eval-<model>)")
        return spec.prompt_text

    def score(self, specs: Sequence[RequestSpec]) -> list[float]:
        """One score per spec; prompts not seen before are scored in batches of ``batch_size``."""
        texts = [self._text(s) for s in specs]
        if not self.cache:
            self._cache.clear()
        new = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if new:
            t0 = time.perf_counter()
            scores = self.ranker.score(new, self.batch_size)
            self.seconds += time.perf_counter() - t0
            self.calls += 1
            self.batches += -(-len(new) // self.batch_size)
            self.prompts_scored += len(new)
            self._cache.update(zip(new, scores.tolist()))
        return [self._cache[t] for t in texts]

    def prime(self, specs: Sequence[RequestSpec]) -> None:
        """Score every spec's prompt now (in batches), so later calls hit the cache."""
        self.score(specs)

    def rank_feature(self) -> Callable[[RequestSpec], float]:
        """``spec -> rank in [0, 1]`` (1 = shortest) for the env's ``scorer`` argument."""
        meta = self.ranker.meta

        def feature(spec: RequestSpec) -> float:
            return meta.rank_of(self.score([spec])[0])

        meta.rank_of(0.0)  # fail now, not inside the env, when the checkpoint has no calibration
        return feature


class EnsembleScorer:
    """Several trained rankers behind one ``Scorer``: the weighted mean of their calibrated ranks.

    Why: on AlpacaEval the best predictor found is a rank average of rankers of two backbones
    (BENCHMARKS.md, issue #5), weights chosen on validation prompts by
    ``benchmarks/ranker_ensemble.py``. Offline, ``agents.ranker_ensemble.rank_average`` ranks a
    whole prompt set at once; serving scores arrivals a few at a time, so each member's raw
    score becomes its rank among that checkpoint's own validation scores (``RankerMeta.rank_of``,
    in [0, 1], 1 = shortest) and the ensemble's score is the weighted mean of those ranks
    (also in [0, 1], higher = shorter). Every member needs that calibration.
    """

    def __init__(self, members: Sequence[RankerScorer], weights: Sequence[float] | None = None):
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two rankers, got {len(members)}")
        if weights is None:
            weights = [1.0] * len(members)
        w = [float(x) for x in weights]
        if len(w) != len(members):
            raise ValueError(f"got {len(w)} ranker weights for {len(members)} rankers")
        if not all(math.isfinite(x) and x >= 0 for x in w) or sum(w) <= 0:
            raise ValueError(f"ranker weights must be >= 0 with a positive sum, got {w}")
        for m in members:
            if not m.ranker.meta.calibration:
                raise ValueError(f"{m.name} has no calibration scores (it was not trained with a validation set), "
                                 "so its scores cannot be put on the other rankers' scale")
        total = sum(w)
        self.members = list(members)
        self.weights = [x / total for x in w]
        self.name = "ensemble[" + " + ".join(f"{x:g} {m.name}" for x, m in zip(self.weights, self.members)) + "]"

    @property
    def seconds(self) -> float:
        return sum(m.seconds for m in self.members)

    @property
    def calls(self) -> int:
        """``score()`` calls that ran the models (every member runs on the same new prompts)."""
        return max(m.calls for m in self.members)

    @property
    def prompts_scored(self) -> int:
        return max(m.prompts_scored for m in self.members)

    def score(self, specs: Sequence[RequestSpec]) -> list[float]:
        """One score per spec: the weighted mean of the members' calibrated ranks."""
        out = [0.0] * len(specs)
        for w, m in zip(self.weights, self.members):
            meta = m.ranker.meta
            for i, s in enumerate(m.score(specs)):
                out[i] += w * meta.rank_of(s)
        return out

    def prime(self, specs: Sequence[RequestSpec]) -> None:
        for m in self.members:
            m.prime(specs)

    def rank_feature(self) -> Callable[[RequestSpec], float]:
        """``spec -> rank in [0, 1]`` (1 = shortest): the ensemble's score is already one."""
        return lambda spec: self.score([spec])[0]


def make_ranker_scorer(checkpoints: Sequence[str | Path], weights: Sequence[float] | None = None):
    """One checkpoint: its ``RankerScorer``; several: their ``EnsembleScorer`` (``weights`` default equal)."""
    if not checkpoints:
        raise ValueError("no ranker checkpoint given")
    if len(checkpoints) == 1:
        if weights is not None and len(weights) != 1:
            raise ValueError(f"got {len(weights)} ranker weights for one ranker")
        return RankerScorer(checkpoints[0])
    return EnsembleScorer([RankerScorer(c) for c in checkpoints], weights)
