"""Fine-tune an output-length ranker on one target model's lengths (the LTR paper's recipe).

Why: the LTR paper (Fu et al., NeurIPS'24, ``../shared/papers.md`` §4.2) trains a small LM
with a one-output head on random lists of prompts with ListMLE, labels bucketed in
groups of 10 tokens, AdamW with weight decay 0.01, for a few epochs, and judges it by
Kendall's tau against the exact lengths. ``train_ranker`` does that, with the pairwise
and pointwise losses as options, and keeps the epoch with the best validation tau.

Differences from the paper, because the data here are 805 prompts rather than 10k:
a list size of 64 over about 560 training prompts is about 9 optimiser steps per epoch,
so the default trains more epochs, and the freshly initialised head gets its own,
larger learning rate. The epoch with the best validation tau is kept (the paper trains
a fixed 5 epochs).

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
from agents.ranker_data import RankerData, load_ranker_data, ranking_lists
from agents.ranker_config import RankerTrainConfig
from agents.ranker_losses import (MAX_LEN, bucket_labels, listmle, log_length_targets,
                                  pairwise_logistic, pointwise_log_length)
from agents.ranking_metrics import length_tau


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    mean_loss: float
    val_tau: float
    seconds: float


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


def _loss_fn(config: RankerTrainConfig, data: RankerData):
    import torch

    if config.loss == "pointwise":
        bucketed = (np.minimum(data.train.lengths, MAX_LEN) // config.bucket) * config.bucket
        logs = np.log1p(bucketed.astype(np.float64))
        mu, sigma = float(logs.mean()), float(logs.std()) or 1.0
        targets = torch.as_tensor(log_length_targets(bucketed, mu, sigma), dtype=torch.float32)
        return lambda scores, rows, gen: pointwise_log_length(scores, targets[rows].to(scores.device))
    labels = torch.as_tensor(bucket_labels(data.train.lengths, config.bucket), dtype=torch.float32)
    if config.loss == "listmle":
        return lambda scores, rows, gen: listmle(scores, labels[rows].to(scores.device), gen)
    return lambda scores, rows, gen: pairwise_logistic(scores, labels[rows].to(scores.device))


def train_ranker(config: RankerTrainConfig, data: RankerData | None = None, ranker: Ranker | None = None,
                 writer: Any = None, progress: bool = False) -> RankerTrainResult:
    """Train ``ranker`` (a fresh one from ``config.backbone`` when None) and return the best epoch's."""
    import torch

    if data is None:
        data = load_ranker_data(config.target_model, config.split_seed, config.max_train)
    if ranker is None:
        ranker = Ranker.from_backbone(config.backbone, seed=config.seed, max_length=config.max_length)
    for split in (data.train, data.val, data.test):
        if len(split) < 2:
            raise ValueError(f"the {split.name} split has {len(split)} prompts; need at least 2")
    train_ids = ranker.encode(data.train.prompts)
    val_ids = ranker.encode(data.val.prompts)
    test_ids = ranker.encode(data.test.prompts)
    bs = config.eval_batch_size
    untrained_val = length_tau(ranker.score_ids(val_ids, bs), data.val.lengths)
    untrained_test = length_tau(ranker.score_ids(test_ids, bs), data.test.lengths)
    if writer is not None:
        writer.add_scalar("val/kendall_tau", untrained_val, 0)

    module = ranker.module
    head = list(module.head.parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in module.parameters() if id(p) not in head_ids]
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
                    torch.nn.utils.clip_grad_norm_(module.parameters(), config.max_grad_norm)
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
                val_tau = length_tau(ranker.score_ids(val_ids, bs), data.val.lengths)
                history.append(EpochLog(epoch, float(np.mean(losses)), val_tau, time.perf_counter() - t0))
                if writer is not None:
                    writer.add_scalar("train/epoch_loss", history[-1].mean_loss, epoch)
                    writer.add_scalar("val/kendall_tau", val_tau, epoch)
                if bar is not None:
                    bar.set_postfix(epoch=epoch, val_tau=f"{val_tau:.3f}")
                if val_tau > best[0]:
                    best = (val_tau, epoch, copy.deepcopy(module.state_dict()))
        finally:
            if bar is not None:
                bar.close()
    train_seconds = time.perf_counter() - start
    best_tau, best_epoch, state = best
    if state is None:  # every validation tau was NaN (constant scores): keep the last epoch
        best_epoch, best_tau = config.epochs, history[-1].val_tau
    else:
        module.load_state_dict(state)
    module.eval()
    val_scores = ranker.score_ids(val_ids, bs)
    test_scores = ranker.score_ids(test_ids, bs)
    test_tau = length_tau(test_scores, data.test.lengths)
    ranker.meta = RankerMeta(
        backbone=ranker.meta.backbone, pooling=ranker.meta.pooling, max_length=ranker.meta.max_length,
        target_model=config.target_model, loss=config.loss, bucket=config.bucket, split_seed=config.split_seed,
        seed=config.seed, calibration=tuple(np.sort(val_scores).tolist()),
        metrics={"val_kendall_tau": float(best_tau), "test_kendall_tau": float(test_tau),
                 "best_epoch": best_epoch})
    return RankerTrainResult(config, ranker, tuple(history), best_epoch, untrained_val, untrained_test,
                             float(best_tau), float(test_tau), test_scores, train_seconds)
