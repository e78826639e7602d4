import numpy as np
import pytest

from envs.workloads.lengths import Constant, Empirical, LogNormal, Uniform


def rng(seed=0):
    return np.random.default_rng(seed)


def test_constant():
    out = Constant(256).sample(rng(), 5)
    assert out.dtype == np.int64 and out.tolist() == [256] * 5


def test_uniform_covers_both_ends():
    out = Uniform(2, 8).sample(rng(1), 10_000)
    assert set(out.tolist()) == set(range(2, 9))


def test_lognormal_mean_and_cv_without_bounds():
    out = LogNormal(1000.0, 1.0).sample(rng(2), 200_000)
    assert out.min() >= 1
    assert out.mean() == pytest.approx(1000.0, rel=0.02)
    assert out.std() / out.mean() == pytest.approx(1.0, rel=0.05)


def test_lognormal_bounds_redraw_not_clamp():
    dist = LogNormal(1000.0, 1.0, lo=500, hi=1500)
    out = dist.sample(rng(3), 100_000)
    assert out.min() >= 500 and out.max() <= 1500
    # Clamping would pile the out-of-range mass onto the bounds.
    at_hi = np.count_nonzero(out == 1500)
    near_hi = np.count_nonzero((out >= 1490) & (out < 1500)) / 10
    assert at_hi < 3 * near_hi + 10


def test_lognormal_acceptance_and_impossible_bounds():
    assert LogNormal(100.0, 0.5).acceptance() == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="mass"):
        LogNormal(100.0, 0.1, lo=5000, hi=6000)


def test_empirical_draws_only_given_values():
    dist = Empirical([3, 3, 3, 10])
    out = dist.sample(rng(4), 40_000)
    assert set(out.tolist()) == {3, 10}
    assert np.mean(out == 3) == pytest.approx(0.75, abs=0.01)
    assert dist == Empirical(np.array([3, 3, 3, 10]))


def test_same_seed_same_draws():
    d = LogNormal(200.0, 1.5, lo=1, hi=4096)
    np.testing.assert_array_equal(d.sample(rng(9), 100), d.sample(rng(9), 100))
    assert not np.array_equal(d.sample(rng(9), 100), d.sample(rng(10), 100))


@pytest.mark.parametrize("make, match", [
    (lambda: Constant(0), "n must be"),
    (lambda: Uniform(0, 5), "lo=0"),
    (lambda: Uniform(6, 5), "lo=6"),
    (lambda: LogNormal(-1.0, 1.0), "mean.*-1"),
    (lambda: LogNormal(10.0, 0.0), "cv.*0"),
    (lambda: LogNormal(10.0, 1.0, lo=0), "lo.*0"),
    (lambda: LogNormal(10.0, 1.0, lo=5, hi=4), "hi.*4"),
    (lambda: Empirical([]), "non-empty"),
    (lambda: Empirical([1, 0]), "minimum 0"),
    (lambda: Empirical([1.5]), "integers"),
])
def test_invalid_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()
