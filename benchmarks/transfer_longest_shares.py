"""Give a fitted profile the longest-context decode term another fit of the same model measured.

Why: see ``gpu_backend.decode_split``. Profiles fitted before the sweep timed batches of
unequal contexts keep their times for equal contexts and take the split between the context
sum and the longest context from a newer fit, without a GPU.

    python benchmarks/transfer_longest_shares.py --base OLD.json --donor NEW.json --out OUT.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, required=True, help="the profile whose rates are kept")
    p.add_argument("--donor", type=Path, required=True, help="a profile fitted with unequal decode batches")
    p.add_argument("--donor-label", default=None, help="how the description names the donor (default: its file name)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    from gpu_backend.decode_split import transfer_longest_shares
    from gpu_backend.profiles import load_profile

    try:
        base = json.loads(args.base.read_text())
        donor = json.loads(args.donor.read_text())
        out = transfer_longest_shares(base, donor, args.donor_label or args.donor.name)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"transfer_longest_shares.py: {exc}") from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    load_profile(str(args.out))     # what was written loads
    t = out["cost_model"]["decode_table"]
    print(f"{args.out}: longest-context share per batch size: " + ", ".join(
        f"{n} {c / (n * b + c) if n * b + c else 0:.2f}"
        for n, b, c in zip(t["num_seqs"], t["per_context_token_s"], t["per_longest_token_s"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
