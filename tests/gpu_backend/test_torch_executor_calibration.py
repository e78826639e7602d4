"""Pin ``gpu_backend.calibration`` and its sweep (``calibration_sweep``): the non-negative fit recovers known coefficients exactly,
the sweep times every kind of shape on the real executor (CPU, tiny model), and the profile
it writes loads as a linear cost profile with the executor's KV geometry."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace

import numpy as np
import pytest

from gpu_backend.calibration import fit, nnls, populated_regimes, profile_json, refit_profile_json
from gpu_backend.calibration_sweep import Sample, Sweep, measure
from gpu_backend.cost_model import LINEAR_FEATURES, BatchShape, LinearCostModel
from gpu_backend.decode_graphs import bucket_sizes
from gpu_backend.profiles import load_profile
from gpu_backend.torch_executor import TorchExecutor


def test_nnls_drops_a_coefficient_that_would_be_negative():
    rng = np.random.default_rng(0)
    A = rng.random((40, 3))
    y = A @ np.array([2.0, 0.0, 3.0]) - 0.01 * A[:, 1]    # the unconstrained fit wants x1 < 0
    x = nnls(A, y)
    assert x[1] == 0.0 and (x >= 0).all()
    np.testing.assert_allclose(nnls(A, A @ np.array([1.0, 2.0, 3.0])), [1.0, 2.0, 3.0], rtol=1e-9)


def _features(rng, prefill: bool) -> tuple:
    """A consistent LINEAR_FEATURES vector: with prefill chunks (a quarter of them without decodes),
    or decode-only."""
    nd = float(rng.integers(1, 256))
    ctx = float(rng.integers(1, 5000)) * nd
    if not prefill:
        return (1.0, 0.0, 0.0, 0.0, nd, ctx, nd, 0.0, 0.0, 0.0, 0.0, 0.0)
    if rng.random() < 0.25:
        nd, ctx = 0.0, 0.0
    chunks = float(rng.integers(1, 9))
    tokens = float(rng.integers(16, 4000))
    cached = float(rng.random() < 0.5)              # some chunk starts over cached tokens: it reads more KV
    kv_read = tokens + cached * float(rng.integers(16, 9000))
    with_decode = 1.0 if nd else 0.0
    return (1.0, tokens, float(rng.integers(1, 10**6)), kv_read, nd, ctx,
            nd + float(rng.integers(0, chunks + 1)), 1.0, chunks, with_decode, cached, cached * with_decode)


def test_fit_recovers_exact_linear_costs():
    truth = dict(zip(LINEAR_FEATURES, (1e-3, 2e-6, 1e-10, 3e-9, 5e-6, 4e-9, 7e-6, 2e-3, 4e-5, 6e-4, 3e-4, 5e-4)))
    rng = np.random.default_rng(1)
    samples = []
    for i in range(60):     # labelled "mixed" so no decode table is fitted: one linear model for all
        f = _features(rng, prefill=i % 3 != 0)
        samples.append(Sample("mixed", f, float(np.dot(f, list(truth.values())))))
    for copies, blocks in ((1, 4), (8, 64), (2, 512)):
        nbytes = blocks * 65536
        samples.append(Sample("swap", (), 0.0, copies, nbytes, copies * 5e-6 + nbytes / 50e9))
    f = fit(samples)
    assert f.decode_table is None
    for k, v in truth.items():
        assert f.coefficients[k] == pytest.approx(v, rel=1e-6)
    assert f.copy_latency_s == pytest.approx(5e-6, rel=1e-6) and f.host_bandwidth == pytest.approx(50e9, rel=1e-6)
    assert f.mape["all"] < 1e-9 and f.mape["swap"] < 1e-9


def test_fit_tables_decode_per_batch_size_and_fits_the_rest_linearly():
    truth = dict(zip(LINEAR_FEATURES, (1e-3, 2e-6, 1e-10, 3e-9, 5e-6, 4e-9, 7e-6, 2e-3, 4e-5, 6e-4, 3e-4, 5e-4)))
    lines = {1: (1.0e-3, 3e-8), 8: (1.1e-3, 1e-8), 64: (1.4e-3, 8e-9)}    # batch size: (intercept, per token)
    rng = np.random.default_rng(2)
    samples = [Sample("decode", (1.0, 0.0, 0.0, 0.0, n, n * ctx, n, 0.0, 0.0, 0.0, 0.0, 0.0), a + b * n * ctx)
               for n, (a, b) in lines.items() for ctx in (128, 2048, 8192)]
    for _ in range(20):
        f = _features(rng, prefill=True)
        samples.append(Sample("mixed", f, float(np.dot(f, list(truth.values())))))
    f = fit(samples)
    t = f.decode_table
    assert t.num_seqs == (1, 8, 64)
    for i, (a, b) in enumerate(lines.values()):
        assert t.intercept_s[i] == pytest.approx(a, rel=1e-6) and t.per_context_token_s[i] == pytest.approx(b, rel=1e-6)
    # fitted on iterations with prefill only, where the intercept and has_prefill always come together
    c = f.coefficients
    assert c["intercept"] + c["has_prefill"] == pytest.approx(3e-3, rel=1e-6)
    for k, v in truth.items():
        if k not in ("intercept", "has_prefill"):
            assert c[k] == pytest.approx(v, rel=1e-6)
    assert f.mape["decode"] < 1e-9 and f.mape["mixed"] < 1e-9
    assert not t.round_up
    # measured at every captured graph size: sizes in between round up to the next graph's row
    assert fit(samples, graph_sizes=(1, 8, 64)).decode_table.round_up
    assert not fit(samples, graph_sizes=(1, 8, 16, 64)).decode_table.round_up
    # between measured sizes the line is interpolated: 36 sequences are half way from 8 to 64
    model = LinearCostModel(f.coefficients, 1.0, 1.0, 1, t)
    a, b, _ = model.decode_affine(36)
    assert a == pytest.approx(1.25e-3, rel=1e-6) and b == pytest.approx(9e-9, rel=1e-6)


def test_fit_adds_the_longest_context_where_the_sweep_timed_unequal_batches():
    """A graph's batch lasts as long as its longest sequence's share of the GPU takes: with batches
    of unequal contexts in a graph's row, the row gains a cost per token of the longest context."""
    rows = {1: (1.0e-3, 3e-8, 0.0), 8: (1.1e-3, 1e-8, 2e-8), 64: (1.4e-3, 8e-9, 5e-8)}   # (a, per sum, per longest)

    def sample(kind, ctxs, n):
        a, b, c = rows[n]
        return Sample(kind, (1.0, 0.0, 0.0, 0.0, len(ctxs), sum(ctxs), len(ctxs), 0.0, 0.0, 0.0, 0.0, 0.0),
                      a + b * sum(ctxs) + c * max(ctxs), decode_context_max=max(ctxs))

    samples = []
    for n, smaller in ((1, 0), (8, 1), (64, 8)):
        for ctx in (128, 2048, 8192):
            samples.append(sample("decode", [ctx] * n, n))
            if n > 1:
                samples.append(sample("decode_unequal", [ctx] * (smaller + 1), n))    # runs in n's graph
                samples.append(sample("decode_unequal", [ctx] * (n - n // 2) + [ctx // 4] * (n // 2), n))
    mixed = [Sample("mixed", (1.0, 16.0 * i, 0.0, 16.0 * i, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0), 1e-3 + 2e-6 * i)
             for i in range(1, 20)]
    t = fit(samples + mixed, graph_sizes=(1, 8, 64)).decode_table
    assert t.round_up and t.num_seqs == (1, 8, 64)
    for i, (a, b, c) in enumerate(rows.values()):
        if i == 0:      # one sequence: the sum is the longest, the two costs are one
            assert t.intercept_s[0] == pytest.approx(a, rel=1e-6)
            assert t.per_context_token_s[0] + t.per_longest_token_s[0] == pytest.approx(b, rel=1e-6)
            continue
        assert (t.intercept_s[i], t.per_context_token_s[i], t.per_longest_token_s[i]) == pytest.approx((a, b, c), rel=1e-6)
    # the padded batches (2 and 9 sequences) were fitted into the rows of the graphs they run in
    model = LinearCostModel(dict.fromkeys(LINEAR_FEATURES, 0.0), 1.0, 1.0, 1, t)
    assert model.compute_time(BatchShape(num_decode=9, decode_context_tokens=9 * 500, num_sampled=9,
                                         decode_context_max=500)) == pytest.approx(1.4e-3 + 8e-9 * 4500 + 5e-8 * 500)
    # equal contexts only (no unequal batches): the table keeps one cost per context token
    plain = fit([s for s in samples if s.kind == "decode"] + mixed, graph_sizes=(1, 8, 64)).decode_table
    assert plain.per_longest_token_s == ()
    assert plain.per_context_token_s[1] == pytest.approx((2e-8 + 8 * 1e-8) / 8, rel=1e-6)


def test_default_sweep_times_every_decode_graph_size():
    assert Sweep().decode_batches == tuple(bucket_sizes(256))


def test_sweep_on_the_cpu_executor_writes_a_loadable_profile(tmp_path):
    ex = TorchExecutor("tiny", device="cpu", num_gpu_blocks=512, num_host_blocks=64, max_model_len=1024)
    sweep = Sweep(decode_batches=(1, 4, 16), decode_contexts=(64, 256), prefill_tokens=(16, 128),
                  prefill_starts=(0, 256), prefill_batches=(2,), mixed=((4, 64),),
                  prefix_chunks=((3, 32, 64, 0), (2, 16, 128, 4)), grid_chunk_tokens=(16,), grid_chunk_starts=(0, 64),
                  grid_decodes=(2,), grid_decode_contexts=(100, 2000), swap_groups=(1, 8), swap_copies=(1, 4),
                  repeats=1, warmup=0, decode_repeats=1, passes=1)
    samples = measure(ex, sweep, log=lambda *a: None)
    kinds = [s.kind for s in samples]
    # the grid's two chunks beside decodes at context 100, and at 1023 in place of 2000 (past the 1024-token
    # limit: the longest context the executor admits)
    assert kinds.count("decode") == 6 and kinds.count("prefill") == 5 and kinds.count("mixed") == 5
    chunked = [s.features for s in samples if s.kind == "prefix_chunks"]
    # (intercept, tokens, pairs, KV read, decodes, decode context, sampled, has_prefill, chunks, with decodes,
    #  has a chunk over cached tokens, that and decodes)
    assert chunked == [(1.0, 96.0, 3 * 32 * (64 + 16.5), 3 * 96.0, 0.0, 0.0, 3.0, 1.0, 3.0, 0.0, 1.0, 0.0),
                       (1.0, 32.0, 2 * 16 * (128 + 8.5), 2 * 144.0, 4.0, 4 * 1024.0, 6.0, 1.0, 2.0, 1.0, 1.0, 1.0)]
    grid = [s.features for s in samples if s.kind == "mixed"][1:]
    assert grid == [(1.0, 16.0, 16 * 8.5, 16.0, 2.0, 2 * 101.0, 3.0, 1.0, 1.0, 1.0, 0.0, 0.0),
                    (1.0, 16.0, 16 * 8.5, 16.0, 2.0, 2 * 1024.0, 3.0, 1.0, 1.0, 1.0, 0.0, 0.0),
                    (1.0, 16.0, 16 * (64 + 8.5), 80.0, 2.0, 2 * 101.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0),
                    (1.0, 16.0, 16 * (64 + 8.5), 80.0, 2.0, 2 * 1024.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0)]
    assert kinds.count("swap") == 4
    assert all(s.duration_s > 0 for s in samples if s.kind != "swap")
    # each run's compute lies inside its wall time, so the medians keep that order
    assert all(0 < s.device_s <= s.duration_s for s in samples if s.kind != "swap")
    assert all(s.swap_s > 0 and s.swap_bytes == s.swap_copies * (s.swap_bytes // s.swap_copies)
               for s in samples if s.kind == "swap")
    f = fit(samples)
    assert all(v >= 0 for v in f.coefficients.values())
    info = {"name": "cpu-test", "memory_bytes": 2**34, "hbm_bandwidth": 1e11, "matmul_flops": 1e12,
            "host_bandwidth": 1e10, "date": "2026-11-21"}
    path = tmp_path / "cpu-tiny.json"
    written = profile_json("cpu-tiny", ex, f, info, samples)
    # off CUDA neither optional kernel runs, and the description says so
    assert ("CUDA graphs for decode, split_gemms=off, epilogue_gemms=off, fused_rope=off, fine_decode_ranges=off)"
            in written["description"])
    assert written["fit"]["timing"] == "wall" and "wall time of synchronous iterations" in written["description"]
    path.write_text(json.dumps(written))
    prof = load_profile(str(path))
    assert isinstance(prof.cost, LinearCostModel)
    assert (prof.num_gpu_blocks, prof.num_host_blocks, prof.block_size, prof.max_model_len) == (512, 64, 16, 1024)
    assert prof.bytes_per_block == ex.capacity().bytes_per_block
    assert prof.cost.compute_time(BatchShape(num_decode=4, decode_context_tokens=1024, num_sampled=4)) > 0


@pytest.mark.parametrize("model", ["llama-1b", "smollm2-135m", "llama-8b"])
def test_shipped_fitted_profiles_describe_our_models(model):
    from gpu_backend.models import model_dims
    from gpu_backend.profiles import PROFILE_DIR

    path = PROFILE_DIR / "fitted" / f"h200-{model}-fitted.json"
    prof = load_profile(str(path))
    assert isinstance(prof.cost, LinearCostModel) and prof.device.name == "NVIDIA H200"
    # fitted on the executor as it runs by default on an H200
    assert "split_gemms=on, epilogue_gemms=on" in json.loads(path.read_text())["description"]
    assert prof.model == model_dims(model).shape(2)           # the shape the real executor runs, in bf16
    assert prof.bytes_per_block == model_dims(model).kv_bytes_per_token(2) * prof.block_size
    assert all(v >= 0 for v in prof.cost.c.values())
    a, b, _ = prof.cost.decode_affine(64)
    assert a > 0 and b > 0                                   # decode time grows with the context read


def test_sweep_grows_decode_tables_in_place_as_serving_does():
    """The executor re-sends a table whose list object changed; serving keeps one live list per
    sequence, so the sweep must too or its decode times include a whole-table upload each step."""

    class Spy:
        def __init__(self, inner):
            self.inner, self.decodes = inner, []

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def execute(self, plan):
            if plan.decode_seq_ids and not plan.prefills:
                self.decodes.append((tuple(plan.decode_seq_ids), [id(t) for t in plan.decode_block_tables],
                                     [len(t) for t in plan.decode_block_tables], list(plan.decode_positions)))
            return self.inner.execute(plan)

    spy = Spy(TorchExecutor("tiny", device="cpu", num_gpu_blocks=256, num_host_blocks=0, max_model_len=512))
    samples = measure(spy, Sweep(decode_batches=(1, 3), decode_contexts=(30,), prefill_tokens=(), prefill_starts=(),
                                 prefill_batches=(), mixed=(), prefix_chunks=(), grid_chunk_tokens=(), swap_groups=(), repeats=1,
                                 warmup=2, decode_repeats=3, passes=1),
                      log=lambda *a: None)
    # size 1: one batch; size 3: equal contexts, then 2 sequences (padded to the graph of 3), then
    # 2 sequences at 30 and 1 at a quarter of it; each sample is the middle timed step's (the fourth:
    # positions + 3, contexts + 4)
    assert [(s.kind, s.features[4], s.features[5], s.decode_context_max) for s in samples] == [
        ("decode", 1, 34, 34), ("decode", 3, 34 + 35 + 36, 36), ("decode_unequal", 2, 34 + 35, 35),
        ("decode_unequal", 3, 34 + 35 + 13, 35)]
    runs = [spy.decodes[i:i + 5] for i in range(0, 20, 5)]
    assert len(spy.decodes) == 20
    for run in runs:    # each batch: one set of sequences, one live list per sequence for all five steps
        assert len({d[0] for d in run}) == 1 and len({tuple(d[1]) for d in run}) == 1
    # positions staggered by sequence; each table covers exactly its position's block (16 tokens)
    for _, _, lens, pos in spy.decodes:
        assert lens == [p // 16 + 1 for p in pos]
    assert [d[3] for d in runs[1]] == [[30 + k, 31 + k, 32 + k] for k in range(5)]
    assert [d[3] for d in runs[3]] == [[30 + k, 31 + k, 9 + k] for k in range(5)]


def test_each_shape_is_timed_once_per_pass_and_keeps_its_median_pass():
    """Passes run over the whole sweep one after another (so a slow spell of the machine meets one pass
    of a shape, not all of them), and a shape's sample is its median pass."""
    from dataclasses import replace

    class ScriptedPasses:
        """The executor, but every iteration of pass p reports ``per_pass[p]`` seconds."""

        def __init__(self, inner, per_pass):
            self.inner, self.per_pass, self.pass_no, self.shapes = inner, per_pass, 0, [[] for _ in per_pass]

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def execute(self, plan):
            self.shapes[self.pass_no].append((len(plan.prefills), len(plan.decode_seq_ids), len(plan.swap_out)))
            r = self.inner.execute(plan)
            return replace(r, duration_s=self.per_pass[self.pass_no], swap_s=self.per_pass[self.pass_no])

        def end_of_pass(self, *_):
            self.pass_no += 1

    spy = ScriptedPasses(TorchExecutor("tiny", device="cpu", num_gpu_blocks=256, num_host_blocks=16,
                                       max_model_len=512), per_pass=[5.0, 1.0, 3.0])
    sweep = Sweep(decode_batches=(1, 2), decode_contexts=(30,), decode_unequal=False, prefill_tokens=(16,),
                  prefill_starts=(0,), prefill_batches=(), mixed=((1, 16),), prefix_chunks=(), grid_chunk_tokens=(),
                  swap_groups=(1,), swap_copies=(1,), repeats=1, warmup=1, decode_repeats=1, passes=3)
    samples = measure(spy, sweep, log=spy.end_of_pass)
    assert [s.kind for s in samples] == ["decode", "decode", "prefill", "mixed", "swap"]
    assert all(s.pass_durations == (5.0, 1.0, 3.0) and s.duration_s == 3.0 for s in samples)
    assert all(s.swap_s == 3.0 for s in samples if s.kind == "swap")
    # every pass ran the whole sweep in the same order: two decode steps of each decode shape, then two
    # runs (warm-up, timed) of each other shape
    assert spy.shapes[0] == spy.shapes[1] == spy.shapes[2] == [
        (0, 1, 0), (0, 1, 0), (0, 2, 0), (0, 2, 0), (1, 0, 0), (1, 0, 0), (1, 1, 0), (1, 1, 0), (0, 0, 1), (0, 0, 1)]


def test_an_even_number_of_passes_keeps_the_lower_middle_run_and_no_pass_is_refused():
    from gpu_backend.calibration_sweep import median_sample

    runs = [Sample("decode", (1.0,), d) for d in (4.0, 2.0, 9.0, 3.0)]
    kept = median_sample(runs)
    assert kept.duration_s == 3.0 and kept.pass_durations == (4.0, 2.0, 9.0, 3.0)
    ex = TorchExecutor("tiny", device="cpu", num_gpu_blocks=64, num_host_blocks=0, max_model_len=256)
    with pytest.raises(ValueError, match="Sweep.passes must be >= 1, got 0"):
        measure(ex, Sweep(passes=0), log=lambda *a: None)


def test_profile_cli_refuses_a_pass_count_below_one(capsys):
    import argparse

    from gpu_backend.calibration import add_profile_args

    p = argparse.ArgumentParser()
    add_profile_args(p)
    assert p.parse_args(["--model", "tiny", "--out", "x.json"]).passes == 3
    with pytest.raises(SystemExit):
        p.parse_args(["--model", "tiny", "--out", "x.json", "--passes", "0"])
    assert "--passes: expected a whole number >= 1, got 0" in capsys.readouterr().err


def test_older_samples_files_are_refitted_with_todays_features(tmp_path):
    from gpu_backend.calibration import refit_profile_json
    from gpu_backend.calibration_sweep import load_samples
    from gpu_backend.profiles import PROFILE_DIR

    truth = dict(zip(LINEAR_FEATURES, (1e-3, 2e-6, 1e-10, 3e-9, 5e-6, 4e-9, 7e-6, 2e-3, 4e-5, 6e-4, 3e-4, 5e-4)))
    rng = np.random.default_rng(3)
    rows = []
    for i in range(40):
        f = _features(rng, prefill=True)
        # written before the cached-chunk features existed: the first ten only
        rows.append({"kind": "mixed", "features": list(f[:10]), "duration_s": float(np.dot(f, list(truth.values())))})
    rows.append({"kind": "swap", "features": [], "duration_s": 1e-3, "swap_copies": 1, "swap_bytes": 65536,
                 "swap_s": 5e-6 + 65536 / 50e9})
    rows.append({"kind": "swap", "features": [], "duration_s": 1e-3, "swap_copies": 8, "swap_bytes": 2**24,
                 "swap_s": 8 * 5e-6 + 2**24 / 50e9})
    path = tmp_path / "samples.json"
    path.write_text(json.dumps(rows))
    samples = load_samples(path)
    kv, tokens = LINEAR_FEATURES.index("prefill_kv_read_tokens"), LINEAR_FEATURES.index("prefill_tokens")
    assert [s.features for s in samples[40:]] == [(), ()]
    for s, r in zip(samples[:40], rows):
        assert s.features[:10] == tuple(r["features"])
        assert s.features[10] == (1.0 if r["features"][kv] > r["features"][tokens] else 0.0)
        assert s.features[11] == s.features[10] * r["features"][LINEAR_FEATURES.index("has_prefill_and_decode")]
    base = json.loads((PROFILE_DIR / "fitted" / "h200-llama-1b-fitted.json").read_text())
    out = refit_profile_json(base, samples, "2026-11-21", token_regimes=())     # one fit over all the samples
    c = out["cost_model"]["coefficients"]
    assert c["intercept"] + c["has_prefill"] == pytest.approx(3e-3, rel=1e-6)   # every sample has prefill
    for k, v in truth.items():
        if k not in ("intercept", "has_prefill"):
            assert c[k] == pytest.approx(v, rel=1e-6)
    assert "decode_table" not in out["cost_model"]      # no decode samples: no table
    assert (out["model"], out["kv"]) == (base["model"], base["kv"])
    assert out["device"]["copy_latency_s"] == pytest.approx(5e-6, rel=1e-6)
    assert out["fit"]["num_samples"] == 42 and "Refitted on 2026-11-21 from its 42 samples" in out["description"]
    (tmp_path / "p.json").write_text(json.dumps(out))
    assert isinstance(load_profile(str(tmp_path / "p.json")).cost, LinearCostModel)

    rows[3]["features"] = rows[3]["features"][:7]
    path.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=r"samples file .*samples.json: sample 3: a sample has 7 features; expected 12"):
        load_samples(path)


def test_an_async_timed_fit_reads_each_iterations_back_to_back_duration_and_the_swaps_wall_time(tmp_path):
    """``--timing async`` (asynchronous scheduling): iteration samples are fitted on their duration launched back
    to back, so host work that varies from machine to machine leaves the coefficients alone; swap samples keep
    their copy times."""
    from gpu_backend.calibration import refit_profile_json, timed_as
    from gpu_backend.calibration_sweep import Sample
    from gpu_backend.profiles import PROFILE_DIR

    truth = dict(zip(LINEAR_FEATURES, (1e-3, 2e-6, 1e-10, 3e-9, 5e-6, 4e-9, 7e-6, 2e-3, 4e-5, 6e-4, 3e-4, 5e-4)))
    rng = np.random.default_rng(5)
    samples = []
    for _ in range(40):
        f = _features(rng, prefill=True)
        back_to_back = float(np.dot(f, list(truth.values())))
        samples.append(Sample("mixed", f, back_to_back + float(rng.uniform(1e-4, 9e-4)), device_s=back_to_back * 1.05,
                              async_s=back_to_back))
    samples += [Sample("swap", (), 1e-3, 1, 65536, 5e-6 + 65536 / 50e9),
                Sample("swap", (), 1e-3, 8, 2**24, 8 * 5e-6 + 2**24 / 50e9)]
    as_async = timed_as(samples, "async")
    # compute beside swaps, launched behind an iteration in flight: 300 us plus 12 us a copy beyond the
    # compute and the copies
    base = json.loads((PROFILE_DIR / "fitted" / "h200-llama-1b-fitted.json").read_text())
    swap_plans = []
    for i, (copies, nbytes) in enumerate(((1, 2**20), (4, 2**22), (16, 2**22), (8, 2**23))):
        compute = samples[i].async_s
        swap_plans.append(Sample("swap_plan", samples[i].features,
                              compute + 5e-6 * copies + nbytes / 50e9 + 3e-4 + 1.2e-5 * copies,
                              copies, nbytes, 0.0, device_s=compute))
    # prefills launched on an idle device: 350 us beyond their back-to-back time (one a little under, one over)
    idle = [Sample("idle_start", samples[i].features, samples[i].async_s + 3.5e-4 + d, device_s=samples[i].async_s,
                   async_s=samples[i].async_s) for i, d in ((0, -1e-5), (1, 1e-5), (2, 0.0))]
    with_idle = refit_profile_json(base, samples + idle, "2026-11-22", "async")
    assert with_idle["cost_model"]["idle_start_s"] == pytest.approx(3.5e-4, rel=1e-9)
    assert with_idle["cost_model"]["coefficients"] == pytest.approx(
        refit_profile_json(base, samples, "2026-11-22", "async")["cost_model"]["coefficients"])
    (tmp_path / "i.json").write_text(json.dumps(with_idle))
    assert load_profile(str(tmp_path / "i.json")).cost.idle_start_s == pytest.approx(3.5e-4, rel=1e-9)
    assert "idle_start_s" not in refit_profile_json(base, samples, "2026-11-22", "async")["cost_model"]
    with_swap_plan = refit_profile_json(base, samples + swap_plans, "2026-11-22", "async")
    assert with_swap_plan["cost_model"]["swap_plan"]["overhead_s"] == pytest.approx(3e-4, rel=1e-6)
    assert with_swap_plan["cost_model"]["swap_plan"]["per_copy_s"] == pytest.approx(1.2e-5, rel=1e-6)
    assert with_swap_plan["cost_model"]["coefficients"] == pytest.approx(
        refit_profile_json(base, samples, "2026-11-22", "async")["cost_model"]["coefficients"])
    (tmp_path / "d.json").write_text(json.dumps(with_swap_plan))
    assert load_profile(str(tmp_path / "d.json")).cost.swap_plan == pytest.approx((3e-4, 1.2e-5))
    assert timed_as(samples + swap_plans, "async")[-4:] == swap_plans
    assert [s.duration_s for s in as_async[:40]] == [s.async_s for s in samples[:40]]
    assert as_async[40:] == samples[40:] and timed_as(samples, "wall") == samples
    out = refit_profile_json(base, samples, "2026-11-22", "async")
    c = out["cost_model"]["coefficients"]
    assert c["intercept"] + c["has_prefill"] == pytest.approx(3e-3, rel=1e-6)
    for k, v in truth.items():
        if k not in ("intercept", "has_prefill"):
            assert c[k] == pytest.approx(v, rel=1e-6)
    assert out["device"]["copy_latency_s"] == pytest.approx(5e-6, rel=1e-6)
    assert out["fit"]["timing"] == "async" and "launched while the one before it runs" in out["description"]
    # a refit keeps the base's timing unless told otherwise; profiles that do not say were fitted on wall time
    assert refit_profile_json(out, samples, "2026-11-22")["fit"]["timing"] == "async"
    assert refit_profile_json(base, samples, "2026-11-22")["fit"]["timing"] == "wall"
    # samples files keep the back-to-back time
    from gpu_backend.calibration_sweep import load_samples

    path = tmp_path / "samples.json"
    path.write_text(json.dumps([dataclasses.asdict(s) for s in samples]))
    assert load_samples(path) == samples

    with pytest.raises(ValueError, match="timing must be one of wall, async, got 'device'"):
        timed_as(samples, "device")
    old = samples[:40] + [Sample("mixed", samples[0].features, 2e-3, device_s=1e-3)] + samples[40:]
    with pytest.raises(ValueError, match="timing 'async' needs every iteration sample's back-to-back duration; 1 of 43"):
        timed_as(old, "async")


def test_a_pipelined_sweep_times_every_iteration_shape_back_to_back_and_leaves_swaps_alone():
    ex = TorchExecutor("tiny", device="cpu", num_gpu_blocks=256, num_host_blocks=32)
    sweep = Sweep(decode_batches=(1, 4), decode_contexts=(64, 128), prefill_tokens=(16, 64), prefill_starts=(0, 32),
                  prefill_batches=(2,), mixed=((2, 32),), prefix_chunks=(), grid_chunk_tokens=(), swap_groups=(1, 4),
                  swap_copies=(1,), repeats=2, warmup=1, decode_repeats=3, passes=1, pipelined=True,
                  swap_plans=((2, 2, 2, "out"), (1, 4, 1, "in"), (4, 2, 2, "out")),
                  idle_starts=((16, 0), (8, 32), (16, 4096)))
    samples = measure(ex, sweep, log=lambda *a: None)
    assert {s.kind for s in samples} >= {"decode", "prefill", "mixed", "swap", "swap_plan", "idle_start"}
    assert all(s.async_s > 0 for s in samples if s.kind not in ("swap", "swap_plan"))
    assert all(s.async_s == 0 for s in samples if s.kind in ("swap", "swap_plan"))
    # prefills launched on an idle device, and back to back: every spec with room (not 4,096 cached tokens)
    idle = [s for s in samples if s.kind == "idle_start"]
    assert [(f[LINEAR_FEATURES.index("prefill_tokens")], f[LINEAR_FEATURES.index("prefill_kv_read_tokens")])
            for f in (s.features for s in idle)] == [(16, 16), (8, 40)]
    assert all(s.duration_s > 0 and s.device_s > 0 for s in idle)
    # decodes beside swaps, each launched behind the same decodes without them: every spec the executor has
    # room for
    swap_plans = [s for s in samples if s.kind == "swap_plan"]
    fits = [d for d in sweep.swap_plans if d[0] * 65 + 2 * d[1] * d[2] <= 256 and d[1] * d[2] <= 32]
    assert [(s.swap_copies, s.swap_bytes) for s in swap_plans] == [
        (c, c * per * ex.capacity().bytes_per_block) for _, c, per, _ in fits]
    assert all(s.duration_s > 0 and s.device_s > 0 and s.swap_s > 0 for s in swap_plans)
    assert all(s.async_s == 0 for s in measure(ex, replace(sweep, pipelined=False), log=lambda *a: None))


def test_pipelined_durations_keep_one_iteration_in_flight_and_time_each_from_the_one_before():
    from gpu_backend.calibration_sweep import pipelined_durations

    calls = []

    class Executor:
        def launch(self, plan):
            calls.append(("launch", plan))
            return plan

        def collect(self, handle):
            calls.append(("collect", handle))
            return type("R", (), {"duration_s": 0.001 * handle})()

    assert pipelined_durations(Executor(), [1, 2, 3]) == [0.001, 0.002, 0.003]
    assert calls == [("launch", 1), ("launch", 2), ("collect", 1), ("launch", 3), ("collect", 2), ("collect", 3)]
    assert pipelined_durations(Executor(), []) == []


def test_populated_regimes_drop_a_bound_with_too_few_samples_on_either_side():
    need = len(LINEAR_FEATURES)
    tokens = [10] * need + [100] * need + [300] * (need - 1)
    assert populated_regimes(tokens, (50, 200)) == [50]          # past 200: one sample too few
    assert populated_regimes(tokens + [300], (200, 50)) == [50, 200]
    assert populated_regimes(tokens, (5,)) == []                 # nothing at or below 5
    assert populated_regimes(tokens, ()) == []


def test_fit_recovers_two_token_regimes_and_a_refit_keeps_them():
    graph = dict(zip(LINEAR_FEATURES, (1e-3, 2e-6, 1e-10, 3e-9, 5e-6, 4e-9, 7e-6, 2e-3, 4e-5, 6e-4, 3e-4, 5e-4)))
    eager = {**graph, "intercept": 9e-3, "prefill_tokens": 5e-7, "num_prefill_chunks": 4e-4}
    rng = np.random.default_rng(3)
    samples = []
    for _ in range(80):
        f = _features(rng, prefill=True)
        truth = eager if f[1] + f[4] > 2048 else graph
        samples.append(Sample("mixed", f, float(np.dot(f, list(truth.values())))))
    f = fit(samples, token_regimes=(2048,))
    assert f.token_regimes == (2048,) and [a for a, _ in f.regimes] == [2048]
    for fitted, truth in ((f.coefficients, graph), (f.regimes[0][1], eager)):
        for k in LINEAR_FEATURES:     # every sample has prefill: only the intercept + has_prefill sum is known
            if k not in ("intercept", "has_prefill"):
                assert fitted[k] == pytest.approx(truth[k], rel=1e-6, abs=1e-15)
        assert fitted["intercept"] + fitted["has_prefill"] == pytest.approx(truth["intercept"] + truth["has_prefill"])
    assert f.mape["all"] < 1e-9
    one = fit(samples)
    assert one.regimes == () and one.mape["all"] > 0.05           # one linear model cannot fit both
    base = {"cost_model": {}, "device": {}, "fit": {"timing": "wall", "token_regimes": [2048]}, "description": "b"}
    refit = refit_profile_json(base, samples, "2026-11-22")
    assert refit["cost_model"]["regimes"][0]["above_tokens"] == 2048 and refit["fit"]["token_regimes"] == [2048]
    assert "token regimes at 2048 tokens asked for, iterations with prefill fitted apart above: 2048" in \
        refit["description"]
    assert "regimes" not in refit_profile_json(base, samples, "2026-11-22", token_regimes=())["cost_model"]


def test_the_executor_names_where_its_graph_buckets_change_family():
    ex = TorchExecutor("tiny", device="cpu", num_gpu_blocks=16, num_host_blocks=0, max_model_len=64)
    assert ex.token_regimes() == ()                      # no graphs off CUDA
    from types import SimpleNamespace
    ex.mixed = SimpleNamespace(max_tokens=2048)
    ex.full = SimpleNamespace(layouts={(16, 8): None, (1024, 8): None, (1024, 256): None})
    assert ex.token_regimes() == (1024, 2048)
    ex.full = SimpleNamespace(layouts={(4096, 8): None})
    assert ex.token_regimes() == (2048, 4096)


def test_sweep_times_chunks_on_both_sides_of_each_regime_bound():
    """Each token count where the executor changes paths gets chunks below and above it, so that every
    regime the fit keeps apart has samples of its own; chunks past the context limit are left out."""
    ex = TorchExecutor("tiny", device="cpu", num_gpu_blocks=2048, num_host_blocks=0, max_model_len=256)
    none = dict(decode_batches=(), prefill_tokens=(), prefill_starts=(), prefill_batches=(), mixed=(),
                prefix_chunks=(), grid_chunk_tokens=(), swap_groups=(), repeats=1, warmup=0, passes=1)
    assert measure(ex, Sweep(**none), log=lambda *a: None) == []
    sweep = Sweep(**none, regime_bounds=(64, 160), regime_scales=(1.0, 1.5), regime_starts=(0, 32),
                  regime_decodes=(0, 3, 64))
    samples = measure(ex, sweep, log=lambda *a: None)
    assert {s.kind for s in samples} == {"regime_edge"}
    # (chunk tokens, cached tokens before the chunk, decodes): bound 64 gives iterations of 64 and 96 tokens in
    # all, bound 160 of 160 and 240, the chunk taking what the decodes leave; 64 decodes leave nothing of 64, and
    # a 240-token iteration's chunk after 32 cached tokens passes the 256-token limit unless 64 decodes share it
    shapes = [(int(s.features[1]), int(s.features[3] - s.features[1]), int(s.features[4])) for s in samples]
    assert shapes == [(64, 0, 0), (61, 0, 3), (64, 32, 0), (61, 32, 3),
                      (96, 0, 0), (93, 0, 3), (32, 0, 64), (96, 32, 0), (93, 32, 3), (32, 32, 64),
                      (160, 0, 0), (157, 0, 3), (96, 0, 64), (160, 32, 0), (157, 32, 3), (96, 32, 64),
                      (240, 0, 0), (237, 0, 3), (176, 0, 64), (176, 32, 64)]
    assert {int(s.features[1] + s.features[4]) for s in samples} == {64, 96, 160, 240}
    # the decodes sit at 1,024 tokens of context, or the longest the executor admits
    assert {s.features[5] / s.features[4] for s in samples if s.features[4]} == {256.0}
