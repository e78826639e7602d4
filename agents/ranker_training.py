"""Fine-tune an output-length ranker on one target model's lengths (the LTR paper's recipe).

Why: the LTR paper (Fu et al., NeurIPS'24, ``../shared/papers.md`` §4.2) trains a small LM
with a one-output head on random lists of prompts with ListMLE, labels bucketed in
groups of 10 tokens, AdamW with weight decay 0.01, for a few epochs, and judges it by
Kendall's tau against the exact lengths. ``train_ranker`` does that, with the pairwise
and pointwise losses as options, and keeps the epoch with the best validation tau.

Differences from the paper, because the data here are 805 prompts rather than 10k:
a list size of 64 over about 560 training prompts is about 9 optimiser steps per epoch,
so the default trains more epochs (32) at a larger backbone learning rate (5e-5), and
the freshly initialised head gets its own, larger learning rate. The epoch with the best validation tau is kept (the paper trains
a fixed 5 epochs).

Labels (``config.label_source``): the target model's own lengths, a consensus of
standardised log lengths over the target and auxiliary models, or one loss per model
(``agents.ranker_losses``). Auxiliary lengths are read from the training prompts only;
the validation tau that picks the epoch is against the target model's lengths, or with
``select_on="consensus"`` against the consensus of the validation prompts' lengths; the
reported ``val_tau`` is always against the target's.
``config.freeze_layers`` keeps the embeddings and the lowest encoder layers fixed.
``config.train_on_val`` trains on the training and validation prompts for exactly
``config.epochs`` epochs and keeps the last (``agents.ranker_config``).

Progress (tqdm) and TensorBoard logging (``train/loss`` per step, ``val/kendall_tau`` per
epoch) are optional: pass ``progress=True`` and a ``SummaryWriter``-like ``writer``.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.ranker import Ranker, RankerMeta
from agents.ranker_data import RankerData, load_ranker_data, ranking_lists, with_val_in_train
from agents.ranker_config import RankerTrainConfig
from agents.ranker_losses import (MAX_LEN, bucket_labels, consensus_labels,
                                  multi_listmle, multi_model_weights, pairwise_logistic, pointwise_log_length,
                                  standardized_log_lengths)
from agents.ranking_metrics import kendall_tau_b, length_tau


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    mean_loss: float
    val_tau: float
    seconds: float
    select_tau: float  # what picks the epoch: val_tau, or the tau against the validation consensus


@dataclass(frozen=True)
class RankerTrainResult:
    """What a run produced: the best ranker (by validation tau) and how it scores."""

    config: RankerTrainConfig
    ranker: Ranker
    history: tuple[EpochLog, ...]
    best_epoch: int
    untrained_val_tau: float
    untrained_test_tau: float
    val_tau: float
    test_tau: float
    test_scores: np.ndarray
    train_seconds: float
    val_scores: np.ndarray | None = None   # the kept epoch's, in data.val's order


def aux_models_for(config: RankerTrainConfig, path=None) -> tuple[str, ...]:
    """The auxiliary models ``config`` asks for, checked against the data file (none for ``target`` labels)."""
    if not config.uses_aux():
        return ()
    from agents.ranker_config import resolve_aux_models
    from envs.workloads.alpaca import ALPACA_LENGTHS_PATH, load_alpaca_eval

    available = load_alpaca_eval(path or ALPACA_LENGTHS_PATH).models
    return resolve_aux_models(config.aux_model_names_requested(), available, config.target_model)


def training_labels(config: RankerTrainConfig, data: RankerData) -> tuple[np.ndarray, np.ndarray]:
    """(labels ``(models, train prompts)``, weights ``(models,)``) of the training prompts; higher = shorter.

    One row for ``target`` and ``consensus``, the target then each auxiliary model for
    ``multi``. Only ``data.train`` is read.
    """
    train = data.train
    aux = [train.aux_lengths[m] for m in data.aux_models] if config.uses_aux() else []
    if config.uses_aux() and not aux:
        raise ValueError(f"label source {config.label_source!r} needs auxiliary models' lengths; the data "
                         "were loaded without any (load_ranker_data(..., aux_models=...))")
    if config.label_source == "consensus":
        return consensus_labels(train.lengths, aux, config.target_weight)[None, :], np.ones(1)
    if config.label_source == "multi":
        series = [train.lengths, *aux]
        weights = multi_model_weights(len(aux), config.target_weight)
    else:
        series, weights = [train.lengths], np.ones(1)
    if config.loss == "pointwise":
        rows = [-standardized_log_lengths((np.minimum(x, MAX_LEN) // config.bucket) * config.bucket)
                for x in series]
    else:
        rows = [bucket_labels(x, config.bucket) for x in series]
    return np.stack(rows).astype(np.float64), weights


def _loss_fn(config: RankerTrainConfig, data: RankerData):
    import torch

    label_rows, weights = training_labels(config, data)
    labels = torch.as_tensor(label_rows, dtype=torch.float32)
    w = torch.as_tensor(weights, dtype=torch.float32)
    if config.loss == "listmle":
        return lambda scores, rows, gen: multi_listmle(scores, labels[:, rows].to(scores.device), w, gen)
    base = pairwise_logistic if config.loss == "pairwise" else pointwise_log_length
    return lambda scores, rows, gen: sum(float(wm) * base(scores, row[rows].to(scores.device))
                                         for wm, row in zip(weights, labels) if wm != 0.0)


def selection_reference(config: RankerTrainConfig, data: RankerData) -> np.ndarray | None:
    """Consensus labels of the validation prompts for ``select_on="consensus"``; None: select on the target."""
    if config.select_on == "target":
        return None
    aux = [data.val.aux_lengths[m] for m in data.aux_models]
    if not aux:
        raise ValueError("select_on='consensus' needs the validation prompts' auxiliary lengths; the data "
                         "were loaded without any")
    return consensus_labels(data.val.lengths, aux, config.target_weight)


def freeze_lower_layers(module, num_layers: int) -> int:
    """Stop gradients to the embeddings and the lowest ``num_layers`` encoder layers; returns how many froze."""
    if num_layers == 0:
        return 0
    encoder = module.encoder
    if hasattr(encoder, "embeddings") and hasattr(encoder, "encoder"):       # BERT (MiniLM)
        embeddings, layers = encoder.embeddings, encoder.encoder.layer
    elif hasattr(encoder, "embed_tokens") and hasattr(encoder, "layers"):    # Llama (SmolLM2)
        embeddings, layers = encoder.embed_tokens, encoder.layers
    else:
        raise ValueError(f"freeze_layers: do not know the layers of a {type(encoder).__name__} backbone")
    if num_layers > len(layers):
        raise ValueError(f"freeze_layers {num_layers} exceeds the backbone's {len(layers)} layers")
    for part in [embeddings, *layers[:num_layers]]:
        for p in part.parameters():
            p.requires_grad_(False)
    return num_layers


def train_ranker(config: RankerTrainConfig, data: RankerData | None = None, ranker: Ranker | None = None,
                 writer: Any = None, progress: bool = False) -> RankerTrainResult:
    """Train ``ranker`` (a fresh one from ``config.backbone`` when None) and return the best epoch's."""
    import torch

    if data is None:
        data = load_ranker_data(config.target_model, config.split_seed, config.max_train,
                                aux_models=aux_models_for(config))
    from agents.ranker_backbones import backbone_info

    if ranker is None:
        ranker = Ranker.from_backbone(config.backbone, seed=config.seed, max_length=config.max_length,
                                      pooling=config.pooling, prompt_format=config.prompt_format)
    else:  # the config decides how prompts are read
        ranker.set_input(config.pooling or backbone_info(ranker.meta.backbone).pooling, config.prompt_format)
    if config.train_on_val and data.train.name != "train+val":
        data = with_val_in_train(data)
    for split in (data.train, data.val, data.test):
        if len(split) < 2:
            raise ValueError(f"the {split.name} split has {len(split)} prompts; need at least 2")
    train_ids = ranker.encode(data.train.prompts)
    val_ids = ranker.encode(data.val.prompts)
    test_ids = ranker.encode(data.test.prompts)
    bs = config.eval_batch_size
    untrained_val = length_tau(ranker.score_ids(val_ids, bs), data.val.lengths)
    select_ref = selection_reference(config, data)
    untrained_test = length_tau(ranker.score_ids(test_ids, bs), data.test.lengths)
    if writer is not None:
        writer.add_scalar("val/kendall_tau", untrained_val, 0)

    module = ranker.module
    freeze_lower_layers(module, config.freeze_layers)
    head = list(module.head.parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in module.parameters() if id(p) not in head_ids and p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": body, "lr": config.lr}, {"params": head, "lr": config.head_lr}],
                                  weight_decay=config.weight_decay)
    loss_fn = _loss_fn(config, data)
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    lists_per_epoch = len(ranking_lists(len(train_ids), config.list_size, np.random.default_rng(0)))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.epochs * lists_per_epoch, desc=f"ranker {config.backbone}/{config.loss}",
                   unit="list", file=sys.stderr, dynamic_ncols=True)
    history: list[EpochLog] = []
    best = (-math.inf, 0, None)  # (val tau, epoch, state)
    step = 0
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # dropout
        try:
            for epoch in range(1, config.epochs + 1):
                t0 = time.perf_counter()
                module.train()
                losses = []
                for rows in ranking_lists(len(train_ids), config.list_size, rng):
                    scores = ranker.forward_ids([train_ids[i] for i in rows])
                    loss = loss_fn(scores, torch.as_tensor(rows), gen)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(body + head, config.max_grad_norm)
                    optimizer.step()
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise FloatingPointError(f"epoch {epoch}, step {step}: the {config.loss} loss is {value}")
                    losses.append(value)
                    step += 1
                    if writer is not None:
                        writer.add_scalar("train/loss", value, step)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(epoch=epoch, loss=f"{value:.3f}", refresh=False)
                val_scores = ranker.score_ids(val_ids, bs)
                val_tau = length_tau(val_scores, data.val.lengths)
                select_tau = val_tau if select_ref is None else kendall_tau_b(val_scores, select_ref)
                history.append(EpochLog(epoch, float(np.mean(losses)), val_tau, time.perf_counter() - t0,
                                        select_tau))
                if writer is not None:
                    writer.add_scalar("train/epoch_loss", history[-1].mean_loss, epoch)
                    writer.add_scalar("val/kendall_tau", val_tau, epoch)
                if bar is not None:
                    bar.set_postfix(epoch=epoch, val_tau=f"{val_tau:.3f}")
                if config.train_on_val:  # no held-out prompts to choose on: the last epoch is kept
                    if epoch == config.epochs:
                        best = (select_tau, epoch, None)
                elif select_tau > best[0]:
                    best = (select_tau, epoch, copy.deepcopy(module.state_dict()))
        finally:
            if bar is not None:
                bar.close()
    train_seconds = time.perf_counter() - start
    _, best_epoch, state = best
    if state is None:  # train_on_val, or every validation tau was NaN (constant scores): keep the last epoch
        best_epoch = config.epochs
    else:
        module.load_state_dict(state)
    best_tau = history[best_epoch - 1].val_tau
    module.eval()
    val_scores = ranker.score_ids(val_ids, bs)
    test_scores = ranker.score_ids(test_ids, bs)
    test_tau = length_tau(test_scores, data.test.lengths)
    ranker.meta = RankerMeta(
        backbone=ranker.meta.backbone, pooling=ranker.meta.pooling, max_length=ranker.meta.max_length,
        target_model=config.target_model, loss=config.loss, bucket=config.bucket, split_seed=config.split_seed,
        seed=config.seed, calibration=tuple(np.sort(val_scores).tolist()), prompt_format=ranker.meta.prompt_format,
        metrics={"val_kendall_tau": float(best_tau), "test_kendall_tau": float(test_tau),
                 "best_epoch": best_epoch, **({"val_in_training": 1.0} if config.train_on_val else {})})
    return RankerTrainResult(config, ranker, tuple(history), best_epoch, untrained_val, untrained_test,
                             float(best_tau), float(test_tau), test_scores, train_seconds, val_scores)
