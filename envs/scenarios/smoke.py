"""Two tiny scenarios for trying the benchmark command and for its tests (a second or two each).

``smoke`` has one replica, ``smoke-2x`` two; both serve two clients asking a few questions
about short shared documents, so prefix-aware and fair policies already differ.
"""

from __future__ import annotations

from envs.engine_config import EngineConfig
from envs.scenarios.registry import Scenario, register_scenario
from envs.scenarios.sources import Synthetic
from envs.workloads import ClientSpec, Constant, LogNormal, Poisson, SharedDocument

_CLIENTS = (
    ClientSpec(0, Poisson(40.0), Constant(24), LogNormal(40, 0.5, lo=4, hi=200), SharedDocument(1200, 6)),
    ClientSpec(1, Poisson(20.0), Constant(24), LogNormal(40, 0.5, lo=4, hi=200), SharedDocument(1600, 6)),
)
_COLUMNS = ("num_finished", "throughput_tok_s", "e2e_mean_s", "ttft_p99_s", "cache_hit_rate",
            "max_service_diff", "jain_index")

for _s in (
    Scenario(id="smoke", suite="smoke",
             description="2 clients, Poisson 40 and 20 req/s, 6 questions per 1,200/1,600-token document, 2 s; 1 replica",
             source="a quick check of the benchmark command (no paper)",
             build=Synthetic("smoke", _CLIENTS, duration_s=2.0), engine=EngineConfig(num_gpu_blocks=200),
             policies=("fcfs", "vtc", "dlpm"), columns=_COLUMNS, service_window_s=0.5),
    Scenario(id="smoke-2x", suite="smoke",
             description="the smoke workload on 2 replicas",
             source="a quick check of the benchmark command on a cluster (no paper)",
             build=Synthetic("smoke", _CLIENTS, duration_s=2.0), engine=EngineConfig(num_gpu_blocks=200),
             num_replicas=2, policies=("d2lpm", "round-robin+lpm", "least-loaded+lpm"), columns=_COLUMNS,
             service_window_s=0.5),
):
    register_scenario(_s)
del _s
