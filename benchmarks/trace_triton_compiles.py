"""Run one servegym command and log every Triton kernel specialization it compiles, with the time.

Why: a kernel variant first met in the middle of a timed run costs a compile (0.3-1 s) that
shows up as one very slow iteration (seen in fidelity runs). This installs Triton's JIT
cache hook, which fires on every in-memory cache miss, and prints the seconds since start
and the specialization (argument types, alignment, constexpr values), so the variant can be
compiled at executor start instead.

    python3 benchmarks/trace_triton_compiles.py fidelity --device cuda --model smollm2-135m ...
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

START = time.perf_counter()


def _log_miss(*args, **kwargs):
    print(f"[triton compile +{time.perf_counter() - START:8.2f} s] {kwargs.get('repr', args)}", file=sys.stderr,
          flush=True)
    return None          # never skips the compile


def main() -> int:
    import triton

    knobs = getattr(triton, "knobs", None)
    if knobs is None:
        raise SystemExit(f"trace_triton_compiles.py: triton {triton.__version__} has no knobs.runtime hooks")
    knobs.runtime.jit_cache_hook = _log_miss
    from envs.engine import ServingEngine
    from train.cli import main as cli_main

    serve = ServingEngine.run

    def run_with_marks(self, *a, **kw):     # marks each served run (fidelity: warm-up, then recorded)
        print(f"[serving run starts +{time.perf_counter() - START:8.2f} s]", file=sys.stderr, flush=True)
        out = serve(self, *a, **kw)
        print(f"[serving run ends   +{time.perf_counter() - START:8.2f} s]", file=sys.stderr, flush=True)
        return out

    ServingEngine.run = run_with_marks

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
