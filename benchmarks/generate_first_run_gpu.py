"""Why transformers' first full-size ``generate`` call is slow: its runs with and without cuDNN's attention.

Session 16 found ``generate`` on the speed workload (llama-1b, 256 x 512 prompt + 128 output tokens,
one padded batch) taking 6.7-7.4 s on its first full-size call and 2.0-2.3 s on the next ones, on
three leases, with or without the allocator's expandable segments. The suspect: on this torch,
SDPA runs transformers' attention on cuDNN, which builds an execution plan for every new shape
(``prefill_attention_backends_gpu.py``: 43-70 ms a first call), and every decode step of
``generate`` attends over one more key than the last. This times ``--repeats`` calls of the same
``generate`` with cuDNN's SDPA backend off, then with it on (the default), in one process; each
phase's first call meets shapes its backend has not seen.

    python3 benchmarks/generate_first_run_gpu.py [--requests 256 --prompt 512 --output 128 --repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from print_table import print_table  # noqa: E402
from torch_executor_gpu_common import toks  # noqa: E402

from gpu_backend.models import build_hf_model  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--output", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "generate_first_run_gpu.json")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("generate_first_run_gpu: needs a CUDA device", file=sys.stderr)
        return 2
    n, pr, o = args.requests, args.prompt, args.output
    hf = build_hf_model("llama-1b", torch.bfloat16, "cuda", seed=3)
    hf.generation_config.eos_token_id = None
    ids = torch.tensor([toks(pr, 5000 + i) for i in range(n)], device="cuda")
    mask = torch.ones_like(ids)
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    res = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
           "attn_implementation": hf.config._attn_implementation, "phases": {}}
    rows = []
    with torch.no_grad():
        for phase, cudnn in (("cuDNN attention off", False), ("cuDNN attention on (default)", True)):
            torch.backends.cuda.enable_cudnn_sdp(cudnn)
            hf.generate(ids[:8, :64], attention_mask=mask[:8, :64], max_new_tokens=4, min_new_tokens=4, **kw)
            walls = []
            for _ in range(args.repeats):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = hf.generate(ids, attention_mask=mask, max_new_tokens=o, min_new_tokens=o, **kw)
                torch.cuda.synchronize()
                walls.append(time.perf_counter() - t0)
            tokens = (out.shape[1] - pr) * n
            res["phases"][phase] = {"walls_s": walls, "output_tokens": tokens}
            print(f"   {phase}: {', '.join(f'{w:.2f}' for w in walls)} s", flush=True)
            rows.append((phase, *(f"{w:.2f} s ({tokens / w:,.0f} tok/s)" for w in walls)))
    torch.backends.cuda.enable_cudnn_sdp(True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(f"\n{res['device']} {res['date']} torch {res['torch']} ({res['attn_implementation']}): generate, "
          f"llama-1b bf16, {n} x {pr} + {o} tokens, one padded batch")
    print_table(("SDPA", *(f"run {i + 1}" for i in range(args.repeats))), rows, False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
