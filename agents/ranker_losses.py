"""Training losses for the output-length ranker, and the paper's bucketed labels.

Why: the LTR paper (Fu et al., NeurIPS'24, ``../shared/papers.md`` §4.2) trains with
ListMLE on lists of prompts, with labels that bucket the true length into groups of
``g = 10`` tokens so that near-equal lengths are not forced into an arbitrary order.
The pairwise logistic loss (RankNet) and pointwise regression on log length are the
usual comparisons: the first learns the same order from pairs, the second predicts the
length itself.

Sign convention everywhere: a higher score and a higher label mean a *shorter* output.

- ``bucket_labels``: ``label = floor(max_len / g) - floor(min(max_len, len) / g)``
  (``max_len = 8192``, the paper's generation cap); ``g = 1`` gives exact labels.
- ``listmle``: ``L = sum_i [ log sum_{k >= i} exp(s_pi(k)) - s_pi(i) ]`` where ``pi``
  sorts the list by label, highest first; tied labels are put in a random order drawn
  from the given generator (as allRank does), so no tie order is learned.
- ``pairwise_logistic``: the mean of ``log(1 + exp(-(s_i - s_j)))`` over the pairs whose
  label ``i`` is higher than label ``j``.
- ``pointwise_log_length``: mean squared error between the score and the standardised
  negative log length, ``-(log(1 + len) - mu) / sigma`` (``mu``, ``sigma`` from training).
"""

from __future__ import annotations

import numpy as np
import torch

MAX_LEN = 8192          # the paper's generation cap (labels saturate there)
from agents.ranker_config import LOSSES, TRAIN_BUCKET  # noqa: F401  (re-exported)


def bucket_labels(lengths: np.ndarray | list, bucket: int = TRAIN_BUCKET, max_len: int = MAX_LEN) -> np.ndarray:
    """The paper's labels: higher = shorter; lengths within one bucket of ``bucket`` tokens tie."""
    if bucket < 1:
        raise ValueError(f"bucket must be >= 1 token, got {bucket}")
    lens = np.asarray(lengths, dtype=np.int64)
    if lens.size and lens.min() < 0:
        raise ValueError(f"output lengths must be >= 0, got {int(lens.min())}")
    return max_len // bucket - np.minimum(lens, max_len) // bucket


def _check_list(scores: torch.Tensor, labels: torch.Tensor) -> None:
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(f"a list needs 1-D scores and labels of one shape, got {tuple(scores.shape)} "
                         f"and {tuple(labels.shape)}")
    if scores.numel() < 2:
        raise ValueError(f"a ranking list needs at least 2 items, got {scores.numel()}")


def listmle(scores: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """ListMLE (negative Plackett-Luce log-likelihood of the label order) of one list."""
    _check_list(scores, labels)
    n = scores.numel()
    shuffle = (torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)).to(scores.device)
    order = shuffle[torch.argsort(labels[shuffle], descending=True, stable=True)]
    s = scores[order]
    # log sum_{k >= i} exp(s_k): a reversed log-cumsum-exp
    tail = torch.flip(torch.logcumsumexp(torch.flip(s, (0,)), dim=0), (0,))
    return (tail - s).sum()


def pairwise_logistic(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean logistic loss over the ordered pairs (label_i > label_j) of one list."""
    _check_list(scores, labels)
    better = labels[:, None] > labels[None, :]
    if not bool(better.any()):
        return scores.sum() * 0.0  # every label ties: nothing to learn from this list
    diff = scores[:, None] - scores[None, :]
    return torch.nn.functional.softplus(-diff[better]).mean()


def log_length_targets(lengths: np.ndarray | list, mu: float, sigma: float) -> np.ndarray:
    """Pointwise targets: ``-(log(1 + len) - mu) / sigma`` (higher = shorter, like a score)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    return -(np.log1p(np.asarray(lengths, dtype=np.float64)) - mu) / sigma


def pointwise_log_length(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error between scores and standardised negative log lengths."""
    _check_list(scores, targets)
    return torch.mean((scores - targets) ** 2)
