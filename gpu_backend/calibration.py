"""Calibration: time the real executor over a sweep of batch shapes and fit the simulator's cost model.

Why: the analytic roofline profiles guess the per-iteration overhead and the attention
rate. A fitted profile replaces the guesses with what ``TorchExecutor`` actually does on
one GPU, in the simulator's own terms: ``LinearCostModel`` is linear in the features of
``BatchShape`` (prefill tokens, attention pairs, KV tokens read, decodes, decode context,
sampled sequences), so the fit is a weighted least-squares problem. This follows Vidur's
approach (Agrawal et al., MLSys 2024, §4: profile the operators over batch shapes once,
predict any batch from them), at the granularity of whole iterations.

The sweep (``gpu_backend.calibration_sweep``) covers decode batches over context lengths,
prefill chunks over cached prefixes, mixed batches, and swaps (group sizes x copy counts, fitted
as a per-copy latency plus bytes over bandwidth, as FastSwitch models them: papers.md §5). Each
shape is run a few times after a warm-up, in each of several passes over the whole sweep; the
median wall time of ``execute`` is what the engine's clock would advance by, so that is what is
fitted (``--timing wall``). Under asynchronous scheduling the host enqueues the next iteration while
the device runs this one, and an iteration lasts from the end of the one before to its own end:
``--timing async`` also times each shape so, launched back to back (``Sweep.pipelined``), and fits
that. The host's share moves from one lent machine to the next and the device's far less
(BENCHMARKS.md, session 16), so such a profile also holds on other machines. Rows are weighted by 1/time, so the fit minimises relative error, and coefficients are
kept non-negative (a negative cost per token would let the simulator predict shorter iterations
for bigger batches).

Run on the GPU: ``python -m gpu_backend.calibration --model llama-1b --out FILE`` (or
``servegym profile``). It needs only torch, transformers and this package.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from gpu_backend.calibration_sweep import Sample, Sweep, measure
from gpu_backend.cost_model import LINEAR_FEATURES, BatchShape, DecodeTable, LinearCostModel
from gpu_backend.executor_flags import add_executor_flag_args, executor_flag_options
from gpu_backend.plan import longest_context


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
    swap_plan: tuple[float, float] = (0.0, 0.0)   # overhead and cost per copy of a plan with swaps, pipelined
    idle_start_s: float = 0.0   # what an iteration launched on an idle device adds to its back-to-back time
    # (above_tokens, coefficients): iterations of more tokens fitted apart (``LinearCostModel``'s regimes)
    regimes: tuple[tuple[int, dict[str, float]], ...] = ()
    token_regimes: tuple[int, ...] = ()     # the token counts the executor changes paths at (asked for)


# samples that are not one iteration's compute: swap-only plans, decodes beside swaps launched behind the same
# decodes without them (``Sweep.swap_plans``), which fit what such a plan adds beyond its compute and its copies,
# and prefills launched on an idle device (``Sweep.idle_starts``), which fit what that adds
NOT_COMPUTE_KINDS = ("swap", "swap_plan", "idle_start")


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


TIMINGS = ("wall", "async")


def timed_as(samples: list[Sample], timing: str) -> list[Sample]:
    """The samples with ``duration_s`` as ``timing`` reads an iteration: ``"wall"``, the wall time of a
    synchronous ``execute`` (host work included), or ``"async"``, its duration when launched while the one
    before it runs (``Sample.async_s``). Swap samples keep their wall time either way."""
    if timing not in TIMINGS:
        raise ValueError(f"timing must be one of {', '.join(TIMINGS)}, got {timing!r}")
    if timing == "wall":
        return list(samples)
    lacking = sum(1 for s in samples if s.kind not in NOT_COMPUTE_KINDS and s.async_s <= 0)
    if lacking:
        raise ValueError(f"timing 'async' needs every iteration sample's back-to-back duration; {lacking} of "
                         f"{len(samples)} samples have none (servegym profile --timing async measures it)")
    return [s if s.kind in NOT_COMPUTE_KINDS else replace(s, duration_s=s.async_s) for s in samples]


def _sample_tokens(s: Sample) -> int:
    f = dict(zip(LINEAR_FEATURES, s.features))
    return int(f["prefill_tokens"] + f["num_decode"])


def populated_regimes(tokens: list[int], bounds: tuple[int, ...]) -> list[int]:
    """The bounds of ``bounds`` (ascending) kept as regime edges: each regime they make, from the bottom, holds
    at least one sample per feature; a bound that would leave fewer below or above it is dropped, so its samples
    join the regime below."""
    need = len(LINEAR_FEATURES)
    t = np.array(tokens)
    kept: list[int] = []
    for b in sorted(set(bounds)):
        lower = kept[-1] if kept else -1
        if np.count_nonzero((t > lower) & (t <= b)) >= need and np.count_nonzero(t > b) >= need:
            kept.append(b)
    return kept


def fit(samples: list[Sample], graph_sizes: tuple[int, ...] | None = None,
        token_regimes: tuple[int, ...] = ()) -> Fit:
    """Decode iterations: a table per batch size (``DecodeTable``), when the sweep timed enough of
    them. The other iterations: weighted (1/time) non-negative least squares of ``LINEAR_FEATURES``
    (of every iteration sample when there is no table), one fit per token regime (``token_regimes``: the
    token counts past which the executor takes another path; ``populated_regimes``). Swaps: per-copy
    latency plus bandwidth."""
    it = [s for s in samples if s.kind not in NOT_COMPUTE_KINDS]
    sw = [s for s in samples if s.kind == "swap"]
    swap_plans = [s for s in samples if s.kind == "swap_plan"]
    if len(it) < len(LINEAR_FEATURES):
        raise ValueError(f"calibration needs >= {len(LINEAR_FEATURES)} iteration samples, got {len(it)}")
    table = fit_decode_table(it, graph_sizes)
    rest = [s for s in it if s.kind not in DECODE_KINDS] if table is not None else it
    if len(rest) < len(LINEAR_FEATURES):
        table, rest = None, it
    tokens = [_sample_tokens(s) for s in rest]
    edges = populated_regimes(tokens, token_regimes)
    fits = []
    for lower, upper in zip([-1, *edges], [*edges, math.inf]):
        part = [s for s, n in zip(rest, tokens) if lower < n <= upper]
        X = np.array([s.features for s in part], dtype=np.float64)
        y = np.array([s.duration_s for s in part], dtype=np.float64)
        fits.append(dict(zip(LINEAR_FEATURES, (float(v) for v in _weighted_nnls(X, y)))))
    regimes = tuple(zip(edges, fits[1:]))
    c = fits[0]
    model = LinearCostModel(c, 1.0, 1.0, 1, table, regimes=regimes)
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
    swap_plan_fit = (0.0, 0.0)
    if len(swap_plans) >= 2 and bw > 0:
        # what a plan with swaps takes beyond its compute (the back-to-back fit) and its copies, launched behind
        # an iteration in flight (its copies wait for that one): an overhead plus a cost per copy
        base = np.array([model.compute_time(BatchShape(*_shape_args(s))) + lat * s.swap_copies + s.swap_bytes / bw
                         for s in swap_plans])
        t = np.array([s.duration_s for s in swap_plans])
        A = np.array([[1.0, s.swap_copies] for s in swap_plans])
        swap_plan_fit = tuple(float(x) for x in nnls(A, np.maximum(t - base, 0.0)))
        pd = base + A @ np.array(swap_plan_fit)
        mape["swap_plan"] = float((np.abs(pd - t) / t).mean())
    idle = [s for s in samples if s.kind == "idle_start" and s.async_s > 0]
    idle_start = 0.0
    if idle:
        # one constant (least squares, >= 0): the host's launch path, about the same for every shape
        t = np.array([s.duration_s for s in idle])
        back_to_back = np.array([s.async_s for s in idle])
        idle_start = float(nnls(np.ones((len(idle), 1)), t - back_to_back)[0])
        mape["idle_start"] = float((np.abs(back_to_back + idle_start - t) / t).mean())
    return Fit(c, lat, bw, mape, float(ape.max()), table, swap_plan_fit, idle_start, regimes, tuple(token_regimes))


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
    swap_plan = {} if not any(f.swap_plan) else {
        "swap_plan": {"overhead_s": f.swap_plan[0], "per_copy_s": f.swap_plan[1]}}
    idle = {"idle_start_s": f.idle_start_s} if f.idle_start_s else {}
    regimes = {"regimes": [{"above_tokens": above, "coefficients": c} for above, c in f.regimes]} if f.regimes else {}
    return {"kind": "linear", "coefficients": f.coefficients, **table, **swap_plan, **idle, **regimes}


def _fit_json(f: Fit, samples: list[Sample], timing: str) -> dict:
    return {"mape": f.mape, "max_ape": f.max_ape, "num_samples": len(samples), "timing": timing,
            **({"token_regimes": list(f.token_regimes)} if f.token_regimes else {})}


def _passes_text(samples: list[Sample]) -> str:
    passes = max((len(s.pass_durations) for s in samples), default=0)
    return f" each the median of {passes} passes" if passes > 1 else ""


def _regimes_text(f: Fit) -> str:
    if not f.token_regimes:
        return ""
    apart = ", ".join(str(a) for a, _ in f.regimes) or "none (too few samples past them)"
    return (f", token regimes at {', '.join(str(b) for b in f.token_regimes)} tokens asked for, iterations with "
            f"prefill fitted apart above: {apart}")


def _timing_text(timing: str) -> str:
    return ("wall time of synchronous iterations" if timing == "wall"
            else "each iteration launched while the one before it runs, for asynchronous scheduling")


def profile_json(name: str, executor, f: Fit, device_info: dict, samples: list[Sample], timing: str = "wall") -> dict:
    """A profile file ``gpu_backend.profiles.load_profile`` reads: shape, device, KV and the fitted model."""
    d = executor.dims
    cap = executor.capacity()
    shape = d.shape(executor.store.gpu.element_size())
    return {
        "name": name,
        "description": (f"Fitted by gpu_backend.calibration on {device_info['name']} on {device_info['date']}: "
                        f"TorchExecutor ({executor.dtype}, CUDA graphs for decode, "
                        f"split_gemms={'on' if executor.split_gemms else 'off'}, "
                        f"epilogue_gemms={'on' if executor.epilogue_gemms else 'off'}, "
                        f"fused_rope={'on' if executor.fused_rope else 'off'}, "
                        f"fine_decode_ranges={'on' if executor.fine_decode_ranges else 'off'}), {len(samples)} shapes"
                        f"{_passes_text(samples)}, {_timing_text(timing)}{_regimes_text(f)}, "
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
        "fit": _fit_json(f, samples, timing),
    }


def refit_profile_json(base: dict, samples: list[Sample], when: str, timing: str | None = None,
                       token_regimes: tuple[int, ...] | None = None) -> dict:
    """``base`` (a fitted profile's JSON) with its cost model fitted again on ``samples``: the same
    model, device and KV sizes, today's features. The decode table rounds up as ``base``'s did; the
    timing is ``timing``, or ``base``'s (wall for profiles that do not say); the token regimes are
    ``token_regimes``, or ``base``'s (none for profiles that do not say)."""
    table = base.get("cost_model", {}).get("decode_table")
    graph_sizes = tuple(table["num_seqs"]) if table and table.get("round_up") else None
    timing = timing or base.get("fit", {}).get("timing", "wall")
    if token_regimes is None:
        token_regimes = tuple(int(b) for b in base.get("fit", {}).get("token_regimes", ()))
    f = fit(timed_as(samples, timing), graph_sizes, token_regimes)
    out = json.loads(json.dumps(base))
    out["description"] = (f"{base.get('description', '')} Refitted on {when} from its {len(samples)} samples "
                          f"with features {', '.join(LINEAR_FEATURES)}, {_timing_text(timing)}{_regimes_text(f)}: "
                          f"in-sample MAPE {f.mape['all']:.1%} (max {f.max_ape:.1%}).").strip()
    out["cost_model"] = _cost_model_json(f)
    if f.copy_latency_s and f.host_bandwidth:
        out["device"]["copy_latency_s"] = f.copy_latency_s
        out["device"]["host_bandwidth"] = f.host_bandwidth
    out["device"]["iteration_overhead_s"] = max(f.coefficients["intercept"], 1e-6)
    out["fit"] = _fit_json(f, samples, timing)
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
    p.add_argument("--timing", choices=TIMINGS, default="wall",
                   help="fit each shape's wall time (synchronous scheduling) or its duration launched back to back "
                        "(asynchronous scheduling hides the host's work; default: %(default)s)")
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
    sweep.pipelined = args.timing == "async"
    sweep.regime_bounds = ex.token_regimes()
    graph_sizes = tuple(ex.graphs.sizes) if ex.graphs is not None else None
    if graph_sizes and not args.quick:
        sweep.decode_batches = graph_sizes      # one table row per captured decode graph
    samples = measure(ex, sweep)
    f = fit(timed_as(samples, args.timing), graph_sizes, ex.token_regimes())
    name = args.name or args.out.stem
    prof = profile_json(name, ex, f, info, samples, args.timing)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(prof, indent=2) + "\n")
    if args.samples is not None:
        args.samples.write_text(json.dumps([asdict(s) for s in samples], indent=1) + "\n")
    print(f"{name}: {len(samples)} shapes on {info['name']}; in-sample MAPE "
          + ", ".join(f"{k} {v:.1%}" for k, v in f.mape.items()) + f"; wrote {args.out}")
    print("coefficients: " + ", ".join(f"{k} {v:.3e}" for k, v in f.coefficients.items())
          + f"; swap latency {f.copy_latency_s * 1e6:.1f} us, bandwidth {f.host_bandwidth / 1e9:.1f} GB/s")
    if f.token_regimes:
        print(f"token regimes asked for at {list(f.token_regimes)}; fitted apart above {[a for a, _ in f.regimes]}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gpu_backend.calibration", description=__doc__.splitlines()[0])
    add_profile_args(p)
    return run_profile(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
