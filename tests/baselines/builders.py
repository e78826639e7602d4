"""Shared builders for the policy tests: hand-made specs on a simulated H100 engine.

Arrival times of ``EPS`` (and multiples) arrive during the first iteration, which always
takes far longer: the engine admits them at its end, before the next schedule.
"""

from __future__ import annotations

import baselines  # noqa: F401  (registers the baselines)
from envs.engine import ServingEngine
from envs.engine_config import EngineConfig
from envs.policy import Policy, make_policy
from envs.request import RequestSpec
from envs.tokens import ConcatTokens, TokenSource, UniqueTokens
from gpu_backend.sim_executor import SimExecutor

PROFILE = "h100-llama-8b"
EPS = 1e-9


def spec(rid: int, t: float, prompt: int | TokenSource, out: int, client: int = 0) -> RequestSpec:
    tokens = UniqueTokens(1000 + rid, prompt) if isinstance(prompt, int) else prompt
    return RequestSpec(rid, client, t, tokens, out)


def doc_prompt(doc_stream: int, doc_len: int, question_stream: int, question_len: int) -> ConcatTokens:
    """A shared document followed by a request's own question."""
    return ConcatTokens([UniqueTokens(doc_stream, doc_len), UniqueTokens(question_stream, question_len)])


def engine(policy: str | Policy, specs, **cfg) -> ServingEngine:
    pol = make_policy(policy) if isinstance(policy, str) else policy
    eng = ServingEngine(SimExecutor(PROFILE), pol, EngineConfig(**cfg))
    eng.load(specs)
    return eng


def order(eng: ServingEngine) -> list[int]:
    return list(eng.policy.order(eng.view))


def states(eng: ServingEngine) -> dict[int, str]:
    return {rid: r.state.name for rid, r in eng.live.items()}


def step_until_preemption(eng: ServingEngine, max_steps: int = 10_000) -> None:
    for _ in range(max_steps):
        assert not eng.done, "the run finished without the preemption the test needs"
        info = eng.step()
        eng.check_integrity()
        if info.preempted:
            return
    raise AssertionError("no preemption within the step limit")


def run_to_end(eng: ServingEngine) -> None:
    while not eng.done:
        eng.step()
        eng.check_integrity()



# ------------------------------------------------------------ a prefix-cache scene (LPM, DLPM)
D1, D2 = 501, 502  # token streams of two shared documents


def prefix_scene() -> list[RequestSpec]:
    """Three one-token "seed" requests at t=0 leave documents D1 (320 tokens, 20 blocks) and D2
    (160 tokens, 10 blocks) in the prefix cache when they finish in the first iteration; five
    requests arrive during it, so the second schedule sees them with these cached prefixes:

    ====  =======  ======  ==========================  ==============  ================
    id    arrival  client  prompt                      cached prefix   uncached (ext)
    ====  =======  ======  ==========================  ==============  ================
    50    1 EPS    2       500 unique tokens           0               500
    40    2 EPS    1       D2 + 30                     160             30
    60    3 EPS    0       D1 + 30                     320             30
    45    3 EPS    0       D1 + 40                     320             40
    30    4 EPS    0       D1 + 25                     320             25
    ====  =======  ======  ==========================  ==============  ================

    Seeds: 1 (client 0, D1 + 20 = 340 tokens), 2 (client 1, D2 + 20 = 180), 3 (client 2, 100 unique).
    """
    return [
        spec(1, 0.0, doc_prompt(D1, 320, 9001, 20), 1, client=0),
        spec(2, 0.0, doc_prompt(D2, 160, 9002, 20), 1, client=1),
        spec(3, 0.0, 100, 1, client=2),
        spec(50, EPS, 500, 20, client=2),
        spec(40, 2 * EPS, doc_prompt(D2, 160, 9040, 30), 20, client=1),
        spec(60, 3 * EPS, doc_prompt(D1, 320, 9060, 30), 20, client=0),
        spec(45, 3 * EPS, doc_prompt(D1, 320, 9045, 40), 20, client=0),
        spec(30, 4 * EPS, doc_prompt(D1, 320, 9030, 25), 20, client=0),
    ]


LPM_ORDER = [45, 60, 30, 40, 50]  # cached prefix longest first; 45 and 60 tie on arrival: id


def to_prefix_scene_order(eng: ServingEngine) -> None:
    """Step the scene to its second schedule: the seeds finished, the five others waiting."""
    eng.step()  # admission of the seeds
    eng.step()  # iteration 0: the seeds run and finish; the five arrive
    assert eng.iteration == 1 and sorted(eng.live) == [30, 40, 45, 50, 60]
    assert all(r.state.name == "WAITING" for r in eng.live.values())
