"""The ranker's training configuration, importable without torch (the CLI builds its parser from it).

``servegym`` builds every subcommand's parser at start-up; importing torch there would add
seconds to every command, ``simulate`` included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LOSSES = ("listmle", "pairwise", "pointwise")
TRAIN_BUCKET = 10       # tokens per label bucket in training (the paper's g)


@dataclass(frozen=True)
class RankerTrainConfig:
    """Everything that determines a training run (with the data file and the library versions)."""

    backbone: str = "minilm-l6"
    target_model: str = "Meta-Llama-3-8B-Instruct"
    loss: str = "listmle"
    epochs: int = 16
    list_size: int = 64
    lr: float = 2e-5          # backbone (the paper's)
    head_lr: float = 1e-3     # the new linear head
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    bucket: int = TRAIN_BUCKET
    seed: int = 0
    split_seed: int = 0
    max_length: int | None = None   # None: the backbone's default
    max_train: int | None = None    # train on a seeded subset of this many prompts
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown ranker loss {self.loss!r}; available: {', '.join(LOSSES)}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.list_size < 2:
            raise ValueError(f"list_size must be >= 2, got {self.list_size}")
        for name in ("lr", "head_lr", "max_grad_norm"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.bucket < 1:
            raise ValueError(f"bucket must be >= 1 token, got {self.bucket}")
