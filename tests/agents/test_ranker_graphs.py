"""Scoring through padded buckets (agents.ranker_graphs): bucket shapes, padding that changes no
score, chunking, and CUDA-graph replays on a GPU."""

import numpy as np
import pytest

from agents.ranker_graphs import GraphedScorer

pytest.importorskip("transformers")

PROMPTS = ["Write a haiku about tea.", "List every prime below fifty and explain how you found them.", "Hi",
           "Summarise the plot of Hamlet in three sentences.", "Translate 'good morning' into French.",
           "What is 2+2?", "Give me a detailed, step-by-step plan to learn Rust in a month.", "Name a colour.",
           "Explain recursion to a child.", "Why is the sky blue?", "Write a limerick about a cat."]


def test_bucket_shape_rounds_rows_to_a_power_of_two_and_tokens_to_the_step():
    import torch

    scorer = GraphedScorer(torch.nn.Linear(1, 1), pad_token_id=0, max_length=32, max_rows=8, token_step=4,
                           capture=False)
    assert scorer.bucket_shape(5, 17) == (8, 20)
    assert scorer.bucket_shape(1, 1) == (1, 4)
    assert scorer.bucket_shape(3, 31) == (4, 32)
    assert scorer.bucket_shape(8, 32) == (8, 32)
    with pytest.raises(ValueError, match="1 to 8 rows, got 9"):
        scorer.bucket_shape(9, 4)
    with pytest.raises(ValueError, match="1 to 32 tokens here, got 33"):
        scorer.bucket_shape(1, 33)


def test_bad_settings_and_a_cpu_capture_are_refused():
    import torch

    layer = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="power of two >= 1, got 6"):
        GraphedScorer(layer, 0, 32, max_rows=6, capture=False)
    with pytest.raises(ValueError, match="token_step must be >= 1 token, got 0"):
        GraphedScorer(layer, 0, 32, token_step=0, capture=False)
    with pytest.raises(ValueError, match="CUDA graphs need the ranker on a CUDA device; it is on cpu"):
        GraphedScorer(layer, 0, 32)


def test_ranker_on_the_cpu_refuses_cuda_graphs(fresh_minilm):
    ranker = fresh_minilm(seed=0, max_length=32)
    with pytest.raises(ValueError, match="CUDA device; it is on cpu"):
        ranker.use_cuda_graphs()
    assert ranker.score(["Hi"]).shape == (1,)  # still scores eagerly


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_padded_buckets_score_as_the_unpadded_batch(fresh_minilm, pooling):
    ranker = fresh_minilm(seed=3, max_length=32)
    ranker.set_input(pooling, "raw")
    ids = ranker.encode(PROMPTS)
    eager = ranker.score_ids(ids)
    ranker.module.eval()
    scorer = GraphedScorer(ranker.module, ranker.tokenizer.pad_token_id, 32, max_rows=4, token_step=8,
                           capture=False)
    padded = scorer(ids)
    # 11 prompts in chunks of 4 (by length): buckets of 4, 4 and 3 -> 4 rows, extra pad rows and columns
    np.testing.assert_allclose(padded, eager, rtol=1e-4, atol=1e-5)
    assert scorer.num_graphs >= 2
    assert scorer(ids[:1])[0] == pytest.approx(eager[0], rel=1e-4, abs=1e-5)


def test_prepare_makes_every_token_bucket_of_a_row_count(fresh_minilm):
    ranker = fresh_minilm(seed=0, max_length=32)
    ranker.module.eval()
    scorer = GraphedScorer(ranker.module, ranker.tokenizer.pad_token_id, 32, max_rows=8, token_step=12,
                           capture=False)
    scorer.prepare(3)
    assert scorer.shapes == [(4, 12), (4, 24), (4, 32)]
    scorer.prepare(4)  # the same row bucket: nothing new
    assert scorer.num_graphs == 3


def test_an_empty_prompt_is_refused(fresh_minilm):
    ranker = fresh_minilm(seed=0, max_length=32)
    scorer = GraphedScorer(ranker.module, ranker.tokenizer.pad_token_id, 32, capture=False)
    with pytest.raises(ValueError, match="batch row 0 has no tokens"):
        scorer([[]])


@pytest.mark.gpu
def test_cuda_graph_replays_match_the_eager_scores(fresh_minilm):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    ranker = fresh_minilm(seed=1, max_length=64).to("cuda")
    ids = ranker.encode(PROMPTS)
    eager = ranker.score_ids(ids)
    ranker.use_cuda_graphs(max_rows=8, token_step=16)
    first = ranker.score_ids(ids)
    graphs = ranker.cuda_graphs.num_graphs
    again = ranker.score_ids(list(reversed(ids)))[::-1]
    np.testing.assert_allclose(first, eager, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(again, first, rtol=1e-6)   # replays of the same buckets
    assert ranker.cuda_graphs.num_graphs == graphs    # no new capture for shapes already seen
    with pytest.raises(ValueError, match="cannot move to 'cpu'"):
        ranker.to("cpu")
