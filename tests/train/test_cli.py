"""The ``servegym`` command line, in-process (``train.cli.main``) and as a real subprocess.

Listings name everything that is registered; ``simulate`` prints a table and writes the
documented JSON, deterministically (wall times aside); flags that should change results do,
and flags that should not, do not; bad input exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import baselines  # noqa: F401  (registers the baselines)
from envs.policy import list_policies
from envs.workloads import list_workloads
from envs.workloads.alpaca import alpaca_workloads
from gpu_backend.profiles import list_profiles
from train.cli import main

REPO = Path(__file__).resolve().parents[2]
TRACES = ("mooncake-conversation", "azure-conv", "arena-27")
PROFILES = ("h100-llama-1b", "h100-llama-8b", "h200-llama-1b", "h200-llama-1b-async-fitted", "h200-llama-1b-fitted",
            "h200-llama-8b", "h200-llama-8b-async-fitted", "h200-llama-8b-fitted", "h200-smollm2-135m-async-fitted",
            "h200-smollm2-135m-fitted")
WALL_KEYS = ("sim_wall_s", "sim_requests_per_s")
REQUIRED_KEYS = ("num_requests", "num_finished", "num_rejected", "throughput_tok_s", "ttft_p50_s", "ttft_p99_s",
                 "tpot_p99_s", "e2e_p50_s", "e2e_p90_s", "e2e_p99_s", "cache_hit_rate", "preemptions",
                 "max_service_diff", "jain_index", "sim_wall_s")
BASE = ["simulate", "--workload", "arena-27", "--num-requests", "200", "--policy", "fcfs", "--progress", "off"]


def cli(*args: str, hash_seed: str = "0") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    return subprocess.run([sys.executable, "-m", "train.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)


def first_column(table: str) -> list[str]:
    lines = table.strip().splitlines()
    assert set(lines[1].replace(" ", "")) == {"-"}, f"no header rule under {lines[0]!r}"
    return [ln.split()[0] for ln in lines[2:]]


def rows(table: str) -> dict[str, list[str]]:
    return {ln.split()[0]: ln.split() for ln in table.strip().splitlines()[2:]}


def simulate_json(capsys, tmp_path: Path, *extra: str, name: str = "out.json") -> dict:
    path = tmp_path / name
    assert main([*BASE, "--json", str(path), *extra]) == 0
    capsys.readouterr()
    return json.loads(path.read_text())


def without_wall(d: dict) -> dict:
    d = dict(d)
    for k in WALL_KEYS:
        d.pop(k)
    if "policies" in d:
        d["policies"] = {n: without_wall(v) for n, v in d["policies"].items()}
    return d


# ------------------------------------------------------------------ listings
def test_workloads_lists_the_traces_and_every_registered_workload(capsys):
    assert main(["workloads"]) == 0
    out = capsys.readouterr().out
    registered = [w.name for w in list_workloads()]
    assert first_column(out) == registered
    table = rows(out)
    for name in TRACES:
        assert table[name][1] == "trace"
    assert table["arena-27"][2] == "1,500"
    alpaca = {w.name for w in alpaca_workloads()}  # AlpacaEval prompts with real lengths, per target model
    assert {w.name for w in list_workloads() if w.kind == "trace"} == set(TRACES) | alpaca
    proc = cli("workloads")
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout == out


def test_policies_lists_the_registered_policies(capsys):
    assert main(["policies"]) == 0
    out = capsys.readouterr().out
    names = first_column(out)
    assert {"fcfs", "sjf", "srtf"} <= set(names)
    assert names == [p.name for p in list_policies()]
    table = rows(out)
    assert table["fcfs"][1] == "no" and table["sjf"][1] == "yes" and table["srtf"][1] == "yes"
    proc = cli("policies")
    assert proc.returncode == 0 and proc.stdout == out


def test_profiles_lists_the_shipped_profiles_analytic_and_fitted(capsys):
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    assert first_column(out) == list(PROFILES) == list_profiles()
    table = rows(out)
    assert table["h200-llama-8b"][1] == "H200-141GB" and table["h100-llama-1b"][2] == "llama-1b"
    assert table["h200-llama-8b-fitted"][-4:-2] == ["llama-8b", "linear"]     # the device name holds a space
    proc = cli("profiles")
    assert proc.returncode == 0 and proc.stdout == out


# ------------------------------------------------------------------ simulate
def test_simulate_prints_a_table_and_writes_the_json(capsys, tmp_path):
    path = tmp_path / "sub" / "fcfs.json"  # the parent folder is created
    assert main([*BASE, "--json", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    out = captured.out
    assert "workload arena-27 (200 requests), profile h100-llama-8b" in out
    assert "Successful requests:                     200" in out
    fcfs_rows = [ln.split() for ln in out.splitlines() if ln.startswith("fcfs ")]
    assert len(fcfs_rows) == 1 and fcfs_rows[0][1:3] == ["200", "0"]
    data = json.loads(path.read_text())
    missing = [k for k in REQUIRED_KEYS if k not in data]
    assert not missing, f"JSON lacks {missing}"
    assert data["num_requests"] == 200 and data["num_finished"] == 200 and data["num_rejected"] == 0
    assert data["policy"] == "fcfs"
    assert data["run"]["workload"] == "arena-27" and data["run"]["num_requests"] == 200
    assert data["run"]["profile"] == "h100-llama-8b" and data["run"]["seed"] == 0 and data["run"]["rate"] is None
    for k in REQUIRED_KEYS:
        assert isinstance(data[k], (int, float)) and math.isfinite(data[k]), f"{k} = {data[k]!r}"
    assert data["throughput_tok_s"] > 0 and data["sim_wall_s"] >= 0
    assert 0.0 <= data["cache_hit_rate"] <= 1.0 and 0.0 < data["jain_index"] <= 1.0
    assert data["ttft_p50_s"] <= data["ttft_p99_s"]
    assert data["e2e_p50_s"] <= data["e2e_p90_s"] <= data["e2e_p99_s"]


def test_simulate_is_deterministic_in_process_and_across_processes(capsys, tmp_path):
    a = simulate_json(capsys, tmp_path, name="a.json")
    b = simulate_json(capsys, tmp_path, name="b.json")
    assert without_wall(a) == without_wall(b)
    path = tmp_path / "c.json"
    proc = cli(*BASE, "--json", str(path), hash_seed="12345")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "Successful requests:                     200" in proc.stdout
    assert without_wall(json.loads(path.read_text())) == without_wall(a)


def test_seed_changes_nothing_for_a_trace(capsys, tmp_path):
    a = without_wall(simulate_json(capsys, tmp_path, "--seed", "0", name="a.json"))
    b = without_wall(simulate_json(capsys, tmp_path, "--seed", "7", name="b.json"))
    assert a["run"].pop("seed") == 0 and b["run"].pop("seed") == 7
    assert a == b


def test_seed_changes_a_synthetic_workload(capsys, tmp_path):
    args = ["--workload", "poisson-single"]
    a = without_wall(simulate_json(capsys, tmp_path, *args, "--seed", "0", name="a.json"))
    b = without_wall(simulate_json(capsys, tmp_path, *args, "--seed", "1", name="b.json"))
    a2 = without_wall(simulate_json(capsys, tmp_path, *args, "--seed", "0", name="a2.json"))
    assert a == a2
    assert a["num_finished"] == b["num_finished"] == 200
    assert a["run"]["workload"] == "poisson-single"
    assert a["throughput_tok_s"] != b["throughput_tok_s"]
    assert a["e2e_p50_s"] != b["e2e_p50_s"]


def test_rate_retimes_the_arrivals(capsys, tmp_path):
    plain = without_wall(simulate_json(capsys, tmp_path, name="plain.json"))
    fast = without_wall(simulate_json(capsys, tmp_path, "--rate", "20", name="fast.json"))
    assert fast["run"]["rate"] == 20.0
    assert fast["num_finished"] == 200
    # 200 requests at 20/s arrive in about 10 s instead of the trace's ~80 s
    assert fast["duration_s"] < plain["duration_s"]
    assert fast["throughput_tok_s"] != plain["throughput_tok_s"]
    assert fast["e2e_p50_s"] != plain["e2e_p50_s"]


def test_policy_all_runs_every_registered_policy(capsys, tmp_path):
    path = tmp_path / "all.json"
    assert main([*BASE[:-4], "--policy", "all", "--progress", "off", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    data = json.loads(path.read_text())
    names = [p.name for p in list_policies()]
    assert set(data["policies"]) == set(names)
    assert data["run"]["num_requests"] == 200
    for name in names:
        assert data["policies"][name]["num_finished"] == 200
        assert all(k in data["policies"][name] for k in REQUIRED_KEYS)
        assert any(ln.startswith(name + " ") for ln in out.splitlines()), f"no table row for {name}"
    # each entry equals the single-policy run
    single = simulate_json(capsys, tmp_path, name="fcfs.json")
    assert without_wall(data["policies"]["fcfs"]) == {k: v for k, v in without_wall(single).items()
                                                      if k not in ("policy", "run")}


def test_a_faster_profile_gives_a_higher_throughput_on_an_overloaded_slice(capsys, tmp_path):
    slow = simulate_json(capsys, tmp_path, "--rate", "100", "--profile", "h100-llama-8b", name="slow.json")
    fast = simulate_json(capsys, tmp_path, "--rate", "100", "--profile", "h200-llama-1b", name="fast.json")
    assert slow["run"]["profile"] == "h100-llama-8b" and fast["run"]["profile"] == "h200-llama-1b"
    assert slow["num_finished"] == fast["num_finished"] == 200
    assert fast["throughput_tok_s"] > slow["throughput_tok_s"], (
        f"h200-llama-1b {fast['throughput_tok_s']:.1f} tok/s vs h100-llama-8b {slow['throughput_tok_s']:.1f} tok/s")
    assert fast["tpot_p99_s"] < slow["tpot_p99_s"]


# ------------------------------------------------------------------ bad input
BAD = [
    (["--workload", "no-such-workload"], "'no-such-workload'"),
    (["--policy", "no-such-policy"], "'no-such-policy'"),
    (["--profile", "no-such-profile"], "'no-such-profile'"),
    (["--num-requests", "0"], "got 0"),
    (["--rate", "-1"], "got -1"),
    (["--rate", "nan"], "nan"),
]


def _bad_argv(extra: list[str]) -> list[str]:
    argv = ["simulate", "--workload", "arena-27", "--num-requests", "20", "--policy", "fcfs", "--progress", "off"]
    flag = extra[0]
    i = argv.index(flag) if flag in argv else None
    if i is not None:
        argv[i + 1] = extra[1]
        return argv
    return argv + extra


@pytest.mark.parametrize("extra, value", BAD, ids=[e[0] + "=" + e[1] for e, _ in BAD])
def test_bad_input_in_process_returns_2_with_one_line(capsys, extra, value):
    try:
        rc = main(_bad_argv(extra))
    except SystemExit as e:  # argparse rejects some input itself, also with status 2
        rc = e.code
    assert rc == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, captured.err
    assert value in err[0] and "error" in err[0]
    assert "Traceback" not in captured.err
    assert "Successful requests" not in captured.out


@pytest.mark.parametrize("extra, value", BAD, ids=[e[0] + "=" + e[1] for e, _ in BAD])
def test_bad_input_as_a_command_exits_2_with_one_line(extra, value, tmp_path):
    path = tmp_path / "never.json"
    proc = cli(*_bad_argv(extra), "--json", str(path))
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    assert value in err[0]
    assert err[0].startswith("servegym simulate: error:")
    assert "Traceback" not in proc.stderr
    assert not path.exists()
