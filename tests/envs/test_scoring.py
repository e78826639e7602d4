"""The Scorer interface and the calibrated noisy oracle (LTR's default scorer).

The noisy oracle's promise is a Kendall's tau against the true lengths: measured here on
2,000 requests it must land within sampling error (about 0.01 at this size) of the
parameter, on lengths that follow its reference distribution, and the scores must depend
on (seed, request id, length) alone.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from envs.request import RequestSpec
from envs.scoring import DEFAULT_LOG_STD, NoisyOracleScorer, Scorer, standard_normal_noise
from envs.tokens import UniqueTokens

N = 2000
TOL = 0.03


def spec(rid: int, out: int, client: int = 0, t: float = 0.0) -> RequestSpec:
    return RequestSpec(rid, client, t, UniqueTokens(1000 + rid, 20), out)


def specs_with(lengths) -> list[RequestSpec]:
    return [spec(i, int(n)) for i, n in enumerate(lengths)]


def kendall_tau_b(x, y) -> float:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    dx = np.sign(x[:, None] - x[None, :]).astype(np.int8)
    dy = np.sign(y[:, None] - y[None, :]).astype(np.int8)
    num = float((dx.astype(np.int64) * dy).sum())
    return num / math.sqrt(float((dx != 0).sum()) * float((dy != 0).sum()))


def measured_tau(scorer: NoisyOracleScorer, specs) -> float:
    """Tau between the scores and the true *shortness* (-length): the parameter's convention."""
    return kendall_tau_b(scorer.score(specs), [-s.output_len for s in specs])


def lognormal_lengths(log_std: float, seed: int, n: int = N) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.maximum(1, np.round(np.exp(6.0 + log_std * rng.standard_normal(n)))).astype(int)


def test_it_is_a_scorer_and_an_oracle():
    s = NoisyOracleScorer()
    assert isinstance(s, Scorer)
    assert s.oracle is True
    assert s.kendall_tau == 0.6 and s.seed == 0
    assert s.rho == pytest.approx(math.sin(0.3 * math.pi))
    assert s.name == "noisy-oracle(tau=0.6,seed=0,lognormal)"
    assert NoisyOracleScorer(0.5, 3, [1, 2, 3]).name == "noisy-oracle(tau=0.5,seed=3,ref3)"


@pytest.mark.parametrize("tau", [0.0, 0.3, 0.6, 0.9])
@pytest.mark.parametrize("seed", [0, 1])
def test_measured_tau_matches_the_parameter_on_lengths_that_follow_the_default_reference(tau, seed):
    specs = specs_with(lognormal_lengths(DEFAULT_LOG_STD, seed=100 + seed))
    got = measured_tau(NoisyOracleScorer(tau, seed), specs)
    assert abs(got - tau) < TOL, f"tau={tau} seed={seed}: measured {got:.4f}"


@pytest.mark.parametrize("tau", [0.3, 0.6])
def test_with_reference_lengths_the_tau_holds_on_any_length_distribution(tau):
    rng = np.random.default_rng(7)
    # a bimodal mix of short answers and long generations: far from log-normal
    lengths = np.concatenate([rng.integers(5, 60, N // 2), np.round(rng.exponential(900.0, N // 2)) + 200])
    rng.shuffle(lengths)
    specs = specs_with(lengths)
    calibrated = NoisyOracleScorer(tau, 0, reference_lengths=[s.output_len for s in specs])
    got = measured_tau(calibrated, specs)
    assert abs(got - tau) < TOL, f"calibrated: measured {got:.4f} for tau {tau}"


def test_without_a_reference_the_tau_follows_the_documented_formula_for_other_spreads():
    s = 1.4  # log-lengths spread wider than the reference: the latent is wider than N(0, 1)
    specs = specs_with(lognormal_lengths(s, seed=5))
    scorer = NoisyOracleScorer(0.6, 0)
    rho = scorer.rho
    k = s / DEFAULT_LOG_STD
    expected = 2 / math.pi * math.asin(rho * k / math.sqrt(rho * rho * k * k + 1 - rho * rho))
    assert expected == pytest.approx(0.763, abs=0.001)
    got = measured_tau(scorer, specs)
    assert abs(got - expected) < TOL, f"measured {got:.4f}, formula {expected:.4f}"
    # and the same lengths as reference bring it back to the parameter
    calibrated = NoisyOracleScorer(0.6, 0, reference_lengths=[x.output_len for x in specs])
    assert abs(measured_tau(calibrated, specs) - 0.6) < TOL


def test_tau_one_is_the_exact_length_order_and_minus_one_its_reverse():
    lengths = [50, 3, 900, 50, 7, 120]
    specs = specs_with(lengths)
    best = NoisyOracleScorer(1.0, 4).score(specs)
    worst = NoisyOracleScorer(-1.0, 4).score(specs)
    assert sorted(range(6), key=lambda i: (-best[i], i)) == [1, 4, 0, 3, 5, 2]
    assert best[0] == best[3]  # equal lengths, equal scores: no noise at all
    assert sorted(range(6), key=lambda i: (-worst[i], i)) == [2, 5, 0, 3, 4, 1]


def test_tau_zero_ignores_the_length():
    a = NoisyOracleScorer(0.0, 9).score([spec(5, 10), spec(6, 4000)])
    b = NoisyOracleScorer(0.0, 9).score([spec(5, 3000), spec(6, 1)])
    assert a == b
    assert a[0] == -standard_normal_noise(9, 5)


def test_scores_depend_on_seed_request_id_and_length_alone():
    specs = specs_with(lognormal_lengths(1.0, seed=3, n=50))
    scorer = NoisyOracleScorer(0.6, 11)
    whole = scorer.score(specs)
    # batching, order, a fresh instance, another client or arrival time: the same numbers
    pieces = scorer.score(specs[30:]) + scorer.score(specs[:30])
    assert pieces == whole[30:] + whole[:30]
    assert NoisyOracleScorer(0.6, 11).score(list(reversed(specs))) == list(reversed(whole))
    moved = [RequestSpec(s.request_id, 7, 123.0, UniqueTokens(5, 300), s.output_len) for s in specs]
    assert scorer.score(moved) == whole
    # another seed changes every score
    other = NoisyOracleScorer(0.6, 12).score(specs)
    assert all(x != y for x, y in zip(whole, other))
    # the value itself is pinned: -(rho * ln(L) / 0.75 + sqrt(1 - rho^2) * e)
    rho = math.sin(0.3 * math.pi)
    s0 = specs[0]
    expected = -(rho * math.log(s0.output_len) / DEFAULT_LOG_STD
                 + math.sqrt(1 - rho * rho) * standard_normal_noise(11, s0.request_id))
    assert whole[0] == pytest.approx(expected, rel=1e-12)


def test_the_noise_is_standard_normal_and_independent_of_the_id_sequence():
    e = np.array([standard_normal_noise(0, i) for i in range(20000)])
    assert abs(e.mean()) < 0.03 and abs(e.std() - 1.0) < 0.03
    assert abs(np.corrcoef(e[:-1], e[1:])[0, 1]) < 0.03   # consecutive ids are not correlated
    assert standard_normal_noise(0, 17) == standard_normal_noise(0, 17)
    assert standard_normal_noise(0, 17) != standard_normal_noise(1, 17)


def test_reference_latent_is_the_normal_score_at_mid_ranks():
    s = NoisyOracleScorer(0.6, 0, reference_lengths=[30, 20, 10, 20])
    inv = NormalDist().inv_cdf
    # (#below + #equal/2 + 1/2) / (n + 1), n = 4
    assert s.latent(20) == pytest.approx(inv(2.5 / 5)) == pytest.approx(0.0, abs=1e-12)
    assert s.latent(10) == pytest.approx(inv(1.0 / 5))
    assert s.latent(5) == pytest.approx(inv(0.5 / 5))
    assert s.latent(25) == pytest.approx(inv(3.5 / 5))
    assert s.latent(31) == pytest.approx(inv(4.5 / 5))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(kendall_tau=1.5), ValueError, "kendall_tau must be a number in \\[-1, 1\\], got 1.5"),
    (dict(kendall_tau=float("nan")), ValueError, "kendall_tau"),
    (dict(kendall_tau=True), ValueError, "kendall_tau"),
    (dict(seed=1.5), TypeError, "seed must be an int, got 1.5"),
    (dict(reference_lengths=[]), ValueError, "reference_lengths is empty"),
    (dict(reference_lengths=[5, 0, 7]), ValueError, "reference_lengths must be >= 1, got 0"),
])
def test_bad_arguments_are_named(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        NoisyOracleScorer(**kwargs)
