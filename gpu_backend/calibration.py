"""Calibration: time the real executor over a sweep of batch shapes and fit the simulator's cost model.

Why: the analytic roofline profiles guess the per-iteration overhead and the attention
rate. A fitted profile replaces the guesses with what ``TorchExecutor`` actually does on
one GPU, in the simulator's own terms: ``LinearCostModel`` is linear in the features of
``BatchShape`` (prefill tokens, attention pairs, KV tokens read, decodes, decode context,
sampled sequences), so the fit is a weighted least-squares problem. This follows Vidur's
approach (Agrawal et al., MLSys 2024, §4: profile the operators over batch shapes once,
predict any batch from them), at the granularity of whole iterations.

The sweep covers decode batches over context lengths, prefill chunks over cached prefixes,
mixed batches, and swaps (group sizes x copy counts, fitted as a per-copy latency plus
bytes over bandwidth, as FastSwitch models them: papers.md §5). Each shape is run a few
times after a warm-up, in each of several passes over the whole sweep; the median wall time of
``execute`` is what the engine's clock would advance by, so that is what is fitted. Rows are weighted by 1/time, so the fit minimises
relative error, and coefficients are kept non-negative (a negative cost per token would
let the simulator predict shorter iterations for bigger batches).

Run on the GPU: ``python -m gpu_backend.calibration --model llama-1b --out FILE`` (or
``servegym profile``). It needs only torch, transformers and this package.
"""

from __future__ import annotations

import argparse
import bisect
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from gpu_backend.cost_model import LINEAR_FEATURES, BatchShape, DecodeTable, LinearCostModel, linear_features
from gpu_backend.executor_flags import add_executor_flag_args, executor_flag_options
from gpu_backend.plan import BatchPlan, GroupMove, PrefillChunk, longest_context


@dataclass(frozen=True, slots=True)
class Sample:
    """One measured batch shape."""

    kind: str                  # decode, prefill, mixed or swap
    features: tuple            # BatchShape features in LINEAR_FEATURES order (intercept first); swaps: ()
    duration_s: float          # median wall time of the iteration (swaps: of a plan that only swaps)
    swap_copies: int = 0
    swap_bytes: int = 0
    swap_s: float = 0.0        # median device time of the copies
    decode_context_max: int = 0   # the longest decode's context (0: none, or a samples file without it)
    pass_durations: tuple = ()    # the duration each sweep pass measured, in order (duration_s is their median)
    device_s: float = 0.0         # median device time of the compute (wall minus it: the host's share)


@dataclass(slots=True)
class Sweep:
    """The shapes to time; combinations needing more KV blocks than the executor has are skipped."""

    decode_batches: tuple = (1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256)  # graph sizes
    decode_contexts: tuple = (128, 512, 2048, 8192)
    # also batches whose contexts differ (what serving runs), so the fit can tell the sum of the
    # contexts from the longest: one sequence more than the next smaller size (padded to this
    # size's graph), and a full batch with half the sequences at a quarter of the context
    decode_unequal: bool = True
    prefill_tokens: tuple = (16, 64, 256, 1024, 2048, 4096, 8192)
    prefill_starts: tuple = (0, 1024, 4096)
    prefill_batches: tuple = (4, 16)            # n sequences of 512 fresh tokens in one iteration
    # (decodes at 1024 context, chunk tokens)
    mixed: tuple = ((1, 256), (8, 256), (64, 256), (16, 64), (32, 1024), (128, 2048), (256, 512))
    # (chunks, tokens each, cached tokens before each, decodes at 1024 context): many chunks over
    # cached prefixes, as shared-document workloads batch them; each chunk is its own attention call
    prefix_chunks: tuple = ((2, 256, 1024, 0), (8, 64, 1024, 0), (32, 32, 512, 0), (16, 128, 2048, 0),
                            (4, 128, 1024, 64), (16, 32, 512, 128), (2, 512, 256, 200))
    # one chunk (tokens x cached tokens before it) beside decodes (count x context): the with-prefill
    # iterations a chunked-prefill engine runs most; every combination is timed
    grid_chunk_tokens: tuple = (16, 128, 512, 2048)
    grid_chunk_starts: tuple = (0, 2048, 8192)     # 8,192: a question over a long shared document
    grid_decodes: tuple = (1, 8, 64, 192)
    grid_decode_contexts: tuple = (1024, 4096, 8192)
    swap_groups: tuple = (1, 4, 16, 64, 256)
    swap_copies: tuple = (1, 8)
    repeats: int = 5
    warmup: int = 2
    # decode steps of one or two sequences last about a millisecond, and a median of five moved by
    # 5-8% from one context to the next (two leases): decode shapes take many more, cheap, steps
    decode_repeats: int = 25
    passes: int = 3             # times the whole sweep is run; each shape keeps its median pass


def shape_features(plan: BatchPlan) -> tuple:
    return linear_features(BatchShape.from_plan(plan))


def current_features(features: Sequence[float]) -> tuple:
    """A sample's feature vector in today's ``LINEAR_FEATURES`` order, also from a samples file written
    when there were fewer features (a prefix of today's list): each later feature is derived from
    the earlier ones (``num_cached_chunks`` is known only as zero or not: kv read > prefill tokens)."""
    n = len(LINEAR_FEATURES)
    if len(features) == n:
        return tuple(float(x) for x in features)
    old = ("intercept", "prefill_tokens", "prefill_attention_pairs", "prefill_kv_read_tokens", "num_decode",
           "decode_context_tokens", "num_sampled", "has_prefill", "num_prefill_chunks", "has_prefill_and_decode")
    if len(features) != len(old):
        raise ValueError(f"a sample has {len(features)} features; expected {n} ({', '.join(LINEAR_FEATURES)}) "
                         f"or the {len(old)} of earlier samples files")
    f = dict(zip(old, features))
    cached = 1 if f["prefill_kv_read_tokens"] > f["prefill_tokens"] else 0
    return linear_features(BatchShape(int(f["prefill_tokens"]), f["prefill_attention_pairs"],
                                      int(f["prefill_kv_read_tokens"]), int(f["num_decode"]),
                                      int(f["decode_context_tokens"]), int(f["num_sampled"]),
                                      int(f["num_prefill_chunks"]), cached))


class _Blocks:
    """Hands out disjoint runs of block ids for synthetic sequences."""

    def __init__(self, n: int):
        self.n = n
        self.next = 0

    def reset(self) -> None:
        self.next = 0

    def take(self, k: int) -> list[int] | None:
        if self.next + k > self.n:
            return None
        out = list(range(self.next, self.next + k))
        self.next += k
        return out


def _tokens(n: int, vocab: int, rng: np.random.Generator) -> list[int]:
    return rng.integers(0, vocab, n).tolist()


def _admitted(values: tuple, top: int) -> list[int]:
    """``values`` with each one past ``top`` replaced by ``top``, without repeats: the sweep times the longest
    context the executor admits instead of skipping it (smollm2's 8,192-token limit left its decode samples at
    2,048 tokens while its prefix-heavy serving decoded at up to 8,000)."""
    return sorted({min(v, top) for v in values if top >= 1})


def median_sample(runs: list[Sample]) -> Sample:
    """The run of one shape whose duration is the median (the lower one of an even count: always a
    measured run, never an average), carrying every run's duration in measuring order."""
    pick = sorted(runs, key=lambda s: s.duration_s)[(len(runs) - 1) // 2]
    return replace(pick, pass_durations=tuple(s.duration_s for s in runs))


def measure(executor, sweep: Sweep | None = None, log=print) -> list[Sample]:
    """Run the sweep on ``executor`` (a ``TorchExecutor``); returns one sample per shape.

    Every shape is timed once per pass, the passes one after another over the whole sweep, and the
    median pass is kept. Why: the lent GPU machines have slow spells of tens of milliseconds, longer
    than one shape's timing; a shape timed in one stretch during a spell came out 5-20% slow, and the
    fitted table carried it (session 12: a two-sequence decode predicted 9.6% too slow). Passes far apart
    in time rarely all meet a spell."""
    sweep = sweep or Sweep()
    if sweep.passes < 1:
        raise ValueError(f"Sweep.passes must be >= 1, got {sweep.passes}")
    jobs = sweep_jobs(executor, sweep)
    runs: list[list[Sample]] = [[] for _ in jobs]
    for p in range(sweep.passes):
        t0 = time.perf_counter()
        for job, kept in zip(jobs, runs):
            s = job()
            if s is not None:
                kept.append(s)
        log(f"calibration: pass {p + 1}/{sweep.passes} timed {sum(1 for r in runs if r)} shapes in "
            f"{time.perf_counter() - t0:.0f} s")
    return [median_sample(r) for r in runs if r]


def sweep_jobs(executor, sweep: Sweep) -> list:
    """One callable per shape of the sweep, in sweep order: each times its shape once on ``executor`` and
    returns the ``Sample`` (None where the executor lacks the KV blocks for it)."""
    bs = executor.block_size
    cap = executor.capacity()
    vocab = executor.dims.vocab_size
    rng = np.random.default_rng(0)
    executor.store.gpu.normal_()        # time on realistic KV, never on zeros
    blocks = _Blocks(cap.num_gpu_blocks)
    jobs: list = []

    def timed(plan: BatchPlan) -> tuple[float, float, float]:
        """Median wall time, swap time and compute device time of ``plan``."""
        for _ in range(sweep.warmup):
            executor.execute(plan)
        runs = [executor.execute(plan) for _ in range(sweep.repeats)]
        return tuple(statistics.median(getattr(r, f) for r in runs) for f in ("duration_s", "swap_s", "compute_s"))

    def run(kind: str, plan: BatchPlan) -> Sample:
        t, _, dev = timed(plan)
        return Sample(kind, shape_features(plan), t, decode_context_max=BatchShape.from_plan(plan).decode_context_max,
                      device_s=dev)

    limit = executor.max_model_len
    steps = sweep.warmup + sweep.decode_repeats
    next_seq = 0

    def decode_batch(kind: str, ctxs: list[int]) -> Sample | None:
        """Time ``steps`` decode iterations of new sequences at contexts ``ctxs``; keep the median."""
        nonlocal next_seq
        b = len(ctxs)
        # positions staggered over a block so that, as in serving, a sixteenth of the sequences
        # takes a new block each step
        blocks.reset()
        starts = [c + i % bs for i, c in enumerate(ctxs)]
        full = [blocks.take(-(-(p + steps) // bs)) for p in starts]
        if any(t is None for t in full):
            return None
        sids = list(range(next_seq, next_seq + b))
        next_seq += b
        # one live table per sequence, grown in place as in serving (the executor sends only
        # the entries a table gained; a new list object would be sent whole)
        live = [t[:p // bs + 1] for t, p in zip(full, starts)]
        times, device, shapes, longest = [], [], [], []
        for k in range(steps):
            pos = [p + k for p in starts]
            for t, f, p in zip(live, full, pos):
                if len(t) <= p // bs:
                    t.append(f[len(t)])
            plan = BatchPlan(decode_seq_ids=sids, decode_positions=pos, decode_block_tables=live,
                             decode_input_ids=_tokens(b, vocab, rng), decode_context_sum=sum(pos) + b,
                             decode_context_max=max(pos) + 1)
            r = executor.execute(plan)
            times.append(r.duration_s)
            device.append(r.compute_s)
            shapes.append(shape_features(plan))
            longest.append(plan.decode_context_max)
        mid = sweep.warmup + sweep.decode_repeats // 2
        return Sample(kind, shapes[mid], statistics.median(times[sweep.warmup:]), decode_context_max=longest[mid],
                      device_s=statistics.median(device[sweep.warmup:]))

    def decode_job(kind: str, ctxs: list[int]):
        return lambda: decode_batch(kind, ctxs)

    smaller = 0
    for b in sweep.decode_batches:
        for ctx in _admitted(sweep.decode_contexts, limit - bs - steps - 1):
            jobs.append(decode_job("decode", [ctx] * b))
            if sweep.decode_unequal and smaller and smaller + 1 < b:
                jobs.append(decode_job("decode_unequal", [ctx] * (smaller + 1)))
            if sweep.decode_unequal and b > 1:
                jobs.append(decode_job("decode_unequal", [ctx] * (b - b // 2) + [max(1, ctx // 4)] * (b // 2)))
        smaller = b

    def prefill_job(start: int, n: int):
        def job() -> Sample | None:
            blocks.reset()
            table = blocks.take(-(-(start + n) // bs))
            if table is None:
                return None
            return run("prefill", BatchPlan(prefills=[PrefillChunk(0, start, n, table, True, _tokens(n, vocab, rng))]))
        return job

    for start in sweep.prefill_starts:
        for n in sweep.prefill_tokens:
            if start + n <= limit:
                jobs.append(prefill_job(start, n))

    def prefill_batch_job(k: int):
        def job() -> Sample | None:
            blocks.reset()
            chunks = [PrefillChunk(i, 0, 512, blocks.take(512 // bs), True, _tokens(512, vocab, rng)) for i in range(k)]
            if chunks[-1].block_table is None:
                return None
            return run("prefill", BatchPlan(prefills=chunks))
        return job

    jobs.extend(prefill_batch_job(k) for k in sweep.prefill_batches)

    def with_decodes_job(kind: str, nd: int, ctx: int, chunk_specs: list[tuple[int, int]]):
        """``nd`` decodes at context ``ctx`` beside one chunk per (start, tokens) of ``chunk_specs``."""
        def job() -> Sample | None:
            blocks.reset()
            tables = [blocks.take(-(-(ctx + 1) // bs)) for _ in range(nd)]
            chunk_tables = [blocks.take(-(-(start + n) // bs)) for start, n in chunk_specs]
            if any(t is None for t in tables + chunk_tables):
                return None
            chunks = [PrefillChunk(nd + i, start, n, t, True, _tokens(n, vocab, rng))
                      for i, ((start, n), t) in enumerate(zip(chunk_specs, chunk_tables))]
            return run(kind, BatchPlan(prefills=chunks, decode_seq_ids=list(range(nd)), decode_positions=[ctx] * nd,
                                       decode_block_tables=tables, decode_input_ids=_tokens(nd, vocab, rng),
                                       decode_context_sum=nd * (ctx + 1)))
        return job

    ctx_mixed = min(1024, limit - 1)
    for nd, n in sweep.mixed:
        if n <= limit:
            jobs.append(with_decodes_job("mixed", nd, ctx_mixed, [(0, n)]))
    # many chunks over cached prefixes, as shared-document workloads batch them
    for k, n, start, nd in sweep.prefix_chunks:
        if start + n <= limit:
            jobs.append(with_decodes_job("prefix_chunks", nd, ctx_mixed, [(start, n)] * k))
    for n in sweep.grid_chunk_tokens:
        for start in _admitted(sweep.grid_chunk_starts, limit - n):
            for ctx in _admitted(sweep.grid_decode_contexts, limit - 1):
                for nd in sweep.grid_decodes:
                    jobs.append(with_decodes_job("mixed", nd, ctx, [(start, n)]))

    def swap_job(moves: list[GroupMove], nbytes: int):
        def job() -> Sample:
            wall, s, _ = timed(BatchPlan(swap_out=moves))
            return Sample("swap", (), wall, len(moves), nbytes, s)
        return job

    host = cap.num_host_blocks
    for g in sweep.swap_groups:
        for c in sweep.swap_copies:
            if g * c > min(host, cap.num_gpu_blocks):
                continue
            # every other run of g blocks, so the copies cannot merge into one
            moves = [GroupMove(2 * i * g, i * g, g) for i in range(c) if 2 * i * g + g <= cap.num_gpu_blocks]
            if len(moves) == c:
                jobs.append(swap_job(moves, g * c * cap.bytes_per_block))
    return jobs


def nnls(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with non-negative coefficients (an active-set loop; the problems here are tiny)."""
    active = list(range(A.shape[1]))
    x = np.zeros(A.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(A[:, active], y, rcond=None)
        if (sol >= 0).all():
            x[:] = 0.0
            x[active] = sol
            return x
        del active[int(np.argmin(sol))]
    return x


@dataclass(slots=True)
class Fit:
    coefficients: dict[str, float]
    copy_latency_s: float
    host_bandwidth: float
    mape: dict[str, float] = field(default_factory=dict)     # in-sample, per kind and overall
    max_ape: float = 0.0
    decode_table: DecodeTable | None = None


def _weighted_nnls(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares of relative error (rows weighted by 1/y), columns rescaled."""
    w = 1.0 / y
    scale = X.max(axis=0)
    scale[scale == 0] = 1.0
    return nnls(X / scale * w[:, None], y * w) / scale


DECODE_KINDS = ("decode", "decode_unequal")


def _graph_size(num_seqs: int, sizes: tuple[int, ...] | None) -> int:
    """The captured graph a decode batch of ``num_seqs`` runs in (itself when sizes are unknown or it is
    past the largest)."""
    if sizes:
        i = bisect.bisect_left(sizes, num_seqs)
        if i < len(sizes):
            return sizes[i]
    return num_seqs


def fit_decode_table(samples: list[Sample], graph_sizes: tuple[int, ...] | None = None) -> DecodeTable | None:
    """Per decode batch size, a line in context tokens (weighted by 1/time); None when fewer than two
    batch sizes were timed at two or more contexts. When every size in ``graph_sizes`` (the
    executor's captured decode batch sizes) has a row, sizes between rows round up to the next,
    and each row is fitted on every batch that runs in its graph. Where a row's batches include
    unequal contexts (``Sweep.decode_unequal``), the line gains a term in the longest context."""
    nd_col = LINEAR_FEATURES.index("num_decode")
    ctx_col = LINEAR_FEATURES.index("decode_context_tokens")
    decode = [s for s in samples if s.kind in DECODE_KINDS]
    measured = {int(s.features[nd_col]) for s in decode if s.kind == "decode"}
    round_up = graph_sizes is not None and set(graph_sizes) <= measured
    sizes = tuple(sorted(graph_sizes)) if round_up else None
    by_size: dict[int, list[tuple[float, float, float]]] = {}
    for s in decode:
        nd = int(s.features[nd_col])
        if s.kind == "decode" or round_up:
            by_size.setdefault(_graph_size(nd, sizes), []).append(
                (s.features[ctx_col], longest_context(s.decode_context_max, s.features[ctx_col], nd), s.duration_s))
    rows = []
    for n in sorted(by_size):
        pts = np.array(by_size[n])
        if len(np.unique(pts[:, 0])) < 2:
            continue
        X = np.column_stack([np.ones(len(pts)), pts[:, 0], pts[:, 1]])
        if np.linalg.matrix_rank(X / X.max(axis=0)) == 3:
            a, b, c = _weighted_nnls(X, pts[:, 2])
        else:       # equal contexts only: the sum and the longest move together, keep the sum
            (a, b), c = _weighted_nnls(X[:, :2], pts[:, 2]), 0.0
        rows.append((n, float(a), float(b), float(c)))
    if len(rows) < 2:
        return None
    longest = tuple(r[3] for r in rows)
    return DecodeTable(tuple(r[0] for r in rows), tuple(r[1] for r in rows), tuple(r[2] for r in rows),
                       round_up=round_up, per_longest_token_s=longest if any(longest) else ())


def fit(samples: list[Sample], graph_sizes: tuple[int, ...] | None = None) -> Fit:
    """Decode iterations: a table per batch size (``DecodeTable``), when the sweep timed enough of
    them. The other iterations: weighted (1/time) non-negative least squares of ``LINEAR_FEATURES``
    (of every iteration sample when there is no table). Swaps: per-copy latency plus bandwidth."""
    it = [s for s in samples if s.kind != "swap"]
    sw = [s for s in samples if s.kind == "swap"]
    if len(it) < len(LINEAR_FEATURES):
        raise ValueError(f"calibration needs >= {len(LINEAR_FEATURES)} iteration samples, got {len(it)}")
    table = fit_decode_table(it, graph_sizes)
    rest = [s for s in it if s.kind not in DECODE_KINDS] if table is not None else it
    if len(rest) < len(LINEAR_FEATURES):
        table, rest = None, it
    X = np.array([s.features for s in rest], dtype=np.float64)
    y = np.array([s.duration_s for s in rest], dtype=np.float64)
    c = _weighted_nnls(X, y)
    model = LinearCostModel(dict(zip(LINEAR_FEATURES, c)), 1.0, 1.0, 1, table)
    y_all = np.array([s.duration_s for s in it])
    pred = np.array([model.compute_time(BatchShape(*_shape_args(s))) for s in it])
    ape = np.abs(pred - y_all) / y_all
    mape = {"all": float(ape.mean())}
    for kind in sorted({s.kind for s in it}):
        m = np.array([s.kind == kind for s in it])
        mape[kind] = float(ape[m].mean())
    lat, bw = 0.0, 0.0
    if len(sw) >= 2:
        A = np.array([[s.swap_copies, s.swap_bytes] for s in sw], dtype=np.float64)
        t = np.array([s.swap_s for s in sw])
        lat_b = _weighted_nnls(A, t)
        lat = float(lat_b[0])
        bw = float(1.0 / lat_b[1]) if lat_b[1] > 0 else 0.0
        pt = A @ lat_b
        mape["swap"] = float((np.abs(pt - t) / t).mean())
    return Fit({k: float(v) for k, v in zip(LINEAR_FEATURES, c)}, lat, bw, mape, float(ape.max()), table)


def _shape_args(sample: Sample) -> tuple:
    """``BatchShape`` fields back from a sample (a cached-chunk count of 0 or 1: the features keep
    only whether there is one; a sample without its longest context: the mean)."""
    f = dict(zip(LINEAR_FEATURES, sample.features))
    nd, ctx = int(f["num_decode"]), int(f["decode_context_tokens"])
    return (int(f["prefill_tokens"]), f["prefill_attention_pairs"], int(f["prefill_kv_read_tokens"]),
            nd, ctx, int(f["num_sampled"]), int(f["num_prefill_chunks"]), int(f["has_cached_chunk"]),
            longest_context(sample.decode_context_max, ctx, nd))


def _cost_model_json(f: Fit) -> dict:
    t = f.decode_table
    table = {} if t is None else {"decode_table": {
        "num_seqs": list(t.num_seqs), "intercept_s": list(t.intercept_s),
        "per_context_token_s": list(t.per_context_token_s), "round_up": t.round_up,
        **({"per_longest_token_s": list(t.per_longest_token_s)} if t.per_longest_token_s else {})}}
    return {"kind": "linear", "coefficients": f.coefficients, **table}


def _passes_text(samples: list[Sample]) -> str:
    passes = max((len(s.pass_durations) for s in samples), default=0)
    return f" each the median of {passes} passes" if passes > 1 else ""


def profile_json(name: str, executor, f: Fit, device_info: dict, samples: list[Sample]) -> dict:
    """A profile file ``gpu_backend.profiles.load_profile`` reads: shape, device, KV and the fitted model."""
    d = executor.dims
    cap = executor.capacity()
    shape = d.shape(executor.store.gpu.element_size())
    return {
        "name": name,
        "description": (f"Fitted by gpu_backend.calibration on {device_info['name']} on {device_info['date']}: "
                        f"TorchExecutor ({executor.dtype}, CUDA graphs for decode, "
                        f"split_gemms={'on' if executor.split_gemms else 'off'}, "
                        f"epilogue_gemms={'on' if executor.epilogue_gemms else 'off'}), {len(samples)} shapes"
                        f"{_passes_text(samples)}, "
                        f"in-sample MAPE {f.mape['all']:.1%} (max {f.max_ape:.1%})."),
        "model": {"name": d.name, "num_layers": shape.num_layers, "hidden_size": shape.hidden_size,
                  "num_heads": shape.num_heads, "num_kv_heads": shape.num_kv_heads,
                  "intermediate_size": shape.intermediate_size, "vocab_size": shape.vocab_size,
                  "dtype_bytes": shape.dtype_bytes, "head_dim": shape.head_dim,
                  "tie_word_embeddings": shape.tie_word_embeddings},
        "device": {"name": device_info["name"], "memory_bytes": device_info["memory_bytes"],
                   "hbm_bandwidth": device_info["hbm_bandwidth"], "matmul_flops": device_info["matmul_flops"],
                   "attention_flops": device_info["matmul_flops"],
                   "host_bandwidth": f.host_bandwidth or device_info["host_bandwidth"],
                   "copy_latency_s": f.copy_latency_s or 1e-6,
                   "iteration_overhead_s": max(f.coefficients["intercept"], 1e-6)},
        "kv": {"block_size": cap.block_size, "num_gpu_blocks": cap.num_gpu_blocks,
               "num_host_blocks": cap.num_host_blocks, "max_model_len": cap.max_model_len},
        "cost_model": _cost_model_json(f),
        "fit": {"mape": f.mape, "max_ape": f.max_ape, "num_samples": len(samples)},
    }


def load_samples(path: str | Path) -> list[Sample]:
    """Samples written by ``servegym profile --samples``, features in today's ``LINEAR_FEATURES`` order."""
    try:
        rows = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read samples file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"samples file {path} is not JSON ({exc.msg} at line {exc.lineno})") from None
    out = []
    for i, r in enumerate(rows):
        try:
            feats = current_features(r["features"]) if r["kind"] != "swap" else ()
            out.append(Sample(r["kind"], feats, float(r["duration_s"]), int(r.get("swap_copies", 0)),
                              int(r.get("swap_bytes", 0)), float(r.get("swap_s", 0.0)),
                              int(r.get("decode_context_max", 0)),
                              tuple(float(x) for x in r.get("pass_durations", ())), float(r.get("device_s", 0.0))))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"samples file {path}: sample {i}: {exc}") from None
    return out


def refit_profile_json(base: dict, samples: list[Sample], when: str) -> dict:
    """``base`` (a fitted profile's JSON) with its cost model fitted again on ``samples``: the same
    model, device and KV sizes, today's features. The decode table rounds up as ``base``'s did."""
    table = base.get("cost_model", {}).get("decode_table")
    graph_sizes = tuple(table["num_seqs"]) if table and table.get("round_up") else None
    f = fit(samples, graph_sizes)
    out = json.loads(json.dumps(base))
    out["description"] = (f"{base.get('description', '')} Refitted on {when} from its {len(samples)} samples "
                          f"with features {', '.join(LINEAR_FEATURES)}: in-sample MAPE {f.mape['all']:.1%} "
                          f"(max {f.max_ape:.1%}).").strip()
    out["cost_model"] = _cost_model_json(f)
    if f.copy_latency_s and f.host_bandwidth:
        out["device"]["copy_latency_s"] = f.copy_latency_s
        out["device"]["host_bandwidth"] = f.host_bandwidth
    out["device"]["iteration_overhead_s"] = max(f.coefficients["intercept"], 1e-6)
    out["fit"] = {"mape": f.mape, "max_ape": f.max_ape, "num_samples": len(samples)}
    return out


def device_info() -> dict:
    """Name, memory, and the copy and matmul ceilings of the current CUDA device (measured now)."""
    import torch

    props = torch.cuda.get_device_properties(0)
    n = 2**30
    src = torch.randn(n // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")

    def t(fn, reps=10):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(reps):
            fn()
        e.record()
        e.synchronize()
        return s.elapsed_time(e) / 1e3 / reps

    bw = 2 * n / t(lambda: dst.copy_(src))
    flops = 2 * 8192**3 / t(lambda: a @ a)
    pinned = torch.empty(n // 2, dtype=torch.bfloat16, pin_memory=True)
    host_bw = n / t(lambda: pinned.copy_(src, non_blocking=True), 5)
    del src, dst, a, pinned
    torch.cuda.empty_cache()
    return {"name": props.name, "memory_bytes": int(props.total_memory), "hbm_bandwidth": bw,
            "matmul_flops": flops, "host_bandwidth": host_bw, "date": time.strftime("%Y-%m-%d")}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def add_profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="tiny, smollm2-135m, llama-1b or llama-8b")
    p.add_argument("--out", type=Path, required=True, help="profile JSON to write")
    p.add_argument("--name", default=None, help="profile name (default: the file's stem)")
    p.add_argument("--num-gpu-blocks", type=int, default=None, help="KV blocks (default: what memory leaves)")
    p.add_argument("--random-weights", action="store_true",
                   help="the model's shape with random weights (timing does not depend on the values)")
    p.add_argument("--quick", action="store_true", help="fewer shapes and repeats, one pass (a smoke run)")
    p.add_argument("--passes", type=_positive_int, default=Sweep().passes,
                   help="passes over the whole sweep; each shape keeps its median pass (default: %(default)s)")
    p.add_argument("--samples", type=Path, default=None, help="also write every timed sample as JSON")
    add_executor_flag_args(p)     # which were on is recorded in the profile's description


def run_profile(args: argparse.Namespace) -> int:
    import torch

    from gpu_backend.models import load_weights
    from gpu_backend.torch_executor import TorchExecutor

    if not torch.cuda.is_available():
        raise ValueError("servegym profile times the real executor and needs a CUDA device")
    info = device_info()
    weights = load_weights(args.model, "cuda", torch.bfloat16, random_weights=args.random_weights)
    options = {} if args.num_gpu_blocks is None else {"num_gpu_blocks": args.num_gpu_blocks}
    options.update(executor_flag_options(args))
    ex = TorchExecutor(weights, device="cuda", swap_space_bytes=2 * 2**30, **options)
    sweep = Sweep()
    if args.quick:
        sweep = Sweep(decode_batches=(1, 16, 256), decode_contexts=(128, 2048), prefill_tokens=(64, 1024, 4096),
                      prefill_starts=(0, 2048), prefill_batches=(8,), mixed=((32, 1024),),
                      prefix_chunks=((8, 64, 1024, 0), (4, 128, 1024, 64)), swap_groups=(1, 64),
                      swap_copies=(1, 8), repeats=3, warmup=1, decode_repeats=3, passes=1)
    else:
        sweep.passes = args.passes
    graph_sizes = tuple(ex.graphs.sizes) if ex.graphs is not None else None
    if graph_sizes and not args.quick:
        sweep.decode_batches = graph_sizes      # one table row per captured decode graph
    samples = measure(ex, sweep)
    f = fit(samples, graph_sizes)
    name = args.name or args.out.stem
    prof = profile_json(name, ex, f, info, samples)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(prof, indent=2) + "\n")
    if args.samples is not None:
        args.samples.write_text(json.dumps([asdict(s) for s in samples], indent=1) + "\n")
    print(f"{name}: {len(samples)} shapes on {info['name']}; in-sample MAPE "
          + ", ".join(f"{k} {v:.1%}" for k, v in f.mape.items()) + f"; wrote {args.out}")
    print("coefficients: " + ", ".join(f"{k} {v:.3e}" for k, v in f.coefficients.items())
          + f"; swap latency {f.copy_latency_s * 1e6:.1f} us, bandwidth {f.host_bandwidth / 1e9:.1f} GB/s")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gpu_backend.calibration", description=__doc__.splitlines()[0])
    add_profile_args(p)
    return run_profile(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
