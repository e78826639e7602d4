"""What ``servegym benchmark`` runs: policy names resolved against a scenario, and one seeded run each.

Why a module of its own: the rules for which policies apply to a scenario, and how a
single-engine policy runs on a cluster, are the benchmark's semantics; the table, files
and plots (``train.benchmark``) only present what these runs return.

Resolving names (``resolve_policies``):

Arguments: a name the scenario's ``policy_args`` lists gets those arguments (a router's
local policy gets the ones the router derives, e.g. D²LPM's ``local_quantum``).

* a registered policy ``P`` (``servegym policies``): on a one-replica scenario it is the
  engine's policy; on a multi-replica scenario every replica runs its own ``P`` behind the
  scenario's router (round-robin unless the scenario says otherwise), labelled
  ``<router>+P``;
* ``R+P``: policy ``P`` on every replica behind router ``R`` (multi-replica scenarios only);
* a router that brings its own local policy (``d2lpm``: a dispatcher over replicas that
  each run local DLPM), labelled by its name (multi-replica scenarios only);
* ``all``: on one replica, every registered policy; on several, every router with its own
  local policy, then every registered policy behind round-robin, then behind least-loaded
  (the baselines of DLPM's paper, papers.md §3.4).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from envs.records import RunRecord
from envs.scenarios import Scenario

COMPARISON_ROUTERS = ("round-robin", "least-loaded")


@dataclass(frozen=True)
class PolicyPlan:
    """One benchmark entry: a label, the local policy (with arguments) and, on a cluster, the router."""

    label: str
    policy: str
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    router: str | None = None
    router_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SeedRun:
    """One policy on one seed: the merged record, its metrics (``to_dict`` keys plus extras and wall time)."""

    plan: PolicyPlan
    seed: int
    record: RunRecord
    metrics: dict[str, Any]


def _registered_policies() -> list[str]:
    import baselines  # noqa: F401  (registers the baselines)
    from envs.policy import list_policies

    return [p.name for p in list_policies()]


def _routers_with_local_policy() -> list[str]:
    import baselines  # noqa: F401  (registers D²LPM's dispatcher)
    from envs.routers import list_routers, make_router

    return [r.name for r in list_routers() if make_router(r.name).local_policy is not None]


def resolve_policies(spec: str | None, scenario: Scenario) -> list[PolicyPlan]:
    """The runs a ``--policies`` value asks for on ``scenario`` (None: the scenario's own comparison set)."""
    from envs.policy import make_policy
    from envs.routers import get_router_info, make_router

    policies = _registered_policies()
    cluster_routers = _routers_with_local_policy()
    if spec is None:
        names = list(scenario.policies)
    elif spec.strip() == "all":
        if not scenario.multi_replica:
            return [PolicyPlan(p, p) for p in policies]
        names = cluster_routers + [f"{r}+{p}" for r in COMPARISON_ROUTERS for p in policies]
    else:
        names = [s.strip() for s in spec.split(",") if s.strip()]
        if not names:
            raise ValueError(f"--policies {spec!r} names no policy")
    args = scenario.policy_args

    def kwargs(name: str) -> dict[str, Any]:
        return dict(args.get(name, {}))

    plans: list[PolicyPlan] = []
    for name in names:
        if "+" in name:
            router, _, policy = name.partition("+")
            if not scenario.multi_replica:
                raise ValueError(f"{name!r}: scenario {scenario.id!r} has one replica; routers apply only to "
                                 f"multi-replica scenarios (give the policy name alone)")
            get_router_info(router)        # raises UnknownRouterError naming the routers
            make_policy(policy)            # raises UnknownPolicyError naming the policies
            plans.append(PolicyPlan(name, policy, kwargs(policy), router, kwargs(router)))
        elif name in policies:
            if scenario.multi_replica:
                plans.append(PolicyPlan(f"{scenario.router}+{name}", name, kwargs(name), scenario.router,
                                        kwargs(scenario.router)))
            else:
                plans.append(PolicyPlan(name, name, kwargs(name)))
        elif name in cluster_routers:
            if not scenario.multi_replica:
                raise ValueError(f"{name!r} dispatches over several replicas; scenario {scenario.id!r} has one "
                                 f"(try a multi-replica scenario, e.g. d2lpm-longdoc-qa-4x)")
            router = make_router(name, **kwargs(name))
            plans.append(PolicyPlan(name, router.local_policy, dict(router.local_policy_kwargs), name, kwargs(name)))
        else:
            make_policy(name)  # raises UnknownPolicyError with the list of policies
    labels = [p.label for p in plans]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ValueError(f"--policies names {', '.join(dupes)} more than once")
    return plans


def run_plan(scenario: Scenario, plan: PolicyPlan, seed: int,
             specs: list | None = None, profile=None) -> SeedRun:
    """Run ``plan`` on ``scenario``'s requests for ``seed`` (``specs`` if already generated)."""
    import baselines  # noqa: F401
    from envs.cluster import ClusterEngine
    from envs.engine import ServingEngine
    from envs.policy import make_policy
    from envs.routers import make_router
    from envs.scenarios.metrics import scenario_metrics
    from gpu_backend.profiles import load_profile
    from gpu_backend.sim_executor import SimExecutor

    if specs is None:
        specs = scenario.generate(seed)
    if profile is None:
        profile = load_profile(scenario.profile)

    def new_policy(_: int = 0):
        return make_policy(plan.policy, **plan.policy_kwargs)

    stop = scenario.stop_after_finished
    t0 = time.perf_counter()
    if plan.router is None:
        engine = ServingEngine(SimExecutor(profile), new_policy(), scenario.engine)
        engine.load(specs)
        if stop is None:
            record = engine.run()
        else:
            record = _run_until(engine, stop)
        iterations = engine.iteration
    else:
        router = make_router(plan.router, **plan.router_kwargs)
        cluster = ClusterEngine.build(scenario.num_replicas, lambda: SimExecutor(profile), new_policy, router,
                                      scenario.engine)
        cluster.load(specs)
        result = cluster.run(stop_after_finished=stop)
        record = result.merged
        iterations = record.counters.iterations
    wall = time.perf_counter() - t0
    _, metrics = scenario_metrics(scenario, record, kv_bytes_per_token=profile.model.kv_bytes_per_token)
    metrics["sim_wall_s"] = wall
    metrics["sim_requests_per_s"] = len(specs) / wall if wall > 0 else None
    metrics["iterations"] = iterations
    if plan.router is not None:
        metrics["per_replica"] = {str(i): _replica_counters(rr, n) for i, (rr, n)
                                  in enumerate(zip(result.replicas, result.routed_per_replica))}
    return SeedRun(plan, seed, record, metrics)


def _replica_counters(record: RunRecord, num_routed: int) -> dict[str, float | int]:
    """One replica's share of a cluster run: what was routed there and what its engine did."""
    c = record.counters
    return {"num_routed": num_routed,
            "num_finished": sum(1 for r in record.requests if r.finished and r.rejected_reason is None),
            "cache_hit_rate": c.prompt_tokens_cached / c.prompt_tokens_admitted if c.prompt_tokens_admitted else 0.0,
            "iterations": c.iterations, "busy_time_s": c.busy_time_s, "preemptions": c.preemptions,
            "output_tokens": c.output_tokens}


def _run_until(engine, num_finished: int) -> RunRecord:
    """Step ``engine`` until ``num_finished`` requests finished (or all are done)."""
    finished = 0
    while not engine.done and finished < num_finished:
        finished += engine.step().finished
    return engine.result()


def run_all(scenario: Scenario, plans: list[PolicyPlan], seeds: list[int],
            on_run: Callable[[SeedRun], None] | None = None) -> dict[str, list[SeedRun]]:
    """Every plan on every seed, the requests generated once per seed and shared by all plans."""
    from gpu_backend.profiles import load_profile

    profile = load_profile(scenario.profile)
    out: dict[str, list[SeedRun]] = {p.label: [] for p in plans}
    for seed in seeds:
        specs = scenario.generate(seed)
        for plan in plans:
            run = run_plan(scenario, plan, seed, specs, profile)
            out[plan.label].append(run)
            if on_run is not None:
                on_run(run)
    return out
