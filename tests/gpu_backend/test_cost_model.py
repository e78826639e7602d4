"""Pin ``gpu_backend.cost_model`` and ``gpu_backend.profiles``: model sizes computed by
hand, the roofline formula on a tiny hand-made model and device, the linear model, and
profile loading with its error messages."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from gpu_backend.cost_model import (LINEAR_FEATURES, BatchShape, DecodeTable, DeviceSpec, LinearCostModel, ModelShape,
                                    RooflineCostModel)
from gpu_backend.plan import BatchPlan, GroupMove, PrefillChunk
from gpu_backend.profiles import PROFILE_DIR, ProfileError, list_profiles, load_profile

REL = 1e-12

LLAMA_8B = ModelShape("llama-8b", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8,
                      intermediate_size=14336, vocab_size=128256)
LLAMA_1B = ModelShape("llama-1b", num_layers=16, hidden_size=2048, num_heads=32, num_kv_heads=8,
                      intermediate_size=8192, vocab_size=32000)

# A tiny model whose sizes are easy by hand: head_dim 8 / 2 = 4.
TINY = ModelShape("tiny", num_layers=2, hidden_size=8, num_heads=2, num_kv_heads=1,
                  intermediate_size=16, vocab_size=10)
# kv bytes/token  = 2 (K,V) * 2 layers * 1 kv head * 4 dims * 2 bytes          = 32
# linear params   = 2 layers * (q,o: 8*2*4*2 = 128  + k,v: 8*1*4*2 = 64  + mlp: 3*8*16 = 384) = 1152
# lm head         = 8 * 10 = 80; norms = (2*2 + 1) * 8 = 40
# num params      = 1152 + 2 * 80 + 40 = 1352; weight bytes = 2704
# read per step   = (1152 + 80 + 40) * 2 = 2544 bytes
# attention flops per (query, key) pair = 4 * 2 layers * 2 heads * 4 dims = 64
TINY_DEV = DeviceSpec("toy", memory_bytes=10**6, hbm_bandwidth=1000.0, matmul_flops=1e6,
                      attention_flops=640.0, host_bandwidth=100.0, copy_latency_s=0.5,
                      iteration_overhead_s=2.0)
# weight time 2544 / 1000 = 2.544 s; linear flops 2 * 1152 = 2304 per token, 2 * 80 = 160 per sample
# KV time 32 / 1000 = 0.032 s per token; attention 64 / 640 = 0.1 s per pair (compute-bound)


# --------------------------------------------------------------------------- ModelShape
def test_llama_8b_sizes():
    m = LLAMA_8B
    assert m.dim_per_head == 128
    assert m.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 131072
    # per layer: q,o 4096*4096*2 = 33554432; k,v 4096*1024*2 = 8388608; mlp 3*4096*14336 = 176160768
    assert m.linear_params_per_token == 32 * (33554432 + 8388608 + 176160768) == 6979321856
    assert m.lm_head_params == 4096 * 128256 == 525336576
    # + input embedding and LM head (untied) + 65 RMSNorm vectors: Llama-3-8B's 8.03e9
    assert m.num_params == 6979321856 + 2 * 525336576 + 65 * 4096 == 8030261248
    assert m.weight_bytes == 2 * 8030261248
    assert m.weight_bytes_read_per_step == 2 * (6979321856 + 525336576 + 65 * 4096)
    assert m.attention_flops_per_pair == 4 * 32 * 32 * 128


def test_llama_1b_sizes():
    m = LLAMA_1B
    assert m.dim_per_head == 64
    assert m.kv_bytes_per_token == 2 * 16 * 8 * 64 * 2 == 32768
    # per layer: q,o 2048*2048*2 = 8388608; k,v 2048*512*2 = 2097152; mlp 3*2048*8192 = 50331648
    assert m.linear_params_per_token == 16 * (8388608 + 2097152 + 50331648) == 973078528
    assert m.num_params == 973078528 + 2 * 2048 * 32000 + 33 * 2048 == 1104218112   # ~1.10e9


def test_tiny_model_sizes():
    assert TINY.kv_bytes_per_token == 32
    assert TINY.linear_params_per_token == 1152
    assert TINY.lm_head_params == 80
    assert TINY.num_params == 1352 and TINY.weight_bytes == 2704
    assert TINY.weight_bytes_read_per_step == 2544
    assert TINY.attention_flops_per_pair == 64


def test_tied_embeddings_and_explicit_head_dim():
    tied = ModelShape("t", 2, 8, 2, 1, 16, 10, tie_word_embeddings=True)
    assert tied.num_params == 1352 - 80
    wide = ModelShape("w", 2, 8, 2, 1, 16, 10, head_dim=6)
    assert wide.dim_per_head == 6
    assert wide.kv_bytes_per_token == 2 * 2 * 1 * 6 * 2
    # q,o: 8*2*6*2 = 192; k,v: 8*1*6*2 = 96; mlp 384 -> 2 * 672
    assert wide.linear_params_per_token == 1344


@pytest.mark.parametrize("kwargs, msg", [
    (dict(num_layers=0), "num_layers must be > 0, got 0"),
    (dict(vocab_size=-1), "vocab_size must be > 0, got -1"),
    (dict(num_kv_heads=3), "num_heads 2 is not a multiple of num_kv_heads 3"),
])
def test_model_shape_validation(kwargs, msg):
    args = dict(name="bad", num_layers=2, hidden_size=8, num_heads=2, num_kv_heads=1,
                intermediate_size=16, vocab_size=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=msg):
        ModelShape(**args)


@pytest.mark.parametrize("field, value", [("hbm_bandwidth", 0.0), ("copy_latency_s", -1.0),
                                          ("matmul_flops", math.inf), ("memory_bytes", math.nan)])
def test_device_validation(field, value):
    args = dict(name="d", memory_bytes=1, hbm_bandwidth=1.0, matmul_flops=1.0, attention_flops=1.0,
                host_bandwidth=1.0, copy_latency_s=1.0, iteration_overhead_s=1.0)
    args[field] = value
    with pytest.raises(ValueError, match=f"device 'd': {field} must be a positive number"):
        DeviceSpec(**args)


# --------------------------------------------------------------------------- roofline
def decode_shape(n: int, ctx: int) -> BatchShape:
    return BatchShape(num_decode=n, decode_context_tokens=ctx, num_sampled=n)


def test_roofline_decode_is_weight_bound_at_small_batch():
    cm = RooflineCostModel(TINY, TINY_DEV, block_size=4)
    # overhead 2 + weights 2.544 + 1 KV write * 0.032 + 10 context tokens * 0.1 (attention flops)
    assert cm.compute_time(decode_shape(1, 10)) == pytest.approx(2.0 + 2.544 + 0.032 + 1.0, rel=REL)
    # The linear layers stay weight-bound until n * (2304 + 160) FLOPs exceed 2.544 s * 1e6 FLOP/s:
    # n = 1032 is weight-bound, n = 1033 is compute-bound.
    assert cm.compute_time(decode_shape(1032, 0)) == pytest.approx(2.0 + 2.544 + 1032 * 0.032, rel=REL)
    assert cm.compute_time(decode_shape(1033, 0)) == pytest.approx(
        2.0 + 1033 * 2464 / 1e6 + 1033 * 0.032, rel=REL)
    assert cm.compute_time(BatchShape()) == 0.0


def test_roofline_attention_memory_bound_device():
    dev = DeviceSpec("toy", 10**6, 1000.0, 1e6, 6400.0, 100.0, 0.5, 2.0)   # 0.01 s per pair < 0.032
    cm = RooflineCostModel(TINY, dev, block_size=4)
    assert cm.decode_affine(3) == pytest.approx((2.0 + 2.544 + 3 * 0.032, 0.032, 0.0), rel=REL)
    assert cm.compute_time(decode_shape(3, 50)) == pytest.approx(2.0 + 2.544 + 3 * 0.032 + 50 * 0.032, rel=REL)


@pytest.mark.parametrize("n, ctx", [(1, 1), (3, 57), (64, 4096), (1033, 99999)])
def test_decode_affine_is_compute_time_for_decode_batches(n, ctx):
    for cm in (RooflineCostModel(TINY, TINY_DEV, 4), RooflineCostModel(LLAMA_8B, TINY_DEV, 16)):
        a, b, longest = cm.decode_affine(n)
        assert longest == 0.0                   # the roofline reads KV at one rate, however it is spread
        assert cm.compute_time(decode_shape(n, ctx)) == a + b * ctx
        # and it is the general formula with no prefill: overhead + linear + attention + KV write
        dev, m = cm.device, cm.model
        linear = max(m.weight_bytes_read_per_step / dev.hbm_bandwidth,
                     (2 * m.linear_params_per_token * n + 2 * m.lm_head_params * n) / dev.matmul_flops)
        attn = max(m.attention_flops_per_pair * ctx / dev.attention_flops,
                   m.kv_bytes_per_token * ctx / dev.hbm_bandwidth)
        write = m.kv_bytes_per_token * n / dev.hbm_bandwidth
        assert a + b * ctx == pytest.approx(dev.iteration_overhead_s + linear + attn + write, rel=1e-9)


def test_roofline_prefill_and_mixed_batch():
    cm = RooflineCostModel(TINY, TINY_DEV, block_size=4)
    plan = BatchPlan(prefills=[PrefillChunk(7, start=4, num_tokens=6, block_table=[0, 1, 2], samples=True)],
                     decode_seq_ids=[1, 2], decode_positions=[9, 9], decode_context_sum=20)
    s = BatchShape.from_plan(plan)
        # pairs: 6 * (4 + 7/2) = 45; KV read: 4 + 6 = 10; 8 tokens; 1 + 2 sampled; the chunk is over 4 cached tokens;
    # the plan does not state its longest decode context: the mean stands in
    assert s == BatchShape(prefill_tokens=6, prefill_attention_pairs=45.0, prefill_kv_read_tokens=10,
                           num_decode=2, decode_context_tokens=20, num_sampled=3, num_prefill_chunks=1,
                           num_cached_chunks=1, decode_context_max=10)
    assert s.num_tokens == 8
    # 2 overhead + max(2.544, (8*2304 + 3*160)/1e6) + max(0.1*(45+20), 0.032*(10+20)) + 0.032*8
    assert cm.compute_time(s) == pytest.approx(2.0 + 2.544 + 6.5 + 0.256, rel=REL)
    # A prefill with no cached prefix: pairs n(n+1)/2, a chunk that does not sample.
    s2 = BatchShape.from_plan(BatchPlan(prefills=[PrefillChunk(1, 0, 4, [0], samples=False)]))
    assert s2 == BatchShape(4, 10.0, 4, 0, 0, 0, 1, 0)
    assert cm.compute_time(s2) == pytest.approx(2.0 + 2.544 + 1.0 + 0.128, rel=REL)


def test_swap_time():
    cm = RooflineCostModel(TINY, TINY_DEV, block_size=4)
    assert cm.bytes_per_block == 128
    moves = [GroupMove(0, 0, 3), GroupMove(5, 9, 2)]
    # 2 copies * 0.5 s + 5 blocks * 128 B / 100 B/s
    assert cm.swap_time(moves) == pytest.approx(1.0 + 6.4, rel=REL)
    assert cm.swap_time([]) == 0.0


# --------------------------------------------------------------------------- linear
COEFFS = {"intercept": 1.0, "prefill_tokens": 2.0, "prefill_attention_pairs": 3.0,
          "prefill_kv_read_tokens": 5.0, "num_decode": 7.0, "decode_context_tokens": 11.0,
          "num_sampled": 13.0, "has_prefill": 17.0, "num_prefill_chunks": 19.0, "has_prefill_and_decode": 23.0,
          "has_cached_chunk": 29.0, "has_cached_chunk_and_decode": 31.0}


def test_linear_cost_model_formula():
    cm = LinearCostModel(COEFFS, copy_latency_s=0.25, host_bandwidth=64.0, bytes_per_block=32)
    s = BatchShape(prefill_tokens=10, prefill_attention_pairs=100.0, prefill_kv_read_tokens=20,
                   num_decode=3, decode_context_tokens=40, num_sampled=4, num_prefill_chunks=2)
    assert cm.compute_time(s) == 1 + 2 * 10 + 3 * 100 + 5 * 20 + 7 * 3 + 11 * 40 + 13 * 4 + 17 + 19 * 2 + 23
    over_cache = BatchShape(prefill_tokens=10, prefill_attention_pairs=100.0, prefill_kv_read_tokens=20,
                            num_decode=3, decode_context_tokens=40, num_sampled=4, num_prefill_chunks=2,
                            num_cached_chunks=2)
    assert cm.compute_time(over_cache) == cm.compute_time(s) + 29 + 31
    prefill_only = BatchShape(prefill_tokens=10, prefill_attention_pairs=100.0, prefill_kv_read_tokens=20,
                              num_sampled=1, num_prefill_chunks=2)
    assert cm.compute_time(prefill_only) == 1 + 2 * 10 + 3 * 100 + 5 * 20 + 13 + 17 + 19 * 2
    assert cm.decode_affine(3) == (1 + (7 + 13) * 3, 11.0, 0.0)
    assert cm.compute_time(decode_shape(3, 40)) == 1 + 7 * 3 + 13 * 3 + 11 * 40
    assert cm.compute_time(BatchShape()) == 0.0
    assert cm.swap_time([GroupMove(0, 0, 4), GroupMove(8, 8, 4)]) == 2 * 0.25 + 8 * 32 / 64.0
    assert cm.swap_time([]) == 0.0


def test_linear_cost_model_missing_and_unknown_coefficients():
    # has_prefill, num_prefill_chunks, has_prefill_and_decode and the cached-chunk features came later:
    # a profile without them has them at 0
    older = {k: v for k, v in COEFFS.items() if k not in ("has_prefill", "num_prefill_chunks", "has_prefill_and_decode",
                                                          "has_cached_chunk", "has_cached_chunk_and_decode")}
    s = BatchShape(prefill_tokens=10, prefill_attention_pairs=100.0, prefill_kv_read_tokens=20, num_prefill_chunks=2,
                   num_decode=1, decode_context_tokens=5, num_cached_chunks=1)
    assert LinearCostModel(older, 1.0, 1.0, 1).compute_time(s) == 1 + 2 * 10 + 3 * 100 + 5 * 20 + 7 + 11 * 5
    missing = {k: v for k, v in COEFFS.items() if k not in ("num_decode", "intercept")}
    with pytest.raises(ValueError, match=r"missing coefficients \['intercept', 'num_decode'\]"):
        LinearCostModel(missing, 1.0, 1.0, 1)
    with pytest.raises(ValueError, match=r"unknown coefficients \['bogus'\]; known: "):
        LinearCostModel({**COEFFS, "bogus": 1.0}, 1.0, 1.0, 1)
    assert set(COEFFS) == set(LINEAR_FEATURES)


# --------------------------------------------------------------------------- profiles
# KV blocks = floor((memory * 0.9 - weight bytes - 2 GiB) / (kv bytes per token * 16)), computed
# exactly (fractions) by hand; host blocks = 64 GiB / block bytes.
SHIPPED = {
    "h100-llama-8b": ("llama-8b", 85520809984, 28019, 32768),     # 28019.296...
    "h200-llama-8b": ("llama-8b", 150754820096, 56014, 32768),    # 56014.696...
    "h100-llama-1b": ("llama-1b", 85520809984, 138497, 131072),   # 138497.942...
    "h200-llama-1b": ("llama-1b", 150754820096, 250479, 131072),  # 250479.542...
}


def test_list_profiles():
    fitted = ["h200-llama-1b-fitted", "h200-llama-8b-fitted", "h200-smollm2-135m-fitted", "h200-llama-1b-async-fitted",
              "h200-llama-8b-async-fitted", "h200-smollm2-135m-async-fitted"]
    assert list_profiles() == sorted([*SHIPPED, *fitted])
    assert load_profile("h200-llama-8b-fitted").source == str(PROFILE_DIR / "fitted" / "h200-llama-8b-fitted.json")


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_load_shipped_profile(name):
    model_name, memory, gpu_blocks, host_blocks = SHIPPED[name]
    p = load_profile(name)
    assert p.name == name and p.source == str(PROFILE_DIR / f"{name}.json")
    assert p.model == (LLAMA_8B if model_name == "llama-8b" else LLAMA_1B)
    assert p.device.memory_bytes == memory
    assert p.block_size == 16 and p.max_model_len == 131072
    assert p.bytes_per_block == p.model.kv_bytes_per_token * 16
    assert (p.num_gpu_blocks, p.num_host_blocks) == (gpu_blocks, host_blocks)
    assert isinstance(p.cost, RooflineCostModel)
    # by path too
    assert load_profile(str(PROFILE_DIR / f"{name}.json")).num_gpu_blocks == gpu_blocks


def test_unknown_profile_lists_the_available_ones():
    with pytest.raises(ProfileError, match=r"unknown profile 'a100-gpt'; available: h100-llama-1b, h100-llama-8b, "
                                           r"h200-llama-1b, h200-llama-1b-async-fitted, h200-llama-1b-fitted, "
                                           r"h200-llama-8b, h200-llama-8b-async-fitted, h200-llama-8b-fitted, "
                                           r"h200-smollm2-135m-async-fitted, h200-smollm2-135m-fitted"):
        load_profile("a100-gpt")


def base_profile() -> dict:
    return json.loads((PROFILE_DIR / "h100-llama-1b.json").read_text())


def write(tmp_path: Path, data, name="p.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_custom_profile_with_fixed_blocks_and_linear_model(tmp_path):
    d = base_profile()
    d["name"] = "fitted"
    d["kv"] = {"block_size": 8, "num_gpu_blocks": 1000, "num_host_blocks": 0, "max_model_len": 4096}
    d["cost_model"] = {"kind": "linear", "coefficients": COEFFS}
    p = load_profile(write(tmp_path, d))
    assert (p.name, p.block_size, p.num_gpu_blocks, p.num_host_blocks, p.max_model_len) == \
        ("fitted", 8, 1000, 0, 4096)
    assert isinstance(p.cost, LinearCostModel)
    assert p.cost.bytes_per_block == 32768 * 8 and p.cost.copy_latency_s == 3.2e-06


def test_profile_defaults(tmp_path):
    d = base_profile()
    del d["kv"], d["cost_model"], d["name"]
    p = load_profile(write(tmp_path, d, "plain.json"))
    assert p.name == "plain" and p.block_size == 16 and p.max_model_len == 131072
    assert (p.num_gpu_blocks, p.num_host_blocks) == (138497, 131072)
    assert isinstance(p.cost, RooflineCostModel)


def _mutate(d: dict, path: str, value) -> dict:
    *parents, last = path.split(".")
    obj = d
    for k in parents:
        obj = obj[k]
    if value is _DELETE:
        del obj[last]
    else:
        obj[last] = value
    return d


_DELETE = object()


@pytest.mark.parametrize("path, value, field", [
    ("model.num_layers", _DELETE, "missing field 'num_layers'"),
    ("device.host_bandwidth", _DELETE, "missing field 'host_bandwidth'"),
    ("model.hidden_size", "2048", "field 'hidden_size' has the wrong type"),
    ("model.num_heads", 32.0, "field 'num_heads' has the wrong type"),
    ("device.hbm_bandwidth", True, "field 'hbm_bandwidth' has the wrong type"),
    ("model.dtype_bytes", "2", "field 'dtype_bytes' has the wrong type"),
    ("model.head_dim", 64.5, "field 'head_dim' has the wrong type"),
    ("kv.gpu_memory_utilization", "0.9", "field 'gpu_memory_utilization' has the wrong type"),
    ("kv.swap_space_bytes", None, "field 'swap_space_bytes' has the wrong type"),
    ("kv.num_gpu_blocks", 10.5, "field 'num_gpu_blocks' has the wrong type"),
    ("model.tie_word_embeddings", "false", "field 'tie_word_embeddings' has the wrong type"),
    ("kv.max_model_len", 4096.0, "field 'max_model_len' has the wrong type"),
    ("kv.num_gpu_blocks", 0, "kv.num_gpu_blocks must be >= 1, got 0"),
    ("kv.num_host_blocks", -1, "kv.num_host_blocks must be >= 0, got -1"),
    ("model.num_kv_heads", 0, "num_kv_heads must be > 0"),
    ("device.copy_latency_s", -1.0, "copy_latency_s must be a positive number"),
    ("kv.block_size", 0, "kv.block_size must be a positive integer"),
    ("kv.gpu_memory_utilization", 1.5, "kv.gpu_memory_utilization must be in"),
    ("cost_model.kind", "neural", "cost_model.kind must be 'roofline' or 'linear', got 'neural'"),
    ("cost_model", {"kind": "linear"}, "cost_model.coefficients must be an object"),
    ("cost_model", {"kind": "linear", "coefficients": {"intercept": 1.0}}, "missing coefficients"),
    ("device.memory_bytes", 4 * 2**30, "device.memory_bytes"),     # weights (2.2 GB) + 2 GiB reserve
    ("model", [], "needs 'model' and 'device' objects"),
    ("kv", [16], "'kv' must be an object"),
    ("cost_model", "roofline", "'cost_model' must be an object"),
])
def test_bad_profile_names_file_and_field(tmp_path, path, value, field):
    src = write(tmp_path, _mutate(base_profile(), path, value), "bad.json")
    with pytest.raises(ProfileError) as e:
        load_profile(src)
    msg = str(e.value)
    assert msg.startswith(src + ": "), msg
    assert field in msg, msg


def test_weights_larger_than_memory(tmp_path):
    d = base_profile()
    d["device"]["memory_bytes"] = 10**9                       # < 2.2 GB of weights
    src = write(tmp_path, d)
    with pytest.raises(ProfileError, match="leave no GPU memory for KV blocks") as e:
        load_profile(src)
    assert str(e.value).startswith(src) and "device.memory_bytes" in str(e.value)


def test_invalid_json_and_wrong_top_level(tmp_path):
    src = write(tmp_path, '{"model": {', "broken.json")
    with pytest.raises(ProfileError, match="not valid JSON") as e:
        load_profile(src)
    assert str(e.value).startswith(src)
    src = write(tmp_path, "[1, 2]", "list.json")
    with pytest.raises(ProfileError, match="the top level must be an object") as e:
        load_profile(src)
    assert str(e.value).startswith(src)


def test_decode_table_interpolates_and_refuses_bad_tables():
    t = DecodeTable((1, 8, 64), (1.0, 2.0, 4.0), (0.5, 0.25, 0.125))
    assert t.affine(1) == (1.0, 0.5, 0.0) and t.affine(8) == (2.0, 0.25, 0.0)
    assert t.affine(36) == (3.0, 0.1875, 0.0)               # half way from 8 to 64
    assert t.affine(120) == (6.0, 0.0, 0.0)                 # extrapolated from the last two, never negative
    cm = LinearCostModel(COEFFS, 1.0, 1.0, 1, t)
    assert cm.decode_affine(36) == (3.0, 0.1875, 0.0)
    assert cm.compute_time(decode_shape(36, 100)) == 3.0 + 0.1875 * 100
    # a table measured at every graph size: sizes between rows cost what the next larger row costs
    up = DecodeTable((1, 8, 64), (1.0, 2.0, 4.0), (0.5, 0.25, 0.125), round_up=True)
    assert up.affine(1) == (1.0, 0.5, 0.0) and up.affine(2) == (2.0, 0.25, 0.0) and up.affine(8) == (2.0, 0.25, 0.0)
    assert up.affine(9) == (4.0, 0.125, 0.0) and up.affine(64) == (4.0, 0.125, 0.0)
    assert up.affine(120) == (6.0, 0.0, 0.0)                # past the largest: extrapolated as before
    with pytest.raises(ValueError, match=r"num_seqs must rise from >= 1, got \[8, 8\]"):
        DecodeTable((8, 8), (1.0, 1.0), (1.0, 1.0))
    with pytest.raises(ValueError, match="the same length >= 2, got 2, 1, 2"):
        DecodeTable((1, 8), (1.0,), (1.0, 1.0))
    with pytest.raises(ValueError, match="finite and >= 0, got -1.0"):
        DecodeTable((1, 8), (1.0, -1.0), (1.0, 1.0))


def test_a_plan_with_swaps_adds_its_copies_and_for_an_async_profile_its_fitted_overhead():
    coeffs = dict(zip(LINEAR_FEATURES, range(1, len(LINEAR_FEATURES) + 1)))
    moves_in, moves_out = [GroupMove(0, 0, 4)], [GroupMove(8, 8, 4), GroupMove(16, 16, 2)]
    plain = LinearCostModel(coeffs, copy_latency_s=0.25, host_bandwidth=64.0, bytes_per_block=32)
    assert plain.plan_swap_time(moves_in, moves_out) == plain.swap_time(moves_in) + plain.swap_time(moves_out)
    assert plain.plan_swap_time([], []) == 0.0
    with_overhead = LinearCostModel(coeffs, copy_latency_s=0.25, host_bandwidth=64.0, bytes_per_block=32,
                              swap_plan=(0.5, 0.125))
    assert with_overhead.plan_swap_time(moves_in, moves_out) == 3 * 0.25 + 10 * 32 / 64.0 + 0.5 + 3 * 0.125
    assert with_overhead.plan_swap_time([], []) == 0.0
    assert RooflineCostModel(TINY, TINY_DEV, block_size=4).plan_swap_time([], moves_out) == \
        RooflineCostModel(TINY, TINY_DEV, block_size=4).swap_time(moves_out)
    with pytest.raises(ValueError, match=r"swap_plan must be \(overhead_s, per_copy_s\) >= 0, got \(0.5, -1.0\)"):
        LinearCostModel(coeffs, 0.25, 64.0, 32, swap_plan=(0.5, -1.0))


def test_a_profiles_idle_start_term_is_read_and_a_malformed_one_refused(tmp_path):
    data = json.loads((PROFILE_DIR / "fitted" / "h200-llama-1b-fitted.json").read_text())
    assert load_profile("h200-llama-1b-fitted").cost.idle_start_s == 0.0
    assert load_profile("h200-llama-1b").cost.idle_start_s == 0.0     # analytic: none
    data["cost_model"]["idle_start_s"] = 3.5e-4
    (tmp_path / "p.json").write_text(json.dumps(data))
    assert load_profile(str(tmp_path / "p.json")).cost.idle_start_s == 3.5e-4
    for bad, message in (("0.3 ms", "cost_model.idle_start_s must be a number, got '0.3 ms'"),
                         (-1e-4, r"idle_start_s must be finite and >= 0, got -0.0001")):
        data["cost_model"]["idle_start_s"] = bad
        (tmp_path / "p.json").write_text(json.dumps(data))
        with pytest.raises(ProfileError, match=message):
            load_profile(str(tmp_path / "p.json"))


def test_a_profiles_swap_plan_term_is_read_and_a_malformed_one_refused(tmp_path):
    data = json.loads((PROFILE_DIR / "fitted" / "h200-llama-1b-fitted.json").read_text())
    assert load_profile("h200-llama-1b-fitted").cost.swap_plan == (0.0, 0.0)
    data["cost_model"]["swap_plan"] = {"overhead_s": 4e-4, "per_copy_s": 1.5e-5}
    (tmp_path / "p.json").write_text(json.dumps(data))
    assert load_profile(str(tmp_path / "p.json")).cost.swap_plan == (4e-4, 1.5e-5)
    data["cost_model"]["swap_plan"] = [4e-4]
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(ProfileError, match="cost_model.swap_plan must be an object"):
        load_profile(str(tmp_path / "p.json"))


def test_an_iteration_past_a_regime_bound_takes_that_regimes_coefficients():
    eager = {**{k: 0.0 for k in LINEAR_FEATURES}, "intercept": 100.0, "prefill_tokens": 1.0}
    cm = LinearCostModel(COEFFS, 1.0, 1.0, 1, regimes=[(16, eager), (64, {**eager, "intercept": 1000.0})])
    s = BatchShape(prefill_tokens=10, prefill_attention_pairs=100.0, prefill_kv_read_tokens=20,
                   num_decode=6, decode_context_tokens=40, num_sampled=7, num_prefill_chunks=1)
    assert cm.compute_time(s) == LinearCostModel(COEFFS, 1.0, 1.0, 1).compute_time(s)     # 16 tokens: the base
    assert cm.compute_time(dataclasses.replace(s, prefill_tokens=11)) == 100.0 + 11       # 17 tokens
    assert cm.compute_time(dataclasses.replace(s, prefill_tokens=59)) == 1000.0 + 59      # 65 tokens
    assert cm.decode_affine(3) == LinearCostModel(COEFFS, 1.0, 1.0, 1).decode_affine(3)   # decodes keep theirs
    with pytest.raises(ValueError, match=r"regimes need whole above_tokens >= 1, strictly rising, got \[64, 16\]"):
        LinearCostModel(COEFFS, 1.0, 1.0, 1, regimes=[(64, eager), (16, eager)])
    with pytest.raises(ValueError, match=r"regime above 16 tokens: unknown coefficients \['bogus'\]"):
        LinearCostModel(COEFFS, 1.0, 1.0, 1, regimes=[(16, {**eager, "bogus": 1.0})])


def test_a_profile_with_regimes_loads_them_and_a_malformed_one_is_refused(tmp_path):
    d = base_profile()
    d["cost_model"] = {"kind": "linear", "coefficients": COEFFS,
                       "regimes": [{"above_tokens": 2048, "coefficients": {**COEFFS, "intercept": 50.0}}]}
    p = load_profile(write(tmp_path, d))
    assert p.cost.regimes == ((2048, {**{k: float(v) for k, v in COEFFS.items()}, "intercept": 50.0}),)
    d["cost_model"]["regimes"] = [{"above_tokens": "2048", "coefficients": COEFFS}]
    with pytest.raises(ProfileError, match=r"cost_model.regimes\[0\] must be an object with a whole above_tokens"):
        load_profile(write(tmp_path, d))
