"""Token-length distributions for prompts, questions, documents, responses and turn counts.

Why they exist: a scheduler's behaviour depends on the spread of lengths far more than
on their mean (short-job-first only helps when jobs differ), so workloads describe each
length by a distribution and draw from it with the workload's seeded generator.

``sample(rng, n)`` returns ``n`` integers, all >= 1. Bounds (``lo``, ``hi``) are part of
the distribution's definition: a draw outside them is re-drawn, never clamped, so no
artificial spike appears at a bound.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

# A LogNormal whose bounds keep less than this share of its mass would re-draw for ever.
_MIN_ACCEPTANCE = 1e-3


class LengthDist(ABC):
    """A distribution over positive integer token counts."""

    @abstractmethod
    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` independent draws as an int64 array, all >= 1."""


def _check_count(n: int) -> None:
    if n < 0:
        raise ValueError(f"sample count must be >= 0, got {n}")


@dataclass(frozen=True)
class Constant(LengthDist):
    """Always ``n`` tokens (VTC's 256/256 synthetic suites)."""

    n: int

    def __post_init__(self) -> None:
        if int(self.n) != self.n or self.n < 1:
            raise ValueError(f"Constant: n must be an integer >= 1, got {self.n!r}")

    def sample(self, rng, n):
        _check_count(n)
        return np.full(n, int(self.n), dtype=np.int64)


@dataclass(frozen=True)
class Uniform(LengthDist):
    """Integers drawn uniformly from ``lo`` to ``hi``, both included."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if int(self.lo) != self.lo or int(self.hi) != self.hi or not (1 <= self.lo <= self.hi):
            raise ValueError(f"Uniform: need integers 1 <= lo <= hi, got lo={self.lo!r}, hi={self.hi!r}")

    def sample(self, rng, n):
        _check_count(n)
        return rng.integers(int(self.lo), int(self.hi) + 1, size=n, dtype=np.int64)


@dataclass(frozen=True)
class LogNormal(LengthDist):
    """A log-normal length with the given ``mean`` and coefficient of variation ``cv``, rounded to integers.

    ``mean`` and ``cv`` describe the untruncated continuous distribution, the way real
    length statistics are usually reported; draws that round to a value outside
    ``[lo, hi]`` are re-drawn, so the sample mean is that of the truncated distribution.
    """

    mean: float
    cv: float
    lo: int = 1
    hi: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and self.mean > 0.0):
            raise ValueError(f"LogNormal: mean must be a finite number > 0, got {self.mean!r}")
        if not (math.isfinite(self.cv) and self.cv > 0.0):
            raise ValueError(f"LogNormal: cv must be a finite number > 0, got {self.cv!r}")
        if int(self.lo) != self.lo or self.lo < 1:
            raise ValueError(f"LogNormal: lo must be an integer >= 1, got {self.lo!r}")
        if self.hi is not None and (int(self.hi) != self.hi or self.hi < self.lo):
            raise ValueError(f"LogNormal: hi must be an integer >= lo={self.lo}, got {self.hi!r}")
        kept = self.acceptance()
        if kept < _MIN_ACCEPTANCE:
            raise ValueError(
                f"LogNormal(mean={self.mean}, cv={self.cv}): only {kept:.2e} of the mass lies in "
                f"[{self.lo}, {self.hi}]; widen the bounds or move the mean")

    @property
    def mu(self) -> float:
        return math.log(self.mean) - 0.5 * self.sigma ** 2

    @property
    def sigma(self) -> float:
        return math.sqrt(math.log1p(self.cv ** 2))

    def acceptance(self) -> float:
        """The probability that one draw rounds into ``[lo, hi]``."""
        def cdf(x: float) -> float:
            if x <= 0.0:
                return 0.0
            return 0.5 * (1.0 + math.erf((math.log(x) - self.mu) / (self.sigma * math.sqrt(2.0))))
        upper = 1.0 if self.hi is None else cdf(self.hi + 0.5)
        return upper - cdf(self.lo - 0.5)

    def sample(self, rng, n):
        _check_count(n)
        hi = math.inf if self.hi is None else self.hi
        out = np.empty(n, dtype=np.int64)
        filled = 0
        while filled < n:
            need = n - filled
            draws = np.rint(rng.lognormal(self.mu, self.sigma, size=need))
            good = draws[(draws >= self.lo) & (draws <= hi)]
            out[filled: filled + len(good)] = good
            filled += len(good)
        return out


@dataclass(frozen=True)
class Empirical(LengthDist):
    """Draws with replacement from observed lengths (a trace's prompt or response lengths)."""

    values: tuple[int, ...]
    _array: np.ndarray = field(init=False, repr=False, compare=False)

    def __init__(self, values: Sequence[int] | np.ndarray):
        arr = np.asarray(values)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"Empirical: values must be a non-empty 1-D sequence, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise ValueError(f"Empirical: values must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        if arr.min() < 1:
            raise ValueError(f"Empirical: values must be >= 1, got minimum {int(arr.min())}")
        object.__setattr__(self, "values", tuple(arr.tolist()))
        object.__setattr__(self, "_array", arr)

    def sample(self, rng, n):
        _check_count(n)
        return self._array[rng.integers(0, len(self._array), size=n)]
