"""LTR's evaluation settings (Fu et al., NeurIPS'24; ``../shared/papers.md`` §4.4).

The paper serves Llama-3-8B-Instruct on one A100-40GB with vLLM (chunked prefill,
preemption by swapping) and measures: chatbot serving with Gamma(cv 1) arrivals at 2 to
64 req/s for 60 s each; a burst of 2,000 requests at once; and synthetic data generation
(time to finish 1,000 of 10,000 prompts).

Requests: AlpacaEval's 805 prompts (text, so a trained ranker can score them) with the
real lengths of Llama-3-8B-Instruct's responses (``envs.workloads.alpaca``, copied from
``../shared/data``; CC BY-NC 4.0); a run longer than 805 requests walks further seeded
permutations of the prompts. Engine: the H100 x Llama-8B profile with the KV cache cut to
150,000 tokens (9,375 blocks), what an A100-40GB holds beside Llama-3-8B's weights, and
preemption by swapping as in vllm-ltr. The simulated engine serves about 60 of these
requests per second, so chatbot rates are the paper's times ``LOAD_SCALE`` = 1.25: the
top point, the paper's 64 req/s, offers 80 and overloads it by a third, FCFS's queue
growing through the minute, as the paper's top rate did; lower rates queue little.
(At twice the paper's rates the backlog grows so long that even oracle SJF's p90
latency is worse than FCFS's.) ``ltr-chatbot-rN`` is the paper's N req/s and
``ltr-chatbot`` its top rate, 64 req/s.
"""

from __future__ import annotations

from dataclasses import dataclass

from envs.engine_config import EngineConfig
from envs.request import RequestSpec
from envs.scenarios.registry import Scenario, register_scenario
from envs.scenarios.sources import Burst
from envs.workloads.alpaca import AlpacaEvalWorkload

TARGET_MODEL = "Meta-Llama-3-8B-Instruct"
LOAD_SCALE = 1.25
LTR_ENGINE = EngineConfig(num_gpu_blocks=9375, preemption_mode="swap")
LTR_POLICIES = ("fcfs", "mlfq", "ltr", "srtf")
PAPER_RATES = (2, 4, 8, 16, 32, 64)
CHATBOT_DURATION_S = 60.0
LTR_COLUMNS = ("num_finished", "throughput_tok_s", "e2e_mean_s", "e2e_p90_s", "ttft_mean_s", "ttft_p90_s",
               "max_waiting_time_p99_s", "max_waiting_time_max_s")
DATAGEN_COLUMNS = ("num_finished", "time_to_finish_target_s", "target_throughput_req_s", "e2e_mean_s",
                   "max_waiting_time_max_s")
_SOURCE = "LTR (Fu et al., NeurIPS'24), papers.md §4.4"


@dataclass(frozen=True)
class AlpacaArrivals:
    """``num_requests`` AlpacaEval prompts with the target model's response lengths, Poisson (Gamma cv 1) at ``rate``."""

    name: str
    rate: float
    num_requests: int

    def __call__(self, seed: int) -> list[RequestSpec]:
        workload = AlpacaEvalWorkload(self.name, self.name, TARGET_MODEL, rate=self.rate)
        return workload.generate(seed, self.num_requests)


def _chatbot(sid: str, paper_rate: int) -> Scenario:
    rate = paper_rate * LOAD_SCALE
    n = round(rate * CHATBOT_DURATION_S)
    return Scenario(
        id=sid, suite="ltr",
        description=(f"chatbot: {n:,} AlpacaEval prompts with Llama-3-8B-Instruct's response lengths, Poisson "
                     f"{rate:g} req/s (the paper's {paper_rate} x{LOAD_SCALE}) for 60 s"),
        source=f"{_SOURCE}: chatbot serving, Gamma cv 1 at {paper_rate} req/s",
        build=AlpacaArrivals(sid, float(rate), n), engine=LTR_ENGINE, policies=LTR_POLICIES,
        columns=LTR_COLUMNS, load_scale=LOAD_SCALE, service_window_s=10.0)


def _scenarios() -> list[Scenario]:
    # the rate sweep; its top point, the paper's 64 req/s, is ``ltr-chatbot``
    out = [_chatbot(f"ltr-chatbot-r{r}" if r != PAPER_RATES[-1] else "ltr-chatbot", r) for r in PAPER_RATES]
    out.append(Scenario(
        id="ltr-burst", suite="ltr",
        description="a burst of 2,000 AlpacaEval prompts (Llama-3-8B-Instruct response lengths) at once",
        source=f"{_SOURCE}: burst of 2,000 requests",
        build=Burst(AlpacaArrivals("ltr-burst", 1.0, 2000), 2000), engine=LTR_ENGINE, policies=LTR_POLICIES,
        columns=LTR_COLUMNS, service_window_s=10.0))
    out.append(Scenario(
        id="ltr-datagen", suite="ltr",
        description="synthetic data generation: 10,000 AlpacaEval prompts at once, the run ends when 1,000 finished",
        source=f"{_SOURCE}: synthetic data generation, time to finish 1,000 of 10,000 (paper: 6.5x throughput)",
        build=Burst(AlpacaArrivals("ltr-datagen", 1.0, 10_000), 10_000), engine=LTR_ENGINE,
        policies=LTR_POLICIES, columns=DATAGEN_COLUMNS, stop_after_finished=1000, service_window_s=10.0))
    return out


for _s in _scenarios():
    register_scenario(_s)
del _s
