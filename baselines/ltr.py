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
decode run, where every live request runs every iteration. Requests are kept sorted by
score as they arrive (``baselines.sorted_requests``), so an iteration costs work in the
changes, not in the queue length.
"""

from __future__ import annotations

import math
from typing import Sequence

from baselines.sorted_requests import SortedRequests
from baselines.starvation import StarvationWatch
from envs.live_request import Request, RequestState
from envs.policy import Policy, SchedulerView, register_policy
from envs.scoring import NoisyOracleScorer, Scorer

_WAITING = RequestState.WAITING


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
        self._unscored: dict[int, Request] = {}
        self._ranked = SortedRequests()          # by (-score, arrival, id)
        self._quota: dict[int, int] = {}         # promoted request -> scheduled iterations left
        self._promoted = SortedRequests()        # the promoted ones, same key
        self._may_run: set[int] = set()          # promoted ones admitted at least once since (the quota users)
        self._watch = StarvationWatch(self.starvation_threshold) if self.starvation_threshold is not None else None
        self._updated_at: int | None = None
        self._order: list[Request] | None = None

    def reset(self, view: SchedulerView) -> None:
        super().reset(view)
        self._clear()

    def is_promoted(self, request_id: int) -> bool:
        return request_id in self._quota

    # ------------------------------------------------------------------ hooks
    def on_arrival(self, req: Request) -> None:
        self._unscored[req.request_id] = req
        if self._watch is not None:
            self._watch.add(req.request_id, self.view.iteration)

    def on_admit(self, req: Request, cached_tokens: int) -> None:
        if req.request_id in self._quota:
            self._may_run.add(req.request_id)

    def on_finish(self, req: Request) -> None:
        rid = req.request_id
        self._may_run.discard(rid)
        self.scores.pop(rid, None)
        if self._unscored.pop(rid, None) is None:
            self._ranked.remove(rid)
            self._order = None
        if rid in self._quota:
            del self._quota[rid]
            self._promoted.remove(rid)
        if self._watch is not None:
            self._watch.remove(rid)

    # ------------------------------------------------------------------ state
    def _score_new(self) -> None:
        new = list(self._unscored.values())
        values = self.scorer.score([r.spec for r in new])
        if len(values) != len(new):
            raise ValueError(f"LTR: scorer {self.scorer.name!r} returned {len(values)} scores for {len(new)} requests")
        checked = []
        for r, v in zip(new, values):
            v = float(v)
            if not math.isfinite(v):
                raise ValueError(f"LTR: scorer {self.scorer.name!r} gave request {r.request_id} the score {v!r}")
            checked.append(v)
        self._unscored.clear()
        for r, v in zip(new, checked):
            self.scores[r.request_id] = v
            self._ranked.insert(r, (-v, r.arrival_time, r.request_id))
        self._order = None

    def _promote(self, req: Request) -> None:
        rid = req.request_id
        if rid not in self._quota:
            self._promoted.insert(req, self._ranked.key(rid))
            self._order = None
            if req.state is not _WAITING:
                self._may_run.add(rid)
        self._quota[rid] = self.starvation_quota

    def _demote(self, rid: int) -> None:
        del self._quota[rid]
        self._promoted.remove(rid)
        self._may_run.discard(rid)
        self._order = None

    def _update_promotions(self, view: SchedulerView) -> None:
        """Bring promotion up to date for the iteration about to be scheduled (once per iteration)."""
        it = view.iteration
        prev = self._updated_at
        if it == prev:
            return
        live = view.live
        quota = self._quota
        spent: list[int] = []
        if prev is not None:
            # only a promoted request that holds KV or was admitted since its promotion can have run
            for rid in self._may_run:
                last = live[rid].last_scheduled_iteration
                if last >= prev:
                    # scheduled since the last update: in each of its iterations when that was a
                    # closed-form run (it ends at it - 1), else in one
                    quota[rid] -= (it - prev) if last == it - 1 else 1
                    if quota[rid] <= 0:
                        spent.append(rid)
        for rid in self._watch.starved(live, it):
            self._promote(live[rid])    # a fresh quota, also for one promoted already
        for rid in spent:
            if quota[rid] <= 0:          # not promoted again just now
                self._demote(rid)
        self._updated_at = it

    # ------------------------------------------------------------------ order
    def ordered_requests(self, view: SchedulerView) -> list[Request]:
        if self._unscored:
            self._score_new()
        if self._watch is not None:
            self._update_promotions(view)
        if self._order is None:
            ranked = self._ranked.requests()
            if self._quota:
                quota = self._quota
                self._order = self._promoted.requests() + [r for r in ranked if r.request_id not in quota]
            else:
                self._order = list(ranked)
        return self._order   # the engine only reads it

    def order(self, view: SchedulerView) -> list[int]:
        return [r.request_id for r in self.ordered_requests(view)]


register_policy("ltr", LTR, "learning to rank: predicted-shortest first, preemptive, starvation promotion "
                "(Fu et al. NeurIPS'24; default scorer: noisy oracle, Kendall tau 0.6)", oracle=True)
