"""Named, seeded scenarios: a workload, an engine (or a cluster of them) and the metrics a paper reads.

Why: a published scheduler is judged on the setting its paper used — VTC on two overloaded
clients and a 27-client trace, DLPM on long shared documents, LTR on a chatbot at rising
load — so each setting is registered once, under an id that means the same thing next
year, and ``servegym benchmark --scenario ID`` reproduces it exactly for a seed. A
scenario fixes everything but the policy: the requests (``generate(seed)``), the cost
profile, the engine settings, the number of replicas, the policies the paper compared
(``policies``, the default of ``servegym benchmark``) and the columns its table shows.

Load scale: our cost profiles are H100s, several times faster than the A10G/A100 GPUs of
the papers, so where a paper's claim needs its load regime (overload for VTC, queueing
for LTR) the arrival rates are multiplied by the scenario's ``load_scale`` so that the
demand-to-capacity ratio, not the absolute rate, matches the paper. Each description
says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from envs.engine_config import EngineConfig
from envs.request import RequestSpec

# The table columns most scenarios show: keys of ``RunMetrics.to_dict()`` or of ``extra_metrics``.
THROUGHPUT_COLUMNS = ("num_finished", "throughput_tok_s", "e2e_mean_s", "e2e_p90_s", "ttft_p50_s", "ttft_p99_s")
FAIRNESS_COLUMNS = ("max_service_diff", "avg_service_diff", "jain_index")


class UnknownScenarioError(KeyError):
    """No scenario is registered under the id; the message lists those that are."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Scenario:
    """One reproducible evaluation setting.

    ``build(seed)`` returns the requests (the same list for the same seed). ``num_replicas``
    > 1 makes it a cluster scenario: single-engine policies run on every replica behind
    ``router`` unless the benchmark names another. ``stop_after_finished`` ends a run once
    that many requests finished (LTR's "time to finish 1,000 of 10,000"); the rest stay
    unfinished. ``service_window_s`` is the window of VTC's service metrics.
    ``policy_args`` gives a policy or router, by name, its arguments in this scenario (a
    quantum sized to the workload's shared prefixes, for instance); the benchmark records
    them with each run.
    """

    id: str
    suite: str                      # "vtc", "dlpm", "d2lpm", "ltr", "smoke"
    description: str
    source: str                     # the paper and section it reproduces
    build: Callable[[int], list[RequestSpec]]
    profile: str = "h100-llama-8b"
    engine: EngineConfig = field(default_factory=EngineConfig)
    num_replicas: int = 1
    router: str = "round-robin"
    policies: tuple[str, ...] = ("fcfs",)
    columns: tuple[str, ...] = THROUGHPUT_COLUMNS + FAIRNESS_COLUMNS
    stop_after_finished: int | None = None
    service_window_s: float = 60.0
    load_scale: float = 1.0
    policy_args: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.id or self.id != self.id.strip() or " " in self.id:
            raise ValueError(f"scenario id must be a non-empty word, got {self.id!r}")
        if isinstance(self.num_replicas, bool) or int(self.num_replicas) != self.num_replicas \
                or self.num_replicas < 1:
            raise ValueError(f"scenario {self.id!r}: num_replicas must be an integer >= 1, got {self.num_replicas!r}")
        if self.stop_after_finished is not None and self.stop_after_finished < 1:
            raise ValueError(f"scenario {self.id!r}: stop_after_finished must be >= 1, got {self.stop_after_finished}")
        if not (math.isfinite(self.service_window_s) and self.service_window_s > 0):
            raise ValueError(f"scenario {self.id!r}: service_window_s must be > 0, got {self.service_window_s!r}")
        object.__setattr__(self, "policy_args", {k: dict(v) for k, v in self.policy_args.items()})
        if not self.policies:
            raise ValueError(f"scenario {self.id!r}: needs at least one default policy")

    @property
    def multi_replica(self) -> bool:
        return self.num_replicas > 1

    def generate(self, seed: int) -> list[RequestSpec]:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"scenario {self.id!r}: seed must be an integer >= 0, got {seed!r}")
        return self.build(seed)


_REGISTRY: dict[str, Scenario] = {}


def register_scenario(scenario: Scenario, *, replace: bool = False) -> Scenario:
    if scenario.id in _REGISTRY and not replace and _REGISTRY[scenario.id] is not scenario:
        raise ValueError(f"a scenario with id {scenario.id!r} is already registered; pass replace=True")
    _REGISTRY[scenario.id] = scenario
    return scenario


def get_scenario(scenario_id: str) -> Scenario:
    try:
        return _REGISTRY[scenario_id]
    except KeyError:
        raise UnknownScenarioError(
            f"unknown scenario {scenario_id!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def list_scenarios() -> list[Scenario]:
    """Every registered scenario, sorted by id."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]
