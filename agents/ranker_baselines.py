"""Simple output-length predictors that a trained ranker must beat (numpy only).

Why: a fine-tuned transformer is worth its cost only if it ranks better than what a
few lines of statistics get from the same prompt text. The LTR paper compares against
other length predictors (``../shared/papers.md`` §4.4); here the comparisons are:

- ``prompt-length``: the prompt's token count. Its direction is fitted on the training
  prompts (``sign`` is +1 if longer prompts get shorter answers there, else -1).
- ``bag-of-words``: ridge regression of log(1 + length) on hashed word unigram and
  bigram counts (``log(1 + count)``, rows scaled to unit length), with the ridge
  strength picked by validation Kendall's tau. Solved in closed form in the dual,
  ``w = X^T (X X^T + lambda I)^-1 (y - mean y)``, since there are far fewer prompts than
  hashed features.

Both predict a score with the ranker's convention: higher = shorter.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from agents.ranking_metrics import length_tau

_WORD = re.compile(r"\w+")
DEFAULT_FEATURES = 1 << 15
DEFAULT_LAMBDAS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


@dataclass
class PromptLengthPredictor:
    """Score = sign * -(prompt tokens); ``fit`` picks the sign with the better training tau."""

    name: str = "prompt-length"
    sign: float = 1.0

    def fit(self, prompt_tokens: np.ndarray, lengths: np.ndarray) -> "PromptLengthPredictor":
        tau = length_tau(-np.asarray(prompt_tokens, dtype=np.float64), lengths)
        self.sign = -1.0 if tau < 0 else 1.0
        return self

    def score(self, prompt_tokens: np.ndarray) -> np.ndarray:
        return self.sign * -np.asarray(prompt_tokens, dtype=np.float64)


def hashed_counts(texts: Sequence[str], num_features: int = DEFAULT_FEATURES) -> np.ndarray:
    """Rows of ``log(1 + count)`` of hashed lower-case word unigrams and bigrams, unit L2 norm."""
    if num_features < 1:
        raise ValueError(f"num_features must be >= 1, got {num_features}")
    x = np.zeros((len(texts), num_features), dtype=np.float64)
    for row, text in enumerate(texts):
        words = _WORD.findall(text.lower())
        grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
        for g in grams:
            x[row, zlib.crc32(g.encode("utf-8")) % num_features] += 1.0
    np.log1p(x, out=x)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


@dataclass
class BagOfWordsRidge:
    """Ridge regression of log length on hashed word counts; ``lam`` chosen by validation tau."""

    name: str = "bag-of-words"
    num_features: int = DEFAULT_FEATURES
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
    lam: float | None = None
    weights: np.ndarray | None = field(default=None, repr=False)
    intercept: float = 0.0
    val_taus: dict[float, float] = field(default_factory=dict)

    def fit(self, texts: Sequence[str], lengths: np.ndarray, val_texts: Sequence[str],
            val_lengths: np.ndarray) -> "BagOfWordsRidge":
        if not self.lambdas or any(not lam > 0 for lam in self.lambdas):
            raise ValueError(f"ridge strengths must be > 0, got {self.lambdas}")
        x = hashed_counts(texts, self.num_features)
        y = np.log1p(np.asarray(lengths, dtype=np.float64))
        self.intercept = float(y.mean())
        kernel = x @ x.T
        xv = hashed_counts(val_texts, self.num_features)
        best = None
        for lam in self.lambdas:
            alpha = np.linalg.solve(kernel + lam * np.eye(len(y)), y - self.intercept)
            w = x.T @ alpha
            tau = length_tau(-(xv @ w), val_lengths)
            self.val_taus[lam] = tau
            if best is None or tau > best[0]:
                best = (tau, lam, w)
        _, self.lam, self.weights = best
        return self

    def predict_log_length(self, texts: Sequence[str]) -> np.ndarray:
        if self.weights is None:
            raise RuntimeError("BagOfWordsRidge.fit must be called before predicting")
        return hashed_counts(texts, self.num_features) @ self.weights + self.intercept

    def score(self, texts: Sequence[str]) -> np.ndarray:
        return -self.predict_log_length(texts)
