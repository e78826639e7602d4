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

Labels from several models (why: one sampled response per prompt is a noisy label; other
models' lengths for the same prompt share most of its prompt-intrinsic length signal):

- ``consensus_labels``: ``-(w * z_target + (1 - w) * mean_m z_m)`` with ``z = (log(1 + len)
  - mean) / std`` per model over the given (training) prompts, so a terse and a verbose
  model count alike. Continuous, so no bucketing; higher = shorter.
- ``multi_listmle``: ``sum_m weight_m * ListMLE(scores, labels_m)``, one label row per
  model, all on the same list of prompts.
"""

from __future__ import annotations

from typing import Sequence

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


def standardized_log_lengths(lengths: np.ndarray | list) -> np.ndarray:
    """``(log(1 + len) - mean) / std`` over the given prompts (std 0 -> 1)."""
    logs = np.log1p(np.asarray(lengths, dtype=np.float64))
    if logs.ndim != 1 or logs.size < 2:
        raise ValueError(f"need a 1-D array of at least 2 lengths, got shape {logs.shape}")
    if logs.min() < 0:
        raise ValueError(f"output lengths must be >= 0, got {float(np.expm1(logs.min()))}")
    return (logs - logs.mean()) / (float(logs.std()) or 1.0)


def consensus_labels(target_lengths: np.ndarray | list, aux_lengths: Sequence[np.ndarray | list],
                     target_weight: float) -> np.ndarray:
    """``-(w * z_target + (1 - w) * mean_m z_m)``: higher = shorter, per-model standardised log lengths."""
    if not 0.0 <= target_weight <= 1.0:
        raise ValueError(f"target_weight must be in [0, 1], got {target_weight}")
    z_target = standardized_log_lengths(target_lengths)
    if not len(aux_lengths):
        if target_weight < 1.0:
            raise ValueError(f"target_weight {target_weight} < 1 needs at least one auxiliary model")
        return -z_target
    z_aux = np.mean([standardized_log_lengths(a) for a in aux_lengths], axis=0)
    if z_aux.shape != z_target.shape:
        raise ValueError(f"auxiliary lengths have shape {z_aux.shape}, the target's {z_target.shape}")
    return -(target_weight * z_target + (1.0 - target_weight) * z_aux)


def multi_model_weights(num_aux: int, target_weight: float) -> np.ndarray:
    """``[w, (1 - w) / k, ..., (1 - w) / k]``: the target first, then ``k`` auxiliary models."""
    if num_aux < 1:
        raise ValueError(f"multi-model labels need at least one auxiliary model, got {num_aux}")
    if not 0.0 <= target_weight <= 1.0:
        raise ValueError(f"target_weight must be in [0, 1], got {target_weight}")
    return np.array([target_weight] + [(1.0 - target_weight) / num_aux] * num_aux)


def multi_listmle(scores: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """``sum_m weights[m] * listmle(scores, labels[m])``: one list scored against several models' orders."""
    if labels.ndim != 2 or weights.shape != (labels.shape[0],):
        raise ValueError(f"multi_listmle needs labels (models, n) and weights (models,), got "
                         f"{tuple(labels.shape)} and {tuple(weights.shape)}")
    if bool((weights < 0).any()) or not float(weights.sum()) > 0:
        raise ValueError(f"multi_listmle weights must be >= 0 with a positive sum, got {weights.tolist()}")
    return sum(w * listmle(scores, row, generator) for w, row in zip(weights, labels) if float(w) != 0.0)
