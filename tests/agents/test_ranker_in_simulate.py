"""`servegym simulate --ranker DIR`: LTR ranks by a ranker checkpoint instead of the noisy oracle."""

from __future__ import annotations

import argparse
import json

import pytest

from train.cli import main
from train.simulate import add_simulate_args, run_simulate

WORKLOAD = "alpaca-eval-meta-llama-3-8b-instruct-test"
ARGS = ["simulate", "--workload", WORKLOAD, "--num-requests", "40", "--rate", "60", "--max-num-seqs", "4",
        "--progress", "off"]


def _ltr_metrics(policy_kwargs=None):
    import baselines  # noqa: F401
    from envs.engine_config import EngineConfig
    from envs.metrics import compute_metrics
    from envs.workloads import get_workload, retime_poisson
    from gpu_backend.profiles import DEFAULT_PROFILE, load_profile
    from train.simulate import simulate_once

    specs = retime_poisson(get_workload(WORKLOAD).generate(0, 40), 60.0, 0)
    record, _, _ = simulate_once(specs, "ltr", load_profile(DEFAULT_PROFILE), EngineConfig(max_num_seqs=4),
                                 policy_kwargs=policy_kwargs)
    return compute_metrics(record).to_dict()


def test_simulate_ranks_ltr_by_the_checkpoint(fresh_minilm, tmp_path):
    from agents.ranker_scorer import RankerScorer

    ck = fresh_minilm(seed=3).save(tmp_path / "ck")
    out = tmp_path / "m.json"
    assert main([*ARGS, "--policy", "ltr", "--ranker", str(ck), "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["run"]["ranker"] == str(ck)
    with_ranker = _ltr_metrics({"scorer": RankerScorer(ck)})
    oracle = _ltr_metrics()
    assert with_ranker["e2e_mean_s"] != oracle["e2e_mean_s"]       # the two scorers order differently here
    assert got["e2e_mean_s"] == pytest.approx(with_ranker["e2e_mean_s"], rel=1e-12)


def _run(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    add_simulate_args(p)
    return run_simulate(p.parse_args(argv))


def test_ranker_without_ltr_and_a_missing_checkpoint_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no ltr policy runs"):
        _run([*ARGS[1:], "--policy", "fcfs", "--ranker", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="not a ranker checkpoint"):
        _run([*ARGS[1:], "--policy", "ltr", "--ranker", str(tmp_path / "none")])


def test_benchmark_runs_ltr_on_the_checkpoint(fresh_minilm, tmp_path, capsys):
    """The plans that run carry the ranker (run.json lists each plan's arguments as run)."""
    ck = fresh_minilm(seed=3).save(tmp_path / "ck")
    base = ["benchmark", "--scenario", "ltr-chatbot-r2", "--seeds", "1", "--no-plots", "--progress", "off"]
    assert main([*base, "--policies", "ltr,fcfs", "--out", str(tmp_path / "ranked"), "--ranker", str(ck)]) == 0
    run = json.loads((tmp_path / "ranked" / "run.json").read_text())
    kwargs = {p["policy"]: p["policy_kwargs"] for p in run["policies"]}
    assert kwargs["ltr"]["scorer"].startswith("ranker[minilm-l6") and "scorer" not in kwargs["fcfs"]
    assert run["command"].endswith(f"--ranker {ck}")
    assert json.loads((tmp_path / "ranked" / "results.json").read_text())["ltr"]["num_finished"] > 0
    capsys.readouterr()
    assert main([*base, "--policies", "fcfs", "--out", str(tmp_path / "x"), "--ranker", str(ck)]) == 2
    assert "no ltr policy runs" in capsys.readouterr().err
