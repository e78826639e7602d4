"""D²LPM: a deficit-gated, locality-aware dispatcher over data-parallel replicas that each run DLPM.

Cao et al., "Locality-aware Fair Scheduling in LLM Serving", arXiv 2501.14312, 2025
(``../shared/papers.md`` §3.3, "Double Deficit"). One global queue across replicas was
dropped by the paper because its synchronisation grows with data parallelism; instead a
dispatcher routes each request the moment it arrives and each replica runs local DLPM
(``baselines.dlpm``) with its own per-client deficits and quantum ``Q^u``.

The dispatcher keeps:

- a deficit ``d[u][w]`` per (client, replica), in a ``baselines.deficit.DeficitLedger``
  keyed by ``(client, replica)`` with the replica quantum ``Q^w``;
- an approximate global prefix tree (``GlobalPrefixTree``): which replica holds which
  prompt prefix, inserted at dispatch;
- each replica's queue length: requests routed there and not finished
  (``ReplicaView.num_outstanding``).

Dispatching request ``r`` of client ``u`` (§3.3's pseudo-code):

1. ``L`` = the replicas whose prefix match for ``r`` in the tree is the longest (all of
   them when nobody holds any of it);
2. if no replica has credit for ``u`` (``d[u][w] > 0``), every ``d[u][w]`` gets ``Q^w``,
   round after round, until one has (the ledger's refill);
3. ``P`` = the replicas with credit; candidates = ``L ∩ P`` when not empty, else ``P``
   (locality first, else any credited replica);
4. the candidate with the shortest queue wins; ties go to the lowest index;
5. ``d[u][w*]`` is charged ``w_p`` x the prompt tokens the tree says ``w*`` does not hold
   (``charge="uncached"``, the default, as DLPM's own books charge only uncached tokens),
   or every prompt token (``charge="prompt"``, the re-implementations' reading, §3.3 [S]);
   the prompt's prefixes are recorded for ``w*``;
6. when ``r`` finishes, ``d[u][w*]`` is charged ``w_q`` per output token.

Choices where the paper is silent (§11): output tokens are charged at completion (the
dispatcher learns of them then); the tree's evictions are modelled at the dispatcher
rather than read back from replicas — each replica's share of the tree is capped at its
KV capacity in blocks and trimmed least-recently-routed first, as the replica's own
radix cache evicts least-recently-used blocks. Defaults: ``Q^w`` = 16,384 weighted
tokens (about two long-document misses, so a client stays on the replica holding its
document for many questions before spilling), local ``Q^u`` = DLPM's default.
"""

from __future__ import annotations

import heapq
from typing import Sequence

from baselines.deficit import DeficitLedger
from baselines.dlpm import DEFAULT_QUANTUM
from envs.records import RequestRecord
from envs.request import RequestSpec
from envs.routers import ReplicaView, Router, register_router
from envs.workloads.programs import mix64

DEFAULT_WORKER_QUANTUM = 16384.0
CHARGE_MODES = ("uncached", "prompt")


def chain_keys(keys: Sequence[int]) -> list[int]:
    """Prefix identities: entry ``j`` stands for the first ``j + 1`` blocks of ``keys`` (a rolling hash)."""
    out = []
    h = 0x9E3779B97F4A7C15
    for k in keys:
        h = mix64(h ^ mix64(k))
        out.append(h)
    return out


class GlobalPrefixTree:
    """Which replica holds which prompt prefix, as the dispatcher believes it (papers.md §3.3).

    Prefixes are whole KV blocks, identified by ``chain_keys``; recording a prompt for a
    replica records all its prefixes, so a replica's set is prefix-closed, like a radix
    tree. Each replica holds at most ``capacity[w]`` prefixes (its KV blocks); past that,
    the least recently recorded go first (a prefix is as recent as the latest prompt that
    contained it, so longer prefixes leave before their ancestors).
    """

    def __init__(self, capacity: Sequence[int]):
        if not capacity or any(c < 1 for c in capacity):
            raise ValueError(f"GlobalPrefixTree: every replica needs a capacity >= 1 block, got {list(capacity)}")
        self.capacity = list(capacity)
        self._holders: dict[int, dict[int, int]] = {}     # prefix -> {replica: last tick}
        self._count = [0] * len(capacity)
        self._heaps: list[list[tuple[int, int, int]]] = [[] for _ in capacity]   # (tick, -depth, prefix)
        self._tick = 0

    def num_prefixes(self, replica: int) -> int:
        return self._count[replica]

    def match(self, chain: Sequence[int]) -> list[int]:
        """Per replica, how many leading blocks of ``chain`` it holds."""
        out = [0] * len(self.capacity)
        alive: set[int] | None = None
        holders = self._holders
        for j, h in enumerate(chain):
            held = holders.get(h)
            if not held:
                break
            alive = set(held) if alive is None else alive & held.keys()
            if not alive:
                break
            for w in alive:
                out[w] = j + 1
        return out

    def insert(self, chain: Sequence[int], replica: int) -> None:
        """Record every prefix of ``chain`` for ``replica``, then trim it to its capacity."""
        self._tick += 1
        tick = self._tick
        heap = self._heaps[replica]
        holders = self._holders
        for j, h in enumerate(chain):
            held = holders.get(h)
            if held is None:
                held = holders[h] = {}
            if replica not in held:
                self._count[replica] += 1
                heapq.heappush(heap, (tick, -j, h))
            held[replica] = tick
        self._trim(replica)

    def _trim(self, replica: int) -> None:
        heap = self._heaps[replica]
        holders = self._holders
        while self._count[replica] > self.capacity[replica]:
            tick, neg_depth, h = heapq.heappop(heap)
            held = holders.get(h)
            current = None if held is None else held.get(replica)
            if current is None:
                continue
            if current != tick:      # touched since it was queued: re-queue at its latest tick
                heapq.heappush(heap, (current, neg_depth, h))
                continue
            del held[replica]
            if not held:
                del holders[h]
            self._count[replica] -= 1


class D2LPM(Router):
    """The D²LPM dispatcher; replicas run ``dlpm`` with ``local_quantum``."""

    name = "d2lpm"
    local_policy = "dlpm"

    def __init__(self, worker_quantum: float = DEFAULT_WORKER_QUANTUM, local_quantum: float = DEFAULT_QUANTUM,
                 w_p: float = 1.0, w_q: float = 2.0, charge: str = "uncached"):
        if charge not in CHARGE_MODES:
            raise ValueError(f"D2LPM: charge must be one of {CHARGE_MODES}, got {charge!r}")
        self.ledger = DeficitLedger(worker_quantum, w_p, w_q)
        DeficitLedger(local_quantum, w_p, w_q)   # validates the local quantum now, not at the first replica
        self.local_quantum = float(local_quantum)
        self.charge = charge
        self.tree: GlobalPrefixTree | None = None

    @property
    def worker_quantum(self) -> float:
        return self.ledger.quantum

    @property
    def local_policy_kwargs(self) -> dict:
        return {"quantum": self.local_quantum, "w_p": self.ledger.w_p, "w_q": self.ledger.w_q}

    def reset(self, replicas: Sequence[ReplicaView]) -> None:
        super().reset(replicas)
        sizes = {r.block_size for r in replicas}
        if len(sizes) != 1:
            raise ValueError(f"D2LPM: replicas must share one KV block size, got {sorted(sizes)}")
        self.block_size = sizes.pop()
        self.ledger.reset()
        self.tree = GlobalPrefixTree([r.num_gpu_blocks for r in replicas])

    def deficit(self, client: int, replica: int) -> float:
        return self.ledger.deficit((client, replica))

    def route(self, spec: RequestSpec, replicas: Sequence[ReplicaView], now: float) -> int:
        bs = self.block_size
        chain = chain_keys(spec.prompt.block_keys(bs)[: (spec.prompt_len - 1) // bs])
        match = self.tree.match(chain)
        n = len(replicas)
        u = spec.client_id
        ledger = self.ledger
        ledger.refill([(u, w) for w in range(n)])
        credited = [w for w in range(n) if ledger.has_credit((u, w))]
        best = max(match)
        longest = [w for w in credited if match[w] == best]
        candidates = longest or credited
        chosen = min(candidates, key=lambda w: (replicas[w].num_outstanding, w))
        uncached = spec.prompt_len - match[chosen] * bs if self.charge == "uncached" else spec.prompt_len
        ledger.charge_prompt((u, chosen), uncached)
        self.tree.insert(chain, chosen)
        return chosen

    def on_finish(self, record: RequestRecord, replica: int) -> None:
        if record.rejected_reason is None:
            self.ledger.charge_output((record.client_id, replica), record.num_output_tokens)


register_router("d2lpm", D2LPM,
                "D²LPM dispatcher: longest prefix match among replicas with client credit, then shortest queue; "
                "local DLPM on each replica (Cao et al. 2025)")
