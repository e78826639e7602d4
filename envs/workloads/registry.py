"""Named workloads: what ``servegym workloads`` lists and what configs refer to by name.

Why: an experiment must say which workload it ran in one word that means the same thing
next year, so every built-in workload is registered here under a fixed name, and
``get_workload(name).generate(seed)`` reproduces it exactly.

Built-in synthetic workloads run for a fixed duration (``generate(seed)`` returns the
requests that arrive in it); pass ``num_requests`` for a fixed count instead.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from envs.request import RequestSpec
from envs.workloads.arrivals import Deterministic, Gamma, OnOff, Poisson, Ramp
from envs.workloads.lengths import Constant, LogNormal, Uniform
from envs.workloads.programs import MultiTurn, SharedDocument, SystemPrompt
from envs.workloads.synthetic import ClientSpec, MultiClientWorkload
from envs.workloads.traces import (ARENA_27_PATH, AZURE_CONV_PATH, MOONCAKE_CONVERSATION_PATH,
                                   TraceWorkload)


class Workload(Protocol):
    """What every registered workload offers."""

    name: str
    description: str
    kind: str  # "trace" or "synthetic"

    @property
    def num_requests(self) -> int | None: ...

    def generate(self, seed: int, num_requests: int | None = None) -> list[RequestSpec]: ...


class WorkloadInfo(NamedTuple):
    name: str
    description: str
    kind: str
    num_requests: int | None  # a trace's size; None for synthetic workloads


class UnknownWorkloadError(KeyError):
    """No workload is registered under the name; the message lists those that are."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0])


_REGISTRY: dict[str, Workload] = {}


def _check_interface(workload: object) -> None:
    # Not isinstance(..., Workload): that would read num_requests, which loads a trace.
    has = all(hasattr(workload, a) for a in ("name", "description", "kind")) and \
        callable(getattr(workload, "generate", None)) and hasattr(type(workload), "num_requests")
    if not has:
        raise TypeError(f"not a workload (needs name, description, kind, num_requests, generate): {workload!r}")


def register_workload(workload: Workload, *, replace: bool = False) -> Workload:
    """Register ``workload`` under its name; a second workload of the same name needs ``replace=True``."""
    _check_interface(workload)
    if workload.kind not in ("trace", "synthetic"):
        raise ValueError(f"workload {workload.name!r}: kind must be 'trace' or 'synthetic', got {workload.kind!r}")
    if workload.name in _REGISTRY and not replace and _REGISTRY[workload.name] is not workload:
        raise ValueError(f"a workload named {workload.name!r} is already registered; pass replace=True")
    _REGISTRY[workload.name] = workload
    return workload


def get_workload(name: str) -> Workload:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownWorkloadError(
            f"unknown workload {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def list_workloads() -> list[WorkloadInfo]:
    """Every registered workload, sorted by name. Listing a trace loads it (once per process)."""
    return [WorkloadInfo(w.name, w.description, w.kind, w.num_requests)
            for _, w in sorted(_REGISTRY.items())]


def _chat_prompt() -> LogNormal:
    return LogNormal(mean=1000, cv=1.0, lo=4, hi=16384)


def _chat_output() -> LogNormal:
    return LogNormal(mean=200, cv=1.0, lo=1, hi=4096)


def _builtins() -> list[Workload]:
    fixed = Constant(256)
    return [
        TraceWorkload(
            "mooncake-conversation",
            "Kimi (Moonshot) production conversation trace, 1 h, prefix sharing from 512-token block hashes; 1 client",
            MOONCAKE_CONVERSATION_PATH, "mooncake"),
        TraceWorkload(
            "azure-conv",
            "Azure LLM inference trace 2023 (Splitwise), conversation service, 1 h; no sharing info; 1 client",
            AZURE_CONV_PATH, "azure"),
        TraceWorkload(
            "arena-27",
            "VTC's Chatbot Arena sample: 1,500 requests of 27 clients (one per Arena model) over 600 s",
            ARENA_27_PATH, "arena"),
        MultiClientWorkload(
            "poisson-single",
            "1 client, Poisson 2 req/s, chat-like log-normal lengths (prompt mean 1000, output mean 200), 600 s",
            [ClientSpec(0, Poisson(2.0), _chat_prompt(), _chat_output())], duration_s=600.0),
        MultiClientWorkload(
            "gamma-multi-client",
            "4 clients with bursty Gamma arrivals (cv 2) at 0.5/1/2/3 req/s and different length mixes, 600 s",
            [ClientSpec(0, Gamma(0.5, 2.0), LogNormal(3000, 0.6, lo=64, hi=16384), LogNormal(150, 0.8, hi=2048)),
             ClientSpec(1, Gamma(1.0, 2.0), LogNormal(200, 1.0, hi=4096), LogNormal(600, 0.6, hi=4096)),
             ClientSpec(2, Gamma(2.0, 2.0), _chat_prompt(), _chat_output()),
             ClientSpec(3, Gamma(3.0, 2.0), LogNormal(100, 0.8, hi=2048), LogNormal(50, 0.8, hi=1024))],
            duration_s=600.0),
        MultiClientWorkload(
            "vtc-overload-2",
            "VTC overload: 2 clients sending evenly spaced requests at 1.5 and 3 req/s, 256-token prompts and outputs, 600 s",
            [ClientSpec(0, Deterministic(1.5), fixed, fixed), ClientSpec(1, Deterministic(3.0), fixed, fixed)],
            duration_s=600.0),
        MultiClientWorkload(
            "onoff-2clients",
            "VTC on/off (less): client 0 Poisson 0.5 req/s in alternating 60 s on/off periods, "
            "client 1 evenly spaced 2 req/s; 256/256 tokens, 600 s",
            [ClientSpec(0, OnOff(0.5, on_s=60.0, off_s=60.0), fixed, fixed),
             ClientSpec(1, Deterministic(2.0), fixed, fixed)],
            duration_s=600.0),
        MultiClientWorkload(
            "ramp-2clients",
            "VTC increase: client 0 steady Poisson 0.5 req/s, client 1 ramping 0.2 -> 2 req/s over 600 s; 256/256 tokens",
            [ClientSpec(0, Poisson(0.5), fixed, fixed), ClientSpec(1, Ramp(0.2, 2.0, 600.0), fixed, fixed)],
            duration_s=600.0),
        MultiClientWorkload(
            "shared-doc-qa",
            "5 clients asking 20 questions about each long document (~8k tokens), Gamma arrivals (cv 1.5, "
            "0.4 req/s each), 600 s",
            [ClientSpec(c, Gamma(0.4, 1.5), LogNormal(60, 0.6, lo=4, hi=1024), LogNormal(150, 0.8, hi=2048),
                        SharedDocument(LogNormal(8000, 0.25, lo=2048, hi=16384), questions_per_doc=20))
             for c in range(5)],
            duration_s=600.0),
        MultiClientWorkload(
            "multi-turn-chat",
            "4 clients starting Poisson conversations (0.1/s each) of 2-8 turns; each turn re-sends the "
            "growing history after 10 s think time, 600 s",
            [ClientSpec(c, Poisson(0.1), LogNormal(300, 1.0, lo=4, hi=4096), LogNormal(250, 0.8, hi=2048),
                        MultiTurn(Uniform(2, 8), LogNormal(100, 1.0, lo=2, hi=2048), think_time_s=10.0))
             for c in range(4)],
            duration_s=600.0),
        MultiClientWorkload(
            "system-prompt",
            "8 clients, each with its own 1,500-token system prompt before every question, Poisson 0.25 req/s each, 600 s",
            [ClientSpec(c, Poisson(0.25), LogNormal(200, 1.0, lo=4, hi=4096), _chat_output(), SystemPrompt(1500))
             for c in range(8)],
            duration_s=600.0),
    ]


for _workload in _builtins():
    register_workload(_workload)
del _workload

# AlpacaEval prompts with real response lengths of each shipped target model (for the LTR ranker).
from envs.workloads.alpaca import alpaca_workloads  # noqa: E402  (after the registry it fills)

for _workload in alpaca_workloads():
    register_workload(_workload)
del _workload
