"""LTR: serve in the order of a predicted output-length rank, with starvation promotion.

Fu et al., "Efficient LLM Scheduling by Learning to Rank", NeurIPS'24 (``../shared/papers.md``
§4.3, vllm-ltr's ``opt-...-starv200-period10`` schedule): an exact length is not needed,
only a ranking, so every live request (waiting, running or swapped) is ordered by a
predictor's score, higher = shorter expected output, re-ranked every iteration. It is
preemptive: a new request that scores higher outranks running ones, and under memory
pressure the engine preempts from the end of the order.

- Scores come from a ``envs.scoring.Scorer``, asked once per request, with all the
  requests not yet scored in one batch when the order is next asked (vllm-ltr runs one
  predictor pass over the new arrivals). The score is static: it does not change as the
  request generates.
- Starvation promotion: a request that has gone ``starvation_threshold`` (200) iterations
  without being scheduled is promoted ahead of every unpromoted request for
  ``starvation_quota`` (10) iterations in which it is scheduled; then it is demoted back
  to its score's place (re-promoted with a fresh quota if it starves again first).
- Order: promoted first, then score descending; ties by arrival time, then request id.

The default scorer is ``NoisyOracleScorer(kendall_tau=0.6)``: a noisy oracle of the
quality of the paper's predictors (tau 0.52-0.64), which reads the true output length, so
``ltr`` is registered as an oracle policy. Pass ``scorer=`` (a trained ranker) or
``kendall_tau=``, ``seed=`` and ``reference_lengths=`` (see ``NoisyOracleScorer``) to change it.

With promotion on, the order moves with the iterations a request waits, so
``stable_between_events`` is False; with ``starvation_threshold=None`` it only moves at
arrivals (scores are static) and is True. The promotion state is brought up to date at
most once per iteration, when the order is asked, from ``Request.last_scheduled_iteration``
(``baselines.starvation``): the engine asks every iteration, except inside a closed-form
decode run, where every live request runs every iteration.
"""

from __future__ import annotations

import math
from typing import Sequence

from baselines.starvation import iterations_unscheduled
from envs.live_request import Request
from envs.policy import Policy, SchedulerView, register_policy
from envs.scoring import NoisyOracleScorer, Scorer


class LTR(Policy):
    """Predicted-rank order (higher score first), preemptive, with starvation promotion."""

    name = "ltr"
    oracle = True

    def __init__(self, scorer: Scorer | None = None, kendall_tau: float | None = None, seed: int = 0,
                 reference_lengths: Sequence[int] | None = None,
                 starvation_threshold: int | None = 200, starvation_quota: int = 10):
        if scorer is None:
            scorer = NoisyOracleScorer(0.6 if kendall_tau is None else kendall_tau, seed, reference_lengths)
        elif kendall_tau is not None or reference_lengths is not None:
            raise ValueError("LTR: give either scorer= or the noisy oracle's kendall_tau=/reference_lengths=, not both")
        if not isinstance(scorer, Scorer):
            raise TypeError(f"LTR: scorer must implement envs.scoring.Scorer (name, score(specs)), got {scorer!r}")
        if starvation_threshold is not None and (isinstance(starvation_threshold, bool)
                                                 or not isinstance(starvation_threshold, int)
                                                 or starvation_threshold < 1):
            raise ValueError(f"LTR: starvation_threshold must be an int >= 1 or None, got {starvation_threshold!r}")
        if isinstance(starvation_quota, bool) or not isinstance(starvation_quota, int) or starvation_quota < 1:
            raise ValueError(f"LTR: starvation_quota must be an int >= 1, got {starvation_quota!r}")
        self.scorer = scorer
        self.oracle = bool(getattr(scorer, "oracle", False))
        self.starvation_threshold = starvation_threshold
        self.starvation_quota = starvation_quota
        self.stable_between_events = starvation_threshold is None
        self._clear()

    def _clear(self) -> None:
        self.scores: dict[int, float] = {}
        self._arrived_at: dict[int, int] = {}
        self._quota: dict[int, int] = {}         # promoted request -> scheduled iterations left
        self._promoted_at: dict[int, int] = {}
        self._updated_at: int | None = None

    def reset(self, view: SchedulerView) -> None:
        super().reset(view)
        self._clear()

    def is_promoted(self, request_id: int) -> bool:
        return request_id in self._quota

    # ------------------------------------------------------------------ hooks
    def on_arrival(self, req: Request) -> None:
        self._arrived_at[req.request_id] = self.view.iteration

    def on_finish(self, req: Request) -> None:
        rid = req.request_id
        self.scores.pop(rid, None)
        self._arrived_at.pop(rid, None)
        self._quota.pop(rid, None)
        self._promoted_at.pop(rid, None)

    # ------------------------------------------------------------------ state
    def _score_new(self, view: SchedulerView) -> None:
        scores = self.scores
        new = [r for rid, r in view.live.items() if rid not in scores]
        if not new:
            return
        values = self.scorer.score([r.spec for r in new])
        if len(values) != len(new):
            raise ValueError(f"LTR: scorer {self.scorer.name!r} returned {len(values)} scores for {len(new)} requests")
        for r, v in zip(new, values):
            v = float(v)
            if not math.isfinite(v):
                raise ValueError(f"LTR: scorer {self.scorer.name!r} gave request {r.request_id} the score {v!r}")
            scores[r.request_id] = v

    def _update_promotions(self, view: SchedulerView) -> None:
        """Bring promotion up to date for the iteration about to be scheduled (once per iteration)."""
        it = view.iteration
        prev = self._updated_at
        if it == prev:
            return
        threshold = self.starvation_threshold
        quota = self._quota
        promoted_at = self._promoted_at
        arrived_at = self._arrived_at
        for rid, r in view.live.items():
            last = r.last_scheduled_iteration
            if rid in quota and prev is not None and last >= prev:
                # scheduled since the last update: in each of its iterations when that was a
                # closed-form run (it ends at it - 1), else in one
                quota[rid] -= (it - prev) if last == it - 1 else 1
            since = promoted_at.get(rid, arrived_at[rid])
            if iterations_unscheduled(r, it, since) >= threshold:
                quota[rid] = self.starvation_quota
                promoted_at[rid] = it
            elif rid in quota and quota[rid] <= 0:
                del quota[rid]
                del promoted_at[rid]
        self._updated_at = it

    # ------------------------------------------------------------------ order
    def ordered_requests(self, view: SchedulerView) -> list[Request]:
        self._score_new(view)
        if self.starvation_threshold is not None:
            self._update_promotions(view)
        scores = self.scores
        quota = self._quota
        return sorted(view.live.values(),
                      key=lambda r: (r.request_id not in quota, -scores[r.request_id], r.arrival_time, r.request_id))

    def order(self, view: SchedulerView) -> list[int]:
        return [r.request_id for r in self.ordered_requests(view)]


register_policy("ltr", LTR, "learning to rank: predicted-shortest first, preemptive, starvation promotion "
                "(Fu et al. NeurIPS'24; default scorer: noisy oracle, Kendall tau 0.6)", oracle=True)
