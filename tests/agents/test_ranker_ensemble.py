"""Rank-average ensembles of rankers: hand-checked ranks and blends, the weight grid, and a
validation-chosen weight that prefers the better member; bad inputs are named."""

import numpy as np
import pytest

from agents.ranker_ensemble import choose_weights, normalized_ranks, rank_average, weight_grid
from agents.ranking_metrics import length_tau


def test_normalized_ranks_by_hand_with_ties():
    assert normalized_ranks([10.0, -1.0, 3.0, 3.0]).tolist() == [1.0, 0.25, 0.625, 0.625]
    assert normalized_ranks([5.0]).tolist() == [1.0]
    # scale- and shift-free: only the order counts
    x = np.array([0.3, -2.0, 7.5, 1.0])
    assert np.array_equal(normalized_ranks(x), normalized_ranks(1000 * x - 3))


def test_rank_average_by_hand():
    a = [1.0, 2.0, 3.0, 4.0]           # ranks .25 .5 .75 1
    b = [40.0, 30.0, 20.0, 10.0]       # ranks 1 .75 .5 .25
    assert np.allclose(rank_average([a, b], [0.5, 0.5]), [0.625] * 4)
    assert np.allclose(rank_average([a, b], [0.75, 0.25]), [0.4375, 0.5625, 0.6875, 0.8125])
    assert np.allclose(rank_average([a, b], [1.0, 0.0]), normalized_ranks(a))


def test_weight_grid():
    assert weight_grid(2, 0.25) == [(0.0, 1.0), (0.25, 0.75), (0.5, 0.5), (0.75, 0.25), (1.0, 0.0)]
    assert weight_grid(1, 0.1) == [(1.0,)]
    assert len(weight_grid(3, 0.1)) == 66
    assert all(np.isclose(sum(w), 1.0) for w in weight_grid(3, 0.1))


def test_choose_weights_prefers_the_member_that_ranks_validation_better():
    rng = np.random.default_rng(0)
    val_scores, val_lengths = [], []
    for _ in range(3):
        lengths = rng.integers(10, 1000, size=60).astype(float)
        good = -lengths + rng.normal(0, 50, size=60)      # higher = shorter, little noise
        noisy = -lengths + rng.normal(0, 2000, size=60)
        val_scores.append([noisy, good])
        val_lengths.append(lengths)
    w, tau = choose_weights(val_scores, val_lengths, step=0.25)
    assert w[1] > w[0]
    expected = np.mean([length_tau(rank_average(m, w), y) for m, y in zip(val_scores, val_lengths)])
    assert tau == pytest.approx(expected)
    # the chosen point is at least as good as each member alone
    for alone in ((1.0, 0.0), (0.0, 1.0)):
        assert tau >= np.mean([length_tau(rank_average(m, alone), y) for m, y in zip(val_scores, val_lengths)])


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="got 1 weights for 2 members"):
        rank_average([[1, 2], [2, 1]], [1.0])
    with pytest.raises(ValueError, match=r"sum to 1, got \[0.5, 0.6\]"):
        rank_average([[1, 2], [2, 1]], [0.5, 0.6])
    with pytest.raises(ValueError, match=r"different numbers of prompts: \[2, 3\]"):
        rank_average([[1, 2], [2, 1, 0]], [0.5, 0.5])
    with pytest.raises(ValueError, match="at least one member"):
        rank_average([], [])
    with pytest.raises(ValueError, match="finite"):
        normalized_ranks([1.0, float("nan")])
    with pytest.raises(ValueError, match="step must divide 1.*got 0.3"):
        weight_grid(2, 0.3)
    with pytest.raises(ValueError, match="same members, got member counts \\[1, 2\\]"):
        choose_weights([[[1, 2]], [[1, 2], [2, 1]]], [[1, 2], [1, 2]])
    with pytest.raises(ValueError, match="got 1 and 2"):
        choose_weights([[[1, 2]]], [[1, 2], [1, 2]])


def _script():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "ranker_ensemble.py"
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location("ranker_ensemble_script", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def _member_file(tmp_path, name, predictor, noise, seeds, shorten=False):
    """A ranker_tau.py --json file whose rows score Llama's real splits with -length + noise."""
    import json

    from agents.ranker_data import load_ranker_data

    rng = np.random.default_rng(len(name))
    rows = []
    for seed in seeds:
        d = load_ranker_data("Meta-Llama-3-8B-Instruct", seed)
        val = -d.val.lengths + rng.normal(0, noise, len(d.val))
        test = -d.test.lengths + rng.normal(0, noise, len(d.test))
        if shorten:
            val = val[:-1]
        rows.append({"model": "Meta-Llama-3-8B-Instruct", "predictor": predictor, "split_seed": seed,
                     "val_tau": length_tau(val[:len(d.val)], d.val.lengths[:len(val)]),
                     "test_tau": length_tau(test, d.test.lengths),
                     "val_scores": val.tolist(), "test_scores": test.tolist()})
    rows.append({"model": "Meta-Llama-3-8B-Instruct", "predictor": "bag-of-words", "split_seed": seeds[0],
                 "val_tau": 0.3, "test_tau": 0.3})  # a baseline row without scores is not a member
    path = tmp_path / name
    path.write_text(json.dumps({"rows": rows}))
    return path


def test_ensemble_script_weights_the_better_member_and_reports_every_split(tmp_path, capsys):
    import json

    script = _script()
    poor = _member_file(tmp_path, "poor.json", "a poor ranker", 3000.0, [0, 1, 2])
    good = _member_file(tmp_path, "good.json", "a good ranker", 100.0, [1, 2])
    out = tmp_path / "ens.json"
    assert script.main(["--member", str(poor), "--member", f"{good}:a good ranker", "--step", "0.25",
                        "--json", str(out)]) == 0
    text = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["split_seeds"] == [1, 2]                     # only the splits both members ranked
    assert result["weights"][1] > result["weights"][0]
    assert "rank-average ensemble" in text and "test s1" in text and "test s0" not in text
    assert len(result["ensemble_test_tau"]) == 2
    assert all(-1.0 <= t <= 1.0 for t in result["ensemble_test_tau"])


def test_ensemble_script_names_bad_members(tmp_path):
    script = _script()
    a = _member_file(tmp_path, "a.json", "ranker a", 100.0, [0])
    b = _member_file(tmp_path, "b.json", "ranker b", 100.0, [1])
    with pytest.raises(SystemExit, match="no predictor 'ranker z' in .*available: ranker a"):
        script.main(["--member", f"{a}:ranker z", "--member", str(b)])
    with pytest.raises(SystemExit, match=r"share no split seed: ranker a: \[0\]; ranker b: \[1\]"):
        script.main(["--member", str(a), "--member", str(b)])
    with pytest.raises(SystemExit, match="at least two --member"):
        script.main(["--member", str(a)])
    with pytest.raises(SystemExit, match="cannot read member file .*missing.json"):
        script.main(["--member", str(tmp_path / "missing.json"), "--member", str(a)])
    with pytest.raises(SystemExit, match="--step: step must divide 1.*got 0.3"):
        script.main(["--member", str(a), "--member", str(a), "--step", "0.3"])
    short = _member_file(tmp_path, "short.json", "ranker s", 100.0, [0], shorten=True)
    with pytest.raises(SystemExit, match="split 0 has 79 validation and 161 test scores; the split has 80 and 161"):
        script.main(["--member", str(a), "--member", str(short)])
