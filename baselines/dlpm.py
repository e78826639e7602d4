"""DLPM: longest prefix match first, gated by per-client deficits.

Cao et al., "Locality-aware Fair Scheduling in LLM Serving", arXiv 2501.14312, 2025
(``../shared/papers.md`` §3.1-3.2). LPM (``baselines.lpm``) maximises prefix-cache hits
but lets a client with hot prefixes starve the others; DLPM keeps LPM's order but admits
a client's request only while the client's deficit is positive, a quantum mechanism
inspired by deficit round robin. The quantum ``Q`` trades locality for fairness: a small
``Q`` admits little more than the least-charged client's next request per round (like
VTC), a large one lets LPM's order run almost unchecked.

Books (``baselines.deficit.DeficitLedger``, shared with D²LPM):

- a client is charged ``w_p`` per *uncached* prompt token at admission (cache hits are
  free service, as in both re-implementations the notes cite) and ``w_q`` per output token;
- when no client with waiting requests has credit, each of them gets ``Q`` (per-client
  ``quanta`` override it), round after round until one has credit. Only backlogged clients
  are refilled and only at or below 0, so no credit beyond ``Q`` is ever banked.

The order: requests already admitted first, in arrival order (DLPM admits; it does not
reorder the running batch; a request preempted by recompute keeps its place and is not
charged again, see ``baselines.client_queues``). Then the waiting requests in the order
DLPM's admission loop would admit them if all fitted: passes over the LPM order (cached
prefix longest first, then arrival, then id), each admitting, per client with credit, its
requests in that order until its deficit drops to 0 or below (tentative charges of the
uncached prompt as the cache holds it now), with a refill between passes. The engine
admits a prefix of that order, stopping at the first request that does not fit (the
paper's "break" reading; §11 notes it is unverified). The refill itself is applied when
the order is asked and no backlogged client has credit: that is the moment the paper's
scheduling step would refill; asking again finds credit and changes nothing.

Deficits move with every token and cached prefixes with the cache, so
``stable_between_events`` is False.
"""

from __future__ import annotations

from typing import Hashable, Mapping

from baselines.client_queues import ClientQueues
from baselines.deficit import DeficitLedger, rounds_to_credit
from baselines.lpm import PrefixRanker
from envs.live_request import Request
from envs.policy import Policy, SchedulerView, register_policy

DEFAULT_QUANTUM = 2048.0  # weighted tokens: about three Arena-trace requests (136 in + 2 x 256 out)


class DLPM(Policy):
    """Deficit-gated longest-prefix-match; ``quantum`` is the locality-fairness knob."""

    name = "dlpm"
    stable_between_events = False

    def __init__(self, quantum: float = DEFAULT_QUANTUM, w_p: float = 1.0, w_q: float = 2.0,
                 quanta: Mapping[Hashable, float] | None = None):
        self.ledger = DeficitLedger(quantum, w_p, w_q, quanta)
        self._books = ClientQueues()
        self._ranker = PrefixRanker()
        self._grouped_from: list | None = None

    @property
    def quantum(self) -> float:
        return self.ledger.quantum

    def reset(self, view: SchedulerView) -> None:
        super().reset(view)
        self.ledger.reset()
        self._books = ClientQueues()
        self._ranker = PrefixRanker()
        self._grouped_from = None

    def deficit(self, client: int) -> float:
        return self.ledger.deficit(client)

    # ------------------------------------------------------------------ hooks
    def on_arrival(self, req: Request) -> None:
        self._books.add(req)
        self._ranker.invalidate()

    def on_admit(self, req: Request, cached_tokens: int) -> None:
        if self._books.admit(req):
            self.ledger.charge_prompt(req.client_id, req.prompt_len - cached_tokens)
            self._ranker.invalidate()

    def on_tokens(self, req: Request, n: int) -> None:
        self.ledger.charge_output(req.client_id, n)

    def on_finish(self, req: Request) -> None:
        self._books.finish(req)

    # ------------------------------------------------------------------ order
    def ordered_requests(self, view: SchedulerView) -> list[Request]:
        books = self._books
        out = books.started_in_arrival_order(view)
        if not books.queues:
            return out
        self.ledger.refill(books.queues)   # the scheduling step's refill, when nobody backlogged has credit
        queues = books.queues
        ranked = self._ranker.ranked(view, lambda: (r for q in queues.values() for r in q.values()))
        if ranked is not self._grouped_from:
            # client -> global LPM ranks of its waiting requests, and their uncached prompt tokens
            ranks: dict[int, list[int]] = {}
            costs: dict[int, list[int]] = {}
            for rank, (r, cached) in enumerate(ranked):
                u = r.client_id
                if u not in ranks:
                    ranks[u] = []
                    costs[u] = []
                ranks[u].append(rank)
                costs[u].append(r.prompt_len - cached)
            self._grouped = (ranks, costs, [r for r, _ in ranked])
            self._grouped_from = ranked
        ranks, costs, ranked_reqs = self._grouped
        at = ranked_reqs.__getitem__
        # the trial: plain lists, one slot per client with waiting requests
        ledger = self.ledger
        w_p = ledger.w_p
        clients = list(ranks)
        q = [ledger.deficit(u) for u in clients]
        quanta = [ledger.quantum_of(u) for u in clients]
        rank_lists = [ranks[u] for u in clients]
        cost_lists = [costs[u] for u in clients]
        pos = [0] * len(clients)
        active = list(range(len(clients)))
        while active:
            if len(active) == 1:   # one client left: its requests in LPM order, whatever its deficit
                a = active[0]
                out.extend(map(at, rank_lists[a][pos[a]:]))
                break
            rounds = rounds_to_credit([q[a] for a in active], [quanta[a] for a in active])
            if rounds:
                for a in active:
                    q[a] += rounds * quanta[a]
            taken: list[int] = []
            for a in active:
                qa = q[a]
                if qa <= 0.0:
                    continue
                i = j = pos[a]
                cost = cost_lists[a]
                n = len(cost)
                while j < n and qa > 0.0:
                    qa -= w_p * cost[j]
                    j += 1
                q[a] = qa
                taken.extend(rank_lists[a][i:j])
                pos[a] = j
            taken.sort()
            out.extend(map(at, taken))
            active = [a for a in active if pos[a] < len(cost_lists[a])]
        return out

    def order(self, view: SchedulerView) -> list[int]:
        return [r.request_id for r in self.ordered_requests(view)]


register_policy("dlpm", DLPM, "longest prefix match gated by per-client deficits, quantum Q (Cao et al. 2025)")
