"""The shipped AlpacaEval prompts and lengths, the split by prompt, the alpaca-eval workloads,
and the simple predictors (no torch needed)."""

import gzip
import json

import numpy as np
import pytest

from agents.ranker_baselines import BagOfWordsRidge, PromptLengthPredictor, hashed_counts
from agents.ranker_data import load_ranker_data, ranking_lists
from agents.ranking_metrics import length_tau
from envs.workloads import get_workload
from envs.workloads.alpaca import (ALPACA_LENGTHS_PATH, AUX_MODELS, SHIPPED_MODELS, AlpacaEvalWorkload,
                                   AlpacaFormatError, UnknownTargetModelError, load_alpaca_eval, split_prompt_ids,
                                   workload_name)

LLAMA = "Meta-Llama-3-8B-Instruct"


def test_shipped_file_holds_805_prompts_and_the_listed_models():
    data = load_alpaca_eval()
    assert len(data) == 805 and data.models == SHIPPED_MODELS + AUX_MODELS
    assert sorted(data.instruction_ids.tolist()) == list(range(805))
    assert len(set(data.prompts)) == 805
    assert data.prompts[1] == "How did US states get their names?"
    assert data.lengths(LLAMA)[1] == 1437 and data.lengths("alpaca-7b")[1] == 66
    means = [data.lengths(m).mean() for m in SHIPPED_MODELS]
    assert means == sorted(means, reverse=True)  # listed from verbose to terse
    assert round(means[-1]) == 85 and round(data.lengths(LLAMA).mean()) == 412
    assert (ALPACA_LENGTHS_PATH.parent / "LICENSE-CC-BY-NC-4.0.txt").is_file()


def test_unknown_target_model_lists_the_available_ones():
    with pytest.raises(UnknownTargetModelError, match="alpaca-7b") as info:
        load_ranker_data("no-such-model")
    assert "no-such-model" in str(info.value)


def test_split_is_by_prompt_disjoint_complete_and_seeded():
    ids = np.arange(805)
    s = split_prompt_ids(ids, seed=0)
    sizes = {k: len(v) for k, v in s.items()}
    assert sizes == {"train": 564, "val": 80, "test": 161}
    together = np.concatenate(list(s.values()))
    assert sorted(together.tolist()) == list(range(805))  # every prompt in exactly one split
    again = split_prompt_ids(ids[::-1].copy(), seed=0)  # the order of the ids does not matter
    assert all(np.array_equal(s[k], again[k]) for k in s)
    other = split_prompt_ids(ids, seed=1)
    assert not np.array_equal(s["test"], other["test"])
    with pytest.raises(ValueError, match="unique"):
        split_prompt_ids([1, 1, 2])
    with pytest.raises(ValueError, match="fractions"):
        split_prompt_ids(ids, fractions=(0.5, 0.5, 0.5))


def test_ranker_data_splits_share_no_prompt_text():
    d = load_ranker_data(LLAMA, split_seed=0)
    train, val, test = set(d.train.prompts), set(d.val.prompts), set(d.test.prompts)
    assert (len(train), len(val), len(test)) == (564, 80, 161)
    assert not (train & val) and not (train & test) and not (val & test)
    data = load_alpaca_eval()
    row = {p: i for i, p in enumerate(data.prompts)}
    assert [data.lengths(LLAMA)[row[p]] for p in d.test.prompts] == d.test.lengths.tolist()
    small = load_ranker_data(LLAMA, split_seed=0, max_train=50)
    assert len(small.train) == 50 and set(small.train.prompts) <= train
    assert small.test.prompts == d.test.prompts


def test_ranking_lists_cover_a_shuffle():
    lists = ranking_lists(10, 4, np.random.default_rng(0))
    assert [len(x) for x in lists] == [4, 4, 2]
    assert sorted(np.concatenate(lists).tolist()) == list(range(10))
    assert [len(x) for x in ranking_lists(9, 4, np.random.default_rng(0))] == [4, 4]  # a list of 1 is dropped
    with pytest.raises(ValueError, match="list_size"):
        ranking_lists(10, 1, np.random.default_rng(0))


def test_test_workload_serves_exactly_the_predictors_test_prompts():
    w = get_workload(workload_name(LLAMA, "test"))
    assert w.name == "alpaca-eval-meta-llama-3-8b-instruct-test" and w.num_requests == 161
    specs = w.generate(seed=0)
    d = load_ranker_data(LLAMA, split_seed=0)
    truth = dict(zip(d.test.prompts, d.test.lengths.tolist()))
    assert sorted(s.prompt_text for s in specs) == sorted(truth)
    assert all(s.output_len == truth[s.prompt_text] for s in specs)
    times = [s.arrival_time for s in specs]
    assert times == sorted(times) and times[0] > 0.0
    assert [s.request_id for s in specs] == list(range(161))
    same = w.generate(seed=0)
    assert [(s.prompt_text, s.arrival_time) for s in same] == [(s.prompt_text, s.arrival_time) for s in specs]
    other = w.generate(seed=1)
    assert [s.prompt_text for s in other] != [s.prompt_text for s in specs]


def test_full_workload_repeats_prompts_past_its_size_with_the_same_tokens():
    w = get_workload("alpaca-eval-alpaca-7b")
    assert w.num_requests == 805
    specs = w.generate(seed=3, num_requests=900)
    assert len(specs) == 900 and len({s.prompt_text for s in specs[:805]}) == 805
    first = {}
    for s in specs:
        if s.prompt_text in first:
            a = first[s.prompt_text]
            assert np.array_equal(a.prompt.token_ids(), s.prompt.token_ids()) and a.output_len == s.output_len
        first.setdefault(s.prompt_text, s)
    data = load_alpaca_eval()
    row = {p: i for i, p in enumerate(data.prompts)}
    assert all(s.prompt_len == data.prompt_tokens[row[s.prompt_text]] for s in specs)
    with pytest.raises(ValueError, match="split"):
        AlpacaEvalWorkload("x", "x", LLAMA, split="holdout")


def _write(tmp_path, records):
    path = tmp_path / "lengths.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def _record(i, **over):
    r = {"instruction_id": i, "dataset": "oasst", "instruction": f"prompt {i}",
         "instruction_tokens_cl100k": 3, "output_tokens_cl100k": {"m": 10 + i}}
    r.update(over)
    return r


def test_loader_errors_name_the_line_and_key(tmp_path):
    ok = load_alpaca_eval(_write(tmp_path, [_record(0), _record(1)]))
    assert ok.lengths("m").tolist() == [10, 11]
    with pytest.raises(AlpacaFormatError, match=r":2: key 'output_tokens_cl100k.m': expected an integer >= 1, got 0"):
        load_alpaca_eval(_write(tmp_path, [_record(0), _record(1, output_tokens_cl100k={"m": 0})]))
    with pytest.raises(AlpacaFormatError, match=r":1: key 'instruction': missing"):
        bad = _record(0)
        del bad["instruction"]
        load_alpaca_eval(_write(tmp_path, [bad]))
    with pytest.raises(AlpacaFormatError, match=r":2: key 'instruction_id': 0 appears twice"):
        load_alpaca_eval(_write(tmp_path, [_record(0), _record(0)]))
    with pytest.raises(AlpacaFormatError, match=r":2: not valid JSON"):
        load_alpaca_eval(_write(tmp_path, [_record(0), "{oops"]))
    with pytest.raises(AlpacaFormatError, match=r":2: key 'output_tokens_cl100k': models \['n'\] differ"):
        load_alpaca_eval(_write(tmp_path, [_record(0), _record(1, output_tokens_cl100k={"n": 5})]))
    with pytest.raises(FileNotFoundError, match="cannot be read"):
        load_alpaca_eval(tmp_path / "missing.jsonl.gz")


def test_prompt_length_predictor_fits_its_direction():
    tokens = np.array([5, 10, 20, 40])
    assert PromptLengthPredictor().fit(tokens, np.array([400, 300, 200, 100])).sign == -1.0
    p = PromptLengthPredictor().fit(tokens, np.array([100, 200, 300, 400]))
    assert p.sign == 1.0 and length_tau(p.score(tokens), [100, 200, 300, 400]) == 1.0


def test_bag_of_words_ridge_learns_a_word_that_sets_the_length():
    rng = np.random.default_rng(0)
    filler = ["alpha", "beta", "gamma", "delta", "omega", "kappa"]
    texts, lengths = [], []
    for i in range(120):
        words = list(rng.choice(filler, size=5))
        long = i % 2 == 0
        texts.append(" ".join(words + (["essay"] if long else ["yes"])))
        lengths.append(int(rng.integers(400, 600) if long else rng.integers(5, 30)))
    bow = BagOfWordsRidge(num_features=1024).fit(texts[:80], lengths[:80], texts[80:100], lengths[80:100])
    assert bow.lam in bow.lambdas and set(bow.val_taus) == set(bow.lambdas)
    tau = length_tau(bow.score(texts[100:]), lengths[100:])
    assert tau > 0.45  # the two length classes are separated; within a class the order is noise
    x = hashed_counts(["a b", "a b", ""], 64)
    assert np.array_equal(x[0], x[1]) and np.linalg.norm(x[0]) == pytest.approx(1.0) and not x[2].any()


def test_generate_slice_is_a_window_of_the_seed_0_sequence():
    w = get_workload("alpaca-eval-vicuna-13b-v1.5-test")
    full = w.generate(0)
    part = w.generate_slice(10, 5)
    assert [s.request_id for s in part] == [0, 1, 2, 3, 4] and part[0].arrival_time == 0.0
    assert [s.prompt_text for s in part] == [s.prompt_text for s in full[10:15]]
    gaps = np.diff([s.arrival_time for s in full[10:15]])
    assert np.allclose(np.diff([s.arrival_time for s in part]), gaps)
    with pytest.raises(ValueError, match=r"requests \[160, 162\) are outside its 161 requests"):
        w.generate_slice(160, 2)


def test_with_val_in_train_appends_the_validation_prompts_and_leaves_test_alone():
    from agents.ranker_data import with_val_in_train

    data = load_ranker_data("Meta-Llama-3-8B-Instruct", split_seed=1, aux_models=("alpaca-7b", "gpt4_1106_preview"))
    merged = with_val_in_train(data)
    n_train, n_val = len(data.train), len(data.val)
    assert merged.train.name == "train+val" and len(merged.train) == n_train + n_val
    assert merged.train.prompts == data.train.prompts + data.val.prompts
    np.testing.assert_array_equal(merged.train.instruction_ids[n_train:], data.val.instruction_ids)
    np.testing.assert_array_equal(merged.train.lengths[:n_train], data.train.lengths)
    np.testing.assert_array_equal(merged.train.lengths[n_train:], data.val.lengths)
    np.testing.assert_array_equal(merged.train.prompt_tokens[n_train:], data.val.prompt_tokens)
    for m in ("alpaca-7b", "gpt4_1106_preview"):
        np.testing.assert_array_equal(merged.train.aux_lengths[m][n_train:], data.val.aux_lengths[m])
    assert merged.val is data.val and merged.test is data.test and merged.aux_models == data.aux_models
    assert not set(merged.train.instruction_ids) & set(merged.test.instruction_ids)
