"""Where one decode step's GPU time goes: every kernel of the captured step, and the idle time between them.

The roofline figure of ``torch_executor_gpu.py`` (c) compares a whole decode step with the
bytes it must read; this script takes the same step (``--batch`` sequences at ``--context``
tokens, the ~1B Llama shape in bf16, random weights and KV) apart. It replays the step through
``TorchExecutor.execute`` under ``torch.profiler`` and reports, per kernel name, the launches
and device time per step, then the step's span on the device, the time no kernel ran (launch
gaps inside the graph) and the host time around it. It also measures the device's read-only
bandwidth (a sum over 4 GiB) beside its copy bandwidth, and the decode attention kernel's
launch configurations against both.

Usage (device machine): ``python3 benchmarks/decode_profile_gpu.py [--model llama-1b] [--batch 256]``;
full results in ``$OUT/decode_profile_gpu.json``, a short table last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from gpu_backend.cuda_timing import cuda_seconds, graph_seconds  # noqa: E402
from gpu_backend.models import LlamaWeights, build_hf_model, rope_inv_freq  # noqa: E402
from gpu_backend.paged_attention import DECODE_CONFIG  # noqa: E402
from gpu_backend.plan import BatchPlan  # noqa: E402
from gpu_backend.torch_executor import TorchExecutor  # noqa: E402


def bandwidths() -> dict:
    """Copy (bytes read + written) and read-only bandwidth over 4 GiB of bf16, bytes per second."""
    n = 2 * 2**30
    src = torch.randn(n, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    acc = torch.empty((), dtype=torch.float32, device="cuda")
    copy_s = statistics.median(cuda_seconds(lambda: dst.copy_(src), 15))
    read_s = statistics.median(cuda_seconds(lambda: torch.sum(src, dim=0, dtype=torch.float32, out=acc), 15))
    return {"copy_bytes_per_s": 2 * 2 * n / copy_s, "read_bytes_per_s": 2 * n / read_s}


def profile_steps(ex: TorchExecutor, plan: BatchPlan, steps: int) -> dict:
    """Per-kernel device time of ``steps`` executions of ``plan``, and the device span and idle time per step."""
    for _ in range(5):
        ex.execute(plan)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        walls = []
        for _ in range(steps):
            t0 = time.perf_counter()
            ex.execute(plan)
            walls.append(time.perf_counter() - t0)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernels.sort(key=lambda e: e.time_range.start)
    per_name: dict = defaultdict(lambda: [0, 0.0])
    for e in kernels:
        per_name[e.name][0] += 1
        per_name[e.name][1] += e.time_range.end - e.time_range.start
    # a step's kernels run back to back; a gap longer than 200 us separates two steps
    spans, busy, cur = [], [], None
    for e in kernels:
        s, t = e.time_range.start, e.time_range.end
        if cur is None or s - cur[1] > 200:
            if cur is not None:
                spans.append(cur[1] - cur[0])
                busy.append(cur[2])
            cur = [s, t, t - s]
        else:
            cur[2] += max(0.0, t - max(s, cur[1]))
            cur[1] = max(cur[1], t)
    if cur is not None:
        spans.append(cur[1] - cur[0])
        busy.append(cur[2])
    table = sorted(({"kernel": k, "launches_per_step": c / steps, "us_per_step": us / steps}
                    for k, (c, us) in per_name.items()), key=lambda r: -r["us_per_step"])
    return {"kernels": table, "steps_seen": len(spans), "span_us": statistics.median(spans),
            "busy_us": statistics.median(busy), "wall_us": statistics.median(walls) * 1e6}


def step_times(executors: dict, plan: BatchPlan, rounds: int = 8, per_round: int = 10) -> dict:
    """Median wall and device seconds of ``execute(plan)`` per executor, the executors taking turns."""
    walls: dict = {k: [] for k in executors}
    devs: dict = {k: [] for k in executors}
    for ex in executors.values():
        for _ in range(5):
            ex.execute(plan)
    for _ in range(rounds):
        for name, ex in executors.items():
            for _ in range(per_round):
                r = ex.execute(plan)
                walls[name].append(r.duration_s)
                devs[name].append(r.compute_s)
    return {k: {"wall_s": statistics.median(walls[k]), "device_s": statistics.median(devs[k])} for k in executors}


DEFAULT = f"{DECODE_CONFIG['tile_tokens']}/{DECODE_CONFIG['num_warps']}/{DECODE_CONFIG['num_stages']}"
CONFIGS = [{"tile_tokens": 64, "num_warps": 2, "num_stages": 2}] + [
    {"tile_tokens": t, "num_warps": w, "num_stages": 3} for t in (32, 64, 128) for w in (1, 2, 4)]


def rope_tables(d, length: int):
    angles = torch.arange(length, dtype=torch.float32, device="cuda")[:, None] * rope_inv_freq(d).cuda()[None, :]
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos().to(torch.bfloat16), emb.sin().to(torch.bfloat16)


def decode_inputs(d, B: int, ctx: int):
    """Disjoint block tables of ``B`` sequences at ``ctx`` tokens, the new token's slot, a random QKV row each."""
    per_seq = -(-ctx // 16)
    tables = torch.arange(B * per_seq, device="cuda").view(B, per_seq)
    cl = torch.full((B,), ctx, device="cuda")
    wb = tables[:, (ctx - 1) // 16].contiguous()
    ws = torch.full((B,), (ctx - 1) % 16, device="cuda")
    qkv = torch.randn(B, (d.num_heads + 2 * d.num_kv_heads) * d.head_dim, dtype=torch.bfloat16, device="cuda")
    return tables, cl, wb, ws, qkv


def attention_configs(ex: TorchExecutor, shapes: list[tuple[int, int]]) -> dict:
    """Both decode kernels (one layer, graph-timed) per launch configuration at (batch, context) shapes: the fused
    kernel, and RoPE-and-cache followed by the paged decode kernel."""
    from gpu_backend.fused_decode import decode_attention_rope
    from gpu_backend.fused_ops import rope_and_cache
    from gpu_backend.paged_attention import decode_attention_triton

    d = ex.model.dims
    kc, vc = ex.store.layers[0]
    cos, sin = rope_tables(d, max(ctx for _, ctx in shapes))
    scale = d.head_dim ** -0.5
    out = {"fused": {}, "rope_then_decode": {}, "rope_alone": {}}
    for B, ctx in shapes:
        if B * -(-ctx // 16) > ex.store.num_gpu_blocks:
            continue
        tables, cl, wb, ws, qkv = decode_inputs(d, B, ctx)
        pos = cl - 1
        o = torch.empty(B, d.num_heads, d.head_dim, dtype=torch.bfloat16, device="cuda")
        q, _, _ = rope_and_cache(qkv, cos, sin, pos, wb, ws, kc, vc, d.num_heads, d.num_kv_heads, d.head_dim,
                                 want_kv=False)
        out["rope_alone"][f"{B}x{ctx}"] = graph_seconds(lambda: rope_and_cache(
            qkv, cos, sin, pos, wb, ws, kc, vc, d.num_heads, d.num_kv_heads, d.head_dim, want_kv=False))
        for kind in ("fused", "rope_then_decode"):
            row = {}
            for cfg in CONFIGS:
                key = f"{cfg['tile_tokens']}/{cfg['num_warps']}/{cfg['num_stages']}"
                if kind == "fused":
                    fn = lambda: decode_attention_rope(qkv, cos, sin, wb, ws, kc, vc, tables, cl, d.num_heads,  # noqa: E731
                                                       d.num_kv_heads, scale, out=o, config=cfg)
                else:
                    fn = lambda: decode_attention_triton(q, kc, vc, tables, cl, scale, o, cfg)  # noqa: E731
                try:
                    row[key] = graph_seconds(fn)
                except Exception as e:  # a configuration the compiler refuses (shared memory): record it
                    row[key] = f"{type(e).__name__}"
            out[kind][f"{B}x{ctx}"] = row
    return out


def attention_accuracy(ex: TorchExecutor, B: int, ctx: int) -> dict:
    """Both kernels' outputs (bf16) against a float32 reference of the same layer: relative error."""
    from gpu_backend.fused_decode import decode_attention_rope
    from gpu_backend.fused_ops import apply_rope_torch, rope_and_cache
    from gpu_backend.paged_attention import decode_attention_torch, decode_attention_triton

    d = ex.model.dims
    kc, vc = ex.store.layers[0]
    cos, sin = rope_tables(d, ctx)
    scale = d.head_dim ** -0.5
    tables, cl, wb, ws, qkv = decode_inputs(d, B, ctx)
    pos = cl - 1
    n = B * tables.shape[1]
    k0, v0 = kc[:n].clone(), vc[:n].clone()
    qn, kvn = d.num_heads * d.head_dim, d.num_kv_heads * d.head_dim
    c, s = cos[pos].float().unsqueeze(1), sin[pos].float().unsqueeze(1)
    q_ref = apply_rope_torch(qkv[:, :qn].float().view(B, d.num_heads, d.head_dim), c, s)
    kr, vr = k0.float(), v0.float()
    kr.permute(0, 2, 1, 3)[wb, ws] = apply_rope_torch(qkv[:, qn:qn + kvn].float().view(B, d.num_kv_heads, d.head_dim), c, s)
    vr.permute(0, 2, 1, 3)[wb, ws] = qkv[:, qn + kvn:].float().view(B, d.num_kv_heads, d.head_dim)
    ref = decode_attention_torch(q_ref, kr, vr, tables, cl, scale)

    def rel(x):
        return float((x.float() - ref).norm() / ref.norm())

    fused = decode_attention_rope(qkv, cos, sin, wb, ws, kc, vc, tables, cl, d.num_heads, d.num_kv_heads, scale)
    kc[:n].copy_(k0)
    vc[:n].copy_(v0)
    q, _, _ = rope_and_cache(qkv, cos, sin, pos, wb, ws, kc, vc, d.num_heads, d.num_kv_heads, d.head_dim, want_kv=False)
    unfused = decode_attention_triton(q, kc, vc, tables, cl, scale)
    return {"fused_rel_err": rel(fused), "unfused_rel_err": rel(unfused),
            "fused_vs_unfused_rel": float((fused.float() - unfused.float()).norm() / unfused.float().norm())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-1b")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--context", type=int, default=513, help="tokens each sequence attends over")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "decode_profile_gpu.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("decode_profile_gpu: needs a CUDA device", file=sys.stderr)
        return 2
    res: dict = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "args": {k: str(v) for k, v in vars(args).items()}}
    res["bandwidth"] = bw = bandwidths()
    hf = build_hf_model(args.model, torch.bfloat16, "cuda", seed=3)
    weights = LlamaWeights.from_hf(hf, args.model)
    B, ctx = args.batch, args.context
    per_seq = -(-ctx // 16)
    tables = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(B)]
    ids = [(7 * i) % 1000 + 1 for i in range(B)]
    plan = BatchPlan(decode_seq_ids=list(range(B)), decode_positions=[ctx - 1] * B, decode_block_tables=tables,
                     decode_input_ids=ids)
    executors = {fused: TorchExecutor(weights, device="cuda", num_gpu_blocks=max(B * per_seq + 64, 33000),
                                      num_host_blocks=0, max_model_len=4096, max_num_seqs=B,
                                      fuse_decode_rope=fused)
                 for fused in (True, False)}
    executors[True].store.gpu.normal_()
    executors[False].store.gpu.copy_(executors[True].store.gpu)
    # the same step from the same cache through both: tokens sampled, and the KV each wrote
    got = {k: executors[k].execute(plan).sampled_tokens for k in executors}
    res["fused_check"] = {
        "tokens_equal": sum(got[True][s] == got[False][s] for s in got[True]) / B,
        "cache_max_abs_diff": float((executors[True].store.gpu[:B * per_seq].float()
                                     - executors[False].store.gpu[:B * per_seq].float()).abs().max())}
    times = step_times({"fused" if k else "unfused": ex for k, ex in executors.items()}, plan)
    res["step_times"] = times
    res["profile"] = {("fused" if k else "unfused"): profile_steps(ex, plan, args.steps) for k, ex in executors.items()}
    d = weights.dims
    kv_bytes = B * ctx * d.kv_bytes_per_token(2)
    w_bytes = weights.num_bytes_read_per_step
    res["bytes"] = {"weights": w_bytes, "kv": kv_bytes}
    res["roofline_copy_us"] = (w_bytes + kv_bytes) / bw["copy_bytes_per_s"] * 1e6
    res["roofline_read_us"] = (w_bytes + kv_bytes) / bw["read_bytes_per_s"] * 1e6
    res["attention_floor_copy_us"] = kv_bytes / bw["copy_bytes_per_s"] * 1e6 / d.num_layers
    del executors[False]
    torch.cuda.empty_cache()
    res["accuracy"] = attention_accuracy(executors[True], B, ctx)
    res["attention_configs_s"] = attention_configs(
        executors[True], [(B, ctx), (256, 2048), (64, 4096), (16, 8192), (4, 8192), (1, 8192)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2, default=str))

    print(f"\n{res['device']}, {res['date']}: {args.model} decode step, batch {B}, context {ctx}")
    print(f"copy {bw['copy_bytes_per_s'] / 1e12:.2f} TB/s, read {bw['read_bytes_per_s'] / 1e12:.2f} TB/s; "
          f"roofline {res['roofline_copy_us']:.0f} us (copy bw) / {res['roofline_read_us']:.0f} us (read bw)")
    print(f"fused against unfused, same step from the same cache: tokens equal "
          f"{res['fused_check']['tokens_equal']:.1%}, cache max |diff| {res['fused_check']['cache_max_abs_diff']:.3g}")
    for name, t in times.items():
        print(f"{name}: wall {t['wall_s'] * 1e6:.0f} us ({t['wall_s'] * 1e6 / res['roofline_copy_us']:.2f}x roofline), "
              f"device {t['device_s'] * 1e6:.0f} us ({t['device_s'] * 1e6 / res['roofline_copy_us']:.2f}x)")
    print(f"fused / unfused device time: {times['fused']['device_s'] / times['unfused']['device_s']:.3f}")
    for name, prof in res["profile"].items():
        print(f"\n{name} under the profiler: wall {prof['wall_us']:.0f} us, device span {prof['span_us']:.0f} us, "
              f"kernels busy {prof['busy_us']:.0f} us, idle inside the span {prof['span_us'] - prof['busy_us']:.0f} us")
        print("| kernel | launches/step | us/step |")
        print("|---|---|---|")
        for r in prof["kernels"][:12]:
            print(f"| {r['kernel'][:80]} | {r['launches_per_step']:.1f} | {r['us_per_step']:.1f} |")
    acc = res["accuracy"]
    print(f"\none layer's attention against float32, relative error: fused {acc['fused_rel_err']:.2e}, "
          f"unfused {acc['unfused_rel_err']:.2e}; fused against unfused {acc['fused_vs_unfused_rel']:.2e}")
    print(f"per layer, us, tile/warps/stages (attention floor at copy bw {res['attention_floor_copy_us']:.1f} us "
          f"at {B}x{ctx}); default {DEFAULT}:")
    cfgs = res["attention_configs_s"]
    for shape, rope_s in cfgs["rope_alone"].items():
        line = f"  {shape}: rope_and_cache {rope_s * 1e6:.1f}"
        for kind in ("rope_then_decode", "fused"):
            timed = {k: v for k, v in cfgs[kind][shape].items() if isinstance(v, float)}
            best = sorted(timed, key=timed.get)[:3]
            line += (f" | {kind}: default {timed.get(DEFAULT, float('nan')) * 1e6:.1f}; "
                     + ", ".join(f"{k} {timed[k] * 1e6:.1f}" for k in best))
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
