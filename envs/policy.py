"""The scheduling-policy interface, the read-only view policies see, and the policy registry.

A policy answers one question per iteration: in what order should the live requests
(waiting, running, swapped) be served? The engine turns that order into a batch under
its token budget, sequence cap and KV memory, preempting from the end of the order when
memory runs out. A baseline, a trained PPO checkpoint and the LTR ranker all implement
this interface, so benchmarking is one loop over policy names.

Hooks let counter-based policies (VTC, DLPM) keep their books: ``on_arrival``,
``on_admit(req, cached_tokens)`` (the request enters the running batch, with that many
prompt tokens served by the prefix cache), ``on_tokens(req, n)`` (n output tokens
produced), ``on_preempt`` and ``on_finish``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

from envs.live_request import Request, RequestState

if TYPE_CHECKING:
    from envs.engine import ServingEngine


class OracleAccessError(PermissionError):
    """A non-oracle policy asked for the true output length."""


class SchedulerView:
    """What a policy may look at: queues, clients, cache and memory. Never mutate through it."""

    __slots__ = ("_engine", "oracle")

    def __init__(self, engine: "ServingEngine", oracle: bool = False):
        self._engine = engine
        self.oracle = oracle

    @property
    def now(self) -> float:
        return self._engine.clock

    @property
    def iteration(self) -> int:
        return self._engine.iteration

    @property
    def live(self) -> dict[int, Request]:
        """Arrived, unfinished requests by id, in arrival order (do not modify).

        With a simulator, running decoders' token counters may lag while the engine advances
        them as a group (``envs.decode_group``); only policies with ``stable_between_events``
        (whose order does not follow those counters) are asked then.
        """
        return self._engine.live

    def live_ids(self) -> list[int]:
        return list(self._engine.live)

    def requests(self, state: RequestState) -> Iterator[Request]:
        return (r for r in self._engine.live.values() if r.state is state)

    @property
    def num_waiting(self) -> int:
        return len(self._engine.live) - self._engine.num_running - self._engine.num_swapped

    @property
    def num_running(self) -> int:
        return self._engine.num_running

    @property
    def num_swapped(self) -> int:
        return self._engine.num_swapped

    @property
    def block_size(self) -> int:
        return self._engine.kv.block_size

    @property
    def num_gpu_blocks(self) -> int:
        return self._engine.kv.gpu.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self._engine.kv.gpu.num_free

    @property
    def num_available_blocks(self) -> int:
        """Free blocks plus cached blocks no running request uses."""
        return self._engine.kv.num_available_blocks

    @property
    def num_host_blocks(self) -> int:
        host = self._engine.kv.host
        return host.num_blocks if host is not None else 0

    @property
    def num_free_host_blocks(self) -> int:
        host = self._engine.kv.host
        return host.num_free if host is not None else 0

    def cached_prefix_tokens(self, req: Request) -> int:
        """Prompt tokens of ``req`` the prefix cache holds now (read-only; LPM's key)."""
        eng = self._engine
        bs = eng.kv.block_size
        if not eng.kv.enable_prefix_caching:
            return 0
        n = (req.num_tokens - 1) // bs
        return eng.kv.peek_prefix_blocks(req.block_keys(n, bs)) * bs

    @property
    def prefix_cache_version(self) -> tuple[int, int]:
        """Changes whenever blocks enter or leave the prefix cache (blocks ever inserted, blocks
        ever evicted, as the pair (cached now, evicted so far)): while it holds, a request whose
        ``num_tokens`` did not change has the same ``cached_prefix_tokens``, so LPM-style
        policies may memoise it."""
        cache = self._engine.kv.cache
        return (cache.num_cached_blocks, cache.num_evicted_blocks)

    def oracle_output_len(self, req: Request) -> int:
        """The true output length; only for policies registered as oracles."""
        if not self.oracle:
            raise OracleAccessError(
                f"request {req.request_id}: the true output length is hidden from non-oracle policies")
        return req._target_output_len


class Policy:
    """Base class: FCFS order, no-op hooks. Subclasses override ``order`` and the hooks they need.

    ``stable_between_events``: the order only changes at arrivals, finishes and
    preemptions (not with every generated token), so the simulator may advance several
    decode iterations at once. Policies whose ranking moves per token (SRTF) set it False.
    ``oracle``: the policy reads true output lengths.
    """

    name = "base"
    oracle = False
    stable_between_events = True

    def reset(self, view: SchedulerView) -> None:
        self.view = view

    def order(self, view: SchedulerView) -> Sequence[int]:
        return list(view.live)

    def ordered_requests(self, view: SchedulerView) -> list[Request] | None:
        """Optional fast path: the order as request objects, already known to be a permutation of
        the live requests. The engine uses it instead of ``order`` when it returns a list, and
        only reads it, so a policy may hand back the same list object while its order holds."""
        return None

    def on_arrival(self, req: Request) -> None:
        pass

    def on_admit(self, req: Request, cached_tokens: int) -> None:
        pass

    def on_tokens(self, req: Request, n: int) -> None:
        pass

    def on_preempt(self, req: Request) -> None:
        pass

    def on_finish(self, req: Request) -> None:
        pass


# ------------------------------------------------------------------------ registry
class UnknownPolicyError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    name: str
    factory: Callable[..., Policy]
    description: str
    oracle: bool = False


_REGISTRY: dict[str, PolicyInfo] = {}


def register_policy(name: str, factory: Callable[..., Policy], description: str, oracle: bool = False) -> None:
    if name in _REGISTRY and _REGISTRY[name].factory is not factory:
        raise ValueError(f"policy name {name!r} is already registered")
    _REGISTRY[name] = PolicyInfo(name, factory, description, oracle)


def list_policies() -> list[PolicyInfo]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def make_policy(name: str, **kwargs) -> Policy:
    info = _REGISTRY.get(name)
    if info is None:
        avail = ", ".join(sorted(_REGISTRY)) or "(none registered: import baselines)"
        raise UnknownPolicyError(f"unknown policy {name!r}; available: {avail}")
    return info.factory(**kwargs)


def validate_order(order: Iterable[int], live: dict[int, Request], policy_name: str) -> None:
    """Raise a ValueError naming the policy unless ``order`` is a permutation of the live ids."""
    seen = set()
    for rid in order:
        if rid not in live:
            raise ValueError(f"policy {policy_name!r} ordered request {rid!r}, which is not live")
        if rid in seen:
            raise ValueError(f"policy {policy_name!r} ordered request {rid} twice")
        seen.add(rid)
    if len(seen) != len(live):
        missing = [rid for rid in live if rid not in seen][:5]
        raise ValueError(f"policy {policy_name!r} left out live requests, e.g. {missing}")
