"""Per-client arrival processes: when each request of one client is sent.

Why these five: they are the arrival patterns of the fairness and scheduling papers the
baselines follow (VTC's "uniform", "poisson", on/off and increase suites; Gamma
burstiness as in ServeGen), so a policy can be checked against the scenario its paper
used. Every process draws only from the numpy ``Generator`` it is handed, so a seed
fully determines the times.

``times(rng, duration_s, max_count)`` returns sorted arrival times in seconds, all in
``[0, duration_s)`` and at most ``max_count`` of them; at least one of the two bounds must
be given. Draws are made in fixed-size chunks, so with the same generator state the
times bounded by a count are a prefix of the times bounded by a long enough duration.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import numpy as np

_CHUNK = 1024  # draws per step; fixed so that the draw sequence never depends on the bounds


def _check_positive(owner: str, name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{owner}: {name} must be a finite number > 0, got {value!r}")


def _check_non_negative(owner: str, name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{owner}: {name} must be a finite number >= 0, got {value!r}")


def _check_bounds(owner: str, duration_s: float | None, max_count: int | None) -> None:
    if duration_s is None and max_count is None:
        raise ValueError(f"{owner}: give duration_s or max_count (or both); an unbounded process has no end")
    if duration_s is not None and not (duration_s >= 0.0):  # also rejects NaN
        raise ValueError(f"{owner}: duration_s must be >= 0, got {duration_s!r}")
    if max_count is not None and max_count < 0:
        raise ValueError(f"{owner}: max_count must be >= 0, got {max_count!r}")


def _accumulate(draw_gaps: Callable[[], np.ndarray], horizon: float, max_count: int | None,
                start: float = 0.0) -> np.ndarray:
    """Cumulative sums of gap chunks, from ``start``, stopped at ``horizon`` or ``max_count``."""
    limit = math.inf if max_count is None else max_count
    parts: list[np.ndarray] = []
    count = 0
    t = start
    while count < limit:
        times = t + np.cumsum(draw_gaps())
        t = float(times[-1])
        inside = times[times < horizon] if t >= horizon else times
        parts.append(inside)
        count += len(inside)
        if t >= horizon:
            break
    out = np.concatenate(parts) if parts else np.zeros(0)
    return out[:max_count] if max_count is not None else out


class ArrivalProcess(ABC):
    """Arrival times of one client's requests."""

    @abstractmethod
    def times(self, rng: np.random.Generator, duration_s: float | None = None,
              max_count: int | None = None) -> np.ndarray:
        """Sorted arrival times in seconds, in ``[0, duration_s)``, at most ``max_count``."""


@dataclass(frozen=True)
class Poisson(ArrivalProcess):
    """Memoryless arrivals at ``rate`` requests per second (exponential gaps)."""

    rate: float

    def __post_init__(self) -> None:
        _check_positive("Poisson", "rate", self.rate)

    def times(self, rng, duration_s=None, max_count=None):
        _check_bounds("Poisson", duration_s, max_count)
        scale = 1.0 / self.rate
        return _accumulate(lambda: rng.exponential(scale, _CHUNK),
                           math.inf if duration_s is None else duration_s, max_count)


@dataclass(frozen=True)
class Gamma(ArrivalProcess):
    """Gamma-distributed gaps with mean ``1/rate`` and coefficient of variation ``cv``.

    ``cv`` measures burstiness: 1 is Poisson, above 1 arrivals come in bursts, below 1
    they are more regular than Poisson. Shape is ``1/cv**2`` and scale ``cv**2/rate``.
    """

    rate: float
    cv: float

    def __post_init__(self) -> None:
        _check_positive("Gamma", "rate", self.rate)
        _check_positive("Gamma", "cv", self.cv)

    def times(self, rng, duration_s=None, max_count=None):
        _check_bounds("Gamma", duration_s, max_count)
        shape = 1.0 / self.cv ** 2
        scale = self.cv ** 2 / self.rate
        return _accumulate(lambda: rng.gamma(shape, scale, _CHUNK),
                           math.inf if duration_s is None else duration_s, max_count)


@dataclass(frozen=True)
class Deterministic(ArrivalProcess):
    """Evenly spaced arrivals every ``1/rate`` seconds (VTC's "uniform").

    The phase of the first arrival is drawn uniformly from ``[0, 1/rate)`` so that two
    clients at the same rate do not always arrive in lockstep.
    """

    rate: float

    def __post_init__(self) -> None:
        _check_positive("Deterministic", "rate", self.rate)

    def times(self, rng, duration_s=None, max_count=None):
        _check_bounds("Deterministic", duration_s, max_count)
        period = 1.0 / self.rate
        phase = float(rng.uniform(0.0, period))
        count = math.inf if max_count is None else max_count
        if duration_s is not None:
            count = min(count, max(0, math.ceil((duration_s - phase) / period)))
        times = phase + period * np.arange(int(count), dtype=np.float64)
        return times[times < duration_s] if duration_s is not None else times


@dataclass(frozen=True)
class OnOff(ArrivalProcess):
    """A client that alternates ``on_s`` seconds of Poisson arrivals at ``rate`` with ``off_s`` of silence.

    VTC's on/off suites use it to check that a client which was idle is not paid back
    for the service it did not ask for. With ``start_on=False`` the first period is off.
    """

    rate: float
    on_s: float
    off_s: float
    start_on: bool = True

    def __post_init__(self) -> None:
        _check_positive("OnOff", "rate", self.rate)
        _check_positive("OnOff", "on_s", self.on_s)
        _check_non_negative("OnOff", "off_s", self.off_s)

    def _on_time_until(self, wall_s: float) -> float:
        """How much on-time lies in the wall-clock window ``[0, wall_s)``."""
        cycle = self.on_s + self.off_s
        full, rem = divmod(wall_s, cycle)
        in_last = min(rem, self.on_s) if self.start_on else max(0.0, rem - self.off_s)
        return full * self.on_s + in_last

    def times(self, rng, duration_s=None, max_count=None):
        _check_bounds("OnOff", duration_s, max_count)
        horizon = math.inf if duration_s is None else self._on_time_until(duration_s)
        scale = 1.0 / self.rate
        # A Poisson process on the on-time axis, then each on-time mapped to the wall clock.
        on_times = _accumulate(lambda: rng.exponential(scale, _CHUNK), horizon, max_count)
        period_index = np.floor(on_times / self.on_s)
        wall = on_times + period_index * self.off_s + (0.0 if self.start_on else self.off_s)
        return wall[wall < duration_s] if duration_s is not None else wall


@dataclass(frozen=True)
class Ramp(ArrivalProcess):
    """Poisson arrivals whose rate moves linearly from ``rate_start`` to ``rate_end`` over ``duration_s``.

    After ``duration_s`` the rate stays at ``rate_end`` (VTC's "increase" suite grows one
    client's load during the whole run). Sampled by thinning a Poisson process at the
    larger of the two rates, which is exact for a non-homogeneous Poisson process.
    """

    rate_start: float
    rate_end: float
    duration_s: float

    def __post_init__(self) -> None:
        _check_non_negative("Ramp", "rate_start", self.rate_start)
        _check_non_negative("Ramp", "rate_end", self.rate_end)
        _check_positive("Ramp", "duration_s", self.duration_s)
        if max(self.rate_start, self.rate_end) <= 0.0:
            raise ValueError("Ramp: rate_start and rate_end are both 0; the client would never send")

    def rate_at(self, t: np.ndarray | float) -> np.ndarray:
        frac = np.clip(np.asarray(t, dtype=np.float64) / self.duration_s, 0.0, 1.0)
        return self.rate_start + (self.rate_end - self.rate_start) * frac

    def times(self, rng, duration_s=None, max_count=None):
        _check_bounds("Ramp", duration_s, max_count)
        horizon = math.inf if duration_s is None else duration_s
        if self.rate_end == 0.0:
            horizon = min(horizon, self.duration_s)  # nothing arrives after a ramp down to 0
        peak = max(self.rate_start, self.rate_end)
        limit = math.inf if max_count is None else max_count
        parts: list[np.ndarray] = []
        count, t = 0, 0.0
        while count < limit and t < horizon:
            candidates = t + np.cumsum(rng.exponential(1.0 / peak, _CHUNK))
            keep = rng.uniform(0.0, peak, _CHUNK) < self.rate_at(candidates)
            t = float(candidates[-1])
            accepted = candidates[keep & (candidates < horizon)]
            parts.append(accepted)
            count += len(accepted)
        out = np.concatenate(parts) if parts else np.zeros(0)
        return out[:max_count] if max_count is not None else out
