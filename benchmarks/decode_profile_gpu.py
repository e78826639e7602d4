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
from gpu_backend.models import LlamaWeights, build_hf_model  # noqa: E402
from gpu_backend.paged_attention import decode_attention_triton  # noqa: E402
from gpu_backend.plan import BatchPlan  # noqa: E402
from gpu_backend.torch_executor import TorchExecutor  # noqa: E402


def bandwidths() -> dict:
    """Copy (bytes read + written) and read-only bandwidth over 4 GiB of bf16, bytes per second."""
    n = 2 * 2**30
    src = torch.randn(n, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    acc = torch.empty((), dtype=torch.float32, device="cuda")
    copy_s = statistics.median(cuda_seconds(lambda: dst.copy_(src), 15))
    read_s = statistics.median(cuda_seconds(lambda: torch.sum(src, dtype=torch.float32, out=acc), 15))
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


def attention_configs(ex: TorchExecutor, batch: int, context: int, tables: torch.Tensor) -> dict:
    d = ex.model.dims
    q = torch.randn(batch, d.num_heads, d.head_dim, dtype=torch.bfloat16, device="cuda")
    cl = torch.full((batch,), context, device="cuda")
    kc, vc = ex.store.layers[0]
    out = {}
    for tile in (32, 64, 128):
        for warps in (1, 2, 4):
            for stages in (2, 3, 4):
                cfg = {"tile_tokens": tile, "num_warps": warps, "num_stages": stages}
                o = torch.empty_like(q)
                try:
                    out[f"{tile}/{warps}/{stages}"] = graph_seconds(
                        lambda: decode_attention_triton(q, kc, vc, tables, cl, d.head_dim ** -0.5, o, cfg))
                except Exception as e:  # a configuration the compiler refuses (shared memory): record it
                    out[f"{tile}/{warps}/{stages}"] = f"{type(e).__name__}"
    return out


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
    res: dict = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "args": vars(args)}
    res["args"]["out"] = str(args.out)
    res["bandwidth"] = bw = bandwidths()
    hf = build_hf_model(args.model, torch.bfloat16, "cuda", seed=3)
    weights = LlamaWeights.from_hf(hf, args.model)
    B, ctx = args.batch, args.context
    per_seq = -(-ctx // 16)
    tables = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(B)]
    ids = [(7 * i) % 1000 + 1 for i in range(B)]
    plan = BatchPlan(decode_seq_ids=list(range(B)), decode_positions=[ctx - 1] * B, decode_block_tables=tables,
                     decode_input_ids=ids)
    ex = TorchExecutor(weights, device="cuda", num_gpu_blocks=B * per_seq + 64, num_host_blocks=0,
                       max_model_len=4096, max_num_seqs=B)
    ex.store.gpu.normal_()
    prof = profile_steps(ex, plan, args.steps)
    res["profile"] = prof
    d = weights.dims
    kv_bytes = B * ctx * d.kv_bytes_per_token(2)
    w_bytes = weights.num_bytes_read_per_step
    res["bytes"] = {"weights": w_bytes, "kv": kv_bytes}
    res["roofline_copy_us"] = (w_bytes + kv_bytes) / bw["copy_bytes_per_s"] * 1e6
    res["roofline_read_us"] = (w_bytes + kv_bytes) / bw["read_bytes_per_s"] * 1e6
    res["attention_floor_copy_us"] = kv_bytes / bw["copy_bytes_per_s"] * 1e6 / d.num_layers
    res["attention_configs_s"] = attention_configs(ex, B, ctx, torch.tensor(tables, device="cuda"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2, default=str))

    print(f"\n{res['device']}, {res['date']}: {args.model} decode step, batch {B}, context {ctx}")
    print(f"copy {bw['copy_bytes_per_s'] / 1e12:.2f} TB/s, read {bw['read_bytes_per_s'] / 1e12:.2f} TB/s; "
          f"roofline {res['roofline_copy_us']:.0f} us (copy bw) / {res['roofline_read_us']:.0f} us (read bw)")
    print(f"wall {prof['wall_us']:.0f} us, device span {prof['span_us']:.0f} us, kernels busy {prof['busy_us']:.0f} us, "
          f"idle inside the span {prof['span_us'] - prof['busy_us']:.0f} us ({prof['steps_seen']} steps seen)")
    print("| kernel | launches/step | us/step |")
    print("|---|---|---|")
    for r in prof["kernels"][:25]:
        print(f"| {r['kernel'][:90]} | {r['launches_per_step']:.1f} | {r['us_per_step']:.1f} |")
    timed = {k: v for k, v in res["attention_configs_s"].items() if isinstance(v, float)}
    best = sorted(timed, key=timed.get)[:8]
    print(f"attention per layer (floor at copy bw {res['attention_floor_copy_us']:.1f} us), tile/warps/stages: "
          + ", ".join(f"{k} {timed[k] * 1e6:.1f}" for k in best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
