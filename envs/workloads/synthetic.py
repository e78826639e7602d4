"""Synthetic multi-client workloads: several clients, each with its own arrivals, lengths and prompt program.

Why: fairness and SLO schedulers are judged on how they split service between clients
that differ in rate, burstiness and request shape, so a workload is a set of
``ClientSpec``s rather than one stream. ``MultiClientWorkload.generate(seed)`` turns them
into the ``RequestSpec`` list the engine replays; the same seed gives the same list.

Random streams: each client draws arrivals, lengths and program choices from three
generators seeded with ``(seed, client_id, k)``, so adding or changing one client leaves
the other clients' requests unchanged.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import numpy as np

from envs.request import RequestSpec
from envs.workloads.arrivals import ArrivalProcess
from envs.workloads.lengths import LengthDist
from envs.workloads.programs import ClientDraws, DraftRequest, NoSharing, PromptProgram, StreamIds, name_key

_ARRIVALS, _LENGTHS, _PROGRAM = 0, 1, 2


def check_seed(seed: int) -> int:
    """A workload seed must be a non-negative integer (numpy's ``SeedSequence`` needs one)."""
    if seed is None:
        raise TypeError("seed must be an integer, got None")
    return check_count("seed", seed)


def check_count(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if n < 0:
        raise ValueError(f"{name} must be >= 0, got {n}")
    return n


@dataclass(frozen=True)
class ClientSpec:
    """One client (tenant, user, LoRA adapter) of a workload.

    ``prompt_len`` is the length of the text the client writes fresh for each request;
    the ``program`` decides what shared content goes around it. ``online=False`` marks
    batch (offline) traffic that SLO-aware co-location may delay.
    """

    client_id: int
    arrivals: ArrivalProcess
    prompt_len: LengthDist
    output_len: LengthDist
    program: PromptProgram = field(default_factory=NoSharing)
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    online: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.client_id, bool) or operator.index(self.client_id) < 0:
            raise ValueError(f"ClientSpec: client_id must be an integer >= 0, got {self.client_id!r}")
        for name in ("slo_ttft_s", "slo_tpot_s"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0.0):
                raise ValueError(f"ClientSpec {self.client_id}: {name} must be a finite number > 0, got {v!r}")

    def root_times(self, seed: int, duration_s: float | None, max_count: int | None) -> np.ndarray:
        rng = np.random.default_rng([seed, self.client_id, _ARRIVALS])
        return self.arrivals.times(rng, duration_s=duration_s, max_count=max_count)

    def drafts(self, workload_key: int, seed: int, times: np.ndarray) -> list[DraftRequest]:
        """This client's requests for the given root arrival times."""
        rng_len = np.random.default_rng([seed, self.client_id, _LENGTHS])
        draws = ClientDraws(times, self.prompt_len.sample(rng_len, len(times)),
                            self.output_len.sample(rng_len, len(times)))
        rng_prog = np.random.default_rng([seed, self.client_id, _PROGRAM])
        streams = StreamIds(workload_key, seed, self.client_id)
        return self.program.build(draws, rng_prog, streams, self.prompt_len, self.output_len)


@dataclass(frozen=True)
class MultiClientWorkload:
    """A named synthetic workload: its clients and how long it runs by default.

    ``generate(seed)`` without a count returns every request that arrives in
    ``[0, duration_s)``; when ``duration_s`` is None it returns the first
    ``default_num_requests``. At least one of the two must be set so that a bare
    ``generate(seed)`` is finite.
    """

    kind: ClassVar[str] = "synthetic"

    name: str
    description: str
    clients: Sequence[ClientSpec]
    duration_s: float | None = None
    default_num_requests: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "clients", tuple(self.clients))
        if not self.clients:
            raise ValueError(f"workload {self.name!r}: needs at least one client")
        ids = [c.client_id for c in self.clients]
        if len(set(ids)) != len(ids):
            raise ValueError(f"workload {self.name!r}: client ids must be unique, got {ids}")
        if self.duration_s is None and self.default_num_requests is None:
            raise ValueError(f"workload {self.name!r}: set duration_s or default_num_requests")
        if self.duration_s is not None and not (math.isfinite(self.duration_s) and self.duration_s > 0.0):
            raise ValueError(f"workload {self.name!r}: duration_s must be a finite number > 0, got {self.duration_s!r}")
        check_count("default_num_requests", self.default_num_requests)

    @property
    def num_requests(self) -> None:
        """Synthetic workloads have no fixed size (a trace's count goes here)."""
        return None

    def generate(self, seed: int, num_requests: int | None = None) -> list[RequestSpec]:
        """The workload's requests for ``seed``, sorted by (arrival_time, client_id), ids 0..n-1.

        With ``num_requests`` (or, when ``duration_s`` is None, ``default_num_requests``)
        the duration is ignored and the first ``num_requests`` requests by arrival are
        returned (see ``assemble`` for how a cut treats conversations: the dropped turns
        of a conversation are always its last ones, so no kept request loses its parent).
        Raises ValueError if the clients' arrivals end before that many requests exist.
        """
        seed = check_seed(seed)
        count = check_count("num_requests", num_requests)
        if count is None and self.duration_s is None:
            count = self.default_num_requests
        key = name_key(self.name)
        if count is None:
            per_client = [(c, c.root_times(seed, self.duration_s, None)) for c in self.clients]
        else:
            per_client = [(c, c.root_times(seed, None, count)) for c in self.clients]
            per_client = _roots_up_to_count(per_client, count)
        drafts = [(c, c.drafts(key, seed, times)) for c, times in per_client]
        specs = assemble(drafts, count)
        if count is not None and len(specs) < count:
            raise ValueError(
                f"workload {self.name!r}: its clients send only {len(specs)} requests, fewer than "
                f"num_requests={count}")
        return specs


def _roots_up_to_count(per_client: list[tuple[ClientSpec, np.ndarray]],
                       count: int) -> list[tuple[ClientSpec, np.ndarray]]:
    """Keep only roots up to the ``count``-th earliest root: every request at or after it is cut anyway."""
    all_times = np.concatenate([t for _, t in per_client])
    if len(all_times) <= count:
        return per_client
    if count == 0:
        return [(c, t[:0]) for c, t in per_client]
    cutoff = np.partition(all_times, count - 1)[count - 1]
    return [(c, t[t <= cutoff]) for c, t in per_client]


def assemble(per_client: Sequence[tuple[ClientSpec, list[DraftRequest]]],
             num_requests: int | None = None) -> list[RequestSpec]:
    """Merge clients' drafts into one list sorted by (arrival_time, client_id), ids 0..n-1.

    Ties within one client keep the client's draft order. A parent never arrives after
    its children and comes earlier in its client's drafts (both are checked), so it
    always sorts before them and gets a smaller id. With ``num_requests`` only the first
    that many are kept; because of that order, a cut that drops a parent also drops all
    of its descendants, and every kept ``parent_id`` names a kept request. A cut may
    end a conversation early: its last kept turn then has no follow-up.
    """
    order: list[tuple[float, int, int, int]] = []
    for slot, (client, drafts) in enumerate(per_client):
        for local, d in enumerate(drafts):
            if d.parent is not None and not (0 <= d.parent < local):
                raise ValueError(
                    f"client {client.client_id}: draft {local} names parent {d.parent}, "
                    f"which is not an earlier draft")
            if d.parent is not None and drafts[d.parent].arrival_time > d.arrival_time:
                raise ValueError(
                    f"client {client.client_id}: draft {local} arrives at {d.arrival_time} before "
                    f"its parent {d.parent} ({drafts[d.parent].arrival_time})")
            order.append((d.arrival_time, client.client_id, local, slot))
    order.sort()
    if num_requests is not None:
        order = order[:num_requests]
    new_id: dict[tuple[int, int], int] = {}
    specs: list[RequestSpec] = []
    for rid, (_, client_id, local, slot) in enumerate(order):
        client, drafts = per_client[slot]
        d = drafts[local]
        new_id[(slot, local)] = rid
        parent_id = None if d.parent is None else new_id[(slot, d.parent)]
        specs.append(RequestSpec(
            request_id=rid, client_id=client_id, arrival_time=d.arrival_time, prompt=d.prompt,
            output_len=d.output_len, output_tokens=d.output_tokens, slo_ttft_s=client.slo_ttft_s,
            slo_tpot_s=client.slo_tpot_s, online=client.online, parent_id=parent_id,
            think_time_s=d.think_time_s))
    return specs
