"""Rank-average ensembles of output-length rankers, with the weights chosen on validation prompts.

Why: two rankers fine-tuned from different pretrained backbones (MiniLM, SmolLM2) make
partly different mistakes, so a weighted mean of their per-prompt ranks can order prompts
better than either. Scores of different models live on different scales, so each member's
scores are first turned into ranks in (0, 1] over the prompts being ranked (ties share
their mean rank); higher = shorter, as for a single ranker.

``choose_weights`` picks the weights on a grid by the mean Kendall's tau over the
validation prompts of several splits (one weight vector for all splits); the test prompts
play no part. No torch here: the members' scores are inputs.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

from agents.ranking_metrics import length_tau


def normalized_ranks(scores: Sequence[float]) -> np.ndarray:
    """Ranks of ``scores`` divided by their count: in (0, 1], ties get their mean rank."""
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"scores must be a non-empty 1-d sequence, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("scores must be finite")
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.arange(1, x.size + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse] / x.size


def rank_average(member_scores: Sequence[Sequence[float]], weights: Sequence[float]) -> np.ndarray:
    """The weighted mean of each member's normalized ranks (weights >= 0, summing to 1)."""
    if len(member_scores) == 0:
        raise ValueError("an ensemble needs at least one member")
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(member_scores),):
        raise ValueError(f"got {w.size} weights for {len(member_scores)} members")
    if not np.isfinite(w).all() or (w < 0).any() or not np.isclose(w.sum(), 1.0):
        raise ValueError(f"weights must be >= 0 and sum to 1, got {w.tolist()}")
    sizes = {len(s) for s in member_scores}
    if len(sizes) != 1:
        raise ValueError(f"members scored different numbers of prompts: {sorted(sizes)}")
    return sum(wi * normalized_ranks(s) for wi, s in zip(w, member_scores))


def weight_grid(members: int, step: float) -> list[tuple[float, ...]]:
    """Every weight vector of ``members`` non-negative multiples of ``step`` that sum to 1."""
    if members < 1:
        raise ValueError(f"members must be >= 1, got {members}")
    n = round(1.0 / step) if step > 0 else 0
    if not (0 < step <= 1) or not np.isclose(n * step, 1.0):
        raise ValueError(f"step must divide 1 (0.1, 0.05, 0.25, ...), got {step}")
    return [tuple(k / n for k in ks) for ks in itertools.product(range(n + 1), repeat=members) if sum(ks) == n]


def choose_weights(val_scores: Sequence[Sequence[Sequence[float]]], val_lengths: Sequence[Sequence[float]],
                   step: float = 0.1) -> tuple[tuple[float, ...], float]:
    """(weights, mean validation tau): the grid point with the best mean tau over the splits.

    ``val_scores[split][member]`` are a member's scores of that split's validation prompts,
    ``val_lengths[split]`` their true output lengths. Ties go to the first grid point
    (the grid runs from all weight on the last member to all on the first).
    """
    if len(val_scores) == 0 or len(val_scores) != len(val_lengths):
        raise ValueError(f"need one list of member scores per split and one length array per split, got "
                         f"{len(val_scores)} and {len(val_lengths)}")
    members = {len(m) for m in val_scores}
    if len(members) != 1:
        raise ValueError(f"every split needs the same members, got member counts {sorted(members)}")
    best: tuple[tuple[float, ...], float] = ((), -np.inf)
    for w in weight_grid(members.pop(), step):
        tau = float(np.mean([length_tau(rank_average(m, w), lengths) for m, lengths in zip(val_scores, val_lengths)]))
        if tau > best[1]:
            best = (w, tau)
    return best
