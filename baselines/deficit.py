"""Deficit counters with a quantum refill: the bookkeeping of DLPM and D²LPM.

Why a class of its own: DLPM (Cao et al. 2025, ``../shared/papers.md`` §3.2) keeps one
deficit per client, D²LPM's dispatcher (§3.3) one per (client, replica) and each replica
a local DLPM. All three follow the same rules, so they share this ledger and differ only
in their keys and in when they ask for a refill.

The rules (deficit round robin, as DLPM adapts it):

- every key starts at 0 and *has credit* while its deficit is > 0;
- service is charged as it is given: ``w_p`` per uncached prompt token at admission (or
  dispatch), ``w_q`` per output token; a charge may take the deficit below 0;
- a refill happens only when none of the keys with waiting work has credit: each of them
  (all at <= 0) gets its quantum, round after round, until at least one has credit. The
  rounds are applied in closed form: every key gets ``m`` quanta, ``m`` the fewest rounds
  after which some key is > 0.

Unused credit is not banked: a key is refilled only when it is at or below 0, so no
deficit ever exceeds its quantum (the LCF problem of VTC, §2.2, cannot arise).
"""

from __future__ import annotations

import math
from typing import Hashable, Iterable, Mapping, Sequence


def rounds_to_credit(deficits: Sequence[float], quanta: Sequence[float]) -> int:
    """The refill rule: 0 if some deficit is > 0 (or there are none), else the fewest rounds
    ``m >= 1`` after which some ``deficit + m * quantum`` is > 0; every key then gets ``m`` quanta."""
    rounds = 0
    for q, quantum in zip(deficits, quanta):
        if q > 0.0:
            return 0
        m = math.floor(-q / quantum) + 1
        if q + m * quantum <= 0.0:   # floating-point edge: one more round
            m += 1
        if rounds == 0 or m < rounds:
            rounds = m
    return rounds


def _check_weight(name: str, v: float, positive: bool) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 \
            or (positive and v == 0):
        raise ValueError(f"DeficitLedger: {name} must be a finite number {'> 0' if positive else '>= 0'}, got {v!r}")
    return float(v)


class DeficitLedger:
    """Per-key deficit counters (keys: clients for DLPM, (client, replica) pairs for D²LPM).

    ``quantum`` is the default refill per round; ``quanta`` overrides it per key (DRR's
    weights: a key with twice the quantum gets about twice the service when all are
    backlogged). ``w_p`` and ``w_q`` price an uncached prompt token and an output token.
    """

    __slots__ = ("quantum", "quanta", "w_p", "w_q", "_deficit")

    def __init__(self, quantum: float, w_p: float = 1.0, w_q: float = 2.0,
                 quanta: Mapping[Hashable, float] | None = None):
        self.quantum = _check_weight("quantum", quantum, positive=True)
        self.w_p = _check_weight("w_p", w_p, positive=False)
        self.w_q = _check_weight("w_q", w_q, positive=False)
        self.quanta = {k: _check_weight(f"quanta[{k!r}]", v, positive=True) for k, v in (quanta or {}).items()}
        self._deficit: dict[Hashable, float] = {}

    # ------------------------------------------------------------------ reading
    def deficit(self, key: Hashable) -> float:
        return self._deficit.get(key, 0.0)

    def has_credit(self, key: Hashable) -> bool:
        return self._deficit.get(key, 0.0) > 0.0

    def any_credit(self, keys: Iterable[Hashable]) -> bool:
        d = self._deficit
        return any(d.get(k, 0.0) > 0.0 for k in keys)

    def quantum_of(self, key: Hashable) -> float:
        return self.quanta.get(key, self.quantum)

    def snapshot(self) -> dict[Hashable, float]:
        """Every key charged or refilled so far, with its deficit (a copy)."""
        return dict(self._deficit)

    # ------------------------------------------------------------------ charging
    def charge(self, key: Hashable, amount: float) -> None:
        """Take ``amount`` (>= 0) of service from ``key``'s deficit."""
        if not (amount >= 0.0) or amount == math.inf:
            raise ValueError(f"DeficitLedger: charge to {key!r} must be a finite amount >= 0, got {amount!r}")
        self._deficit[key] = self._deficit.get(key, 0.0) - amount

    def charge_prompt(self, key: Hashable, uncached_tokens: int) -> float:
        """Charge ``w_p`` per uncached prompt token (admission or dispatch); returns the amount."""
        if uncached_tokens < 0:
            raise ValueError(f"DeficitLedger: {key!r} charged for {uncached_tokens} uncached prompt tokens (< 0)")
        amount = self.w_p * uncached_tokens
        self.charge(key, amount)
        return amount

    def charge_output(self, key: Hashable, num_tokens: int) -> float:
        """Charge ``w_q`` per output token; returns the amount."""
        if num_tokens < 0:
            raise ValueError(f"DeficitLedger: {key!r} charged for {num_tokens} output tokens (< 0)")
        amount = self.w_q * num_tokens
        self.charge(key, amount)
        return amount

    def charge_prompts_while_credit(self, key: Hashable, uncached_tokens: Sequence[int], start: int = 0) -> int:
        """Admit ``key``'s requests in turn from ``start`` while it has credit: before each, stop
        if the deficit is <= 0, else charge ``w_p`` x its uncached prompt tokens. Returns the
        index after the last one charged (DLPM's pass over one client's requests)."""
        q = self._deficit.get(key, 0.0)
        if q <= 0.0:
            return start
        w_p = self.w_p
        i = start
        n = len(uncached_tokens)
        while i < n and q > 0.0:
            t = uncached_tokens[i]
            if t < 0:
                raise ValueError(f"DeficitLedger: {key!r} charged for {t} uncached prompt tokens (< 0)")
            q -= w_p * t
            i += 1
        self._deficit[key] = q
        return i

    # ------------------------------------------------------------------ refilling
    def refill(self, keys: Iterable[Hashable]) -> int:
        """If none of ``keys`` (those with waiting work) has credit, add quanta until one has.

        Returns the number of rounds (0 when some key had credit already, or ``keys`` is empty).
        Each key gets ``rounds * quantum_of(key)``.
        """
        keys = list(dict.fromkeys(keys))
        d = self._deficit
        deficits = [d.get(k, 0.0) for k in keys]
        quanta = [self.quantum_of(k) for k in keys]
        rounds = rounds_to_credit(deficits, quanta)
        for k, q, quantum in zip(keys, deficits, quanta):
            d[k] = q + rounds * quantum
        return rounds

    def copy(self) -> "DeficitLedger":
        """An independent ledger with the same settings and deficits (for trying an order out)."""
        other = DeficitLedger.__new__(DeficitLedger)
        other.quantum = self.quantum
        other.quanta = self.quanta
        other.w_p = self.w_p
        other.w_q = self.w_q
        other._deficit = dict(self._deficit)
        return other

    def reset(self) -> None:
        self._deficit.clear()
