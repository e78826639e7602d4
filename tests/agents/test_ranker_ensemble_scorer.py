"""``EnsembleScorer`` and ``--ranker`` given several times: LTR ranks by a rank average of checkpoints."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from tests.agents.test_ranker_in_simulate import _ltr_metrics
from train.cli import main

WORKLOAD = "alpaca-eval-meta-llama-3-8b-instruct-test"


def _calibrated(fresh_minilm, seed: int, specs):
    """An untrained MiniLM ranker whose calibration is its own scores of ``specs`` (as training would set)."""
    from agents.ranker_scorer import RankerScorer

    r = fresh_minilm(seed=seed)
    raw = RankerScorer(r).score(specs)
    r.meta = replace(r.meta, calibration=tuple(sorted(raw)))
    return r


@pytest.fixture(scope="module")
def specs():
    from envs.workloads import get_workload

    return get_workload(WORKLOAD).generate(0, 12)


def test_ensemble_scores_are_the_weighted_mean_of_calibrated_ranks(fresh_minilm, specs, tmp_path):
    from agents.ranker_scorer import EnsembleScorer, RankerScorer, make_ranker_scorer

    a, b = _calibrated(fresh_minilm, 1, specs), _calibrated(fresh_minilm, 2, specs)
    ens = EnsembleScorer([RankerScorer(a), RankerScorer(b)], [1.0, 3.0])
    assert ens.weights == [0.25, 0.75]
    assert ens.name.startswith("ensemble[0.25 ranker[minilm-l6") and " + 0.75 ranker[" in ens.name
    got = ens.score(specs)
    assert (ens.calls, ens.prompts_scored) == (1, 12)  # one call ran both members on the 12 new prompts
    ens.score(specs)
    assert (ens.calls, ens.prompts_scored) == (1, 12)  # cached
    ra, rb = RankerScorer(a).score(specs), RankerScorer(b).score(specs)
    # each member's calibration is its own scores of these prompts: rank_of gives (#scores <= s) / 12
    want = [0.25 * sum(x <= s for x in ra) / 12 + 0.75 * sum(x <= t for x in rb) / 12 for s, t in zip(ra, rb)]
    assert got == pytest.approx(want, abs=1e-12)
    assert ens.rank_feature()(specs[3]) == pytest.approx(want[3], abs=1e-12)
    one = make_ranker_scorer([a.save(tmp_path / "a")])        # one checkpoint: the plain scorer
    assert isinstance(one, RankerScorer) and one.score(specs) == pytest.approx(ra, abs=1e-6)


def test_ensemble_refuses_bad_members_and_weights(fresh_minilm, specs):
    from agents.ranker_scorer import EnsembleScorer, RankerScorer

    cal = RankerScorer(_calibrated(fresh_minilm, 1, specs))
    uncalibrated = RankerScorer(fresh_minilm(seed=4))
    with pytest.raises(ValueError, match="at least two rankers, got 1"):
        EnsembleScorer([cal])
    with pytest.raises(ValueError, match="has no calibration scores"):
        EnsembleScorer([cal, uncalibrated])
    with pytest.raises(ValueError, match="got 3 ranker weights for 2 rankers"):
        EnsembleScorer([cal, cal], [1, 1, 1])
    with pytest.raises(ValueError, match=r"must be >= 0 with a positive sum, got \[1.0, -1.0\]"):
        EnsembleScorer([cal, cal], [1, -1])


def test_simulate_serves_the_rank_average_of_several_checkpoints(fresh_minilm, specs, tmp_path):
    from agents.ranker_scorer import EnsembleScorer, RankerScorer

    ck_a = _calibrated(fresh_minilm, 1, specs).save(tmp_path / "a")
    ck_b = _calibrated(fresh_minilm, 2, specs).save(tmp_path / "b")
    out = tmp_path / "m.json"
    args = ["simulate", "--workload", WORKLOAD, "--num-requests", "40", "--rate", "60", "--max-num-seqs", "4",
            "--progress", "off", "--policy", "ltr"]
    assert main([*args, "--ranker", str(ck_a), "--ranker", str(ck_b), "--ranker-weights", "0.3,0.7",
                 "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["run"]["ranker"] == f"{ck_a},{ck_b}" and got["run"]["ranker_weights"] == [0.3, 0.7]
    # the run is the one LTR gives with the ensemble, not with either checkpoint alone
    ensemble = _ltr_metrics({"scorer": EnsembleScorer([RankerScorer(ck_a), RankerScorer(ck_b)], [0.3, 0.7])})
    assert got["e2e_mean_s"] == pytest.approx(ensemble["e2e_mean_s"], rel=1e-12)
    alone = {_ltr_metrics({"scorer": RankerScorer(ck)})["e2e_mean_s"] for ck in (ck_a, ck_b)}
    assert all(e != pytest.approx(ensemble["e2e_mean_s"], rel=1e-9) for e in alone)


@pytest.mark.parametrize("extra,message", [
    (["--ranker-weights", "1,2"], "--ranker-weights 1,2 is given without --ranker"),
    (["--ranker", "A", "--ranker-weights", "1,2"], "gives 2 weights for 1 --ranker checkpoints"),
    (["--ranker", "A", "--ranker", "B", "--ranker-weights", "1,x"], "comma-separated numbers, got '1,x'"),
])
def test_bad_ranker_weights_are_refused_before_anything_loads(extra, message, capsys):
    args = ["simulate", "--workload", WORKLOAD, "--num-requests", "4", "--progress", "off", "--policy", "ltr"]
    assert main([*args, *extra]) == 2
    assert message in capsys.readouterr().err
