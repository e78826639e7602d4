"""Labels from several models: the consensus label, the multi-model ListMLE, the auxiliary
models' resolution, and that no test prompt's auxiliary length is ever loaded."""

import math

import numpy as np
import pytest

from agents.ranker_config import RankerTrainConfig, resolve_aux_models
from agents.ranker_data import load_ranker_data
from agents.ranker_losses import consensus_labels, multi_model_weights, standardized_log_lengths
from envs.workloads.alpaca import AUX_MODELS, SHIPPED_MODELS

LLAMA = "Meta-Llama-3-8B-Instruct"


def test_consensus_label_on_a_hand_built_three_prompt_table():
    # three prompts; lengths chosen so that log(1 + len) is 0, 1, 2 (target) and 2, 1, 0 / 0, 2, 4 (aux)
    e = math.e
    target = np.array([0.0, e - 1, e * e - 1])
    aux_a = np.array([e * e - 1, e - 1, 0.0])
    aux_b = np.array([0.0, e * e - 1, e ** 4 - 1])
    std = math.sqrt(2 / 3)  # of (-1, 0, 1); the z of aux_b is the same (-1, 0, 1), of aux_a reversed
    z_t = np.array([-1.0, 0.0, 1.0]) / std
    z_a = np.array([1.0, 0.0, -1.0]) / std
    assert standardized_log_lengths(target) == pytest.approx(z_t)
    assert standardized_log_lengths(aux_b) == pytest.approx(z_t)
    # w = 0.5: -(0.5 z_t + 0.5 * (z_a + z_b) / 2) = -(0.5 z_t + 0.25 z_a + 0.25 z_t) = -0.5 z_t (z_a = -z_t)
    got = consensus_labels(target, [aux_a, aux_b], 0.5)
    assert got == pytest.approx(-0.5 * z_t)
    assert got == pytest.approx([1 / (2 * std), 0.0, -1 / (2 * std)])
    # w = 1 is the target alone; w = 0 the auxiliary mean alone (here zero: the two disagree fully)
    assert consensus_labels(target, [aux_a, aux_b], 1.0) == pytest.approx(-z_t)
    assert consensus_labels(target, [aux_a, aux_b], 0.0) == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)
    assert consensus_labels(target, [aux_a], 0.0) == pytest.approx(-z_a)
    # higher = shorter: the shortest target response gets the highest label
    assert int(np.argmax(consensus_labels(target, [aux_b], 0.5))) == 0


def test_consensus_label_refuses_bad_inputs():
    with pytest.raises(ValueError, match="target_weight must be in"):
        consensus_labels([1, 2, 3], [[1, 2, 3]], 1.5)
    with pytest.raises(ValueError, match="needs at least one auxiliary model"):
        consensus_labels([1, 2, 3], [], 0.5)
    with pytest.raises(ValueError, match="shape"):
        consensus_labels([1, 2, 3], [[1, 2]], 0.5)
    with pytest.raises(ValueError, match="at least 2 lengths"):
        standardized_log_lengths([5])
    assert consensus_labels([1, 2, 3], [], 1.0) == pytest.approx(-standardized_log_lengths([1, 2, 3]))


def test_multi_model_weights():
    assert multi_model_weights(4, 0.5) == pytest.approx([0.5, 0.125, 0.125, 0.125, 0.125])
    assert multi_model_weights(1, 1.0) == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError, match="at least one auxiliary model"):
        multi_model_weights(0, 0.5)


def test_multi_listmle_equals_the_hand_computed_weighted_sum():
    torch = pytest.importorskip("torch")
    from agents.ranker_losses import multi_listmle

    def lse(*xs):
        return math.log(sum(math.exp(x) for x in xs))

    scores = torch.tensor([0.5, -1.0, 2.0])
    labels = torch.tensor([[3.0, 1.0, 5.0],    # order 2, 0, 1
                           [1.0, 2.0, 3.0]])   # order 2, 1, 0
    first = (lse(2.0, 0.5, -1.0) - 2.0) + (lse(0.5, -1.0) - 0.5)
    second = (lse(2.0, -1.0, 0.5) - 2.0) + (lse(-1.0, 0.5) - (-1.0))
    got = multi_listmle(scores, labels, torch.tensor([0.75, 0.25]))
    assert got.item() == pytest.approx(0.75 * first + 0.25 * second, rel=1e-6)
    assert 0.75 * first + 0.25 * second == pytest.approx(0.75 * 0.44272 + 0.25 * 1.94272, abs=1e-4)
    with pytest.raises(ValueError, match="weights"):
        multi_listmle(scores, labels, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="positive sum"):
        multi_listmle(scores, labels, torch.tensor([0.0, 0.0]))


def test_aux_models_resolve_against_the_file():
    available = SHIPPED_MODELS + AUX_MODELS
    assert resolve_aux_models("all", available, LLAMA) == tuple(m for m in available if m != LLAMA)
    assert resolve_aux_models(("gpt4", "alpaca-7b"), available, LLAMA) == ("gpt4", "alpaca-7b")
    with pytest.raises(ValueError, match="unknown auxiliary model 'gpt-5'"):
        resolve_aux_models(("gpt-5",), available, LLAMA)
    with pytest.raises(ValueError, match="is the target model"):
        resolve_aux_models((LLAMA,), available, LLAMA)
    assert RankerTrainConfig(label_source="target", aux_models="none").aux_model_names_requested() == ()
    assert RankerTrainConfig(aux_models=" gpt4 , claude-2").aux_model_names_requested() == ("gpt4", "claude-2")
    with pytest.raises(ValueError, match="needs auxiliary models"):
        RankerTrainConfig(label_source="consensus", aux_models="none")
    with pytest.raises(ValueError, match="unknown label source 'mean'"):
        RankerTrainConfig(label_source="mean")
    with pytest.raises(ValueError, match="target_weight must be in"):
        RankerTrainConfig(target_weight=-0.1)
    with pytest.raises(ValueError, match="select_on='consensus' needs"):
        RankerTrainConfig(label_source="target", select_on="consensus")
    with pytest.raises(ValueError, match="unknown select_on 'test'"):
        RankerTrainConfig(select_on="test")


def test_default_is_the_validation_sweep_winner():
    config = RankerTrainConfig()
    assert (config.label_source, config.aux_models, config.target_weight, config.lr, config.epochs,
            config.select_on) == ("consensus", "all", 0.8, 5e-5, 32, "target")


def test_test_split_never_carries_auxiliary_lengths_and_labels_read_only_training_prompts():
    from agents.ranker_training import aux_models_for, training_labels

    config = RankerTrainConfig(label_source="consensus", target_weight=0.5, split_seed=2)
    aux = aux_models_for(config)
    assert len(aux) == len(SHIPPED_MODELS + AUX_MODELS) - 1 and LLAMA not in aux
    data = load_ranker_data(LLAMA, 2, aux_models=aux)
    assert data.test.aux_lengths == {}
    assert set(data.train.aux_lengths) == set(aux) == set(data.val.aux_lengths)
    assert not set(data.train.instruction_ids) & set(data.test.instruction_ids)
    labels, weights = training_labels(config, data)
    assert labels.shape == (1, len(data.train)) and weights.tolist() == [1.0]
    expected = consensus_labels(data.train.lengths, [data.train.aux_lengths[m] for m in aux], 0.5)
    assert labels[0] == pytest.approx(expected)
    # changing every test prompt's lengths changes no training label
    import dataclasses
    poisoned = dataclasses.replace(data, test=dataclasses.replace(data.test, lengths=data.test.lengths * 0 + 1))
    assert training_labels(config, poisoned)[0] == pytest.approx(labels)
    multi = dataclasses.replace(config, label_source="multi")
    m_labels, m_weights = training_labels(multi, data)
    assert m_labels.shape == (len(aux) + 1, len(data.train))
    assert m_weights[0] == 0.5 and m_weights[1:].sum() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="loaded without any"):
        training_labels(config, load_ranker_data(LLAMA, 2))


def test_target_labels_ignore_auxiliary_models():
    from agents.ranker_losses import bucket_labels
    from agents.ranker_training import aux_models_for, training_labels

    config = RankerTrainConfig(label_source="target")
    assert aux_models_for(config) == ()
    data = load_ranker_data(LLAMA, 0)
    labels, weights = training_labels(config, data)
    assert labels[0].tolist() == bucket_labels(data.train.lengths, 10).tolist() and weights.tolist() == [1.0]
