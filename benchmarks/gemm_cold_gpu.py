"""The decode GEMMs as a decode step runs them: each layer's own weight, read cold, cuBLAS against split-K.

``gemm_gpu.py`` and ``LinearPlan.tune`` time one weight multiplied over and over, so a weight
that fits the H200's 50 MB L2 cache is read from it after the first call; inside a decode step
every layer's weight is read from memory once. Here a CUDA graph multiplies by each of the
model's ``num_layers`` distinct weights in turn, as the step does, and reports microseconds per
product for cuBLAS (``F.linear``) and for each split-K configuration of
``gpu_backend.skinny_gemm``, both with the second kernel that sums the split partials and
without it (the time left if the sum were folded into the next kernel, the residual add +
RMSNorm that follows every output and down projection).

    python3 benchmarks/gemm_cold_gpu.py [--model llama-1b] [--rows 256,128] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gemm_gpu import weight_shapes  # noqa: E402
from print_table import print_table  # noqa: E402

import triton  # noqa: E402

from gpu_backend.cuda_timing import graph_seconds  # noqa: E402
from gpu_backend.models import MODELS  # noqa: E402
from gpu_backend.skinny_gemm import GemmConfig, _split_k_kernel, _sum_splits_kernel  # noqa: E402

CONFIGS = tuple(GemmConfig(bm, bn, bk, s, w, st)
                for bm, bn, bk, w in ((64, 64, 128, 4), (64, 128, 64, 4), (128, 64, 64, 4), (128, 128, 64, 8),
                                      (128, 128, 128, 8), (128, 256, 64, 8), (256, 128, 64, 8), (64, 256, 64, 4))
                for st in (3, 4)
                for s in (1, 2, 4, 8))


def split_k_parts(x, w, cfg: GemmConfig, partials: torch.Tensor, out: torch.Tensor | None) -> None:
    """The split-K product into ``partials`` ([S, M, N] float32, or ``out`` itself when S == 1); summed into
    ``out`` when ``out`` is given and S > 1."""
    m, k = x.shape
    n = w.shape[0]
    s = cfg.split_k
    dest = out if s == 1 else partials
    grid = (triton.cdiv(m, cfg.block_m) * (n // cfg.block_n), s)
    _split_k_kernel[grid](x, w, dest, m, n, k // s, x.stride(0), w.stride(0), dest.stride(0) if s > 1 else 0, n,
                          BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
                          num_stages=cfg.num_stages)
    if s > 1 and out is not None:
        _sum_splits_kernel[(triton.cdiv(m * n, 1024),)](partials, out, m * n, SPLITS=s, BLOCK=1024)


def cold_seconds(fn_per_layer, layers: int) -> float:
    """Device seconds per product when a graph runs ``fn_per_layer(i)`` for every layer in turn."""
    return graph_seconds(lambda: [fn_per_layer(i) for i in range(layers)], calls=2, reps=7) / layers


def cold_bench_setup(script: str, doc: str, rows: str):
    """The command line the cold-weight GEMM benchmarks share, and their results' header:
    ``(args, results dict)``, or None (with a message) without a CUDA device."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--model", default="llama-1b")
    ap.add_argument("--rows", default=rows)
    ap.add_argument("--kinds", default="qkv,o,gate_up,down")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / f"{script}.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(f"{script}.py: needs a CUDA device", file=sys.stderr)
        return None
    return args, {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "model": args.model,
                  "layers": MODELS[args.model].dims.num_layers,
                  "sms": torch.cuda.get_device_properties(0).multi_processor_count, "results": []}


def cold_cases(args, layers: int):
    """For each weight kind in ``--kinds`` and row count in ``--rows``: ``(kind, n, k, weights, m, x)``, with
    one random bf16 weight per layer and a random [m, k] input; each kind's weights are freed after it."""
    shapes = weight_shapes(args.model)
    for kind in args.kinds.split(","):
        n, k = shapes[kind]
        ws = [torch.randn((n, k), dtype=torch.bfloat16, device="cuda") * 0.02 for _ in range(layers)]
        for m in (int(r) for r in args.rows.split(",")):
            yield kind, n, k, ws, m, torch.randn((m, k), dtype=torch.bfloat16, device="cuda")
            print(f"{kind} {m}: done", flush=True)
        ws.clear()
        torch.cuda.empty_cache()


def main() -> int:
    setup = cold_bench_setup("gemm_cold_gpu", __doc__, "256,128")
    if setup is None:
        return 2
    args, res = setup
    layers = res["layers"]
    table = []
    for kind, n, k, ws, m, x in cold_cases(args, layers):
        ref = F.linear(x, ws[0])
        outs = [torch.empty((m, n), dtype=torch.bfloat16, device="cuda") for _ in range(layers)]
        cublas = cold_seconds(lambda i: torch.matmul(x, ws[i].t(), out=outs[i]), layers)
        rows = []
        partials = torch.empty((8, m, n), dtype=torch.float32, device="cuda")
        for cfg in CONFIGS:
            if not cfg.fits(m, n, k):
                continue
            try:
                split_k_parts(x, ws[0], cfg, partials, outs[0])
                if not torch.allclose(outs[0].float(), ref.float(), rtol=2e-2, atol=2e-2):
                    rows.append({"config": cfg.label(), "error": "mismatch"})
                    continue
                summed = cold_seconds(lambda i: split_k_parts(x, ws[i], cfg, partials, outs[i]), layers)
                unsummed = (summed if cfg.split_k == 1 else
                            cold_seconds(lambda i: split_k_parts(x, ws[i], cfg, partials, None), layers))
            except Exception as e:  # a configuration the compiler refuses (shared memory): record it, go on
                rows.append({"config": cfg.label(), "error": f"{type(e).__name__}: {str(e)[:120]}"})
                continue
            rows.append({"config": cfg.label(), "summed_us": summed * 1e6, "unsummed_us": unsummed * 1e6})
        ok = [r for r in rows if "summed_us" in r]
        best = min(ok, key=lambda r: r["summed_us"])
        best_unsummed = min(ok, key=lambda r: r["unsummed_us"])
        res["results"].append({"kind": kind, "rows": m, "n": n, "k": k, "cublas_us": cublas * 1e6,
                               "configs": rows})
        table.append((kind, str(m), f"{n}x{k}", f"{cublas * 1e6:.1f}", best["config"], f"{best['summed_us']:.1f}",
                      f"{cublas * 1e6 / best['summed_us']:.2f}x", best_unsummed["config"],
                      f"{best_unsummed['unsummed_us']:.1f}", f"{cublas * 1e6 / best_unsummed['unsummed_us']:.2f}x"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(f"\n{res['device']} ({res['date']}), {args.model}: us per product, each of {layers} layers' weights in turn")
    print_table(("weight", "rows", "n x k", "cuBLAS", "best split-K", "us", "speed-up", "best without the sum", "us",
                 "speed-up"), table, False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
