"""VTC's evaluation settings (Sheng et al., OSDI'24; ``../shared/papers.md`` §2.5).

The paper serves Llama-2-7B on an A10G with a 10,000-token KV pool; the synthetic suites
send 256-token prompts and 256-token responses. We keep the pool (625 blocks of 16
tokens on the H100 x Llama-8B profile) and the lengths, and multiply every rate by
``LOAD_SCALE`` = 8: the A10G served about 900 tokens/s on these suites, the simulated H100
about 7,000, so the paper's rates times 8 put the same demand-to-capacity ratio on it
(overload stays overload, under-load stays under-load). The real-trace run overlays 8
replays of the shipped Arena sample (``OverlaidTrace``) for the same reason.

Durations are a third of the paper's or so (2 min for the steady suites, 4 min for the
on/off and ramp suites, three 2-min phases for the distribution shift): at 8x the rates
an overloaded backlog grows to thousands of requests, and VTC's order over them is what
the simulation spends its time on. The 60 s service windows still see several windows
of steady state.

Service metrics use VTC's weights (input x1, output x2) in 60 s windows.
"""

from __future__ import annotations

from envs.engine_config import EngineConfig
from envs.scenarios.registry import FAIRNESS_COLUMNS, Scenario, register_scenario
from envs.scenarios.sources import OverlaidTrace, Phased, Synthetic, scale_clients
from envs.workloads import ClientSpec, Constant, Deterministic, Gamma, OnOff, Ramp

LOAD_SCALE = 8
VTC_ENGINE = EngineConfig(num_gpu_blocks=625)   # 10,000 tokens of KV, as the paper's A10G pool
VTC_POLICIES = ("fcfs", "vtc", "lcf")
VTC_COLUMNS = ("num_finished", "throughput_tok_s") + FAIRNESS_COLUMNS + ("ttft_mean_s", "ttft_p99_s",
                                                                          "e2e_p90_s")
_SOURCE = "VTC (Sheng et al., OSDI'24), papers.md §2.5"


def _fixed(n: int) -> Constant:
    return Constant(n)


def _uniform(client: int, rate: float, prompt: int = 256, output: int = 256) -> ClientSpec:
    """VTC's "uniform" client: evenly spaced arrivals with a random phase."""
    return ClientSpec(client, Deterministic(rate), _fixed(prompt), _fixed(output))


def _poisson(client: int, rate: float, prompt: int = 256, output: int = 256) -> ClientSpec:
    """VTC's "poisson" client: Gamma gaps with cv 1."""
    return ClientSpec(client, Gamma(rate, 1.0), _fixed(prompt), _fixed(output))


def _suite(sid: str, description: str, paper_setting: str, clients, duration_s: float) -> Scenario:
    scaled = scale_clients(clients, LOAD_SCALE)
    return Scenario(
        id=sid, suite="vtc",
        description=f"{description} (rates x{LOAD_SCALE} for the H100, see envs/scenarios/vtc.py)",
        source=f"{_SOURCE}: {paper_setting}",
        build=Synthetic(sid, scaled, duration_s=duration_s),
        engine=VTC_ENGINE, policies=VTC_POLICIES, columns=VTC_COLUMNS, load_scale=LOAD_SCALE)


def _scenarios() -> list[Scenario]:
    return [
        _suite("vtc-overload",
               "2 clients, evenly spaced 90 and 180 req/min, 256/256 tokens, 2 min: both backlogged",
               "overload (Fig 3)", [_uniform(0, 1.5), _uniform(1, 3.0)], 120.0),
        _suite("vtc-proportional",
               "3 clients, evenly spaced 15/30/90 req/min, 256/256 tokens, 2 min: work conservation",
               "proportional (Fig 4)", [_uniform(0, 0.25), _uniform(1, 0.5), _uniform(2, 1.5)], 120.0),
        _suite("vtc-on-off-less",
               "client 0 Poisson 0.5 req/s in 60 s on/off periods, client 1 evenly spaced 2 req/s, 256/256, 4 min",
               "on_off_less (Fig 5)",
               [ClientSpec(0, OnOff(0.5, 60.0, 60.0), _fixed(256), _fixed(256)), _uniform(1, 2.0)], 240.0),
        _suite("vtc-on-off-overload",
               "client 0 Poisson 2 req/s in 60 s on/off periods, client 1 evenly spaced 3 req/s, 256/256, 4 min",
               "on_off_overload (Fig 6)",
               [ClientSpec(0, OnOff(2.0, 60.0, 60.0), _fixed(256), _fixed(256)), _uniform(1, 3.0)], 240.0),
        _suite("vtc-poisson-short-long",
               "Poisson clients: 8 req/s of 64/64 tokens and 1.5 req/s of 256/256, 2 min",
               "poisson_short_long (Fig 7)", [_poisson(0, 8.0, 64, 64), _poisson(1, 1.5)], 120.0),
        _suite("vtc-poisson-short-long-2",
               "Poisson clients: 8 req/s of 512 in / 32 out and 1.5 req/s of 32 in / 512 out, 2 min",
               "poisson_short_long_2 (Fig 8, the artifact's lengths)",
               [_poisson(0, 8.0, 512, 32), _poisson(1, 1.5, 32, 512)], 120.0),
        _suite("vtc-increase",
               "client 0 evenly spaced 0.5 req/s, client 1 Poisson ramping 0.2 -> 2 req/s over 4 min, 256/256",
               "increase (Fig 9)",
               [_uniform(0, 0.5), ClientSpec(1, Ramp(0.2, 2.0, 240.0), _fixed(256), _fixed(256))], 240.0),
        Scenario(
            id="vtc-dist-shift", suite="vtc",
            description=(f"2 clients through three 2-min phases: on/off (0.5 on/off 60 s, 2), overload (1, 1), "
                         f"proportional (0.5, 1.5 req/s); 256/256 (rates x{LOAD_SCALE})"),
            source=f"{_SOURCE}: dist_shift (Fig 10, the counter-lift ablation against LCF)",
            build=Phased("vtc-dist-shift", (
                (120.0, scale_clients([ClientSpec(0, OnOff(0.5, 60.0, 60.0), _fixed(256), _fixed(256)),
                                       _uniform(1, 2.0)], LOAD_SCALE)),
                (120.0, scale_clients([_uniform(0, 1.0), _uniform(1, 1.0)], LOAD_SCALE)),
                (120.0, scale_clients([_uniform(0, 0.5), _uniform(1, 1.5)], LOAD_SCALE)))),
            engine=VTC_ENGINE, policies=VTC_POLICIES, columns=VTC_COLUMNS, load_scale=LOAD_SCALE),
        Scenario(
            id="vtc-arena-27", suite="vtc",
            description=(f"the shipped Chatbot Arena sample (27 clients, 1,500 requests, 600 s) overlaid "
                         f"{LOAD_SCALE} times with seeded offsets: {LOAD_SCALE}x its load"),
            source=f"{_SOURCE}: real trace (Table 2: max diff VTC 368 vs FCFS 760 at ~779 tok/s)",
            build=OverlaidTrace("arena-27", LOAD_SCALE),
            engine=VTC_ENGINE, policies=VTC_POLICIES, columns=VTC_COLUMNS, load_scale=LOAD_SCALE),
    ]


for _s in _scenarios():
    register_scenario(_s)
del _s
