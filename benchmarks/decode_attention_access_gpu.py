"""Where a decode step's attention loses to a pure read, and what RoPE inside the attention kernel saves.

Session 12 found the decode attention of a ``llama-1b`` step at batch 256 reading its KV at 93% of
a flat streaming read (BENCHMARKS.md). This separates the causes, each timed inside a CUDA graph of
16 launches (one per layer, the gaps between dependent launches included), all in one run:

- the attention as shipped, with its programs ordered sequence-major (the default: neighbouring
  programs read different sequences) and head-major (``heads_fastest``: neighbouring programs read
  the neighbouring heads of the same cache blocks), over block tables that are contiguous per
  sequence and over scattered ones;
- a kernel that walks the same paged blocks on the same grid and only reads them: the floor of
  this access pattern, without the softmax and the products;
- a flat streaming read of the same number of bytes;
- the RoPE + KV-write kernel followed by the attention (two launches a layer, as shipped before
  session 14) against ``rope_decode_attention`` (one launch);
- a sweep of the head-major launch configurations (tile tokens / warps / pipeline stages);
- over several decode shapes, the RoPE kernel + attention against the fused kernel, each as shipped and at
  its best launch configuration: where the fused kernel should run.

    python3 benchmarks/decode_attention_access_gpu.py [--model llama-1b] [--batch 256] [--context 513]
        [--parts access,shapes] [--shapes 32x2048,...,256x1025]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from print_table import print_table  # noqa: E402
from small_kernels_gpu import _read_kernel, per_call_us  # noqa: E402  (16 launches a graph, one per layer)
from torch_executor_gpu_common import measure_ceilings  # noqa: E402

from gpu_backend.fused_ops import rope_and_cache  # noqa: E402
from gpu_backend.models import MODELS  # noqa: E402
from gpu_backend.paged_attention import (decode_attention_triton, decode_launch, load_kv_tile,  # noqa: E402
                                         sequence_and_kv_head)
from gpu_backend.rope_decode_attention import fused_applies, rope_decode_attention  # noqa: E402

BLOCK = 16
BLOCK_SIZE = tl.constexpr(BLOCK)


@triton.jit
def _paged_read_kernel(K, V, BT, OUT, ctx, stride_kb, stride_kh, stride_ks, stride_btb,
                       HEAD_DIM: tl.constexpr, TILE: tl.constexpr, HEADS_FASTEST: tl.constexpr):
    """The attention's own walk over the paged blocks (same grid, same tile loader), summing what it reads."""
    b, kvh = sequence_and_kv_head(HEADS_FASTEST)
    offs_t = tl.arange(0, TILE)
    offs_d = tl.arange(0, HEAD_DIM)
    acc = tl.zeros([TILE, HEAD_DIM], tl.float32)
    for start in range(0, ctx, TILE):
        tok = start + offs_t
        k, v = load_kv_tile(K, V, BT + b * stride_btb, tok, tok < ctx, kvh * stride_kh, stride_kb, stride_ks, offs_d,
                            BLOCK_SIZE)
        acc += k.to(tl.float32) + v.to(tl.float32)
    tl.store(OUT + b * tl.num_programs(0 if HEADS_FASTEST else 1) + kvh, tl.sum(tl.sum(acc, 1), 0))


def setup(d, B: int, ctx: int, scattered: bool) -> dict:
    per_seq = -(-ctx // BLOCK)
    g = torch.Generator().manual_seed(0)
    kc = torch.randn(B * per_seq + 1, d.num_kv_heads, BLOCK, d.head_dim, dtype=torch.bfloat16, device="cuda")
    vc = torch.randn_like(kc)
    order = torch.randperm(B * per_seq, generator=g) if scattered else torch.arange(B * per_seq)
    tables = order.view(B, per_seq).cuda()
    lens = torch.full((B,), ctx, dtype=torch.long, device="cuda")
    pos = lens - 1
    blocks = tables.gather(1, (pos // BLOCK)[:, None]).squeeze(1)
    width = (d.num_heads + 2 * d.num_kv_heads) * d.head_dim
    qkv = torch.randn(B, width, dtype=torch.bfloat16, device="cuda")
    angles = torch.arange(4096, dtype=torch.float32, device="cuda")[:, None] * torch.rand(d.head_dim // 2,
                                                                                            device="cuda")
    emb = torch.cat((angles, angles), -1)
    return {"kc": kc, "vc": vc, "tables": tables, "lens": lens, "pos": pos, "blocks": blocks, "slots": pos % BLOCK,
            "qkv": qkv, "cos": emb.cos().bfloat16(), "sin": emb.sin().bfloat16(),
            "q": torch.randn(B, d.num_heads, d.head_dim, dtype=torch.bfloat16, device="cuda"),
            "out": torch.empty(B, d.num_heads, d.head_dim, dtype=torch.bfloat16, device="cuda")}


def sweep_shapes(d, shapes: list[tuple[int, int]], scale: float) -> list[dict]:
    """Per decode shape: the RoPE kernel + attention against the fused kernel, each as shipped and at its best
    launch configuration (tile tokens / warps / stages; the context splits as shipped)."""
    configs = [{"tile_tokens": t, "num_warps": w, "num_stages": st} for t in (16, 32, 64) for w in (1, 2, 4)
               for st in (2, 3)]
    out = []
    for B, ctx in shapes:
        s = setup(d, B, ctx, scattered=False)

        def unfused(cfg):
            q, _, _ = rope_and_cache(s["qkv"], s["cos"], s["sin"], s["pos"], s["blocks"], s["slots"], s["kc"], s["vc"],
                                     d.num_heads, d.num_kv_heads, d.head_dim, want_kv=False)
            decode_attention_triton(q, s["kc"], s["vc"], s["tables"], s["lens"], scale, s["out"], cfg)

        def fused(cfg):
            rope_decode_attention(s["qkv"], s["cos"], s["sin"], s["pos"], s["blocks"], s["slots"], s["kc"], s["vc"],
                                  s["tables"], s["lens"], scale, d.num_heads, d.num_kv_heads, d.head_dim, s["out"],
                                  cfg)

        row = {"batch": B, "context": ctx, "fused_applies": fused_applies(B, d.num_kv_heads, d.head_dim,
                                                                          torch.device("cuda"))}
        for name, fn in (("unfused", unfused), ("fused", fused)):
            row[f"{name}_shipped_us"] = per_call_us(lambda: fn(None))
            best = None
            for cfg in configs:
                try:
                    us = per_call_us(lambda: fn(cfg))
                except triton.runtime.errors.OutOfResources:
                    continue
                if best is None or us < best[0]:
                    best = (us, cfg)
            row[f"{name}_best_us"] = best[0]
            row[f"{name}_best"] = "{tile_tokens}/{num_warps}/{num_stages}".format(**best[1])
        print(f"   {B} x {ctx}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in row.items()), flush=True)
        out.append(row)
        s.clear()
        torch.cuda.empty_cache()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-1b", choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--context", type=int, default=513)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "decode_attention_access_gpu.json")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--parts", default="access,shapes", help="comma-separated: access (one shape, every variant), "
                    "shapes (fused against unfused over --shapes)")
    ap.add_argument("--shapes", default="32x2048,64x1025,128x513,160x513,192x513,256x513,256x1025",
                    help="BATCHxCONTEXT,... for the shapes part")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    try:
        shapes = [tuple(int(x) for x in sh.split("x")) for sh in args.shapes.split(",") if sh]
    except ValueError:
        ap.error(f"--shapes {args.shapes!r}: expected BATCHxCONTEXT,... such as 256x513")
    if not torch.cuda.is_available():
        print("decode_attention_access_gpu: needs a CUDA device", file=sys.stderr)
        return 2
    d = MODELS[args.model].dims
    B, ctx = args.batch, args.context
    scale = d.head_dim ** -0.5
    copy_bw = measure_ceilings()["d2d_bytes_per_s"]
    kv_bytes = 2 * B * ctx * d.num_kv_heads * d.head_dim * 2
    shipped = decode_launch(B * d.num_kv_heads, d.head_dim, torch.device("cuda"))
    rows, sweep = [], []

    def add(what: str, tables: str, us: float) -> None:
        rows.append({"what": what, "tables": tables, "us": us, "TBps": kv_bytes / us / 1e6,
                     "of_copy_bw": kv_bytes / us / 1e6 / (copy_bw / 1e12)})
        print(f"   {what} [{tables}]: {us:.2f} us", flush=True)

    for scattered in ((False, True) if "access" in parts else ()):
        name = "scattered" if scattered else "contiguous"
        s = setup(d, B, ctx, scattered)
        for hf in (False, True):
            cfg = {**shipped, "heads_fastest": hf}
            order = "head-major" if hf else "sequence-major"
            add(f"attention, {order}", name, per_call_us(lambda: decode_attention_triton(
                s["q"], s["kc"], s["vc"], s["tables"], s["lens"], scale, s["out"], cfg)))
            part = torch.empty(B * d.num_kv_heads, dtype=torch.float32, device="cuda")
            grid = (d.num_kv_heads, B) if hf else (B, d.num_kv_heads)
            add(f"paged read only, {order}", name, per_call_us(lambda: _paged_read_kernel[grid](
                s["kc"], s["vc"], s["tables"], part, ctx, s["kc"].stride(0), s["kc"].stride(1), s["kc"].stride(2),
                s["tables"].stride(0), HEAD_DIM=d.head_dim, TILE=shipped["tile_tokens"], HEADS_FASTEST=hf,
                num_warps=shipped["num_warps"], num_stages=shipped["num_stages"])))

            def unfused(cfg=cfg):
                q, _, _ = rope_and_cache(s["qkv"], s["cos"], s["sin"], s["pos"], s["blocks"], s["slots"], s["kc"],
                                         s["vc"], d.num_heads, d.num_kv_heads, d.head_dim, want_kv=False)
                decode_attention_triton(q, s["kc"], s["vc"], s["tables"], s["lens"], scale, s["out"], cfg)

            add(f"RoPE kernel + attention, {order}", name, per_call_us(unfused))
            add(f"rope_decode_attention, {order}", name, per_call_us(lambda: rope_decode_attention(
                s["qkv"], s["cos"], s["sin"], s["pos"], s["blocks"], s["slots"], s["kc"], s["vc"], s["tables"],
                s["lens"], scale, d.num_heads, d.num_kv_heads, d.head_dim, s["out"], cfg)))
        if not scattered:
            flat = torch.cat([s["kc"].flatten(), s["vc"].flatten()])[: kv_bytes // 2]
            part = torch.empty(1 << 16, dtype=torch.float32, device="cuda")
            programs = triton.cdiv(flat.numel(), 4096 * 8)
            add("flat streaming read", "-", per_call_us(lambda: _read_kernel[(programs,)](
                flat, part, flat.numel(), BLOCK=4096, ITERS=8, num_warps=8)))
            del flat
            sweep = []
            for tile in (16, 32, 64):
                for warps in (1, 2, 4):
                    for stages in (2, 3, 4):
                        cfg = {"tile_tokens": tile, "num_warps": warps, "num_stages": stages, "num_splits": 1,
                               "heads_fastest": True}
                        try:
                            us = per_call_us(lambda: rope_decode_attention(
                                s["qkv"], s["cos"], s["sin"], s["pos"], s["blocks"], s["slots"], s["kc"], s["vc"],
                                s["tables"], s["lens"], scale, d.num_heads, d.num_kv_heads, d.head_dim, s["out"],
                                cfg))
                        except triton.runtime.errors.OutOfResources as e:
                            print(f"   {cfg}: {e}", flush=True)
                            continue
                        sweep.append({"config": f"{tile}/{warps}/{stages}", "us": us})
        s.clear()
        torch.cuda.empty_cache()
    by_shape = sweep_shapes(d, shapes, scale) if "shapes" in parts else []
    res = {"device": torch.cuda.get_device_name(), "model": args.model, "batch": B, "context": ctx,
           "copy_TBps": copy_bw / 1e12, "kv_bytes": kv_bytes, "shipped_config": shipped, "rows": rows,
           "fused_head_major_sweep": sorted(sweep, key=lambda r: r["us"]), "shapes": by_shape}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(f"\n{res['device']}: copy bandwidth {copy_bw / 1e12:.2f} TB/s; {args.model}, {B} x {ctx} tokens, "
          f"{kv_bytes / 1e6:.0f} MB of KV a layer; launch config {shipped}")
    if rows:
        print_table(("what", "block tables", "us per layer", "TB/s", "of the copy bandwidth"),
                    [(r["what"], r["tables"], f"{r['us']:.2f}", f"{r['TBps']:.2f}", f"{r['of_copy_bw']:.1%}")
                     for r in rows], args.markdown)
        print("fused, head-major, fastest configurations (tile/warps/stages): "
              + ", ".join(f"{r['config']} {r['us']:.2f} us" for r in res["fused_head_major_sweep"][:6]))
    if by_shape:
        print_table(("batch x context", "fused applies", "RoPE + attention shipped", "best (config)",
                     "fused shipped", "best (config)", "fused shipped over unfused shipped"),
                    [(f"{r['batch']} x {r['context']}", "yes" if r["fused_applies"] else "no",
                      f"{r['unfused_shipped_us']:.2f}", f"{r['unfused_best_us']:.2f} ({r['unfused_best']})",
                      f"{r['fused_shipped_us']:.2f}", f"{r['fused_best_us']:.2f} ({r['fused_best']})",
                      f"{r['unfused_shipped_us'] / r['fused_shipped_us']:.3f}x") for r in by_shape], args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
