"""Iterations with prefill as one CUDA graph (``FullGraphs``) against the piecewise graphs, on the GPU, one run.

Part 1 (correctness): a fixed sequence of mixed iterations on ``llama-1b`` (random weights,
bf16) — fresh chunks, a chunked prefill, a prefix-cache hit, decodes beside chunks — runs
through the eager path (logits kept) and then, teacher-forced with the eager run's tokens,
through the whole-iteration graphs; every graph token must be the eager argmax, or tie it
within 1% of the logits' spread.

Part 2 (speed): for each model, iterations of several shapes (chunks x tokens over cached
tokens, beside decodes at a context), median wall and device time of ``execute`` with the
whole-iteration graphs and with the piecewise ones (past their largest bucket, 2,048 tokens, the eager
path), same executor, same run.

    python3 benchmarks/full_graphs_gpu.py [--models smollm2-135m,llama-1b,llama-8b] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gpu_backend.full_graphs import FULL_BUCKETS  # noqa: E402
from gpu_backend.models import load_weights  # noqa: E402
from gpu_backend.plan import BatchPlan, PrefillChunk  # noqa: E402
from gpu_backend.torch_executor import TorchExecutor  # noqa: E402

# (chunks, new tokens each, cached tokens before each chunk, decodes, decode context)
SHAPES = ((1, 64, 0, 0, 0), (1, 64, 2048, 8, 1024), (1, 256, 0, 32, 1024), (8, 64, 1024, 0, 0),
          (1, 52, 7888, 4, 4096), (1, 512, 0, 128, 1024), (1, 1920, 0, 128, 512), (1, 2048, 0, 0, 0),
          (16, 32, 512, 64, 2048), (1, 2048, 0, 1, 1024), (1, 4096, 0, 0, 0), (1, 2048, 2048, 64, 1024),
          (8, 512, 0, 0, 0), (1, 8192, 0, 0, 0))


def correctness(weights, rng) -> dict:
    vocab = weights.dims.vocab_size
    kw = dict(device="cuda", num_gpu_blocks=400, num_host_blocks=0, max_model_len=4096, max_num_seqs=16)
    eager = TorchExecutor(weights, keep_logits=True, **kw)
    graph = TorchExecutor(weights, **kw)
    prompts = {i: rng.integers(0, vocab, n).tolist() for i, n in enumerate((100, 200, 150, 700, 40))}
    prompts[2][:64] = prompts[0][:64]                       # seq 2 hits seq 0's first four blocks
    tables = {0: list(range(0, 8)), 1: list(range(10, 24)), 2: [0, 1, 2, 3] + list(range(30, 40)),
              3: list(range(50, 100)), 4: list(range(100, 110))}
    steps = [[(0, 0, 100, True), (1, 0, 64, False)], [(1, 64, 136, True), (2, 64, 86, True)],
             [(3, 0, 700, True)], [(4, 0, 40, True)], [], []]
    seqs = {i: [] for i in prompts}
    decoding: list[int] = []
    plans, want = [], []
    for step in steps:
        chunks = [PrefillChunk(i, s, n, tables[i], smp, prompts[i][s:s + n]) for i, s, n, smp in step if n]
        for i, s, n, _ in step:
            seqs[i] = prompts[i][:s + n]
        plan = BatchPlan(prefills=chunks, decode_seq_ids=list(decoding),
                         decode_positions=[len(seqs[i]) - 1 for i in decoding],
                         decode_block_tables=[tables[i] for i in decoding],
                         decode_input_ids=[seqs[i][-1] for i in decoding])
        r = eager.execute(plan)
        plans.append(plan)
        want.append({i: eager.last_logits[i][-1].float() for i in r.sampled_tokens})
        for i, tok in r.sampled_tokens.items():
            seqs[i].append(tok)
            if i not in decoding:
                decoding.append(i)
    agree = total = 0
    worst = 0.0
    used = []
    run = graph.full.run
    graph.full.run = lambda n, staged, k: used.append(n) or run(n, staged, k)
    for plan, logits in zip(plans, want):
        r = graph.execute(plan)
        for i, tok in r.sampled_tokens.items():
            lg = logits[i]
            total += 1
            agree += int(tok == int(lg.argmax()))
            worst = max(worst, float((lg.max() - lg[tok]) / (lg.max() - lg.min())))
    res = {"tokens": total, "equal_eager_argmax": agree / total, "worst_gap_over_spread": worst,
           "buckets": used, "iterations": len(plans)}
    print(f"   correctness: {agree}/{total} tokens equal the eager argmax, worst logit gap {worst:.2e} of the "
          f"spread; graph buckets {used}", flush=True)
    if worst > 1e-2:
        raise AssertionError(f"a whole-iteration graph token is {worst:.2e} of the logit spread below the eager max")
    return res


def build_plan(ex: TorchExecutor, shape, rng) -> BatchPlan:
    k, n, start, nd, ctx = shape
    bs, vocab = ex.block_size, ex.dims.vocab_size
    nb = -(-(start + n) // bs)
    chunks = [PrefillChunk(1000 + i, start, n, list(range(i * nb, (i + 1) * nb)), True,
                           rng.integers(0, vocab, n).tolist()) for i in range(k)]
    base = k * nb
    per = -(-(ctx + 1) // bs)
    tables = [list(range(base + i * per, base + (i + 1) * per)) for i in range(nd)]
    return BatchPlan(prefills=chunks, decode_seq_ids=list(range(nd)), decode_positions=[ctx] * nd,
                     decode_block_tables=tables, decode_input_ids=rng.integers(0, vocab, nd).tolist(),
                     decode_context_sum=nd * (ctx + 1))


def timed(ex: TorchExecutor, plan: BatchPlan, repeats: int = 15) -> tuple[float, float]:
    for _ in range(3):
        ex.execute(plan)
    rs = [ex.execute(plan) for _ in range(repeats)]
    return statistics.median(r.duration_s for r in rs), statistics.median(r.compute_s for r in rs)


def speed(model: str, rng) -> list[dict]:
    weights = load_weights(model, "cuda", torch.bfloat16, random_weights=True)
    t0 = time.perf_counter()
    # every bucket gets a whole-iteration graph here, whatever the default threshold, so each row compares
    # the two paths (a row past the threshold would otherwise time the piecewise path twice)
    ex = TorchExecutor(weights, device="cuda", num_gpu_blocks=12_000, num_host_blocks=0, max_model_len=8192,
                       full_graph_max_tokens=max(FULL_BUCKETS))
    print(f"   {model}: executor with graphs built in {time.perf_counter() - t0:.1f} s", flush=True)
    ex.store.gpu.normal_()
    full = ex.full
    rows = []
    for shape in SHAPES:
        plan = build_plan(ex, shape, rng)
        ex.full = full
        fw, fd = timed(ex, plan)
        ex.full = None
        pw, pd = timed(ex, plan)
        ex.full = full
        row = {"model": model, "shape": list(shape), "full_wall_s": fw, "full_device_s": fd,
               "piecewise_wall_s": pw, "piecewise_device_s": pd}
        rows.append(row)
        print(f"   {model} {shape}: full {fw * 1e3:.3f} / {fd * 1e3:.3f} ms, piecewise {pw * 1e3:.3f} / "
              f"{pd * 1e3:.3f} ms (wall / device): {pw / fw:.2f}x", flush=True)
    del ex, weights, full
    torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="smollm2-135m,llama-1b,llama-8b")
    p.add_argument("--skip-check", action="store_true")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    out = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d")}
    if not args.skip_check:
        out["correctness"] = correctness(load_weights("llama-1b", "cuda", torch.bfloat16, random_weights=True), rng)
        torch.cuda.empty_cache()
    rows = [r for m in args.models.split(",") for r in speed(m, rng)]
    out["speed"] = rows
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    print(f"\nwhole-iteration graphs against piecewise graphs on {out['device']}, {out['date']}: median "
          f"wall / device ms per iteration")
    print("| model | chunks x tokens over cached | decodes at context | full | piecewise | speed-up (wall) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        k, n, s, nd, ctx = r["shape"]
        print(f"| {r['model']} | {k} x {n} over {s} | {nd} at {ctx} | {r['full_wall_s'] * 1e3:.2f} / "
              f"{r['full_device_s'] * 1e3:.2f} | {r['piecewise_wall_s'] * 1e3:.2f} / {r['piecewise_device_s'] * 1e3:.2f}"
              f" | {r['piecewise_wall_s'] / r['full_wall_s']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
