"""Routers: which replica of a cluster serves each request, decided the moment it arrives.

Why: with several data-parallel replicas (``envs.cluster.ClusterEngine``), where a request
goes decides which prefix cache it can hit and which queue it waits in, so a distributed
scheduler is a router plus one local policy per replica. The interface is small enough
for the two usual baselines (round-robin and least-loaded, the comparison of DLPM's
paper, ``../shared/papers.md`` §3.4) and rich enough for a locality-aware dispatcher such
as D²LPM (§3.3, ``baselines/d2lpm.py``): ``route`` sees the request as the client sent it
and a read-only ``ReplicaView`` of every replica (its queues, its load as the cluster
counts it, its prefix cache), and ``on_finish`` tells the router what each request
consumed once it is done.

Load, as the cluster counts it for every router: a request is *outstanding* on a replica
from the moment it is routed there until it finishes or is rejected (so a request routed
but not yet admitted by the replica's engine counts). ``outstanding_prompt_tokens`` sums
the prompt lengths of those requests. Routers never read true output lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from envs.records import RequestRecord
from envs.request import RequestSpec

if TYPE_CHECKING:
    from envs.engine import ServingEngine
    from envs.policy import SchedulerView


@dataclass(slots=True)
class ReplicaLoad:
    """The cluster's per-replica counters (the cluster writes them; routers read them through a view)."""

    num_routed: int = 0                  # requests ever routed here
    num_outstanding: int = 0             # routed and not yet finished or rejected
    outstanding_prompt_tokens: int = 0   # sum of prompt lengths of the outstanding requests


class ReplicaView:
    """What a router may read of one replica. Never mutate the replica through it."""

    __slots__ = ("index", "_engine", "_load")

    def __init__(self, index: int, engine: "ServingEngine", load: ReplicaLoad):
        self.index = index
        self._engine = engine
        self._load = load

    @property
    def now(self) -> float:
        """The replica's clock: the end of its last iteration (it may run up to one iteration past the
        time a request is routed; see ``envs.cluster``)."""
        return self._engine.clock

    @property
    def num_routed(self) -> int:
        return self._load.num_routed

    @property
    def num_outstanding(self) -> int:
        """Requests routed here and not yet finished or rejected (waiting, running, swapped, or not yet
        admitted by the replica)."""
        return self._load.num_outstanding

    @property
    def outstanding_prompt_tokens(self) -> int:
        return self._load.outstanding_prompt_tokens

    @property
    def scheduler_view(self) -> "SchedulerView":
        """The replica's own read-only ``SchedulerView``: live requests, queue counts, memory."""
        return self._engine.view

    @property
    def block_size(self) -> int:
        return self._engine.kv.block_size

    @property
    def num_gpu_blocks(self) -> int:
        return self._engine.kv.gpu.num_blocks

    def cached_prefix_blocks(self, keys: Sequence[int]) -> int:
        """How many leading blocks of ``keys`` this replica's prefix cache holds now (no LRU change)."""
        return self._engine.kv.peek_prefix_blocks(keys)

    def cached_prefix_tokens(self, spec: RequestSpec) -> int:
        """Prompt tokens of ``spec`` this replica's prefix cache holds now, as the engine would match
        them at admission (whole blocks, the prompt's last token always computed)."""
        kv = self._engine.kv
        if not kv.enable_prefix_caching:
            return 0
        bs = kv.block_size
        keys = spec.prompt.block_keys(bs)[: (spec.prompt_len - 1) // bs]
        return kv.peek_prefix_blocks(keys) * bs


class Router:
    """Base class: chooses a replica index for each arriving request.

    ``local_policy`` names the policy a router expects on every replica (D²LPM runs local
    DLPM); None means the router works with any policy. ``reset`` is called once per run
    before the first request, ``route`` once per arriving request (roots at their arrival
    time, a conversation's next turn when it is released), ``on_finish`` once per request
    that finished or was rejected on a replica.
    """

    name = "base"
    local_policy: str | None = None

    @property
    def local_policy_kwargs(self) -> dict:
        """Arguments for ``local_policy`` (e.g. D²LPM's per-replica DLPM quantum)."""
        return {}

    def reset(self, replicas: Sequence[ReplicaView]) -> None:
        self.num_replicas = len(replicas)

    def route(self, spec: RequestSpec, replicas: Sequence[ReplicaView], now: float) -> int:
        raise NotImplementedError

    def on_finish(self, record: RequestRecord, replica: int) -> None:
        pass


class RoundRobin(Router):
    """Replica 0, 1, ..., N-1, 0, ... in arrival order, whatever the load (the RR of "RR+LPM")."""

    name = "round-robin"

    def reset(self, replicas: Sequence[ReplicaView]) -> None:
        super().reset(replicas)
        self._next = 0

    def route(self, spec: RequestSpec, replicas: Sequence[ReplicaView], now: float) -> int:
        i = self._next
        self._next = (i + 1) % len(replicas)
        return i


class LeastLoaded(Router):
    """The replica with the fewest outstanding requests; ties to fewer outstanding prompt tokens, then
    the lowest index. With ``by="tokens"`` the two keys swap: fewest outstanding prompt tokens first.

    Outstanding = routed and not finished or rejected, admitted or not (``ReplicaLoad``), the
    queue length a dispatcher knows without asking the replica. Output lengths are unknown
    at routing time, so token load counts prompts only.
    """

    name = "least-loaded"

    def __init__(self, by: str = "requests"):
        if by not in ("requests", "tokens"):
            raise ValueError(f"LeastLoaded: by must be 'requests' or 'tokens', got {by!r}")
        self.by = by
        if by == "tokens":
            self.name = "least-tokens"

    def route(self, spec: RequestSpec, replicas: Sequence[ReplicaView], now: float) -> int:
        if self.by == "requests":
            return min(replicas, key=lambda r: (r.num_outstanding, r.outstanding_prompt_tokens, r.index)).index
        return min(replicas, key=lambda r: (r.outstanding_prompt_tokens, r.num_outstanding, r.index)).index


# ------------------------------------------------------------------------ registry
class UnknownRouterError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class RouterInfo:
    name: str
    factory: Callable[..., Router]
    description: str


_REGISTRY: dict[str, RouterInfo] = {}


def register_router(name: str, factory: Callable[..., Router], description: str) -> None:
    if name in _REGISTRY and _REGISTRY[name].factory is not factory:
        raise ValueError(f"router name {name!r} is already registered")
    _REGISTRY[name] = RouterInfo(name, factory, description)


def list_routers() -> list[RouterInfo]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def make_router(name: str, **kwargs) -> Router:
    info = _REGISTRY.get(name)
    if info is None:
        raise UnknownRouterError(f"unknown router {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return info.factory(**kwargs)


def get_router_info(name: str) -> RouterInfo:
    info = _REGISTRY.get(name)
    if info is None:
        raise UnknownRouterError(f"unknown router {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return info


register_router("round-robin", RoundRobin, "replicas in turn, whatever the load")
register_router("least-loaded", LeastLoaded,
                "fewest outstanding requests (routed, not finished); ties: fewer prompt tokens, lower index")
register_router("least-tokens", lambda **kw: LeastLoaded(by="tokens", **kw),
                "fewest outstanding prompt tokens; ties: fewer requests, lower index")
