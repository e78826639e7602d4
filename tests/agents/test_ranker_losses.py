"""ListMLE, pairwise and pointwise losses, the paper's bucketed labels, and Kendall's tau-b."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from agents.ranker_losses import (bucket_labels, listmle, log_length_targets, pairwise_logistic,  # noqa: E402
                                  pointwise_log_length)
from agents.ranking_metrics import kendall_tau_b, length_tau  # noqa: E402


def lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


def test_listmle_matches_hand_computed_value():
    # labels order the list 2 > 0 > 1 (label 5 is the shortest output, first in pi)
    scores = torch.tensor([0.5, -1.0, 2.0])
    labels = torch.tensor([3.0, 1.0, 5.0])
    expected = (lse(2.0, 0.5, -1.0) - 2.0) + (lse(0.5, -1.0) - 0.5) + (lse(-1.0) - (-1.0))
    assert listmle(scores, labels).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.24131 + 0.20141, abs=1e-4)  # the last term is 0


def test_listmle_of_reversed_scores_is_larger_and_gradient_flows():
    labels = torch.tensor([4.0, 3.0, 2.0, 1.0])
    good = torch.tensor([4.0, 3.0, 2.0, 1.0], requires_grad=True)
    bad = torch.tensor([1.0, 2.0, 3.0, 4.0])
    loss = listmle(good, labels)
    assert loss.item() < listmle(bad, labels).item()
    loss.backward()
    assert good.grad is not None and torch.isfinite(good.grad).all()
    assert good.grad.sum().item() == pytest.approx(0.0, abs=1e-6)  # shift invariance


def test_listmle_ties_are_broken_by_the_generator_only():
    scores = torch.tensor([0.0, 1.0, 2.0])
    labels = torch.tensor([1.0, 1.0, 0.0])  # items 0 and 1 tie
    a = (lse(0.0, 1.0, 2.0) - 0.0) + (lse(1.0, 2.0) - 1.0)
    b = (lse(0.0, 1.0, 2.0) - 1.0) + (lse(0.0, 2.0) - 0.0)
    seen = {round(listmle(scores, labels, torch.Generator().manual_seed(s)).item(), 5) for s in range(20)}
    assert seen == {round(a, 5), round(b, 5)}
    # the same generator seed gives the same value
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert listmle(scores, labels, g1).item() == listmle(scores, labels, g2).item()


def test_pairwise_logistic_hand_value_and_ties():
    scores = torch.tensor([0.0, 1.0, 3.0])
    labels = torch.tensor([2.0, 1.0, 1.0])  # pairs: 0>1, 0>2 (1 and 2 tie)
    expected = (math.log1p(math.exp(1.0)) + math.log1p(math.exp(3.0))) / 2
    assert pairwise_logistic(scores, labels).item() == pytest.approx(expected, rel=1e-6)
    tied = torch.tensor([1.0, 2.0], requires_grad=True)
    zero = pairwise_logistic(tied, torch.tensor([3.0, 3.0]))
    assert zero.item() == 0.0
    zero.backward()
    assert tied.grad.tolist() == [0.0, 0.0]


def test_pointwise_targets_and_loss():
    t = log_length_targets([0, math.e - 1], mu=0.5, sigma=0.5)
    assert t.tolist() == pytest.approx([1.0, -1.0])
    scores = torch.tensor([1.0, 0.0])
    assert pointwise_log_length(scores, torch.tensor(t, dtype=torch.float32)).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="sigma"):
        log_length_targets([1], 0.0, 0.0)


def test_losses_refuse_bad_lists():
    with pytest.raises(ValueError, match="at least 2"):
        listmle(torch.tensor([1.0]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="one shape"):
        pairwise_logistic(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0]))


def test_bucket_labels_follow_the_paper():
    # label = floor(8192/g) - floor(min(8192, len)/g): higher = shorter, ties within a bucket
    assert bucket_labels([0, 9, 10, 19, 8191, 8192, 9000], 10).tolist() == [819, 819, 818, 818, 0, 0, 0]
    assert bucket_labels([1, 2, 500], 1).tolist() == [8191, 8190, 7692]
    with pytest.raises(ValueError, match="bucket"):
        bucket_labels([1], 0)
    with pytest.raises(ValueError, match=">= 0"):
        bucket_labels([-1], 10)


def test_kendall_tau_b_hand_values():
    assert kendall_tau_b([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    # a tie in x: pairs (0,2) and (1,2) concordant, (0,1) tied in x only
    assert kendall_tau_b([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(2 * 3))
    assert kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert math.isnan(kendall_tau_b([1, 1, 1], [1, 2, 3]))
    # scores higher = shorter: a perfect predictor of short outputs has length_tau 1
    assert length_tau([3.0, 2.0, 1.0], [10, 20, 30]) == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        kendall_tau_b([1, 2], [1, 2, 3])


def test_kendall_tau_b_blocked_equals_brute_force():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 30, 700).astype(float)  # more than one block, with ties
    y = x + rng.integers(0, 30, 700)
    c = d = tx = ty = 0
    for i in range(len(x)):
        sx = np.sign(x[i + 1:] - x[i])
        sy = np.sign(y[i + 1:] - y[i])
        c += int((sx * sy > 0).sum())
        d += int((sx * sy < 0).sum())
        tx += int((sx != 0).sum())
        ty += int((sy != 0).sum())
    assert kendall_tau_b(x, y) == pytest.approx((c - d) / math.sqrt(tx * ty), rel=1e-12)
