"""Training improves Kendall's tau; `servegym train ranker` and `servegym ranker score` end to end;
the Scorer that serves a checkpoint in the simulator. CPU, MiniLM, tiny slices."""

import dataclasses
import json

import numpy as np
import pytest

from agents.ranker_data import RankerSplit, load_ranker_data
from agents.ranking_metrics import length_tau
from envs.request import RequestSpec
from envs.scoring import Scorer
from envs.tokens import UniqueTokens
from train.cli import main

pytest.importorskip("transformers")

LLAMA = "Meta-Llama-3-8B-Instruct"


def _head(split: RankerSplit, n: int) -> RankerSplit:
    return RankerSplit(split.name, split.instruction_ids[:n], split.prompts[:n], split.prompt_tokens[:n],
                       split.lengths[:n], {m: v[:n] for m, v in split.aux_lengths.items()})


@pytest.fixture(scope="module")
def tiny_data():
    from agents.ranker_training import RankerTrainConfig, aux_models_for

    d = load_ranker_data(LLAMA, split_seed=0, max_train=48, aux_models=aux_models_for(RankerTrainConfig()))
    return dataclasses.replace(d, val=_head(d.val, 40), test=_head(d.test, 40))


def test_training_on_a_tiny_slice_improves_tau_over_the_untrained_model(fresh_minilm, tiny_data):
    from agents.ranker_training import RankerTrainConfig, train_ranker

    ranker = fresh_minilm(seed=0, max_length=16)
    before = length_tau(ranker.score(tiny_data.train.prompts), tiny_data.train.lengths)
    config = RankerTrainConfig(epochs=3, list_size=16, head_lr=1e-2, max_length=16, seed=0, lr=2e-5,
                               label_source="target")
    result = train_ranker(config, tiny_data, ranker)
    after = length_tau(ranker.score(tiny_data.train.prompts), tiny_data.train.lengths)
    assert result.ranker is ranker and len(result.history) == 3
    assert after > before + 0.2                                  # it learns the slice it saw
    assert result.val_tau > result.untrained_val_tau + 0.05      # and ranks unseen prompts better
    assert result.val_tau == max(h.val_tau for h in result.history)
    assert result.val_tau == pytest.approx(length_tau(ranker.score(tiny_data.val.prompts), tiny_data.val.lengths))
    assert result.test_tau == pytest.approx(length_tau(result.test_scores, tiny_data.test.lengths))
    meta = ranker.meta
    assert (meta.target_model, meta.loss, meta.bucket, meta.split_seed) == (LLAMA, "listmle", 10, 0)
    assert len(meta.calibration) == 40 and list(meta.calibration) == sorted(meta.calibration)
    assert all(np.isfinite(h.mean_loss) for h in result.history)


def test_consensus_labels_train_and_select_on_the_validation_consensus(fresh_minilm, tiny_data):
    from agents.ranker_losses import consensus_labels
    from agents.ranker_training import RankerTrainConfig, train_ranker

    ranker = fresh_minilm(seed=0, max_length=16)
    config = RankerTrainConfig(epochs=3, list_size=16, head_lr=1e-2, max_length=16, seed=0,
                               label_source="consensus", select_on="consensus", freeze_layers=2)
    before = {k: v.clone() for k, v in ranker.module.encoder.encoder.layer[0].state_dict().items()}
    top_before = ranker.module.encoder.encoder.layer[5].output.dense.weight.detach().clone()
    result = train_ranker(config, tiny_data, ranker)
    val_ref = consensus_labels(tiny_data.val.lengths, [tiny_data.val.aux_lengths[m] for m in tiny_data.aux_models],
                               0.8)
    best = max(result.history, key=lambda h: h.select_tau)
    assert result.best_epoch == best.epoch and result.val_tau == best.val_tau
    from agents.ranking_metrics import kendall_tau_b
    assert best.select_tau == pytest.approx(kendall_tau_b(ranker.score(tiny_data.val.prompts), val_ref))
    assert result.val_tau > result.untrained_val_tau + 0.05
    # frozen: layer 0 unchanged; the top layer trained
    after = ranker.module.encoder.encoder.layer[0].state_dict()
    assert all(torch_equal(before[k], after[k]) for k in before)
    assert not torch_equal(top_before, ranker.module.encoder.encoder.layer[5].output.dense.weight)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_train_on_val_trains_on_both_splits_for_exactly_the_epochs_and_keeps_the_last(fresh_minilm, tiny_data):
    from agents.ranker_training import RankerTrainConfig, train_ranker

    ranker = fresh_minilm(seed=0, max_length=16)
    config = RankerTrainConfig(epochs=2, list_size=16, head_lr=1e-2, max_length=16, seed=0, label_source="target",
                               train_on_val=True)
    result = train_ranker(config, tiny_data, ranker)
    assert result.best_epoch == 2 and len(result.history) == 2
    assert ranker.meta.metrics["val_in_training"] == 1.0 and ranker.meta.metrics["best_epoch"] == 2
    assert result.val_tau == pytest.approx(result.history[-1].val_tau)
    assert result.val_tau == pytest.approx(length_tau(ranker.score(tiny_data.val.prompts), tiny_data.val.lengths))
    assert result.test_tau == pytest.approx(length_tau(ranker.score(tiny_data.test.prompts), tiny_data.test.lengths))


def test_train_on_val_sees_the_validation_prompts(monkeypatch, fresh_minilm, tiny_data):
    import agents.ranker_training as training
    from agents.ranker_training import RankerTrainConfig, train_ranker

    seen = []
    real = training.ranking_lists
    monkeypatch.setattr(training, "ranking_lists", lambda n, size, rng: seen.append(n) or real(n, size, rng))
    config = RankerTrainConfig(epochs=1, list_size=16, max_length=16, label_source="target", train_on_val=True)
    train_ranker(config, tiny_data, fresh_minilm(seed=0, max_length=16))
    assert set(seen) == {48 + 40}


def test_train_on_val_refuses_an_epoch_choice_on_validation():
    from agents.ranker_training import RankerTrainConfig

    with pytest.raises(ValueError, match="select_on='consensus'.*train_on_val"):
        RankerTrainConfig(train_on_val=True, select_on="consensus")


@pytest.mark.parametrize("loss,source", [("pairwise", "target"), ("pointwise", "target"), ("listmle", "multi"),
                                         ("pairwise", "consensus"), ("pointwise", "multi")])
def test_other_losses_train_without_error(fresh_minilm, tiny_data, loss, source):
    from agents.ranker_training import RankerTrainConfig, train_ranker

    data = dataclasses.replace(tiny_data, train=_head(tiny_data.train, 16), val=_head(tiny_data.val, 8),
                               test=_head(tiny_data.test, 8))
    result = train_ranker(RankerTrainConfig(loss=loss, epochs=1, list_size=8, max_length=8, label_source=source),
                          data, fresh_minilm(max_length=8))
    assert len(result.history) == 1 and np.isfinite(result.history[0].mean_loss)
    assert result.ranker.meta.loss == loss


def test_cli_trains_compares_saves_and_scores(fresh_minilm, tiny_data, tmp_path, monkeypatch, capsys):
    import agents.ranker_data
    from agents.ranker import Ranker

    small = dataclasses.replace(tiny_data, train=_head(tiny_data.train, 32), val=_head(tiny_data.val, 24),
                                test=_head(tiny_data.test, 24))
    monkeypatch.setattr(agents.ranker_data, "load_ranker_data", lambda *a, **k: small)
    run = tmp_path / "run"
    code = main(["train", "ranker", "--backbone", "minilm-l6", "--target-model", LLAMA, "--loss", "listmle",
                 "--epochs", "1", "--list-size", "16", "--max-length", "16", "--out", str(run),
                 "--json", str(tmp_path / "r.json"), "--progress", "off"])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert set(result["baseline_kendall_tau"]) == {"prompt-length", "bag-of-words"}
    assert isinstance(result["test_kendall_tau"], float) and -1 <= result["test_kendall_tau"] <= 1
    assert (result["num_train"], result["num_val"], result["num_test"]) == (32, 24, 24)
    assert json.loads((run / "results.json").read_text()) == result
    for name in ("minilm-l6 listmle", "minilm-l6 untrained", "prompt-length", "bag-of-words", "test tau"):
        assert name in out
    assert f"{result['test_kendall_tau']:.3f}" in out
    assert (run / "checkpoint" / "model.safetensors").is_file()
    assert list((run / "tb").glob("events.out.tfevents.*"))
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["list_size"] == 16 and config["tf32"] is False and result["tf32"] is False

    prompts = tmp_path / "in.jsonl"
    prompts.write_text('{"prompt": "Write a long story about a dragon.", "id": 7}\n{"prompt": "Hi"}\n')
    assert main(["ranker", "score", "--checkpoint", str(run / "checkpoint"), "--input", str(prompts),
                 "--output", str(tmp_path / "out.jsonl")]) == 0
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [set(x) for x in lines] == [{"prompt", "id", "score"}, {"prompt", "score"}] and lines[0]["id"] == 7
    expected = Ranker.load(run / "checkpoint").score(["Write a long story about a dragon.", "Hi"])
    assert [x["score"] for x in lines] == expected.tolist()

    prompts.write_text('{"prompt": "ok"}\n{"text": "no prompt key"}\n')
    assert main(["ranker", "score", "-c", str(run / "checkpoint"), "-i", str(prompts), "-o",
                 str(tmp_path / "bad.jsonl")]) == 2
    assert f"{prompts}:2: expected a JSON object with a string 'prompt'" in capsys.readouterr().err


def _spec(rid, text):
    return RequestSpec(request_id=rid, client_id=0, arrival_time=0.0, prompt=UniqueTokens(rid, 4), output_len=5,
                       prompt_text=text)


def test_scorer_batches_new_prompts_and_caches_by_text(fresh_minilm):
    from agents.ranker import RankerMeta
    from agents.ranker_scorer import RankerScorer

    ranker = fresh_minilm(seed=3, max_length=16)
    texts = ["alpha", "write an essay", "beta", "alpha"]
    ranker.meta = RankerMeta(backbone="minilm-l6", pooling="mean", max_length=16, target_model=LLAMA,
                             loss="listmle", calibration=tuple(sorted(ranker.score(["x", "y", "z", "w"]).tolist())))
    calls = []
    score = ranker.score

    def counting(batch, batch_size=64):
        calls.append(list(batch))
        return score(batch, batch_size)

    ranker.score = counting
    scorer = RankerScorer(ranker, batch_size=2)
    assert isinstance(scorer, Scorer) and scorer.name == f"ranker[minilm-l6/listmle for {LLAMA}]"
    first = scorer.score([_spec(i, t) for i, t in enumerate(texts)])
    assert calls == [["alpha", "write an essay", "beta"]]        # one call, each distinct prompt once
    assert (scorer.prompts_scored, scorer.batches, scorer.calls) == (3, 2, 1)
    assert first[0] == first[3] and first == score(texts[:3], 2).tolist() + [first[0]]
    again = scorer.score([_spec(9, "beta"), _spec(10, "gamma")])
    assert calls[-1] == ["gamma"] and again[0] == first[2]
    assert scorer.score([_spec(11, "alpha")]) == [first[0]] and len(calls) == 2  # cached: no model call
    fresh = RankerScorer(ranker, batch_size=8, cache=False)
    fresh.score([_spec(1, "alpha")])
    fresh.score([_spec(2, "alpha"), _spec(3, "alpha")])
    assert calls[-2:] == [["alpha"], ["alpha"]] and (fresh.calls, fresh.prompts_scored) == (2, 2)
    feature = scorer.rank_feature()
    ranks = [feature(_spec(20 + i, t)) for i, t in enumerate(texts)]
    assert all(0.0 <= r <= 1.0 for r in ranks)
    assert ranks == [ranker.meta.rank_of(s) for s in first]
    with pytest.raises(ValueError, match="request 5 has no prompt text"):
        scorer.score([RequestSpec(request_id=5, client_id=0, arrival_time=0.0, prompt=UniqueTokens(5, 4),
                                  output_len=3)])


def test_ltr_policy_serves_the_alpaca_test_workload_with_the_ranker(fresh_minilm):
    from agents.ranker_scorer import RankerScorer
    from envs.engine import ServingEngine
    from envs.engine_config import EngineConfig
    from envs.policy import make_policy
    from envs.workloads import get_workload
    from gpu_backend.profiles import DEFAULT_PROFILE
    from gpu_backend.sim_executor import SimExecutor

    import baselines  # noqa: F401  (registers ltr)

    specs = get_workload("alpaca-eval-meta-llama-3-8b-instruct-test").generate(seed=0, num_requests=24)
    scorer = RankerScorer(fresh_minilm(max_length=16), batch_size=8)
    engine = ServingEngine(SimExecutor(DEFAULT_PROFILE), make_policy("ltr", scorer=scorer), EngineConfig())
    engine.load(specs)
    record = engine.run()
    assert scorer.prompts_scored == len({s.prompt_text for s in specs})
    assert len(record.requests) == 24


def test_env_predicted_rank_feature_comes_from_the_ranker(fresh_minilm):
    import gymnasium as gym

    from agents.ranker import RankerMeta
    from agents.ranker_scorer import RankerScorer
    from envs.env_features import REQUEST_FEATURES
    from envs.workloads import get_workload

    name = "alpaca-eval-alpaca-7b-test"
    ranker = fresh_minilm(seed=4, max_length=16)
    prompts = [s.prompt_text for s in get_workload(name).generate(0)]
    ranker.meta = RankerMeta(backbone="minilm-l6", pooling="mean", max_length=16,
                             calibration=tuple(sorted(ranker.score(prompts[:40]).tolist())))
    scorer = RankerScorer(ranker)
    scorer.prime(get_workload(name).generate(0))  # every prompt of the workload, in batches
    assert scorer.calls == 1 and scorer.prompts_scored == 161
    env = gym.make("servegym/Serve-v0", workload=name, num_requests=30, rate=50.0, scorer=scorer.rank_feature())
    obs, _ = env.reset(seed=0)
    assert scorer.calls == 1  # served from the cache
    k = len(REQUEST_FEATURES)
    table = obs["candidates"].reshape(-1, k)
    col = REQUEST_FEATURES.index("predicted_rank")
    valid = table[:, 0] == 1.0
    assert valid.any()
    expected = {ranker.meta.rank_of(s) for s in scorer.score(get_workload(name).generate(0))}
    got = table[valid, col].tolist()
    assert all(any(abs(g - e) < 1e-6 for e in expected) for g in got)
    assert len(set(np.round(got, 6))) > 1 or len(got) == 1
    env.close()
