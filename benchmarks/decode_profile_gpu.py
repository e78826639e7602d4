"""Where one decode step's GPU time goes, and which launch configuration the decode kernel should use.

The roofline figure of ``torch_executor_gpu.py`` (c) compares a whole decode step with the
bytes it must read; this script takes the same step (``--batch`` sequences at ``--context``
tokens, random weights and KV, bf16) apart. It replays the step through
``TorchExecutor.execute`` under ``torch.profiler`` and reports, per kernel name, the launches
and device time per step, the step's span on the device and the time no kernel ran. It times
the step with the decode kernel's launch rule (``paged_attention.decode_launch``) against the
same executor pinned to the single earlier configuration, in turns. It measures the device's
read-only bandwidth beside its copy bandwidth, and sweeps the decode kernel's launch
configurations (one layer, graph-timed) over ``--shapes``. ``--sweep-only`` skips the step.

Usage (device machine): ``python3 benchmarks/decode_profile_gpu.py [--model llama-1b] [--batch 256]``;
full results in ``$OUT/decode_profile_gpu.json`` (``--out``), a short table last.
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
from gpu_backend.models import LlamaWeights, build_hf_model, model_dims  # noqa: E402
from gpu_backend.paged_attention import DECODE_CONFIG, decode_attention_triton  # noqa: E402
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


CONFIGS = [DECODE_CONFIG] + [{"tile_tokens": t, "num_warps": w, "num_stages": 3}
                             for t, w in ((32, 1), (64, 1), (64, 2), (64, 4), (128, 2), (128, 4))]


def label(cfg: dict) -> str:
    return f"{cfg['tile_tokens']}/{cfg['num_warps']}/{cfg['num_stages']}"


def decode_inputs(d, B: int, ctx: int):
    """Disjoint block tables of ``B`` sequences at ``ctx`` tokens and a random query each."""
    per_seq = -(-ctx // 16)
    tables = torch.arange(B * per_seq, device="cuda").view(B, per_seq)
    cl = torch.full((B,), ctx, device="cuda")
    q = torch.randn(B, d.num_heads, d.head_dim, dtype=torch.bfloat16, device="cuda")
    return tables, cl, q


def attention_configs(d, shapes: list[tuple[int, int]]) -> dict:
    """The paged decode kernel, one layer graph-timed, per launch configuration at (batch, context) shapes, with
    the split count of ``decode_splits``; each row also names the configuration ``decode_launch`` picks."""
    from gpu_backend.paged_attention import decode_launch, decode_splits

    blocks = max(B * -(-ctx // 16) for B, ctx in shapes) + 1
    cache = torch.randn(blocks, 2, d.num_kv_heads, 16, d.head_dim, dtype=torch.bfloat16, device="cuda")
    kc, vc = cache[:, 0], cache[:, 1]
    out = {}
    for B, ctx in shapes:
        tables, cl, q = decode_inputs(d, B, ctx)
        o = torch.empty_like(q)
        splits = decode_splits(B, d.num_kv_heads, q.device)
        picked = decode_launch(B * d.num_kv_heads * splits, d.head_dim, q.device)
        row = {"splits": splits, "picked": label(picked), "seconds": {}}
        for cfg in CONFIGS:
            try:
                row["seconds"][label(cfg)] = graph_seconds(
                    lambda: decode_attention_triton(q, kc, vc, tables, cl, d.head_dim ** -0.5, o, cfg))
            except Exception as e:  # a configuration the compiler refuses (shared memory): record it
                row["seconds"][label(cfg)] = f"{type(e).__name__}"
        out[f"{B}x{ctx}"] = row
    return out


def step_comparison(weights, plan: BatchPlan, B: int, blocks: int, steps: int) -> dict:
    """The decode step with the launch rule against the same executor pinned to ``DECODE_CONFIG`` (graphs
    record the launch, so the pin holds for the capture), timed in turns; then the rule's step profiled."""
    import gpu_backend.paged_attention as pa

    def build():
        ex = TorchExecutor(weights, device="cuda", num_gpu_blocks=blocks, num_host_blocks=0, max_model_len=4096,
                           max_num_seqs=B)
        ex.store.gpu.normal_(generator=torch.Generator("cuda").manual_seed(0))
        return ex

    executors = {"launch_rule": build()}
    rule = pa.decode_launch
    pa.decode_launch = lambda programs, head_dim, device: dict(pa.DECODE_CONFIG)
    try:
        executors["earlier_fixed_config"] = build()
    finally:
        pa.decode_launch = rule
    got = {k: ex.execute(plan).sampled_tokens for k, ex in executors.items()}
    res = {"tokens_equal": sum(got["launch_rule"][s] == got["earlier_fixed_config"][s] for s in range(B)) / B,
           "times": step_times(executors, plan)}
    res["profile"] = profile_steps(executors["launch_rule"], plan, steps)
    return res


def parse_shapes(text: str) -> list[tuple[int, int]]:
    try:
        return [(int(b), int(c)) for b, c in (item.split("x") for item in text.split(",") if item)]
    except ValueError:
        raise SystemExit(f"--shapes {text!r}: expected BATCHxCONTEXT items separated by commas") from None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-1b")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--context", type=int, default=513, help="tokens each sequence attends over")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--shapes", default="256x513,256x2048,192x1024,128x1024,96x1024,64x4096,32x2048,16x8192,4x8192,"
                                        "1x8192", help="BATCHxCONTEXT shapes of the configuration sweep")
    ap.add_argument("--sweep-only", action="store_true", help="skip the whole decode step")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "decode_profile_gpu.json")
    args = ap.parse_args()
    shapes = parse_shapes(args.shapes)
    if not torch.cuda.is_available():
        print("decode_profile_gpu: needs a CUDA device", file=sys.stderr)
        return 2
    res: dict = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"),
                 "args": {k: str(v) for k, v in vars(args).items()}}
    res["bandwidth"] = bw = bandwidths()
    d = model_dims(args.model)
    B, ctx = args.batch, args.context
    if not args.sweep_only:
        hf = build_hf_model(args.model, torch.bfloat16, "cuda", seed=3)
        weights = LlamaWeights.from_hf(hf, args.model)
        per_seq = -(-ctx // 16)
        tables = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(B)]
        plan = BatchPlan(decode_seq_ids=list(range(B)), decode_positions=[ctx - 1] * B, decode_block_tables=tables,
                         decode_input_ids=[(7 * i) % 1000 + 1 for i in range(B)])
        res["step"] = step_comparison(weights, plan, B, B * per_seq + 64, args.steps)
        kv_bytes = B * ctx * d.kv_bytes_per_token(2)
        w_bytes = weights.num_bytes_read_per_step
        res["bytes"] = {"weights": w_bytes, "kv": kv_bytes}
        res["roofline_copy_us"] = (w_bytes + kv_bytes) / bw["copy_bytes_per_s"] * 1e6
        res["roofline_read_us"] = (w_bytes + kv_bytes) / bw["read_bytes_per_s"] * 1e6
        del weights, hf
        torch.cuda.empty_cache()
    res["attention_configs"] = attention_configs(d, shapes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2, default=str))

    print(f"\n{res['device']}, {res['date']}: {args.model}; copy {bw['copy_bytes_per_s'] / 1e12:.2f} TB/s, "
          f"read {bw['read_bytes_per_s'] / 1e12:.2f} TB/s")
    if "step" in res:
        st = res["step"]
        print(f"decode step, batch {B}, context {ctx}: roofline {res['roofline_copy_us']:.0f} us (copy bw) / "
              f"{res['roofline_read_us']:.0f} us (read bw); tokens equal across the two {st['tokens_equal']:.1%}")
        for name, t in st["times"].items():
            print(f"  {name}: wall {t['wall_s'] * 1e6:.0f} us ({t['wall_s'] * 1e6 / res['roofline_copy_us']:.2f}x "
                  f"roofline), device {t['device_s'] * 1e6:.0f} us ({t['device_s'] * 1e6 / res['roofline_copy_us']:.2f}x)")
        t = st["times"]
        print(f"  rule / fixed, device: {t['launch_rule']['device_s'] / t['earlier_fixed_config']['device_s']:.3f}")
        prof = st["profile"]
        print(f"under the profiler: device span {prof['span_us']:.0f} us, kernels busy {prof['busy_us']:.0f} us, "
              f"idle inside the span {prof['span_us'] - prof['busy_us']:.0f} us")
        print("| kernel | launches/step | us/step |")
        print("|---|---|---|")
        for r in prof["kernels"][:10]:
            print(f"| {r['kernel'][:80]} | {r['launches_per_step']:.1f} | {r['us_per_step']:.1f} |")
    print(f"decode kernel per layer (us), tile tokens/warps/stages; earlier fixed {label(DECODE_CONFIG)}:")
    for shape, row in res["attention_configs"].items():
        timed = {k: v for k, v in row["seconds"].items() if isinstance(v, float)}
        best = sorted(timed, key=timed.get)[:3]
        print(f"  {shape} ({row['splits']} splits): fixed {timed.get(label(DECODE_CONFIG), float('nan')) * 1e6:.1f}, "
              f"picked {row['picked']} {timed.get(row['picked'], float('nan')) * 1e6:.1f}; best "
              + ", ".join(f"{k} {timed[k] * 1e6:.1f}" for k in best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
