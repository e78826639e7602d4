"""The calibration sweep: time the real executor over batch shapes, each shape once per pass.

Why its own module: what is timed, and how (passes over the whole sweep, medians, live block
tables grown in place as in serving), changes independently of how the samples are fitted
(``gpu_backend.calibration``). ``Sample`` is the boundary between the two, and the samples file
``servegym profile --samples`` writes is a list of them.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from gpu_backend.cost_model import LINEAR_FEATURES, BatchShape, linear_features
from gpu_backend.plan import BatchPlan, GroupMove, PrefillChunk


@dataclass(frozen=True, slots=True)
class Sample:
    """One measured batch shape."""

    kind: str                  # decode, prefill, mixed, swap, swap_plan (decodes beside swaps, pipelined) or
    #                            idle_start (a prefill launched on an idle device; async_s: launched back to back)
    features: tuple            # BatchShape features in LINEAR_FEATURES order (intercept first); swaps: ()
    duration_s: float          # median wall time of the iteration (swaps: of a plan that only swaps)
    swap_copies: int = 0
    swap_bytes: int = 0
    swap_s: float = 0.0        # median device time of the copies
    decode_context_max: int = 0   # the longest decode's context (0: none, or a samples file without it)
    pass_durations: tuple = ()    # the duration each sweep pass measured, in order (duration_s is their median)
    device_s: float = 0.0         # median device time of the compute (wall minus it: the host's share)
    # median duration when launched while the iteration before it runs, as asynchronous scheduling's clock
    # counts it (``Sweep.pipelined``; 0: not measured)
    async_s: float = 0.0


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
    # iterations around each token count where the executor changes paths (``TorchExecutor.token_regimes()``;
    # the profile CLI fills it in), so that each regime the fit keeps apart has samples of its own: bound x scale
    # tokens in all, one chunk after each start beside each count of decodes at 1,024 tokens of context. Scale 1
    # fills the bound exactly, as a chunked-prefill engine whose token budget is the bound fills nearly every
    # iteration with prefill (llama-8b's prefix-heavy run on S19a: 188 of 188 at 2,048 tokens)
    regime_bounds: tuple = ()
    regime_scales: tuple = (0.75, 1.0, 1.25, 1.5, 2.0)
    regime_starts: tuple = (0, 2048)
    regime_decodes: tuple = (0, 16, 128)
    swap_groups: tuple = (1, 4, 16, 64, 256)
    swap_copies: tuple = (1, 8)
    repeats: int = 5
    warmup: int = 2
    # decode steps of one or two sequences last about a millisecond, and a median of five moved by
    # 5-8% from one context to the next (two leases): decode shapes take many more, cheap, steps
    decode_repeats: int = 25
    passes: int = 3             # times the whole sweep is run; each shape keeps its median pass
    # also time each shape's runs launched back to back, one in flight (``Sample.async_s``): the host
    # enqueues an iteration while the device runs the one before, so the launch gaps that a synchronous
    # run's device time includes are gone
    pipelined: bool = False
    # with ``pipelined``: decodes at 1,024 tokens beside swaps, each launched behind the same decodes without
    # swaps, as asynchronous scheduling launches a plan with swaps (its copies wait for the iteration in
    # flight): (decodes, copies, blocks a copy, "out" or "in")
    # with ``pipelined``: prefill chunks (tokens, cached tokens before them) launched on an idle device, as the
    # first iteration after a pause is (the real executor times it from its own launch): what that adds
    idle_starts: tuple = ((16, 0), (64, 0), (256, 0), (16, 4096), (64, 4096), (256, 4096))
    swap_plans: tuple = ((8, 1, 16, "out"), (64, 4, 4, "out"), (64, 16, 1, "out"), (256, 4, 4, "out"),
                      (64, 4, 4, "in"), (8, 16, 1, "in"))


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

    def pipelined(plans: list[BatchPlan]) -> float:
        """Median duration of ``plans`` after the warm-up ones, each launched while the one before it runs."""
        return statistics.median(pipelined_durations(executor, plans)[sweep.warmup:]) if sweep.pipelined else 0.0

    def run(kind: str, plan: BatchPlan) -> Sample:
        t, _, dev = timed(plan)
        return Sample(kind, shape_features(plan), t, decode_context_max=BatchShape.from_plan(plan).decode_context_max,
                      device_s=dev, async_s=pipelined([plan] * (sweep.warmup + sweep.repeats)))

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
        times, device, shapes, longest, plans = [], [], [], [], []
        for k in range(steps):
            pos = [p + k for p in starts]
            for t, f, p in zip(live, full, pos):
                if len(t) <= p // bs:
                    t.append(f[len(t)])
            plan = BatchPlan(decode_seq_ids=sids, decode_positions=pos, decode_block_tables=live,
                             decode_input_ids=_tokens(b, vocab, rng), decode_context_sum=sum(pos) + b,
                             decode_context_max=max(pos) + 1)
            r = executor.execute(plan)
            plans.append(plan)
            times.append(r.duration_s)
            device.append(r.compute_s)
            shapes.append(shape_features(plan))
            longest.append(plan.decode_context_max)
        mid = sweep.warmup + sweep.decode_repeats // 2
        # the same steps again, back to back (their KV slots are written again with the same shapes)
        return Sample(kind, shapes[mid], statistics.median(times[sweep.warmup:]), decode_context_max=longest[mid],
                      device_s=statistics.median(device[sweep.warmup:]), async_s=pipelined(plans))

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

    def one_chunk(start: int, n: int) -> BatchPlan | None:
        """A plan of one chunk of ``n`` tokens after ``start`` cached ones (None without the KV blocks)."""
        blocks.reset()
        table = blocks.take(-(-(start + n) // bs))
        if table is None:
            return None
        return BatchPlan(prefills=[PrefillChunk(0, start, n, table, True, _tokens(n, vocab, rng))])

    def prefill_job(start: int, n: int):
        def job() -> Sample | None:
            plan = one_chunk(start, n)
            return None if plan is None else run("prefill", plan)
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

    def swap_plan_job(nd: int, copies: int, per_copy: int, direction: str):
        def job() -> Sample | None:
            blocks.reset()
            ctx = min(1024, limit - 1)
            tables = [blocks.take(-(-(ctx + 1) // bs)) for _ in range(nd)]
            gpu = blocks.take(2 * copies * per_copy)
            if gpu is None or any(t is None for t in tables) or copies * per_copy > cap.num_host_blocks:
                return None
            # every other run of per_copy blocks, so the copies cannot merge into one
            moves = [GroupMove(gpu[2 * i * per_copy], i * per_copy, per_copy) if direction == "out"
                     else GroupMove(i * per_copy, gpu[2 * i * per_copy], per_copy) for i in range(copies)]
            plain = BatchPlan(decode_seq_ids=list(range(nd)), decode_positions=[ctx] * nd, decode_block_tables=tables,
                              decode_input_ids=_tokens(nd, vocab, rng), decode_context_sum=nd * (ctx + 1))
            plan = replace(plain, swap_out=moves if direction == "out" else [],
                           swap_in=moves if direction == "in" else [])
            runs = []
            ahead = executor.launch(plain)
            for _ in range(sweep.warmup + sweep.repeats):
                swapping = executor.launch(plan)
                executor.collect(ahead)
                ahead = executor.launch(plain)
                runs.append(executor.collect(swapping))     # timed from the end of the plain one before it
            executor.collect(ahead)
            runs = runs[sweep.warmup:]
            return Sample("swap_plan", shape_features(plan), statistics.median(r.duration_s for r in runs), copies,
                          copies * per_copy * cap.bytes_per_block, statistics.median(r.swap_s for r in runs),
                          decode_context_max=ctx + 1, device_s=statistics.median(r.compute_s for r in runs))
        return job

    def idle_start_job(n: int, start: int):
        def job() -> Sample | None:
            plan = one_chunk(start, n)
            if plan is None:
                return None
            runs = [executor.collect(executor.launch(plan)) for _ in range(sweep.warmup + sweep.repeats)]
            runs = runs[sweep.warmup:]
            return Sample("idle_start", shape_features(plan), statistics.median(r.duration_s for r in runs),
                          device_s=statistics.median(r.compute_s for r in runs),
                          async_s=pipelined([plan] * (sweep.warmup + sweep.repeats)))
        return job

    if sweep.pipelined:
        jobs.extend(swap_plan_job(*spec) for spec in sweep.swap_plans)
        jobs.extend(idle_start_job(n, start) for n, start in sweep.idle_starts if start + n <= limit)

    for bound in sweep.regime_bounds:
        for total in sorted({round(bound * scale) for scale in sweep.regime_scales}):
            for start in sweep.regime_starts:
                jobs.extend(with_decodes_job("regime_edge", nd, ctx_mixed, [(start, total - nd)])
                            for nd in sweep.regime_decodes if nd < total and start + total - nd <= limit)

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


def pipelined_durations(executor, plans: list[BatchPlan]) -> list[float]:
    """Each plan launched while the one before it runs (``launch``/``collect``, as asynchronous scheduling
    runs them): its duration as ``collect`` gives it. The first counts from its own launch."""
    out, prev = [], None
    for plan in plans:
        handle = executor.launch(plan)
        if prev is not None:
            out.append(executor.collect(prev).duration_s)
        prev = handle
    if prev is not None:
        out.append(executor.collect(prev).duration_s)
    return out


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
                              tuple(float(x) for x in r.get("pass_durations", ())), float(r.get("device_s", 0.0)),
                              float(r.get("async_s", 0.0))))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"samples file {path}: sample {i}: {exc}") from None
    return out
