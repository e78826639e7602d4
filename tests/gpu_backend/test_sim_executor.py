"""Pin ``gpu_backend.sim_executor``: closed-form multi-step decode plans equal step-by-step
execution, swap time is added, multi-step plans with prefill or swaps are refused, and
``capacity()`` reports the profile's memory or the overrides."""

from __future__ import annotations

import json

import pytest

from gpu_backend.cost_model import LinearCostModel, RooflineCostModel
from gpu_backend.plan import BatchPlan, GroupMove, KVCapacity, PrefillChunk
from gpu_backend.profiles import PROFILE_DIR, load_profile
from gpu_backend.sim_executor import SimExecutor

REL = 1e-12


def decode_plan(positions: list[int], num_steps: int = 1) -> BatchPlan:
    n = len(positions)
    return BatchPlan(decode_seq_ids=list(range(n)), decode_positions=list(positions),
                     decode_block_tables=[[i] for i in range(n)],
                     decode_context_sum=sum(positions) + n, num_steps=num_steps)


@pytest.fixture(scope="module")
def linear_profile(tmp_path_factory):
    d = json.loads((PROFILE_DIR / "h200-llama-1b.json").read_text())
    d["cost_model"] = {"kind": "linear", "coefficients": {
        "intercept": 1.5e-3, "prefill_tokens": 2e-5, "prefill_attention_pairs": 1e-9,
        "prefill_kv_read_tokens": 3e-8, "num_decode": 4e-6, "decode_context_tokens": 7e-9,
        "num_sampled": 5e-6}}
    path = tmp_path_factory.mktemp("prof") / "lin.json"
    path.write_text(json.dumps(d))
    return load_profile(str(path))


@pytest.fixture(params=["h100-llama-8b", "h200-llama-1b", "linear"])
def executor(request, linear_profile):
    if request.param == "linear":
        ex = SimExecutor(linear_profile)
        assert isinstance(ex.cost, LinearCostModel)
    else:
        ex = SimExecutor(request.param)
        assert isinstance(ex.cost, RooflineCostModel)
    return ex


@pytest.mark.parametrize("positions, k", [([100], 2), ([100, 50, 7], 5), ([0] * 8, 17),
                                          ([4000, 12, 999, 31, 2048, 1], 64)])
def test_multi_step_decode_equals_single_steps(executor, positions, k):
    n = len(positions)
    multi = executor.execute(decode_plan(positions, k))
    singles = [executor.execute(decode_plan([p + i for p in positions])) for i in range(k)]
    assert multi.duration_s == pytest.approx(sum(s.duration_s for s in singles), rel=REL)
    assert multi.compute_s == multi.duration_s and multi.swap_s == 0.0
    assert multi.step_first_s == pytest.approx(singles[0].duration_s, rel=REL)
    assert multi.step_increment_s == pytest.approx(singles[1].duration_s - singles[0].duration_s, rel=1e-9)
    # the increment is exactly b * n: every sequence reads one more KV token per step
    a, b, longest = executor.decode_step_affine(n)
    assert longest == 0.0
    assert multi.step_increment_s == b * n
    assert multi.step_first_s == a + b * (sum(positions) + n)
    for i, s in enumerate(singles):
        assert multi.step_first_s + i * multi.step_increment_s == pytest.approx(s.duration_s, rel=REL)


def test_single_step_result_fields(executor):
    r = executor.execute(decode_plan([10, 20]))
    assert (r.compute_s, r.swap_s, r.step_first_s, r.step_increment_s) == (r.duration_s, 0.0, r.duration_s, 0.0)
    assert r.sampled_tokens is None
    assert executor.execute(BatchPlan()).duration_s == 0.0


def test_swap_time_is_added(executor):
    plan = decode_plan([10, 20])
    plain = executor.execute(plan)
    plan.swap_in = [GroupMove(0, 4, 3)]
    plan.swap_out = [GroupMove(7, 0, 2), GroupMove(20, 2, 1)]
    r = executor.execute(plan)
    swap = executor.cost.swap_time(plan.swap_in) + executor.cost.swap_time(plan.swap_out)
    p = executor.profile
    # 3 copies, 6 blocks
    assert swap == pytest.approx(3 * p.device.copy_latency_s + 6 * p.bytes_per_block / p.device.host_bandwidth,
                                 rel=REL)
    assert r.swap_s == swap and r.compute_s == plain.compute_s
    assert r.duration_s == pytest.approx(plain.duration_s + swap, rel=REL)
    # swaps alone, no compute
    only = executor.execute(BatchPlan(swap_out=[GroupMove(0, 0, 4)]))
    assert only.compute_s == 0.0 and only.duration_s == only.swap_s > 0


def test_multi_step_plan_with_prefill_or_swap_raises(executor):
    plan = decode_plan([10, 20], num_steps=3)
    plan.prefills = [PrefillChunk(9, 0, 16, [5], samples=False)]
    with pytest.raises(ValueError, match="a 3-step plan must be decode-only without swaps"):
        executor.execute(plan)
    plan = decode_plan([10, 20], num_steps=2)
    plan.swap_in = [GroupMove(0, 0, 1)]
    with pytest.raises(ValueError, match="a 2-step plan must be decode-only without swaps"):
        executor.execute(plan)


def test_capacity_from_profile_and_overrides():
    p = load_profile("h100-llama-8b")
    assert SimExecutor(p).capacity() == KVCapacity(28019, 32768, 16, 131072 * 16, 131072)
    assert SimExecutor("h100-llama-8b", num_gpu_blocks=100, num_host_blocks=0).capacity() == \
        KVCapacity(100, 0, 16, 2097152, 131072)
    assert SimExecutor(p, num_host_blocks=7).capacity().num_gpu_blocks == 28019
    with pytest.raises(ValueError, match="num_gpu_blocks must be >= 1, got 0"):
        SimExecutor(p, num_gpu_blocks=0)
    with pytest.raises(ValueError, match="num_host_blocks must be >= 0, got -1"):
        SimExecutor(p, num_host_blocks=-1)
    ex = SimExecutor(p)
    assert ex.supports_multi_step and not ex.needs_token_ids


def test_an_iteration_launched_on_an_idle_device_takes_the_profiles_idle_start_longer(tmp_path):
    """Asynchronous scheduling on the simulator: the real executor times an iteration launched with none in
    flight from its own launch, so the host's launch path counts; launched behind one it does not."""
    d = json.loads((PROFILE_DIR / "fitted" / "h200-llama-1b-fitted.json").read_text())
    d["cost_model"]["idle_start_s"] = 4e-4
    (tmp_path / "p.json").write_text(json.dumps(d))
    ex = SimExecutor(load_profile(str(tmp_path / "p.json")))
    plan = decode_plan([100, 200])
    alone = ex.execute(plan)
    first = ex.launch(plan)
    behind = ex.launch(plan)
    assert first.duration_s == pytest.approx(alone.duration_s + 4e-4, rel=REL)
    assert first.compute_s == alone.compute_s and behind == alone
    assert ex.collect(first) == first and ex.collect(behind) == alone
    assert ex.launch(plan) == first        # nothing in flight again
    ex.collect(first)
    with pytest.raises(RuntimeError, match="collect without an iteration in flight"):
        ex.collect(first)
    plain = SimExecutor("h200-llama-1b-fitted")
    assert plain.collect(plain.launch(plan)) == plain.execute(plan)
