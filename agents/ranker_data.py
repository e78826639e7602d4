"""Training data for the output-length ranker: one target model's lengths, split by prompt.

Why: a ranker is trained for one target model (its responses' lengths are the labels),
and it must be judged on prompts it never saw. ``load_ranker_data`` takes the shipped
AlpacaEval prompts (``envs.workloads.alpaca``; CC BY-NC 4.0) and splits them with
``split_prompt_ids`` — the same function the ``alpaca-eval-<model>-test`` workloads use —
so no prompt is in two splits and the simulator's test workload holds exactly the
predictor's test prompts. ``ranking_lists`` cuts a seeded shuffle of the training
prompts into the lists ListMLE is trained on (the LTR paper, ``../shared/papers.md``
§4.2: random lists of 32, 64 in the final setting).

``aux_models`` adds other models' lengths for the same prompts (consensus or
multi-model labels, ``agents.ranker_losses``). They are loaded for the training and
validation prompts only: the test split carries the target's lengths alone, so no
auxiliary label of a test prompt can reach training or model selection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from envs.workloads.alpaca import (ALPACA_LENGTHS_PATH, DEFAULT_SPLIT_FRACTIONS, load_alpaca_eval,
                                   split_prompt_ids)


@dataclass(frozen=True)
class RankerSplit:
    """The prompts of one split, with the target model's true response lengths."""

    name: str
    instruction_ids: np.ndarray
    prompts: tuple[str, ...]
    prompt_tokens: np.ndarray  # cl100k tokens of each prompt
    lengths: np.ndarray        # the target model's response length, cl100k tokens
    # auxiliary model -> its response lengths for these prompts (train and val splits only)
    aux_lengths: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass(frozen=True)
class RankerData:
    """Train / validation / test splits of one target model's prompts and lengths."""

    target_model: str
    split_seed: int
    train: RankerSplit
    val: RankerSplit
    test: RankerSplit
    aux_models: tuple[str, ...] = ()


def load_ranker_data(target_model: str, split_seed: int = 0, max_train: int | None = None,
                     fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS,
                     path: str | Path = ALPACA_LENGTHS_PATH, aux_models: Sequence[str] = ()) -> RankerData:
    """The splits for ``target_model``; ``max_train`` keeps a seeded subset of the training prompts.

    ``aux_models``: other models whose lengths the train and val splits also carry.
    """
    data = load_alpaca_eval(path)
    lengths = data.lengths(target_model)
    aux_models = tuple(aux_models)
    if target_model in aux_models:
        raise ValueError(f"auxiliary model {target_model!r} is the target model; list only other models")
    aux = {m: data.lengths(m) for m in aux_models}
    ids = split_prompt_ids(data.instruction_ids, split_seed, fractions)
    if max_train is not None:
        if max_train < 2:
            raise ValueError(f"max_train must be >= 2 prompts, got {max_train}")
        keep = np.random.default_rng(split_seed).permutation(ids["train"])[:max_train]
        ids["train"] = np.sort(keep)
    row_of = {int(iid): row for row, iid in enumerate(data.instruction_ids)}

    def split(name: str) -> RankerSplit:
        rows = [row_of[int(i)] for i in ids[name]]
        extra = {} if name == "test" else {m: v[rows] for m, v in aux.items()}
        return RankerSplit(name, data.instruction_ids[rows], tuple(data.prompts[r] for r in rows),
                           data.prompt_tokens[rows], lengths[rows], extra)

    return RankerData(target_model, split_seed, split("train"), split("val"), split("test"), aux_models)


def with_val_in_train(data: RankerData) -> RankerData:
    """``data`` with the validation prompts appended to the training split (the refit after model selection).

    The validation split is kept as it was, so its tau can still be reported (in-sample);
    the test split is untouched. Auxiliary lengths follow their prompts.
    """
    train, val = data.train, data.val
    if set(train.aux_lengths) != set(val.aux_lengths):
        raise ValueError(f"the train and validation splits carry different auxiliary models: "
                         f"{sorted(train.aux_lengths)} and {sorted(val.aux_lengths)}")
    merged = RankerSplit(
        "train+val", np.concatenate([train.instruction_ids, val.instruction_ids]), train.prompts + val.prompts,
        np.concatenate([train.prompt_tokens, val.prompt_tokens]), np.concatenate([train.lengths, val.lengths]),
        {m: np.concatenate([train.aux_lengths[m], val.aux_lengths[m]]) for m in train.aux_lengths})
    return RankerData(data.target_model, data.split_seed, merged, val, data.test, data.aux_models)


def ranking_lists(num_items: int, list_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A shuffle of ``range(num_items)`` cut into lists of ``list_size``; a last list under 2 is dropped."""
    if list_size < 2:
        raise ValueError(f"list_size must be >= 2 prompts, got {list_size}")
    if num_items < 2:
        raise ValueError(f"need at least 2 training prompts to form a list, got {num_items}")
    perm = rng.permutation(num_items)
    lists = [perm[i:i + list_size] for i in range(0, num_items, list_size)]
    return [lst for lst in lists if len(lst) >= 2]
