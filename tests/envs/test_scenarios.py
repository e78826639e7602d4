"""The scenario registry: the ids the issue names exist, every scenario generates the same requests for
a seed (and others for another seed), and the builders reproduce the papers' settings exactly."""

from __future__ import annotations

import collections
import hashlib

import numpy as np
import pytest

from envs.request import RequestSpec
from envs.scenarios import Scenario, UnknownScenarioError, get_scenario, list_scenarios, register_scenario
from envs.scenarios.programs import TreeOfThought
from envs.scenarios.sources import Burst, OverlaidTrace, Phased, Synthetic, scale_clients
from envs.scenarios.ltr import LOAD_SCALE as LTR_SCALE
from envs.scenarios.ltr import PAPER_RATES
from envs.scenarios.vtc import LOAD_SCALE
from envs.workloads.alpaca import load_alpaca_eval
from envs.workloads import (ClientSpec, Constant, Deterministic, Gamma, OnOff, Poisson, Ramp, get_workload)
from tests.helpers import common_prefix

BS = 16
REQUIRED = ("vtc-overload", "vtc-arena-27", "dlpm-longdoc-qa", "d2lpm-longdoc-qa-4x", "ltr-chatbot", "ltr-burst",
            "ltr-datagen")
IDS = [s.id for s in list_scenarios()]


def fingerprint(specs: list[RequestSpec]) -> str:
    """Everything that defines the requests, with prompt content by block keys (every 7th request)."""
    h = hashlib.sha256()
    for i, s in enumerate(specs):
        h.update(repr((s.request_id, s.client_id, s.arrival_time, s.prompt_len, s.output_len, s.parent_id,
                       s.think_time_s, s.online, s.prompt_text)).encode())
        if i % 7 == 0:
            h.update(repr(s.prompt.block_keys(BS)).encode())
    return h.hexdigest()


def test_the_issues_scenario_ids_are_registered():
    for sid in REQUIRED:
        assert sid in IDS
    suites = collections.Counter(s.suite for s in list_scenarios())
    assert suites["vtc"] >= 9 and suites["dlpm"] >= 8 and suites["d2lpm"] >= 2 and suites["ltr"] >= 7
    assert IDS == sorted(IDS)


@pytest.mark.parametrize("sid", IDS)
def test_every_scenario_is_deterministic_per_seed(sid):
    s = get_scenario(sid)
    a = s.generate(0)
    b = s.generate(0)
    assert len(a) > 0
    assert fingerprint(a) == fingerprint(b)
    assert [x.request_id for x in a] == list(range(len(a)))
    assert all(x.arrival_time <= y.arrival_time for x, y in zip(a, a[1:]))
    ids = {x.request_id for x in a}
    assert all(x.parent_id is None or x.parent_id in ids for x in a)
    assert fingerprint(s.generate(1)) != fingerprint(a)


def test_unknown_scenario_and_bad_values():
    with pytest.raises(UnknownScenarioError, match="unknown scenario 'nope'; available: .*vtc-overload"):
        get_scenario("nope")
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        get_scenario("smoke").generate(-1)
    s = get_scenario("smoke")
    with pytest.raises(ValueError, match="already registered"):
        register_scenario(Scenario(id="smoke", suite="x", description="", source="", build=s.build))
    with pytest.raises(ValueError, match="num_replicas must be an integer >= 1, got 0"):
        Scenario(id="x", suite="x", description="", source="", build=s.build, num_replicas=0)
    with pytest.raises(ValueError, match="scenario id must be a non-empty word"):
        Scenario(id="a b", suite="x", description="", source="", build=s.build)


# ------------------------------------------------------------------ VTC
def test_vtc_overload_is_the_papers_two_uniform_clients_at_the_load_scale():
    s = get_scenario("vtc-overload")
    specs = s.generate(0)
    counts = collections.Counter(x.client_id for x in specs)
    # 90 and 180 req/min for 6 min, times the load scale (evenly spaced: exact counts)
    assert counts == {0: int(1.5 * LOAD_SCALE * 120), 1: int(3.0 * LOAD_SCALE * 120)}
    assert {(x.prompt_len, x.output_len) for x in specs} == {(256, 256)}
    gaps = np.diff([x.arrival_time for x in specs if x.client_id == 0])
    assert np.allclose(gaps, 1 / (1.5 * LOAD_SCALE))
    assert s.engine.num_gpu_blocks * 16 == 10_000 and s.policies == ("fcfs", "vtc", "lcf")
    assert s.load_scale == LOAD_SCALE


def test_vtc_arena_overlays_the_shipped_trace():
    s = get_scenario("vtc-arena-27")
    specs = s.generate(0)
    base = get_workload("arena-27").generate(0)
    assert len(specs) == LOAD_SCALE * len(base)
    assert len({x.client_id for x in specs}) == 27
    assert collections.Counter(x.client_id for x in specs) == \
        collections.Counter({c: LOAD_SCALE * n for c, n in collections.Counter(x.client_id for x in base).items()})
    assert max(x.arrival_time for x in specs) <= max(x.arrival_time for x in base)
    # each copy's prompts are new content: nothing beyond the trace's own sharing (none) is shared
    keys = [k for x in specs[:400] for k in x.prompt.block_keys(BS)]
    assert len(keys) == len(set(keys))


def test_phased_runs_the_phases_one_after_another():
    phases = ((10.0, (ClientSpec(0, Deterministic(2.0), Constant(5), Constant(5)),)),
              (5.0, (ClientSpec(0, Deterministic(1.0), Constant(7), Constant(7)),
                     ClientSpec(1, Deterministic(1.0), Constant(9), Constant(9)))))
    specs = Phased("t", phases)(0)
    first = [x for x in specs if x.arrival_time < 10.0]
    second = [x for x in specs if x.arrival_time >= 10.0]
    assert len(first) == 20 and {x.prompt_len for x in first} == {5}
    assert len(second) == 10 and {x.prompt_len for x in second} == {7, 9}
    assert max(x.arrival_time for x in specs) < 15.0
    assert [x.request_id for x in specs] == list(range(30))
    shift = get_scenario("vtc-dist-shift").generate(0)
    mid = collections.Counter(x.client_id for x in shift if 120.0 <= x.arrival_time < 240.0)
    assert mid[0] == mid[1] == 120 * LOAD_SCALE   # the overload phase: 1 req/s each, evenly spaced


def test_scale_clients_multiplies_every_kind_of_rate():
    out = scale_clients([ClientSpec(0, Poisson(1.0), Constant(1), Constant(1)),
                         ClientSpec(1, Gamma(2.0, 1.5), Constant(1), Constant(1)),
                         ClientSpec(2, OnOff(0.5, 60.0, 30.0), Constant(1), Constant(1)),
                         ClientSpec(3, Ramp(0.2, 2.0, 600.0), Constant(1), Constant(1)),
                         ClientSpec(4, Deterministic(3.0), Constant(1), Constant(1))], 4.0)
    assert [c.arrivals for c in out] == [Poisson(4.0), Gamma(8.0, 1.5), OnOff(2.0, 60.0, 30.0),
                                         Ramp(0.8, 8.0, 600.0), Deterministic(12.0)]
    with pytest.raises(ValueError, match="factor must be a finite number > 0, got 0"):
        scale_clients([], 0.0)


# ------------------------------------------------------------------ DLPM / D²LPM
def test_dlpm_longdoc_qa_shares_each_document_across_its_questions():
    s = get_scenario("dlpm-longdoc-qa")
    specs = s.generate(0)
    assert len({x.client_id for x in specs}) == 10
    client0 = [x for x in specs if x.client_id == 0]
    doc_blocks = client0[0].prompt.parts[0].length // BS
    keys = [x.prompt.block_keys(BS) for x in client0[:20]]
    assert all(common_prefix(keys[0], k) == doc_blocks for k in keys[1:])
    assert common_prefix(keys[0], client0[20].prompt.block_keys(BS)) == 0   # the 21st question: a new document
    assert s.num_replicas == 1 and s.engine.num_gpu_blocks == 3000


def test_misbehaving_clients_and_client_scaling():
    base = collections.Counter(x.client_id for x in get_scenario("dlpm-longdoc-qa").generate(0))
    s1 = collections.Counter(x.client_id for x in get_scenario("dlpm-longdoc-qa-s1").generate(0))
    assert s1[0] > 2.5 * np.mean([s1[c] for c in range(1, 10)])
    clients = get_scenario("dlpm-longdoc-qa-s2").build.clients
    assert clients[0].program.doc_len.mean == 3 * clients[1].program.doc_len.mean == 24000
    assert {c.arrivals for c in clients[1:]} == {clients[0].arrivals}
    for n in (5, 20, 50):
        specs = get_scenario(f"dlpm-longdoc-qa-c{n}").generate(0)
        assert len({x.client_id for x in specs}) == n
        assert 0.85 < len(specs) / sum(base.values()) < 1.15     # the same total rate


def test_the_fairness_setting_has_one_flooding_client_and_nine_light_ones():
    """S1 in overload (papers.md §3.4): client 0 at 12 req/s, the 9 others at 0.3 req/s each, same documents."""
    s = get_scenario("dlpm-longdoc-qa-s1-overload")
    clients = s.build.clients
    assert [c.client_id for c in clients] == list(range(10))
    assert [c.arrivals.cv for c in clients] == [1.5] * 10
    assert [c.arrivals.rate for c in clients] == pytest.approx([12.0] + [0.3] * 9)
    assert {c.program for c in clients} == {get_scenario("dlpm-longdoc-qa").build.clients[0].program}
    assert s.engine.num_gpu_blocks == 3000 and s.num_replicas == 1
    assert s.policy_args["dlpm"] == {"quantum": 32000.0}
    counts = collections.Counter(x.client_id for x in s.generate(0))
    assert counts[0] > 20 * max(counts[c] for c in range(1, 10))


def test_multi_replica_scenarios():
    s = get_scenario("d2lpm-longdoc-qa-4x")
    assert s.num_replicas == 4 and s.multi_replica and s.policies[0] == "d2lpm"
    assert get_scenario("d2lpm-longdoc-qa-8x").num_replicas == 8
    assert len({x.client_id for x in s.generate(0)}) == 40


def test_tree_of_thought_program_shares_along_the_tree():
    prog = TreeOfThought(branching=2, depth=2, instruction_len=64, step_len=16)
    assert prog.tree_size == 7
    specs = Synthetic("tot-test", (ClientSpec(0, Poisson(1.0), Constant(48), Constant(32), prog),),
                      num_requests=14)(0)
    assert len(specs) == 14
    root, kids = specs[0], [x for x in specs if x.parent_id == specs[0].request_id]
    assert root.parent_id is None and len(kids) == 2
    grandkids = [x for x in specs if x.parent_id in {k.request_id for k in kids}]
    assert len(grandkids) == 4
    # a child's prompt is its parent's prompt + the parent's thought + a 16-token step
    for k in kids:
        assert k.prompt_len == root.prompt_len + root.output_len + 16
        full = np.concatenate([root.prompt.token_ids(), root.output_tokens.token_ids()])
        assert np.array_equal(k.prompt.token_ids()[: len(full)], full)
    a, b = kids
    assert common_prefix(a.prompt.block_keys(BS), b.prompt.block_keys(BS)) == (root.prompt_len + root.output_len) // BS
    second_root = [x for x in specs if x.parent_id is None][1]
    assert common_prefix(root.prompt.block_keys(BS), second_root.prompt.block_keys(BS)) == 64 // BS
    with pytest.raises(ValueError, match="branching must be an integer >= 1, got 0"):
        TreeOfThought(branching=0, depth=1)


def test_burst_sends_everything_at_once():
    src = Synthetic("b", (ClientSpec(0, Poisson(5.0), Constant(8), Constant(8)),), num_requests=30)
    specs = Burst(src, 20)(3)
    assert len(specs) == 20 and {x.arrival_time for x in specs} == {0.0}
    with pytest.raises(ValueError, match="fewer than 40"):
        Burst(src, 40)(0)


def test_overlaid_trace_validation():
    with pytest.raises(ValueError, match="copies must be an integer >= 1, got 0"):
        OverlaidTrace("arena-27", 0)


# ------------------------------------------------------------------ LTR
def test_ltr_chatbot_rates_and_real_lengths():
    data = load_alpaca_eval()
    lengths = dict(zip(data.prompts, data.lengths("Meta-Llama-3-8B-Instruct").tolist()))
    for r in PAPER_RATES:
        s = get_scenario("ltr-chatbot" if r == 64 else f"ltr-chatbot-r{r}")
        specs = s.generate(0)
        assert len(specs) == round(r * LTR_SCALE * 60)
        assert max(x.arrival_time for x in specs) < 90.0
        assert s.engine.preemption_mode == "swap" and s.engine.num_gpu_blocks * 16 == 150_000
    specs = get_scenario("ltr-chatbot").generate(0)
    assert all(lengths[x.prompt_text] == x.output_len for x in specs)      # the target model's real lengths
    assert len({x.prompt_text for x in specs}) == 805                      # every prompt, then again


def test_ltr_burst_and_datagen():
    burst = get_scenario("ltr-burst").generate(0)
    assert len(burst) == 2000 and {x.arrival_time for x in burst} == {0.0}
    s = get_scenario("ltr-datagen")
    specs = s.generate(0)
    assert len(specs) == 10_000 and {x.arrival_time for x in specs} == {0.0}
    assert s.stop_after_finished == 1000 and "time_to_finish_target_s" in s.columns


# ------------------------------------------------------------------ scenario metrics
def test_extra_metrics_per_client_latency_and_time_to_target():
    from envs.metrics import compute_metrics
    from envs.records import EngineCounters, ItlLog, RequestRecord, RunRecord
    from envs.scenarios.metrics import extra_metrics

    recs = [RequestRecord(0, 0, 1.0, 10, 5, num_output_tokens=5, first_token_time=2.0, finish_time=5.0),
            RequestRecord(1, 1, 2.0, 10, 5, num_output_tokens=5, first_token_time=3.0, finish_time=4.0),
            RequestRecord(2, 1, 3.0, 10, 5, num_output_tokens=2, first_token_time=3.5),
            RequestRecord(3, 2, 0.5, 10, 5, rejected_reason="too long")]
    run = RunRecord(recs, ItlLog(), EngineCounters(), 0.0, 6.0)
    m = compute_metrics(run)
    out = extra_metrics(m, run, 2)
    assert out["num_clients"] == 3
    assert out["client_e2e_mean_avg_s"] == 3.0 and out["client_e2e_mean_max_s"] == 4.0
    assert out["client_ttft_mean_avg_s"] == 1.0 and out["client_ttft_mean_max_s"] == 1.0
    assert out["time_to_finish_target_s"] == 4.0 and out["target_throughput_req_s"] == 0.5   # from t=1.0 to 5.0
    assert extra_metrics(m, run, 3)["time_to_finish_target_s"] is None
    assert extra_metrics(m, run, None)["target_throughput_req_s"] is None
