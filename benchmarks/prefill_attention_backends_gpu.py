"""Fresh-chunk prefill attention by SDPA backend: flash (grouped-query heads), cuDNN, memory-efficient.

Why: after session 15 the matrix products of a prefill iteration run at 98% of the matmul rate and
flash attention is the largest piece left that is not bound by memory (about 130 TFLOP/s on
``llama-1b``'s 512-token causal chunks). cuDNN's attention is faster on Hopper, but it builds an
execution plan for every new shape, and a serving run meets new chunk shapes all the time. This
times both for the shapes a serving run feeds ``causal_attention`` (``g`` chunks of ``n`` tokens
from position 0), with each backend's first call beside its steady time, so the choice can weigh
the plan against what it saves. Outputs are compared against flash's.

    python3 benchmarks/prefill_attention_backends_gpu.py [--models llama-1b,llama-8b]
        [--shapes 1x512,16x512,32x512,4x2048,1x8192] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from print_table import print_table  # noqa: E402

from gpu_backend.cuda_timing import graph_seconds  # noqa: E402
from gpu_backend.models import MODELS  # noqa: E402

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def attend(backend: str, q, k, v, scale: float, gqa: bool):
    """One causal call on ``backend``; K and V are repeated to the query heads where ``gqa`` is False."""
    if not gqa and q.shape[1] != k.shape[1]:
        group = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    with sdpa_kernel([BACKENDS[backend]]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)


def first_call_s(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="llama-1b,llama-8b")
    p.add_argument("--shapes", default="1x512,16x512,32x512,4x2048,1x8192,8x1024,3x700")
    p.add_argument("--out", type=Path, default=Path("prefill_attention_backends.json"))
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("prefill_attention_backends_gpu: needs a CUDA device", file=sys.stderr)
        return 2
    res = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
           "cudnn": torch.backends.cudnn.version(), "rows": []}
    table = []
    for model in args.models.split(","):
        shape = MODELS[model].dims
        heads, kv_heads, hd = shape.num_heads, shape.num_kv_heads, shape.head_dim
        scale = hd ** -0.5
        for spec in args.shapes.split(","):
            g, n = (int(x) for x in spec.split("x"))
            gen = torch.Generator(device="cuda").manual_seed(g * 7919 + n)
            q = torch.randn(g, heads, n, hd, device="cuda", dtype=torch.bfloat16, generator=gen)
            k = torch.randn(g, kv_heads, n, hd, device="cuda", dtype=torch.bfloat16, generator=gen)
            v = torch.randn(g, kv_heads, n, hd, device="cuda", dtype=torch.bfloat16, generator=gen)
            flops = 4 * g * heads * hd * n * (n + 1) / 2
            ref = attend("flash", q, k, v, scale, True).float()
            row = {"model": model, "g": g, "n": n, "flops": flops, "backends": {}}
            cells = [model, f"{g}x{n}"]
            for name, gqa in (("flash", True), ("cudnn", True), ("cudnn", False), ("efficient", False)):
                label = f"{name}{'' if gqa else ' (repeat)'}"
                fn = lambda: attend(name, q, k, v, scale, gqa)  # noqa: E731
                try:
                    first = first_call_s(fn)
                    err = float((fn().float() - ref).abs().max() / ref.abs().max())
                    sec = graph_seconds(fn, calls=10, reps=5)
                except RuntimeError as e:     # a backend that refuses the shape or the GQA layout
                    print(f"   {model} {g}x{n} {label}: {type(e).__name__}: {str(e).splitlines()[0][:160]}", flush=True)
                    row["backends"][label] = {"error": str(e)[:400]}
                    cells.append("refused")
                    continue
                row["backends"][label] = {"us": sec * 1e6, "tflops": flops / sec / 1e12, "first_call_ms": first * 1e3,
                                          "max_rel_err": err}
                print(f"   {model} {g}x{n} {label}: {sec * 1e6:.1f} us ({flops / sec / 1e12:.0f} TFLOP/s), "
                      f"first call {first * 1e3:.1f} ms, err {err:.1e}", flush=True)
                cells.append(f"{sec * 1e6:.0f} ({flops / sec / 1e12:.0f}) / {first * 1e3:.1f}")
            res["rows"].append(row)
            table.append(cells)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(f"\n{res['device']} {res['date']} torch {res['torch']} cuDNN {res['cudnn']}: causal prefill attention, "
          f"one layer; cell: us (TFLOP/s) / first call ms")
    print_table(("model", "g x n", "flash (GQA)", "cuDNN (GQA)", "cuDNN (repeat)", "efficient (repeat)"), table, False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
