"""Fit a profile's cost model again from its kept samples, without a GPU.

Why: ``servegym profile --samples FILE`` keeps every timed batch shape. When the cost model
gains a feature, the shapes already timed can be fitted again (features of older samples
files are derived from the ones they have), and the result judged against kept real runs
with ``servegym fidelity --replay``; only new shapes need the GPU.

    python benchmarks/refit_profile.py --base PROFILE.json --samples SAMPLES.json --out NEW.json [--timing async]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, required=True, help="the fitted profile JSON the samples came with")
    p.add_argument("--samples", type=Path, required=True, help="its samples (servegym profile --samples)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--timing", choices=("wall", "async"), default=None,
                   help="fit wall or back-to-back time (default: the base profile's, wall if it does not say)")
    p.add_argument("--token-regimes", default=None,
                   help="comma-separated token counts past which the executor took another path, fitted apart "
                        "(default: the base profile's; '' for none)")
    args = p.parse_args(argv)

    from gpu_backend.calibration import refit_profile_json
    from gpu_backend.calibration_sweep import load_samples
    from gpu_backend.profiles import load_profile

    try:
        base = json.loads(args.base.read_text())
        samples = load_samples(args.samples)
        regimes = None if args.token_regimes is None else tuple(
            int(b) for b in args.token_regimes.split(",") if b.strip())
        out = refit_profile_json(base, samples, time.strftime("%Y-%m-%d"), args.timing, regimes)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"refit_profile.py: {exc}") from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    load_profile(str(args.out))     # what was written loads
    mape = out["fit"]["mape"]
    print(f"{args.out}: {len(samples)} samples; in-sample MAPE " + ", ".join(f"{k} {v:.1%}" for k, v in mape.items()))
    print("coefficients: " + ", ".join(f"{k} {v:.3e}" for k, v in out["cost_model"]["coefficients"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
