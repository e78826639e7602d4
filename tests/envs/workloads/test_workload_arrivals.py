import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.workloads.arrivals import Deterministic, Gamma, OnOff, Poisson, Ramp


def rng(seed=0):
    return np.random.default_rng(seed)


def gap_stats(times):
    gaps = np.diff(times)
    return gaps.mean(), gaps.std() / gaps.mean()


ALL = [Poisson(2.0), Gamma(2.0, 3.0), Deterministic(2.0), OnOff(2.0, 5.0, 3.0), Ramp(0.5, 4.0, 50.0)]


@pytest.mark.parametrize("proc", ALL, ids=lambda p: type(p).__name__)
def test_same_seed_same_times_different_seed_different(proc):
    a = proc.times(rng(7), duration_s=100.0)
    b = proc.times(rng(7), duration_s=100.0)
    c = proc.times(rng(8), duration_s=100.0)
    np.testing.assert_array_equal(a, b)
    assert len(a) != len(c) or not np.array_equal(a, c)


@pytest.mark.parametrize("proc", ALL, ids=lambda p: type(p).__name__)
def test_times_sorted_inside_bounds(proc):
    t = proc.times(rng(1), duration_s=200.0)
    assert len(t) > 0
    assert np.all(np.diff(t) >= 0)
    assert t[0] >= 0.0 and t[-1] < 200.0
    assert len(proc.times(rng(1), max_count=17)) == 17
    assert len(proc.times(rng(1), duration_s=200.0, max_count=5)) == 5
    assert len(proc.times(rng(1), max_count=0)) == 0


@pytest.mark.parametrize("proc", ALL, ids=lambda p: type(p).__name__)
def test_count_bound_is_prefix_of_duration_bound(proc):
    long = proc.times(rng(3), duration_s=2000.0)
    short = proc.times(rng(3), max_count=len(long) // 2)
    np.testing.assert_array_equal(short, long[: len(short)])


@pytest.mark.parametrize("proc", ALL, ids=lambda p: type(p).__name__)
def test_unbounded_call_is_refused(proc):
    with pytest.raises(ValueError, match="duration_s or max_count"):
        proc.times(rng())


def test_poisson_rate_and_cv():
    mean_gap, cv = gap_stats(Poisson(4.0).times(rng(11), max_count=200_000))
    assert mean_gap == pytest.approx(0.25, rel=0.01)
    assert cv == pytest.approx(1.0, rel=0.02)


def test_poisson_count_in_duration():
    t = Poisson(5.0).times(rng(12), duration_s=10_000.0)
    assert len(t) == pytest.approx(50_000, rel=0.02)


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0])
def test_gamma_rate_and_cv(cv):
    mean_gap, measured_cv = gap_stats(Gamma(3.0, cv).times(rng(13), max_count=200_000))
    assert mean_gap == pytest.approx(1 / 3.0, rel=0.02)
    assert measured_cv == pytest.approx(cv, rel=0.03)


def test_deterministic_spacing_is_exact():
    t = Deterministic(1.5).times(rng(5), duration_s=600.0)
    np.testing.assert_allclose(np.diff(t), 1 / 1.5, rtol=1e-12)
    assert 0.0 <= t[0] < 1 / 1.5
    assert len(t) == 900
    assert t[-1] < 600.0


def test_deterministic_phase_varies_with_seed():
    phases = {Deterministic(1.0).times(rng(s), max_count=1)[0] for s in range(5)}
    assert len(phases) == 5
    assert all(0.0 <= p < 1.0 for p in phases)


@pytest.mark.parametrize("start_on", [True, False])
def test_onoff_no_arrivals_in_off_periods(start_on):
    proc = OnOff(3.0, on_s=60.0, off_s=40.0, start_on=start_on)
    t = proc.times(rng(21), duration_s=10_000.0)
    phase = np.mod(t, 100.0)
    if start_on:
        assert np.all(phase < 60.0)
    else:
        assert np.all(phase >= 40.0)
    # 100 cycles of 60 s on at 3 req/s
    assert len(t) == pytest.approx(100 * 60 * 3.0, rel=0.03)


def test_onoff_rate_within_on_periods_is_poisson():
    t = OnOff(2.0, on_s=10.0, off_s=10.0).times(rng(22), max_count=100_000)
    on_time = np.floor(t / 20.0) * 10.0 + np.mod(t, 20.0)  # back to the on-time axis
    mean_gap, cv = gap_stats(on_time)
    assert mean_gap == pytest.approx(0.5, rel=0.02)
    assert cv == pytest.approx(1.0, rel=0.03)


def test_ramp_rate_increases_linearly():
    proc = Ramp(0.2, 2.0, duration_s=10_000.0)
    t = proc.times(rng(31), duration_s=10_000.0)
    counts, _ = np.histogram(t, bins=10, range=(0.0, 10_000.0))
    assert np.all(np.diff(counts) > 0)
    # expected count per bin: integral of the linear rate over the bin
    mids = (np.arange(10) + 0.5) * 1000.0
    np.testing.assert_allclose(counts, proc.rate_at(mids) * 1000.0, rtol=0.1)
    assert len(t) == pytest.approx((0.2 + 2.0) / 2 * 10_000, rel=0.02)


def test_ramp_holds_end_rate_after_duration():
    t = Ramp(0.0, 2.0, duration_s=100.0).times(rng(32), duration_s=20_100.0)
    after = t[t >= 100.0]
    assert len(after) == pytest.approx(2.0 * 20_000, rel=0.02)


def test_ramp_down_to_zero_ends():
    t = Ramp(3.0, 0.0, duration_s=50.0).times(rng(33), max_count=10_000)
    assert len(t) < 10_000 and t[-1] < 50.0


@pytest.mark.parametrize("make", [
    lambda: Poisson(0.0), lambda: Poisson(-1.0), lambda: Poisson(math.nan), lambda: Poisson(math.inf),
    lambda: Gamma(1.0, 0.0), lambda: Gamma(0.0, 1.0), lambda: Deterministic(-2.0),
    lambda: OnOff(1.0, 0.0, 1.0), lambda: OnOff(1.0, 1.0, -1.0), lambda: Ramp(0.0, 0.0, 10.0),
    lambda: Ramp(1.0, 2.0, 0.0), lambda: Ramp(-1.0, 2.0, 10.0),
])
def test_invalid_parameters_are_refused(make):
    with pytest.raises(ValueError, match="must be|never send"):
        make()


def test_error_names_bad_value():
    with pytest.raises(ValueError, match="rate.*-3"):
        Poisson(-3.0)
    with pytest.raises(ValueError, match="duration_s.*-1"):
        Poisson(1.0).times(rng(), duration_s=-1.0)


@settings(max_examples=30, deadline=None)
@given(rate=st.floats(0.05, 50.0), cv=st.floats(0.2, 4.0), duration=st.floats(0.0, 50.0),
       seed=st.integers(0, 2**32 - 1))
def test_gamma_property_sorted_in_window(rate, cv, duration, seed):
    t = Gamma(rate, cv).times(rng(seed), duration_s=duration)
    assert np.all(np.diff(t) >= 0) and np.all((t >= 0) & (t < duration))
