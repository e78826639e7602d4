"""The ``--ranker`` option of ``simulate`` and ``benchmark``: LTR ranks by trained checkpoints.

One ``--ranker CHECKPOINT`` serves that ranker (``agents.ranker_scorer.RankerScorer``); the
option given several times serves their rank average (``EnsembleScorer``), weighted by
``--ranker-weights`` (default equal) — how the best AlpacaEval predictor in BENCHMARKS.md is
built.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def add_ranker_args(p: argparse.ArgumentParser, requests: str) -> None:
    p.add_argument("--ranker", type=Path, action="append", default=None, metavar="CHECKPOINT",
                   help=f"LTR ranks by this trained ranker (`servegym train ranker`) instead of the noisy oracle; "
                        f"{requests} must carry prompt text. Given several times: the rank average of the rankers")
    p.add_argument("--ranker-weights", default=None, metavar="W1,W2,...",
                   help="with several --ranker: their weights, in order (default: equal)")


def ranker_weights(args: argparse.Namespace) -> list[float] | None:
    """``--ranker-weights`` as floats (None when not given), checked against the ``--ranker`` count."""
    if args.ranker_weights is not None and not args.ranker:
        raise ValueError(f"--ranker-weights {args.ranker_weights} is given without --ranker")
    return parse_ranker_weights(args.ranker_weights, len(args.ranker or ()), "--ranker checkpoints")


def parse_ranker_weights(text: str | None, count: int, what: str,
                         flag: str = "--ranker-weights") -> list[float] | None:
    """``W1,W2,...`` (the value of ``flag``) as ``count`` floats >= 0 with a positive sum (None for None);
    ``what`` names what is counted."""
    if text is None:
        return None
    try:
        weights = [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if len(weights) != count:
        raise ValueError(f"{flag} {text} gives {len(weights)} weights for {count} {what}")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"{flag} must be >= 0 with a positive sum, got {text}")
    return weights


def make_scorer(args: argparse.Namespace):
    """The scorer ``--ranker`` (and ``--ranker-weights``) describe."""
    from agents.ranker_scorer import make_ranker_scorer

    return make_ranker_scorer(args.ranker, ranker_weights(args))


def ranker_label(args: argparse.Namespace) -> str | None:
    """The checkpoints as run JSON records them: one path, or several joined by commas."""
    return None if not args.ranker else ",".join(str(r) for r in args.ranker)


def ranker_command_parts(args: argparse.Namespace) -> list[str]:
    """The ``--ranker`` arguments again, for a run's recorded command line."""
    parts: list[str] = []
    for r in args.ranker or ():
        parts += ["--ranker", str(r)]
    if args.ranker_weights is not None:
        parts += ["--ranker-weights", args.ranker_weights]
    return parts
