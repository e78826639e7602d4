"""``servegym benchmark`` and ``servegym scenarios``: the files, their keys and values, which policies apply
where, and clear errors for bad names."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import baselines  # noqa: F401
from envs.policy import list_policies
from envs.scenarios import get_scenario, list_scenarios
from envs.scenarios.metrics import EXTRA_KEYS
from train.benchmark import aggregate
from train.benchmark_runs import PolicyPlan, resolve_policies, run_plan
from train.cli import main

SIMULATE_KEYS = ("num_requests", "num_finished", "num_rejected", "throughput_tok_s", "ttft_p50_s", "ttft_p99_s",
                 "tpot_p99_s", "e2e_p50_s", "e2e_p90_s", "e2e_p99_s", "cache_hit_rate", "preemptions",
                 "max_service_diff", "jain_index", "sim_wall_s", "sim_requests_per_s", "iterations",
                 "mean_ttft_ms", "p99_itl_ms")
PNG = b"\x89PNG\r\n\x1a\n"


def bench(tmp_path: Path, capsys, *args: str, name: str = "out") -> tuple[Path, str]:
    out = tmp_path / name
    assert main(["benchmark", *args, "--out", str(out), "--progress", "off"]) == 0
    return out, capsys.readouterr().out


@pytest.fixture(scope="module")
def smoke_runs():
    """The smoke scenario's fcfs and dlpm runs for seeds 0 and 1, straight from run_plan."""
    s = get_scenario("smoke")
    return {p: [run_plan(s, PolicyPlan(p, p), seed) for seed in (0, 1)] for p in ("fcfs", "dlpm")}


def test_benchmark_writes_results_with_std_siblings_markdown_and_plots(tmp_path, capsys, smoke_runs):
    out, printed = bench(tmp_path, capsys, "--scenario", "smoke", "--policies", "fcfs,dlpm", "--seeds", "2",
                         "--quantum-sweep", "512,8192")
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["fcfs", "dlpm"]
    metric_keys = [k for k, v in smoke_runs["fcfs"][0].metrics.items() if not isinstance(v, dict)]
    for label, r in results.items():
        for key in (*SIMULATE_KEYS, *EXTRA_KEYS, *metric_keys):
            assert key in r, f"{label}: {key} missing"
            assert f"{key}_std" in r, f"{label}: {key}_std missing"
        assert r["num_seeds"] == 2
        # the mean and sample std of the two seeds' values, wall times aside
        for key in ("throughput_tok_s", "e2e_p90_s", "jain_index", "max_service_diff", "num_finished",
                    "client_e2e_mean_max_s"):
            vals = [run.metrics[key] for run in smoke_runs[label]]
            assert r[key] == pytest.approx(np.mean(vals), rel=1e-12)
            assert r[f"{key}_std"] == pytest.approx(np.std(vals, ddof=1), rel=1e-12)
        assert set(r["per_client"]) == {"0", "1"}
        assert "ttft_p50_s_std" in r["per_client"]["0"]
    md = (out / "results.md").read_text()
    assert md.count("\n| fcfs |") == 1 and "| policy |" in md
    run = json.loads((out / "run.json").read_text())
    assert run["scenario"] == "smoke" and run["seeds"] == [0, 1]
    assert run["command"].startswith("servegym benchmark --scenario smoke --policies fcfs,dlpm --seeds 2")
    sweep = json.loads((out / "quantum_sweep.json").read_text())
    assert sweep["quanta"] == [512.0, 8192.0] and list(sweep["points"]) == ["dlpm@Q=512", "dlpm@Q=8192"]
    for name in ("latency_cdf.png", "client_service.png", "quantum_sweep.png"):
        assert (out / name).read_bytes()[:8] == PNG
    # the printed table: one row per policy, mean ± std
    rows = {ln.split()[0]: ln for ln in printed.splitlines() if ln.startswith(("fcfs ", "dlpm "))}
    assert set(rows) == {"fcfs", "dlpm"} and "±" in rows["fcfs"]


def test_one_seed_gives_none_std_and_no_sweep_without_dlpm(tmp_path, capsys):
    out, _ = bench(tmp_path, capsys, "--scenario", "smoke", "--policies", "lpm", "--seeds", "1", "--no-plots")
    r = json.loads((out / "results.json").read_text())["lpm"]
    assert r["throughput_tok_s"] > 0 and r["throughput_tok_s_std"] is None
    assert not (out / "quantum_sweep.json").exists() and not (out / "latency_cdf.png").exists()


def test_multi_replica_benchmark_labels_and_routes(tmp_path, capsys):
    out, _ = bench(tmp_path, capsys, "--scenario", "smoke-2x", "--policies", "d2lpm,lpm,least-loaded+vtc",
                   "--seeds", "1", "--quantum-sweep", "none", "--no-plots")
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["d2lpm", "round-robin+lpm", "least-loaded+vtc"]
    assert all(r["num_finished"] == results["d2lpm"]["num_finished"] for r in results.values())
    reps = results["d2lpm"]["per_replica"]
    assert set(reps) == {"0", "1"}
    assert reps["0"]["num_routed"] + reps["1"]["num_routed"] == results["d2lpm"]["num_requests"]
    assert reps["0"]["num_finished"] + reps["1"]["num_finished"] == results["d2lpm"]["num_finished"]
    assert "per_replica" not in json.loads((bench(tmp_path, capsys, "--scenario", "smoke", "--policies", "fcfs",
                                                  "--seeds", "1", "--no-plots", name="single")[0]
                                            / "results.json").read_text())["fcfs"]
    plans = json.loads((out / "run.json").read_text())["policies"]
    assert plans[0] == {"label": "d2lpm", "policy": "dlpm", "policy_kwargs": {"quantum": 2048.0, "w_p": 1.0, "w_q": 2.0},
                        "router": "d2lpm", "router_kwargs": {}}


def test_same_seed_same_metrics(smoke_runs):
    s = get_scenario("smoke")
    again = run_plan(s, PolicyPlan("dlpm", "dlpm"), 1)
    strip = lambda m: {k: v for k, v in m.items() if k not in ("sim_wall_s", "sim_requests_per_s")}
    assert strip(again.metrics) == strip(smoke_runs["dlpm"][1].metrics)


def test_resolving_policies_per_scenario():
    single, multi = get_scenario("smoke"), get_scenario("smoke-2x")
    names = [p.name for p in list_policies()]
    assert [p.label for p in resolve_policies("all", single)] == names
    labels = [p.label for p in resolve_policies("all", multi)]
    assert labels == ["d2lpm"] + [f"round-robin+{n}" for n in names] + [f"least-loaded+{n}" for n in names]
    assert [p.label for p in resolve_policies(None, single)] == list(single.policies)
    plan = resolve_policies("fcfs", multi)[0]
    assert (plan.label, plan.policy, plan.router) == ("round-robin+fcfs", "fcfs", "round-robin")
    for s in list_scenarios():   # every scenario's default comparison set resolves
        assert len(resolve_policies(None, s)) == len(s.policies)


@pytest.mark.parametrize("args,message", [
    (["--scenario", "nope"], "unknown scenario 'nope'; available: "),
    (["--scenario", "smoke", "--policies", "fifo"], "unknown policy 'fifo'; available: "),
    (["--scenario", "smoke", "--policies", "d2lpm"], "'d2lpm' dispatches over several replicas; scenario 'smoke' has one"),
    (["--scenario", "smoke", "--policies", "round-robin+lpm"], "scenario 'smoke' has one replica; routers apply only"),
    (["--scenario", "smoke-2x", "--policies", "random+lpm"], "unknown router 'random'; available: "),
    (["--scenario", "smoke-2x", "--policies", "round-robin+nope"], "unknown policy 'nope'"),
    (["--scenario", "smoke", "--policies", "fcfs,fcfs"], "--policies names fcfs more than once"),
    (["--scenario", "smoke", "--policies", " , "], "names no policy"),
    (["--scenario", "smoke", "--seeds", "0"], "--seeds must be >= 1, got 0"),
    (["--scenario", "smoke", "--quantum-sweep", "big"], "--quantum-sweep: 'big' is not a number"),
    (["--scenario", "smoke", "--quantum-sweep", "-5"], "quanta must be finite numbers > 0"),
    (["--scenario", "smoke", "--policies", "fcfs", "--quantum-sweep", "64"], "needs dlpm or d2lpm among --policies"),
])
def test_bad_input_exits_2_with_one_clear_line(tmp_path, capsys, args, message):
    assert main(["benchmark", *args, "--out", str(tmp_path / "x"), "--progress", "off"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("servegym benchmark: error: ") and message in err
    assert not (tmp_path / "x").exists()


def test_scenarios_lists_every_scenario(capsys):
    assert main(["scenarios"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["id", "suite", "replicas", "policies"]
    assert [ln.split()[0] for ln in lines[2:]] == [s.id for s in list_scenarios()]
    row = next(ln for ln in lines if ln.startswith("d2lpm-longdoc-qa-4x "))
    assert row.split()[1:3] == ["d2lpm", "4"]


def test_aggregate_means_stds_missing_values_and_nested_dicts():
    out = aggregate([{"a": 1.0, "b": None, "n": 2, "s": "x", "per_client": {"0": {"t": 1.0}},
                      "rejected_by_reason": {"long": 2}},
                     {"a": 3.0, "b": 5.0, "n": 4, "s": "y", "per_client": {"0": {"t": 3.0}, "1": {"t": 7.0}},
                      "rejected_by_reason": {}}])
    assert out["a"] == 2.0 and out["a_std"] == pytest.approx(math.sqrt(2.0))
    assert out["b"] == 5.0 and out["b_std"] is None
    assert out["n"] == 3.0 and "s" not in out
    assert out["per_client"]["0"]["t"] == 2.0 and out["per_client"]["1"] == {"t": 7.0, "t_std": None, "num_seeds": 1}
    assert out["rejected_by_reason"]["long"] == 1.0
    assert out["num_seeds"] == 2
    assert aggregate([{"x": None}])["x"] is None
