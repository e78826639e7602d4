"""Kendall's tau-b between predicted scores and true output lengths (numpy only).

Why: the LTR paper (Fu et al., NeurIPS'24, ``../shared/papers.md`` §4.1) judges a length
predictor by how well it *ranks*, not by its length error, and reports Kendall's tau
against the true lengths (0.52-0.64 for OPT-125M). Scores follow the ranker's sign
convention (higher = shorter output), so ``length_tau(scores, lengths)`` is the tau
between the scores and the *negated* lengths: 1 is a perfect shortest-first order, 0 is
no better than chance.

tau-b (ties counted as in scipy's default) is computed exactly from all pairs, in blocks
so memory stays bounded; the evaluation sets here are at most a few thousand prompts.
"""

from __future__ import annotations

import math

import numpy as np

_BLOCK = 512


def kendall_tau_b(x: np.ndarray | list, y: np.ndarray | list) -> float:
    """Kendall's tau-b of two equally long sequences; NaN when either is constant."""
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if len(a) != len(b):
        raise ValueError(f"kendall_tau_b: the sequences differ in length ({len(a)} vs {len(b)})")
    if len(a) < 2:
        raise ValueError(f"kendall_tau_b: needs at least 2 items, got {len(a)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("kendall_tau_b: the inputs must be finite")
    concordance = 0.0
    untied_a = 0.0
    untied_b = 0.0
    for start in range(0, len(a), _BLOCK):
        sa = np.sign(a[start:start + _BLOCK, None] - a[None, :])
        sb = np.sign(b[start:start + _BLOCK, None] - b[None, :])
        concordance += float((sa * sb).sum())
        untied_a += float(np.count_nonzero(sa))
        untied_b += float(np.count_nonzero(sb))
    # every unordered pair was counted twice, with both signs; the ratio is unchanged
    if untied_a == 0.0 or untied_b == 0.0:
        return math.nan
    return concordance / math.sqrt(untied_a * untied_b)


def length_tau(scores: np.ndarray | list, lengths: np.ndarray | list) -> float:
    """tau-b between scores (higher = shorter) and true output lengths: 1 = perfect shortest-first."""
    return kendall_tau_b(scores, -np.asarray(lengths, dtype=np.float64))
