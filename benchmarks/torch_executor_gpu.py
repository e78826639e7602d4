"""TorchExecutor on a CUDA GPU: bf16 correctness checks, speed against transformers, distance from the roofline.

One call does everything the issue asks to measure on the GPU, writes full results to
``$OUT/torch_executor_gpu.json`` (or ``--out``), and prints a short table last:

  ceilings     device-to-device copy bandwidth (bytes read + written) and the bf16 matmul rate
  (a) checks   bf16 on CUDA: the Triton decode kernel against the torch reference; the tiny
               model's logits against transformers' float32 forward (plain, chunked and
               prefix-hit prefill, mixed decode batches, after a swap round trip, whose KV must
               come back bit-identical); llama-1b logits (eager) and CUDA-graph tokens; a
               128-row llama-1b decode, as shipped and with ``split_gemms`` and ``epilogue_gemms``
               off, against float32
  (b) speed    the ~1B Llama shape in bf16, N requests x P prompt x O output tokens: the serving
               engine over our executor against transformers' ``generate`` (padded batch) and
               ``generate_batch`` (continuous batching), output tokens per second
  (c) roofline decode-iteration time at batch 256 against (weight + KV bytes) / copy bandwidth,
               for the executor as shipped and for each of ``--variants`` (``tune_gemms``,
               ``split_gemms``, ``epilogue_gemms`` on or off); prefill throughput against the
               measured matmul rate
  (d) swap     block-group copies against per-block copies and one bulk copy of the same bytes

Part (a) lives in ``torch_executor_gpu_checks.py``, shared helpers in ``torch_executor_gpu_common.py``.
It imports only ``gpu_backend`` and ``envs`` (no gymnasium, no stable-baselines3), so it runs
on the device machine's stock image: ``python benchmarks/torch_executor_gpu.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from gpu_backend.cuda_timing import cuda_seconds as cuda_time  # noqa: E402
from gpu_backend.cuda_timing import graph_seconds as graph_time  # noqa: E402
from gpu_backend.fused_ops import add_rms_norm, silu_mul  # noqa: E402
from gpu_backend.models import LlamaWeights, build_hf_model  # noqa: E402
from gpu_backend.paged_attention import decode_attention_triton  # noqa: E402
from gpu_backend.plan import BatchPlan, GroupMove, PrefillChunk  # noqa: E402
from gpu_backend.torch_executor import TorchExecutor  # noqa: E402
from torch_executor_gpu_checks import check_1b, check_decode_flags, check_tiny, check_triton  # noqa: E402
from torch_executor_gpu_common import RESULTS, log, measure_ceilings, section, toks  # noqa: E402

# ---------------------------------------------------------------------- ceilings
@section("ceilings")
def ceilings() -> dict:
    out = measure_ceilings()
    log(f"   device-to-device {out['d2d_bytes_per_s'] / 1e12:.2f} TB/s (read + write), bf16 matmul "
        f"{out['bf16_matmul_flops'] / 1e12:.0f} TFLOP/s")
    return out


# ---------------------------------------------------------------------- (a) checks
# ---------------------------------------------------------------------- (b) speed
def _fcfs():
    """First come, first served, defined here so the script needs no policy registry."""
    from envs.policy import Policy

    class FCFS(Policy):
        name = "fcfs"

        def order(self, view):
            return list(view.live)

        def ordered_requests(self, view):
            return list(view.live.values())

    return FCFS()


def workload(n, prompt, output, vocab=32000, seed=0):
    from envs.request import RequestSpec
    from envs.tokens import UniqueTokens

    return [RequestSpec(i, 0, 0.0, UniqueTokens(1000 + i + 100_000 * seed, prompt, vocab), output)
            for i in range(n)]


def serving_config(text: str) -> tuple[int, bool]:
    """``"16384:async"`` -> (16384, True); ``"8192:sync"`` -> (8192, False)."""
    budget, sep, mode = text.partition(":")
    if not sep or mode not in ("async", "sync") or not budget.isdigit() or int(budget) < 1:
        raise ValueError(f"serving configuration {text!r}: expected BUDGET:async or BUDGET:sync, e.g. 16384:async")
    return int(budget), mode == "async"


def serve_once(ex, n: int, p: int, o: int, budget: int, asynchronous: bool, capture: bool = False) -> dict:
    """One warm-up run of the workload (other tokens), then the timed run, on executor ``ex``. ``capture``
    keeps every request's output tokens (``"tokens"``; the bookkeeping slows the run a little)."""
    from envs.engine import ServingEngine
    from envs.engine_config import EngineConfig

    cfg = EngineConfig(max_num_batched_tokens=budget, max_num_seqs=n, batching="sarathi",
                       async_scheduling=asynchronous)
    warm = ServingEngine(ex, _fcfs(), cfg)   # the same shapes once (compilation, kernel choices), other tokens
    warm.load(workload(n, p, o, seed=7))
    warm.run()
    eng = ServingEngine(ex, _fcfs(), cfg)
    eng.load(workload(n, p, o))
    steps = []
    sampled: dict[int, list[int]] = {}
    inner_execute, inner_launch, inner_collect = ex.execute, ex.launch, ex.collect

    def keep(r):
        if capture:
            for sid, tok in r.sampled_tokens.items():
                sampled.setdefault(sid, []).append(tok)
        return r

    def execute(plan):
        r = keep(inner_execute(plan))
        steps.append((plan.num_prefill_tokens, len(plan.decode_seq_ids), r.duration_s, r.compute_s))
        return r

    def launch(plan):
        steps.append((plan.num_prefill_tokens, len(plan.decode_seq_ids), 0.0, 0.0))
        return inner_launch(plan)

    ex.execute, ex.launch, ex.collect = execute, launch, lambda h: keep(inner_collect(h))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    rec = eng.run()
    wall = time.perf_counter() - t0
    del ex.execute, ex.launch, ex.collect
    out_tokens = sum(r.num_output_tokens for r in rec.requests)
    res = {"budget": budget, "async_scheduling": asynchronous, "wall_s": wall, "output_tokens": out_tokens,
           "output_tok_s": out_tokens / wall, "iterations": eng.iteration, "busy_s": eng.counters.busy_time_s,
           "total_tok_s": (out_tokens + n * p) / wall,
           "prefill_iterations": sum(1 for s in steps if s[0]), "decode_iterations": sum(1 for s in steps if not s[0])}
    if capture:
        res["tokens"] = sampled
    if not asynchronous:     # per-phase host and device time (a launched iteration's are known only at collect)
        pre = [s for s in steps if s[0]]
        dec = [s for s in steps if not s[0]]
        res["phases"] = {"prefill_wall_s": sum(s[2] for s in pre), "prefill_device_s": sum(s[3] for s in pre),
                         "decode_wall_s": sum(s[2] for s in dec), "decode_device_s": sum(s[3] for s in dec)}
    log(f"   budget {budget}, {'async' if asynchronous else 'sync'} scheduling: {out_tokens} output tokens in "
        f"{wall:.3f} s: {out_tokens / wall:,.0f} tok/s ({eng.iteration} iterations, executor busy "
        f"{eng.counters.busy_time_s:.3f} s)" + (f"; {res['phases']}" if "phases" in res else ""))
    return res


@section("b1 ours: serving engine over TorchExecutor")
def speed_ours(weights, args) -> dict:
    """The serving engine over one executor, in each of ``args.serving`` configurations (the first is the
    headline); every configuration's runs alternate ``args.repeats`` times and each keeps its best."""
    n, p, o = args.requests, args.prompt, args.output
    blocks = n * (-(-(p + o) // 16)) + 64
    t0 = time.perf_counter()
    ex = TorchExecutor(weights, device="cuda", num_gpu_blocks=blocks, num_host_blocks=0,
                       max_model_len=4096, max_num_seqs=n)
    torch.cuda.synchronize()
    startup = time.perf_counter() - t0
    log(f"   executor built in {startup:.1f} s (kernels compiled, CUDA graphs captured: once, for every shape)")
    runs: dict[str, list[dict]] = {c: [] for c in args.serving}
    for _ in range(args.repeats):
        for c in args.serving:
            runs[c].append(serve_once(ex, n, p, o, *serving_config(c)))
    best = {c: max(rs, key=lambda r: r["output_tok_s"]) for c, rs in runs.items()}
    head = dict(best[args.serving[0]])
    head["config"] = args.serving[0]
    head["startup_s"] = startup
    head["configs"] = {c: {"best": best[c], "runs_tok_s": [r["output_tok_s"] for r in rs]} for c, rs in runs.items()}
    # asynchronous scheduling changes when the host plans, not what runs: at one budget, with every request
    # there from the start and KV for all, both modes run the same plans, so the tokens must be the same
    budget = serving_config(args.serving[0])[0]
    sync_run = serve_once(ex, n, p, o, budget, False, capture=True)["tokens"]
    async_run = serve_once(ex, n, p, o, budget, True, capture=True)["tokens"]
    same = sum(sync_run[i] == async_run.get(i) for i in sync_run)
    head["async_tokens_equal_sync"] = same / len(sync_run)
    log(f"   budget {budget}: requests whose tokens are the same with asynchronous and synchronous scheduling: "
        f"{same} of {len(sync_run)}")
    del ex
    return head


def timed_runs(fn, count, repeats: int) -> dict:
    """A baseline timed as ours is: ``repeats`` calls of ``fn`` (synchronised around each), the best kept, so
    the ratio does not favour us; ``count(result)`` gives each call's output tokens (a call whose requests
    fail counts only what it produced). Every run is kept: a baseline's first full-size call can be far
    slower than the next (session 16: ``generate`` 7.4 s, then 2.3 s)."""
    runs = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        runs.append({"wall_s": time.perf_counter() - t0, "output_tokens": count(out)})
    for r in runs:
        r["output_tok_s"] = r["output_tokens"] / r["wall_s"]
    best = max(runs, key=lambda r: r["output_tok_s"])
    log("   runs: " + ", ".join(f"{r['output_tokens']} tokens in {r['wall_s']:.2f} s" for r in runs)
        + f"; best {best['output_tok_s']:,.0f} tok/s, first {runs[0]['output_tok_s']:,.0f}")
    return {**best, "first_tok_s": runs[0]["output_tok_s"], "runs_tok_s": [r["output_tok_s"] for r in runs],
            "runs": runs}


@section("b2 transformers generate (padded batch)")
def speed_generate(hf, args) -> dict:
    n, p, o = args.requests, args.prompt, args.output
    ids = torch.tensor([toks(p, 5000 + i) for i in range(n)], device="cuda")
    mask = torch.ones_like(ids)
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        hf.generate(ids[:8, :64], attention_mask=mask[:8, :64], max_new_tokens=4, min_new_tokens=4, **kw)
        return timed_runs(lambda: hf.generate(ids, attention_mask=mask, max_new_tokens=o, min_new_tokens=o, **kw),
                          lambda out: (out.shape[1] - p) * n, args.repeats)


@section("b3 transformers generate_batch (continuous batching)")
def speed_generate_batch(hf, args) -> dict:
    from transformers import GenerationConfig

    n, p, o = args.requests, args.prompt, args.output
    inputs = [toks(p, 5000 + i) for i in range(n)]
    gc = GenerationConfig(max_new_tokens=o, min_new_tokens=o, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        try:
            hf.generate_batch(inputs=inputs[:8], generation_config=GenerationConfig(
                max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0), progress_bar=False)
        except (TypeError, ValueError, AttributeError) as e:   # some versions need an EOS id: keep the default
            log(f"   without an EOS id generate_batch says {type(e).__name__}: {e}; using the model's EOS")
            hf.generation_config.eos_token_id = hf.config.eos_token_id
            gc = GenerationConfig(max_new_tokens=o, do_sample=False, pad_token_id=0)
            hf.generate_batch(inputs=inputs[:8], generation_config=GenerationConfig(
                max_new_tokens=4, do_sample=False, pad_token_id=0), progress_bar=False)
        return timed_runs(lambda: hf.generate_batch(inputs=inputs, generation_config=gc, progress_bar=False),
                          lambda out: sum(len(r.generated_tokens) for r in out.values()), args.repeats)


def workload_floor(weights, ceil, args) -> dict:
    """The physical limit of the speed workload: every prefill FLOP at the matmul rate, then every
    decode step at (weight + KV bytes) / copy bandwidth. No executor can beat it."""
    n, p, o = args.requests, args.prompt, args.output
    shape = weights.dims.shape(2)
    prefill_flops = n * (2 * shape.linear_params_per_token * p + 2 * shape.lm_head_params
                         + shape.attention_flops_per_pair * p * (p + 1) / 2)
    t_prefill = prefill_flops / ceil["bf16_matmul_flops"]
    kv = weights.dims.kv_bytes_per_token(2)
    t_decode = sum((weights.num_bytes_read_per_step + n * (p + i + 1) * kv) / ceil["d2d_bytes_per_s"]
                   for i in range(1, o))
    return {"prefill_s": t_prefill, "decode_s": t_decode, "output_tok_s": n * o / (t_prefill + t_decode)}


# ---------------------------------------------------------------------- (c) roofline
VARIANT_FLAGS = ("tune_gemms", "split_gemms", "epilogue_gemms", "fused_rope")


def variant_flags(spec: str) -> dict:
    """``"split_gemms=0+tune_gemms"`` -> ``{"split_gemms": False, "tune_gemms": True}``."""
    flags = {}
    for part in spec.split("+"):
        name, _, value = part.partition("=")
        if name not in VARIANT_FLAGS or value not in ("", "0", "1"):
            raise ValueError(f"{part!r} in {spec!r}: expected NAME or NAME=0 with NAME one of {VARIANT_FLAGS}")
        flags[name] = value != "0"
    return flags


@section("c decode at batch 256 and prefill vs the ceilings")
def roofline(weights, ceil, args) -> dict:
    B, ctx = 256, args.prompt
    per_seq = -(-(ctx + 1) // 16)
    tables = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(B)]
    ids = toks(B, 77)
    plan = BatchPlan(decode_seq_ids=list(range(B)), decode_positions=[ctx] * B, decode_block_tables=tables,
                     decode_input_ids=ids)
    # the executor as shipped against each of --variants (tune_gemms: our split-K kernel where it timed faster
    # alone; split_gemms: K split into batched cuBLAS products, the partials summed by the fused kernel after
    # them; epilogue_gemms: gate/up applying SwiGLU itself); each variant's sampled tokens are compared with the
    # shipped one's, which runs last and stays for the stage timings below
    variants = {name: variant_flags(name) for name in args.variants}
    variants["shipped"] = {}
    timings, sampled = {}, {}
    choices = {}
    tuned_linear = None
    for name, kw in variants.items():
        ex = TorchExecutor(weights, device="cuda", num_gpu_blocks=B * per_seq + 16 * 80, num_host_blocks=0,
                           max_model_len=4096, max_num_seqs=B, **kw)
        torch.manual_seed(5)
        ex.store.gpu.normal_()                       # never time on zeros; the same KV for every variant
        for _ in range(5):
            ex.execute(plan)
        walls, dev = [], []
        for _ in range(40):
            r = ex.execute(plan)
            walls.append(r.duration_s)
            dev.append(r.compute_s)
        timings[name] = (statistics.median(walls), statistics.median(dev))
        sampled[name] = r.sampled_tokens
        if name == "tune_gemms":
            tuned_linear = ex.model.linear       # holds only the choices; used alone below
            choices = {f"{c.rows}x{c.n}x{c.k}": {"cublas_us": c.cublas_s * 1e6, "best_us": c.best_s * 1e6,
                                                 "config": c.config.label() if c.config else "cublas"}
                       for c in ex.model.linear.choices.values()}
            log("   GEMM tuning (rows x n x k: cuBLAS -> best): " + "; ".join(
                f"{k} {v['cublas_us']:.1f}->{v['best_us']:.1f} {v['config']}" for k, v in choices.items()
                if k.startswith("256x")))
        if name != "shipped":
            del ex
            torch.cuda.empty_cache()
    same = {name: sum(sampled[name][i] == sampled["shipped"][i] for i in range(B)) / B for name in variants}
    d = weights.dims
    kv_bytes = B * (ctx + 1) * d.kv_bytes_per_token(2)
    w_bytes = weights.num_bytes_read_per_step
    bw = ceil["d2d_bytes_per_s"]
    floor = (w_bytes + kv_bytes) / bw
    res = {"batch": B, "context": ctx + 1, "weight_bytes": w_bytes, "kv_bytes": kv_bytes, "roofline_s": floor,
           "decode_wall_s": timings["shipped"][0], "decode_device_s": timings["shipped"][1],
           "variants": {name: {"wall_s": timings[name][0], "device_s": timings[name][1],
                               "tokens_equal_to_shipped": same[name]} for name in args.variants},
           "gemm_choices": choices}
    for name in args.variants:
        log(f"   decode with {name}: wall {timings[name][0] * 1e3:.2f} ms, "
            f"device {timings[name][1] * 1e3:.2f} ms, "
            f"{same[name]:.1%} of tokens equal to the shipped executor's")
    res["wall_over_roofline"] = res["decode_wall_s"] / floor
    res["device_over_roofline"] = res["decode_device_s"] / floor
    log(f"   decode B={B} ctx={ctx + 1}: wall {res['decode_wall_s'] * 1e3:.2f} ms, device "
        f"{res['decode_device_s'] * 1e3:.2f} ms, roofline {floor * 1e3:.2f} ms "
        f"({(w_bytes + kv_bytes) / 1e9:.2f} GB at {bw / 1e12:.2f} TB/s)")
    # where a decode step goes: each stage alone, B rows, times the layer count (launch gaps included)
    x = torch.randn(B, d.hidden_size, dtype=torch.bfloat16, device="cuda")
    bt = torch.tensor(tables, device="cuda")
    cl = torch.full((B,), ctx + 1, device="cuda")
    q = torch.randn(B, d.num_heads, d.head_dim, dtype=torch.bfloat16, device="cuda")
    kc, vc = ex.store.layers[0]
    gu = torch.randn(B, 2 * d.intermediate_size, dtype=torch.bfloat16, device="cuda")
    act = torch.randn(B, d.intermediate_size, dtype=torch.bfloat16, device="cuda")
    attn_in = torch.randn(B, d.num_heads * d.head_dim, dtype=torch.bfloat16, device="cuda")
    residual = x.clone()        # add_rms_norm adds into it in place: no copy inside the timed stage
    stages = {
        "qkv_gemm": lambda: torch.nn.functional.linear(x, weights.qkv[0]),
        "o_gemm": lambda: torch.nn.functional.linear(attn_in, weights.o_proj[0]),
        "gate_up_gemm": lambda: torch.nn.functional.linear(x, weights.gate_up[0]),
        "down_gemm": lambda: torch.nn.functional.linear(act, weights.down[0]),
        "attention": lambda: decode_attention_triton(q, kc, vc, bt, cl, d.head_dim ** -0.5),
        "silu_mul": lambda: silu_mul(gu),
        "add_rms_norm": lambda: add_rms_norm(x, residual, weights.post_norm[0], d.rms_norm_eps),
    }
    breakdown = {name: graph_time(fn) * d.num_layers for name, fn in stages.items()}
    breakdown["lm_head_gemm"] = graph_time(lambda: torch.nn.functional.linear(x, weights.lm_head))
    breakdown["weights_floor"] = w_bytes / bw
    breakdown["attention_floor"] = kv_bytes / bw
    res["stage_seconds_x_layers"] = breakdown
    log("   per step (graph-timed stages x layers): "
        + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in breakdown.items()))
    # the decode GEMMs at M=B: F.linear on [N, K] weights, a matmul on pre-transposed [K, N] weights, cuBLASLt
    gemms = {}
    for name, (inp, wt) in {"qkv": (x, weights.qkv[0]), "o": (attn_in, weights.o_proj[0]),
                            "gate_up": (x, weights.gate_up[0]), "down": (act, weights.down[0])}.items():
        wt_t = wt.t().contiguous()
        row = {"linear": graph_time(lambda: torch.nn.functional.linear(inp, wt)),
               "mm_transposed": graph_time(lambda: torch.mm(inp, wt_t))}
        prev = torch.backends.cuda.preferred_blas_library()
        try:
            torch.backends.cuda.preferred_blas_library("cublaslt")
            row["linear_cublaslt"] = graph_time(lambda: torch.nn.functional.linear(inp, wt))
            row["mm_transposed_cublaslt"] = graph_time(lambda: torch.mm(inp, wt_t))
        finally:
            torch.backends.cuda.preferred_blas_library(prev)
        if tuned_linear is not None:
            row["tuned"] = graph_time(lambda: tuned_linear(inp, wt))
        row["floor"] = wt.numel() * 2 / bw
        gemms[name] = row
        del wt_t
    res["gemm_variants"] = gemms
    log("   GEMMs at M=256 (us): " + "; ".join(
        f"{k}: " + ", ".join(f"{v2} {t * 1e6:.1f}" for v2, t in row.items()) for k, row in gemms.items()))
    sweep = {}
    for tile in (32, 64, 128):
        for warps in (2, 4):
            for stages_n in (2, 3):
                cfg = {"tile_tokens": tile, "num_warps": warps, "num_stages": stages_n}
                o = torch.empty_like(q)
                try:
                    t = graph_time(lambda: decode_attention_triton(q, kc, vc, bt, cl, d.head_dim ** -0.5, o, cfg))
                except Exception as e:  # a configuration the compiler refuses (shared memory): skip it
                    sweep[f"{tile}/{warps}/{stages_n}"] = f"{type(e).__name__}"
                    continue
                sweep[f"{tile}/{warps}/{stages_n}"] = t * d.num_layers
    res["attention_sweep_tile_warps_stages"] = sweep
    timed = {k: v for k, v in sweep.items() if isinstance(v, float)}
    best = min(timed, key=timed.get)
    log(f"   attention configs (tile tokens/warps/stages, x layers): best {best} {timed[best] * 1e3:.3f} ms; "
        + ", ".join(f"{k} {v * 1e3:.3f}" for k, v in sorted(timed.items(), key=lambda kv: kv[1])[:6]))
    # prefill: 16 prompts of 512 tokens in one forward
    base = B * per_seq
    chunks = [PrefillChunk(1000 + i, 0, 512, list(range(base + 32 * i, base + 32 * i + 32)), True, toks(512, 900 + i))
              for i in range(16)]
    pplan = BatchPlan(prefills=chunks)
    for _ in range(3):
        ex.execute(pplan)
    pdev = statistics.median(ex.execute(pplan).compute_s for _ in range(10))
    T = 16 * 512
    shape = d.shape(2)
    flops = 2 * shape.linear_params_per_token * T + 2 * shape.lm_head_params * 16 \
        + shape.attention_flops_per_pair * 16 * (512 * 513 / 2)
    res.update({"prefill_tokens": T, "prefill_device_s": pdev, "prefill_flops_per_s": flops / pdev,
                "prefill_tok_s": T / pdev, "prefill_over_matmul_rate": (flops / pdev) / ceil["bf16_matmul_flops"]})
    log(f"   prefill {T} tokens: {pdev * 1e3:.1f} ms, {flops / pdev / 1e12:.0f} TFLOP/s "
        f"({res['prefill_over_matmul_rate']:.0%} of the matmul rate), {T / pdev:,.0f} tok/s")
    del ex
    return res


# ---------------------------------------------------------------------- (d) swap
@section("d swap: groups vs per-block vs bulk")
def swap_bench(weights) -> dict:
    nblk, group = 1024, 16
    ex = TorchExecutor(weights, device="cuda", num_gpu_blocks=nblk + 8, num_host_blocks=nblk,
                       max_model_len=4096, max_num_seqs=8, cuda_graphs=False)
    st = ex.store
    st.gpu.normal_()
    nbytes = nblk * st.bytes_per_block

    def moves(k):
        return [GroupMove(i, i, k) for i in range(0, nblk, k)]

    def bulk():
        st.host[:nblk].copy_(st.gpu[:nblk], non_blocking=True)

    res = {"bytes": nbytes, "bytes_per_block": st.bytes_per_block, "group_blocks": group}
    for _ in range(2):
        bulk()
    torch.cuda.synchronize()
    res["bulk_GBps"] = nbytes / statistics.median(cuda_time(bulk, 5)) / 1e9
    for name, k in (("group", group), ("per_block", 1)):
        ms = moves(k)
        times = []
        for _ in range(5):
            t = st.start_swaps(ms, [])
            torch.cuda.synchronize()
            st.finish_swaps(t)
            times.append(t.seconds)
        res[f"{name}_GBps"] = nbytes / statistics.median(times) / 1e9
    res["group_over_bulk"] = res["group_GBps"] / res["bulk_GBps"]
    log(f"   GPU->host {nbytes / 2**20:.0f} MiB: bulk {res['bulk_GBps']:.1f} GB/s, groups of {group} blocks "
        f"({group * st.bytes_per_block / 2**20:.0f} MiB) {res['group_GBps']:.1f} GB/s, per block "
        f"({st.bytes_per_block / 2**10:.0f} KiB) {res['per_block_GBps']:.1f} GB/s")
    del ex
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--output", type=int, default=128)
    ap.add_argument("--serving", default="16384:async,8192:sync",
                    help="part (b): comma-separated engine configurations BUDGET:async|sync (max_num_batched_tokens, "
                         "asynchronous scheduling); the first is the headline, the others are timed beside it. "
                         "16384: vLLM's default for offline use on GPUs of 70 GB or more")
    ap.add_argument("--repeats", type=int, default=2,
                    help="part (b): timed runs per configuration of ours and of generate (best kept)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: a,b,b2,b3,c,d")
    ap.add_argument("--variants", default="split_gemms=0+epilogue_gemms=0,epilogue_gemms=0,split_gemms=0",
                    help="part (c): comma-separated TorchExecutor flag settings to time against the executor as "
                         "shipped: NAME (on), NAME=0 (off), '+'-joined for several")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "torch_executor_gpu.json")
    args = ap.parse_args()
    args.variants = [v for v in args.variants.split(",") if v]
    args.serving = [c for c in args.serving.split(",") if c]
    for c in args.serving:
        try:
            serving_config(c)
        except ValueError as e:
            ap.error(f"--serving: {e}")
    if not args.serving or args.repeats < 1:
        ap.error(f"--serving needs a configuration and --repeats must be >= 1, got {args.serving!r}, {args.repeats}")
    for v in args.variants:
        try:
            variant_flags(v)
        except ValueError as e:
            ap.error(f"--variants: {e}")
    if not torch.cuda.is_available():
        print("torch_executor_gpu: needs a CUDA device", file=sys.stderr)
        return 2
    skip = set(filter(None, args.skip.split(",")))
    import transformers
    try:
        import triton
        tv = triton.__version__
    except ImportError:
        tv = None
    RESULTS["env"] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "transformers": transformers.__version__, "triton": tv,
                      "date": time.strftime("%Y-%m-%d"), "args": {k: str(v) for k, v in vars(args).items()}}
    log(json.dumps(RESULTS["env"]))
    ceil = ceilings()
    RESULTS["ceilings"] = ceil
    if "a" not in skip:
        RESULTS["a_triton"] = check_triton()
        RESULTS["a_tiny"] = check_tiny()
        RESULTS["a_1b"] = check_1b()
        RESULTS["a_decode_default"] = check_decode_flags()
        RESULTS["a_decode_plain_gemms"] = check_decode_flags(split_gemms=False, epilogue_gemms=False)
    hf = build_hf_model("llama-1b", torch.bfloat16, "cuda", seed=3)
    weights = LlamaWeights.from_hf(hf, "llama-1b")   # shares the HF model's tensors (fused ones are copies)
    hf.generation_config.eos_token_id = None           # every request generates exactly --output tokens
    if "b" not in skip:
        RESULTS["b_ours"] = speed_ours(weights, args)
        if ceil:
            RESULTS["b_floor"] = workload_floor(weights, ceil, args)
            log(f"   physical limit of this workload: {RESULTS['b_floor']['output_tok_s']:,.0f} output tok/s "
                f"(prefill {RESULTS['b_floor']['prefill_s']:.2f} s at the matmul rate, decode "
                f"{RESULTS['b_floor']['decode_s']:.2f} s at the copy bandwidth)")
    if "c" not in skip and ceil:
        RESULTS["c_roofline"] = roofline(weights, ceil, args)
    if "d" not in skip:
        RESULTS["d_swap"] = swap_bench(weights)
    del weights
    torch.cuda.empty_cache()
    if "b" not in skip and "b2" not in skip:
        RESULTS["b_generate"] = speed_generate(hf, args)
    if "b" not in skip and "b3" not in skip:
        RESULTS["b_generate_batch"] = speed_generate_batch(hf, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(RESULTS, indent=2, default=str))
    table(RESULTS, args)
    return 1 if RESULTS["errors"] else 0


def table(r: dict, args) -> None:
    rows = []
    env = r.get("env", {})
    c = r.get("ceilings") or {}
    if c:
        rows.append(("copy bandwidth (D2D, read+write)", f"{c['d2d_bytes_per_s'] / 1e12:.2f} TB/s", ""))
        rows.append(("bf16 matmul rate", f"{c['bf16_matmul_flops'] / 1e12:.0f} TFLOP/s", ""))
    for key, label in (("a_triton", "Triton decode kernel rel. err (max)"),):
        if r.get(key):
            rows.append((label, f"{max(r[key].values()):.1e}", "< 1e-2"))
    if r.get("a_tiny"):
        t = r["a_tiny"]
        worst = max(v for v in t.values() if isinstance(v, float))
        rows.append(("tiny bf16 logits vs fp32 HF (max rel. err)", f"{worst:.1e}", "< 2e-2"))
        rows.append(("swap round trip bit-identical", str(t["swap_bit_identical"]), "True"))
    if r.get("a_1b"):
        rows.append(("llama-1b bf16 logits vs fp32 HF", f"{r['a_1b']['eager_logits_rel_err']:.1e}",
                     f"HF bf16: {r['a_1b']['hf_bf16_logits_rel_err']:.1e}"))
        rows.append(("llama-1b graph tokens == eager (teacher-forced)",
                     f"{r['a_1b']['graph_tokens_equal_eager']:.1%}", ""))
    ours = (r.get("b_ours") or {}).get("output_tok_s")
    wl = f"{args.requests}x{args.prompt}+{args.output}"
    if ours:
        fl = (r.get("b_floor") or {}).get("output_tok_s")
        head = r["b_ours"]
        rows.append((f"ours: serving engine, llama-1b bf16, {wl}, {head.get('config', '')}", f"{ours:,.0f} tok/s",
                     f"{ours / fl:.0%} of the physical limit {fl:,.0f}" if fl else ""))
        for c, v in head.get("configs", {}).items():
            if c != head.get("config"):
                other = v["best"]["output_tok_s"]
                rows.append((f"ours with {c}", f"{other:,.0f} tok/s", f"headline {ours / other:.3f}x of it"))
        if "async_tokens_equal_sync" in head:
            rows.append(("requests with the same tokens, async vs sync scheduling", f"{head['async_tokens_equal_sync']:.1%}",
                         "100%"))
    for key, label, target in (("b_generate", "transformers generate (padded)", 10),
                               ("b_generate_batch", "transformers generate_batch", 25)):
        base = r.get(key) or {}
        v, first = base.get("output_tok_s"), base.get("first_tok_s")
        if v and first:     # best runs against best runs, first full-size runs against first full-size runs
            ours_first = r["b_ours"]["configs"][r["b_ours"]["config"]]["runs_tok_s"][0] if ours else None
            rows.append((f"{label}: best / first run", f"{v:,.0f} / {first:,.0f} tok/s",
                         f"ours {ours / v:.1f}x / {ours_first / first:.1f}x (target >= {target}x)" if ours else ""))
    rf = r.get("c_roofline")
    if rf:
        rows.append((f"decode B=256 ctx {rf['context']}: wall / device", f"{rf['decode_wall_s'] * 1e3:.2f} / "
                     f"{rf['decode_device_s'] * 1e3:.2f} ms", f"roofline {rf['roofline_s'] * 1e3:.2f} ms"))
        rows.append(("decode over roofline: wall / device", f"{rf['wall_over_roofline']:.2f}x / "
                     f"{rf['device_over_roofline']:.2f}x", "target <= 1.5x"))
        for name, v in rf.get("variants", {}).items():
            rows.append((f"decode with {name}: wall / device",
                         f"{v['wall_s'] * 1e3:.2f} / {v['device_s'] * 1e3:.2f} ms",
                         f"{rf['decode_device_s'] / v['device_s']:.3f}x the speed, {v['device_s'] / rf['roofline_s']:.2f}x "
                         f"roofline, tokens {v['tokens_equal_to_shipped']:.0%}"))
        rows.append(("prefill 16x512 tokens", f"{rf['prefill_flops_per_s'] / 1e12:.0f} TFLOP/s",
                     f"{rf['prefill_over_matmul_rate']:.0%} of matmul rate"))
    sw = r.get("d_swap")
    if sw:
        rows.append(("swap GPU->host: groups / per-block / bulk", f"{sw['group_GBps']:.1f} / {sw['per_block_GBps']:.1f}"
                     f" / {sw['bulk_GBps']:.1f} GB/s", f"groups {sw['group_over_bulk']:.0%} of bulk (target >= 70%)"))
    for name in r.get("errors", {}):
        rows.append((f"FAILED: {name}", "see json", ""))
    w = [max(len(x[i]) for x in rows) for i in range(3)] if rows else [0, 0, 0]
    print(f"\nTorchExecutor on {env.get('device')} ({env.get('date')}), torch {env.get('torch')}, "
          f"transformers {env.get('transformers')}")
    for row in rows:
        print("  ".join(c.ljust(wi) for c, wi in zip(row, w)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
