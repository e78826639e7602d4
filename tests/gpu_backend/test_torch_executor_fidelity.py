"""``servegym fidelity`` on the CPU (tiny model, a profile fitted on the same executor): both
runs see the same KV memory, every real iteration is re-predicted, and the report holds the
per-iteration and end-to-end errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from gpu_backend.calibration import fit, profile_json
from gpu_backend.calibration_sweep import Sweep, measure
from gpu_backend.torch_executor import TorchExecutor
from train.cli import build_parser


@pytest.fixture(scope="module")
def cpu_profile(tmp_path_factory) -> Path:
    """A profile of the tiny model fitted on the CPU executor (wall time)."""
    ex = TorchExecutor("tiny", device="cpu", num_gpu_blocks=96, num_host_blocks=64)
    sweep = Sweep(decode_batches=(1, 4, 8), decode_contexts=(64, 256), prefill_tokens=(16, 128, 256),
                  prefill_starts=(0, 128), prefill_batches=(2,), mixed=((4, 64),), swap_groups=(1, 8),
                  swap_copies=(1, 2), repeats=1, warmup=1, passes=1)
    samples = measure(ex, sweep, log=lambda *a: None)
    info = {"name": "cpu", "memory_bytes": 2**34, "hbm_bandwidth": 1e11, "matmul_flops": 1e12,
            "host_bandwidth": 1e10, "date": "2026-11-21"}
    prof = tmp_path_factory.mktemp("profile") / "cpu-tiny.json"
    prof.write_text(json.dumps(profile_json("cpu-tiny", ex, fit(samples), info, samples)))
    return prof


def test_fidelity_compares_identical_plans_and_whole_runs(tmp_path, capsys, cpu_profile):
    prof = cpu_profile
    out = tmp_path / "fid.json"
    args = build_parser().parse_args(
        ["fidelity", "--workload", "vtc-overload-2", "--model", "tiny", "--device", "cpu", "--profile", str(prof),
         "-n", "4", "--num-gpu-blocks", "40", "--preemption", "swap", "--warmup-runs", "2", "--json", str(out)])
    assert args.func(args) == 0
    data = json.loads(out.read_text())
    assert data["num_gpu_blocks"] == 40 and data["num_host_blocks"] == 64
    it = data["per_iteration"]
    assert it["iterations"] == data["iterations"]["real"] > 0
    assert 0 <= it["p50"] <= it["p99"] <= it["max"] and it["mape"] >= 0
    assert set(data["end_to_end"]) == {"ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "e2e_p50_s",
                                       "e2e_p99_s", "throughput_tok_s"}
    for v in data["end_to_end"].values():
        assert v["real"] > 0 and v["sim"] > 0 and v["error"] == abs(v["sim"] - v["real"]) / v["real"]
    printed = capsys.readouterr().out
    assert "per iteration" in printed and "real again" in printed
    real = data["real_run"]
    assert real["warmup_runs"] == 2 and len(real["records"]) == data["iterations"]["real"]
    assert all(r["s"] > 0 for r in real["records"])
    # every iteration computes here, so each keeps its device time, inside its measured time
    assert all(0 < r["device_s"] < r["s"] for r in real["records"] if r["prefills"] or r["num_decode"])
    host = data["host_time"]
    decode_rows = [r for r in real["records"] if not r["prefills"] and r["device_s"] > 0]
    assert host["decode"]["iterations"] == len(decode_rows)
    assert host["decode"]["host_s_p50"] == float(np.median([r["s"] - r["device_s"] for r in decode_rows]))
    assert host["decode"]["device_s_p50"] == float(np.median([r["device_s"] for r in decode_rows]))
    assert "decode iterations, real run (p50): device " in printed
    decodes = [r for r in real["records"] if r["num_decode"]]
    assert decodes and all(r["decode_context_max"] * r["num_decode"] >= r["decode_context_sum"] >= r["num_decode"]
                           for r in decodes)
    # the second warm-up repeats the recorded run: their spread is reported beside the errors
    assert len(real["warmup_metrics"]) == 2
    again_warm = real["warmup_metrics"][-1]
    assert data["real_repeat"] == {k: abs(again_warm[k] - real["metrics"][k]) / real["metrics"][k]
                                   for k in data["end_to_end"]}

    # the real run's own plans, re-timed: with the measured times they are the real run again, exactly
    from train.fidelity_replay import replay_metrics

    measured = np.array([r["s"] for r in real["records"]])
    assert len(real["requests"]) == 4 and sum(len(r["new_ids"]) for r in real["records"]) == 4
    from train.fidelity import END_TO_END_KEYS

    again_real = replay_metrics(real, measured, real["kv_bytes_per_token"])
    assert {k: again_real[k] for k in END_TO_END_KEYS} == {k: real["metrics"][k] for k in END_TO_END_KEYS}
    for v in data["end_to_end"].values():
        assert v["replay"] > 0 and v["replay_error"] == abs(v["replay"] - v["real"]) / v["real"]
    assert "replay: the real run's own plans" in printed

    # the kept real run judges a profile again without the executor: the same report
    replayed = tmp_path / "replayed.json"
    args = build_parser().parse_args(["fidelity", "--replay", str(out), "--profile", str(prof), "--json", str(replayed)])
    assert args.func(args) == 0
    again = json.loads(replayed.read_text())
    for key in ("per_iteration", "per_iteration_by_kind", "end_to_end", "preemptions", "iterations", "real_run"):
        assert again[key] == data[key]
    # and so does a gzipped copy (the form benchmarks/data/fidelity_runs keeps)
    packed = tmp_path / "fid.json.gz"
    packed.write_bytes(gzip.compress(out.read_bytes()))
    args = build_parser().parse_args(["fidelity", "--replay", str(packed), "--profile", str(prof), "--json",
                                      str(replayed)])
    assert args.func(args) == 0
    assert json.loads(replayed.read_text())["per_iteration"] == data["per_iteration"]


def test_an_asynchronous_real_run_is_recorded_in_launch_order_on_the_engines_clock(tmp_path, cpu_profile):
    """With --async-scheduling the real engine plans each iteration while the previous one runs, through the
    recorder's launch/collect, and so does the simulator's. Each record begins where the engine's clock stood
    when the one before it ended, so the replay with the measured times gives the real run back."""
    from train.fidelity import END_TO_END_KEYS
    from train.fidelity_replay import replay_metrics

    out = tmp_path / "fid.json"
    args = build_parser().parse_args(
        ["fidelity", "--workload", "vtc-overload-2", "--model", "tiny", "--device", "cpu", "--profile",
         str(cpu_profile), "-n", "6", "--rate", "50", "--async-scheduling", "--warmup-runs", "0", "--json", str(out)])
    assert args.func(args) == 0
    data = json.loads(out.read_text())
    real = data["real_run"]
    assert real["settings"]["async_scheduling"] is True
    assert len(real["records"]) == real["iterations"] == data["iterations"]["real"] > 0
    assert sum(len(r["new_ids"]) for r in real["records"]) == 6
    starts = [r["start_s"] for r in real["records"]]
    ends = [r["start_s"] + r["s"] for r in real["records"]]
    assert starts == sorted(starts) and all(b >= a for a, b in zip(ends, starts[1:]))
    # each record says whether it was launched with none in flight; an iteration that began after the one
    # before it ended (the engine waited for an arrival) always was
    idle = [r["idle_start"] for r in real["records"]]
    assert idle[0] and not all(idle)
    assert all(idle[i + 1] for i, (a, b) in enumerate(zip(ends, starts[1:])) if b > a)
    measured = np.array([r["s"] for r in real["records"]])
    again = replay_metrics(real, measured, real["kv_bytes_per_token"])
    assert {k: again[k] for k in END_TO_END_KEYS} == {k: real["metrics"][k] for k in END_TO_END_KEYS}


def test_idle_starts_are_read_from_the_records_or_inferred_from_their_clock_for_older_runs():
    from train.fidelity import idle_started

    said = [{"s": 1.0, "start_s": 0.0, "idle_start": True}, {"s": 1.0, "start_s": 1.0, "idle_start": True}]
    assert idle_started(said).tolist() == [True, True]
    older = [{"s": 1.0, "start_s": 0.0}, {"s": 1.0, "start_s": 1.0}, {"s": 0.5, "start_s": 3.0},
             {"s": 1.0, "start_s": 3.5}]
    assert idle_started(older).tolist() == [True, False, True, False]
    assert idle_started([]).tolist() == []


def test_a_real_run_that_served_nothing_is_refused_by_name(tmp_path, cpu_profile):
    args = build_parser().parse_args(
        ["fidelity", "--workload", "shared-doc-qa", "--model", "tiny", "--device", "cpu", "--profile",
         str(cpu_profile), "-n", "2", "--warmup-runs", "0"])
    with pytest.raises(ValueError, match=r"the real run of shared-doc-qa served no iteration \(2 requests rejected\)"):
        args.func(args)


def test_runs_recorded_before_the_setting_existed_are_judged_as_synchronous():
    from train.fidelity import _config

    old = {"max_num_batched_tokens": 2048, "max_num_seqs": 8, "batching": "sarathi", "preemption": "swap"}
    assert _config(old, 40, 8).async_scheduling is False
    assert _config({**old, "async_scheduling": True}, 40, 8).async_scheduling is True


def test_fidelity_rejects_bad_arguments(tmp_path):
    parse = build_parser().parse_args
    prof = "h100-llama-1b"
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(gzip.compress(b'{"records": []}'))
    args = parse(["fidelity", "--replay", str(bad), "--profile", prof])
    with pytest.raises(ValueError, match="bad.json.gz: not a fidelity JSON with a real_run"):
        args.func(args)
    args = parse(["fidelity", "-w", "vtc-overload-2", "--model", "tiny", "--profile", prof, "--warmup-runs", "-1"])
    with pytest.raises(ValueError, match="--warmup-runs must be >= 0, got -1"):
        args.func(args)
    args = parse(["fidelity", "--profile", prof])
    with pytest.raises(ValueError, match="needs --workload and --model"):
        args.func(args)
    args = parse(["fidelity", "-w", "vtc-overload-2", "--model", "tiny", "--device", "cpu", "--profile", prof,
                  "-n", "2", "--split-gemms"])
    with pytest.raises(ValueError, match="split_gemms=True needs a CUDA device"):
        args.func(args)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    args = parse(["fidelity", "--replay", str(bad), "--profile", prof])
    with pytest.raises(ValueError, match=f"--replay {bad}: not a fidelity JSON"):
        args.func(args)
    other = tmp_path / "other-model.json"
    other.write_text(json.dumps({"real_run": {"kv_bytes_per_token": 4096}}))
    args = parse(["fidelity", "--replay", str(other), "--profile", prof])
    with pytest.raises(ValueError, match="holds 4096 KV bytes per token, profile h100-llama-1b's 32768"):
        args.func(args)


@pytest.mark.parametrize("scheduling", ["sync", "async"])
def test_the_kept_real_runs_replay_against_the_shipped_profile_of_their_model(scheduling):
    """benchmarks/data/fidelity_runs: one recorded real run per lease, model and workload; each belongs to a
    model with a shipped fitted profile (same KV geometry) and holds one record per iteration it served. The
    runs in its ``async/`` were scheduled asynchronously, and their models have a profile fitted for that."""
    from gpu_backend.profiles import load_profile
    from train.fidelity import read_real_run

    kept = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "fidelity_runs"
    runs = sorted((kept / "async" if scheduling == "async" else kept).glob("*.json.gz"))
    assert len(runs) >= (20 if scheduling == "sync" else 16)
    suffix = "-async-fitted" if scheduling == "async" else "-fitted"
    for path in runs:
        lease, rest = path.name.split("-", 1)
        model = next(m for m in ("smollm2-135m", "llama-1b", "llama-8b") if rest.startswith(m + "-"))
        assert rest[len(model) + 1:] in ("prefix-heavy.json.gz", "swap.json.gz"), path.name
        real = read_real_run(path)
        prof = load_profile(f"h200-{model}{suffix}")
        assert real["settings"]["model"] == model
        assert real["settings"].get("async_scheduling", False) == (scheduling == "async"), path.name
        assert real["kv_bytes_per_token"] == prof.bytes_per_block // prof.block_size
        assert len(real["records"]) == real["iterations"] > 0


def test_the_judge_adds_the_idle_start_term_to_iterations_launched_on_an_idle_device(tmp_path):
    """Under asynchronous scheduling an iteration launched with none in flight is timed from its own launch, so
    the judge adds the profile's ``idle_start_s`` to its prediction, and only to those; a synchronous run's
    iterations never get it. Pinned on a kept real run whose times are set to the profile's own predictions
    plus 2 ms on its idle starts: only the judge that adds the term predicts them exactly."""
    import baselines  # noqa: F401  (registers the policy the run was served with, for the simulator's own run)
    from gpu_backend.profiles import PROFILE_DIR, load_profile
    from gpu_backend.sim_executor import SimExecutor
    from train.fidelity import _record_plan, idle_started, judge, read_real_run

    kept = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "fidelity_runs" / "async"
    real = read_real_run(kept / "S18b-smollm2-135m-swap.json.gz")
    base = json.loads((PROFILE_DIR / "fitted" / "h200-smollm2-135m-async-fitted.json").read_text())
    paths = {}
    for idle in (0.0, 0.002):
        prof = json.loads(json.dumps(base))
        prof["cost_model"]["idle_start_s"] = idle
        paths[idle] = tmp_path / f"idle-{idle}.json"
        paths[idle].write_text(json.dumps(prof))
    plain = load_profile(str(paths[0.0]))
    ex = SimExecutor(plain, num_gpu_blocks=real["num_gpu_blocks"], num_host_blocks=real["num_host_blocks"])
    idle = idle_started(real["records"])
    assert 0 < idle.sum() < len(idle)
    for r, was_idle in zip(real["records"], idle):
        r["s"] = ex.execute(_record_plan(r)).duration_s + (0.002 if was_idle else 0.0)
    with_term = judge(real, load_profile(str(paths[0.002])))["per_iteration"]
    assert with_term["max"] == pytest.approx(0.0, abs=1e-12)
    without = judge(real, plain)["per_iteration"]
    assert without["max"] > 0.0 and without["p50"] == pytest.approx(0.0, abs=1e-12)   # most iterations had one in flight
    real["settings"] = {**real["settings"], "async_scheduling": False}
    assert judge(real, load_profile(str(paths[0.002])))["per_iteration"] == without
