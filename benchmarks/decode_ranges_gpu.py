"""Whole-iteration graphs with fine decode ranges against only 8 rows or all, on the GPU, one run.

Why: a whole-iteration graph fixes its decode kernel's key splits at capture, from the size of its
decode range. With two ranges per token bucket (8 rows and all), 9 or more decodes beside a prefill
chunk take the split count of a full batch, one split per sequence: at long contexts too few
programs to fill the chip (session 17: smollm2-135m, a chunk beside 64 decodes at 8,192 tokens,
8.05 ms against 3.84 ms for the decodes alone). ``fine_decode_ranges`` adds a range at every doubling
that buys more splits (``gpu_backend.full_graphs.decode_ranges``).

For each model, one executor, two sets of whole-iteration graphs captured over it (fine ranges and
coarse), then each shape (chunks x new tokens over cached tokens, beside decodes at a context) timed
with each set (median wall and device time of ``execute``), and the same decodes alone through the
decode graphs. Every bucket gets whole-iteration graphs here, whatever the default token threshold.

    python3 benchmarks/decode_ranges_gpu.py [--models smollm2-135m,llama-1b,llama-8b] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from full_graphs_gpu import build_plan, timed  # noqa: E402  (beside this script)
from gpu_backend.full_graphs import FULL_BUCKETS, FullGraphs  # noqa: E402
from gpu_backend.models import load_weights  # noqa: E402
from gpu_backend.plan import BatchPlan  # noqa: E402
from gpu_backend.torch_executor import TorchExecutor  # noqa: E402

# (chunks, new tokens each, cached tokens before each chunk, decodes, decode context)
SHAPES = ((1, 64, 0, 4, 4096), (1, 64, 0, 12, 4096), (1, 64, 0, 24, 4096), (1, 64, 0, 48, 4096),
          (1, 64, 0, 64, 7936), (1, 256, 2048, 32, 2048), (1, 512, 0, 96, 2048), (4, 128, 1024, 16, 7936),
          (1, 1024, 0, 200, 1024))
MAX_CONTEXT = 8192      # every named model's context length is 8,192 or more


def decodes_only(plan: BatchPlan) -> BatchPlan:
    return BatchPlan(decode_seq_ids=plan.decode_seq_ids, decode_positions=plan.decode_positions,
                     decode_block_tables=plan.decode_block_tables, decode_input_ids=plan.decode_input_ids,
                     decode_context_sum=plan.decode_context_sum)


def blocks_needed(block_size: int) -> int:
    most = 0
    for k, n, start, nd, ctx in SHAPES:
        most = max(most, k * -(-(start + n) // block_size) + nd * -(-(ctx + 1) // block_size))
    return most + 64


def measure(model: str, rng) -> list[dict]:
    weights = load_weights(model, "cuda", torch.bfloat16, random_weights=True)
    t0 = time.perf_counter()
    ex = TorchExecutor(weights, device="cuda", num_gpu_blocks=blocks_needed(16), num_host_blocks=0,
                       max_model_len=MAX_CONTEXT, full_graph_max_tokens=max(FULL_BUCKETS))
    fine = ex.full
    build_fine = time.perf_counter() - t0
    t0 = time.perf_counter()
    coarse = FullGraphs(ex.model, ex.tables, 256, tuple(sorted({n for n, _ in fine.keys})), fine_ranges=False)
    build_coarse = time.perf_counter() - t0
    print(f"   {model}: {len(fine.keys)} fine graphs with the executor in {build_fine:.1f} s, {len(coarse.keys)} "
          f"coarse in {build_coarse:.1f} s", flush=True)
    ex.store.gpu.normal_()
    rows = []
    for shape in SHAPES:
        plan = build_plan(ex, shape, rng)
        k, n, _, nd, _ = shape
        key_f, key_c = (g.bucket(k * n + nd, nd, k, k + nd) for g in (fine, coarse))
        ex.full = fine
        fw, fd = timed(ex, plan)
        ex.full = coarse
        cw, cd = timed(ex, plan)
        ex.full = fine
        ow, od = timed(ex, decodes_only(plan)) if nd else (0.0, 0.0)
        row = {"model": model, "shape": list(shape), "fine_key": key_f, "coarse_key": key_c,
               "fine_splits": fine.decode_splits[key_f] if key_f else None,
               "coarse_splits": coarse.decode_splits[key_c] if key_c else None,
               "fine_wall_s": fw, "fine_device_s": fd, "coarse_wall_s": cw, "coarse_device_s": cd,
               "decodes_alone_wall_s": ow, "decodes_alone_device_s": od}
        rows.append(row)
        print(f"   {model} {shape}: fine {key_f} {fd * 1e3:.3f} ms, coarse {key_c} {cd * 1e3:.3f} ms (device): "
              f"{cd / fd:.2f}x; decodes alone {od * 1e3:.3f} ms", flush=True)
    del ex, weights, fine, coarse
    torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="smollm2-135m,llama-1b,llama-8b")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    out = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d")}
    rows = [r for m in args.models.split(",") for r in measure(m, rng)]
    out["rows"] = rows
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    print(f"\nwhole-iteration graphs, fine decode ranges against coarse (8 rows or all), on {out['device']}, "
          f"{out['date']}: median device ms per iteration (key splits of the decode range)")
    print("| model | chunks x tokens over cached | decodes at context | fine | coarse | coarse / fine | "
          "decodes alone |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        k, n, s, nd, ctx = r["shape"]
        print(f"| {r['model']} | {k} x {n} over {s} | {nd} at {ctx} | {r['fine_device_s'] * 1e3:.2f} "
              f"({r['fine_splits']}) | {r['coarse_device_s'] * 1e3:.2f} ({r['coarse_splits']}) | "
              f"{r['coarse_device_s'] / r['fine_device_s']:.2f}x | {r['decodes_alone_device_s'] * 1e3:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
