"""Where a scenario's requests come from: seeded builders over the registered workload machinery.

Why: the papers' settings are mostly the project's synthetic clients (``envs.workloads``)
at given rates, but some need a little more — VTC's distribution-shift suite runs three
client mixes one after another, VTC's real-trace run needs the 27-client Arena sample
at a higher load than it was recorded at, LTR's burst sends everything at once. Each
builder here is a small frozen dataclass called with a seed, so a scenario is plain data
and the same seed always gives the same list (request ids ``0..n-1`` by arrival).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from envs.request import RequestSpec
from envs.tokens import UniqueTokens
from envs.workloads import ClientSpec, MultiClientWorkload, get_workload
from envs.workloads.programs import mix64, name_key


@dataclass(frozen=True)
class Synthetic:
    """The clients of a ``MultiClientWorkload`` over ``duration_s`` (or its first ``num_requests``)."""

    name: str
    clients: tuple[ClientSpec, ...]
    duration_s: float | None = None
    num_requests: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "clients", tuple(self.clients))
        self.workload()  # validates

    def workload(self) -> MultiClientWorkload:
        return MultiClientWorkload(self.name, self.name, self.clients, duration_s=self.duration_s,
                                   default_num_requests=self.num_requests)

    def __call__(self, seed: int) -> list[RequestSpec]:
        return self.workload().generate(seed, self.num_requests)


@dataclass(frozen=True)
class Phased:
    """Several client mixes one after another: phase ``j`` runs ``phases[j] = (duration_s, clients)``.

    Each phase is generated as its own workload (its own random streams) and shifted to
    start where the previous one ended; ids are then renumbered by arrival. Client ids
    may repeat across phases: that is the same client changing its behaviour (VTC's
    distribution shift). Phases may not hold dependent requests.
    """

    name: str
    phases: tuple[tuple[float, tuple[ClientSpec, ...]], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "phases", tuple((float(d), tuple(c)) for d, c in self.phases))
        if not self.phases:
            raise ValueError(f"Phased {self.name!r}: needs at least one phase")

    def __call__(self, seed: int) -> list[RequestSpec]:
        out: list[tuple[float, int, int, RequestSpec]] = []
        start = 0.0
        for j, (duration, clients) in enumerate(self.phases):
            specs = MultiClientWorkload(f"{self.name}/phase{j}", "", clients, duration_s=duration).generate(seed)
            for s in specs:
                if s.parent_id is not None:
                    raise ValueError(f"Phased {self.name!r}: phase {j} has dependent requests; not supported")
                out.append((start + s.arrival_time, s.client_id, len(out), s))
            start += duration
        out.sort(key=lambda e: e[:3])
        return [dataclasses.replace(s, request_id=i, arrival_time=t) for i, (t, _, _, s) in enumerate(out)]


@dataclass(frozen=True)
class OverlaidTrace:
    """``copies`` overlaid replays of a registered trace workload: ``copies`` times its load over its span.

    Copy 0 is the trace as recorded; copy ``j > 0`` is shifted by a seeded offset in
    ``[0, span)`` and wrapped around the span, so every copy keeps the trace's clients,
    lengths and local burstiness. Each copy's prompts get their own content (a replayed
    request is a new request, not a prefix-cache hit of its twin).
    """

    workload: str
    copies: int

    def __post_init__(self) -> None:
        if isinstance(self.copies, bool) or int(self.copies) != self.copies or self.copies < 1:
            raise ValueError(f"OverlaidTrace {self.workload!r}: copies must be an integer >= 1, got {self.copies!r}")

    def __call__(self, seed: int) -> list[RequestSpec]:
        base = get_workload(self.workload).generate(0)
        if any(s.parent_id is not None for s in base):
            raise ValueError(f"OverlaidTrace {self.workload!r}: traces with dependent requests are not supported")
        span = max(s.arrival_time for s in base)
        span = math.nextafter(span, math.inf) if span > 0 else 1.0
        rng = np.random.default_rng([seed, name_key(self.workload) & 0xFFFFFFFF])
        offsets = [0.0] + rng.uniform(0.0, span, self.copies - 1).tolist()
        key = name_key(f"overlay/{self.workload}")
        rows = []
        for j, off in enumerate(offsets):
            for s in base:
                t = (s.arrival_time + off) % span
                rows.append((t, j, s.request_id, s))
        rows.sort(key=lambda e: e[:3])
        out = []
        for i, (t, j, rid, s) in enumerate(rows):
            prompt = s.prompt if j == 0 else UniqueTokens(mix64(key ^ mix64((j << 32) + rid + 1)), s.prompt_len)
            out.append(dataclasses.replace(s, request_id=i, arrival_time=t, prompt=prompt))
        return out


@dataclass(frozen=True)
class Burst:
    """The first ``num_requests`` of another source, all arriving at time 0 (LTR's burst)."""

    source: object          # a callable seed -> list[RequestSpec]
    num_requests: int

    def __call__(self, seed: int) -> list[RequestSpec]:
        specs = self.source(seed)
        if len(specs) < self.num_requests:
            raise ValueError(f"Burst: the source gave {len(specs)} requests, fewer than {self.num_requests}")
        return [dataclasses.replace(s, request_id=i, arrival_time=0.0, parent_id=None, think_time_s=0.0)
                for i, s in enumerate(specs[: self.num_requests])]


def scale_clients(clients: Sequence[ClientSpec], factor: float) -> tuple[ClientSpec, ...]:
    """The same clients with every arrival rate multiplied by ``factor`` (a scenario's load scale)."""
    from envs.workloads.arrivals import Deterministic, Gamma, OnOff, Poisson, Ramp

    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"scale_clients: factor must be a finite number > 0, got {factor!r}")
    out = []
    for c in clients:
        a = c.arrivals
        if isinstance(a, (Poisson, Deterministic)):
            a = type(a)(a.rate * factor)
        elif isinstance(a, Gamma):
            a = Gamma(a.rate * factor, a.cv)
        elif isinstance(a, OnOff):
            a = OnOff(a.rate * factor, a.on_s, a.off_s, a.start_on)
        elif isinstance(a, Ramp):
            a = Ramp(a.rate_start * factor, a.rate_end * factor, a.duration_s)
        else:
            raise TypeError(f"scale_clients: cannot scale arrivals of type {type(a).__name__}")
        out.append(dataclasses.replace(c, arrivals=a))
    return tuple(out)
