"""The learning-to-rank output-length predictor: a transformers backbone and a one-output head.

Why: the LTR scheduler (Fu et al., NeurIPS'24, ``../shared/papers.md`` §4.2) needs only a
*ranking* of requests by output length. It reads the raw prompt text only, encodes it
with a small pretrained LM, and a linear head on the pooled final hidden state gives one
score: **higher = shorter** expected output. ``RankerMeta.prompt_format`` "chat" feeds the
prompt as the user turn of the backbone's chat template (instruction-tuned causal LMs).
The backbone is fine-tuned with the head (``agents.ranker_training``); the losses are in
``agents.ranker_losses``.

A ``Ranker`` bundles the tokenizer, the ``LengthRanker`` module and ``RankerMeta`` (what it
was trained for). ``save(dir)`` writes a self-contained checkpoint: ``ranker.json`` (the
meta), ``model.safetensors`` (backbone and head weights), the backbone's transformers
config and its tokenizer, so ``Ranker.load(dir)`` needs only transformers, not the
package the backbone came from.

Scores of one input list are deterministic. Prompts are scored in batches sorted by
length (less padding); a prompt's score does not depend on the other prompts in its
batch beyond float rounding (about 1e-6).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from agents.ranker_backbones import (POOLINGS, PROMPT_FORMATS, backbone_info, load_backbone, prepare_tokenizer,
                                     require_transformers)

CHECKPOINT_FORMAT = 1
META_FILE = "ranker.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class RankerMeta:
    """What a checkpoint is: its backbone and input handling, and what it was trained for."""

    backbone: str
    pooling: str
    max_length: int
    target_model: str | None = None
    loss: str | None = None
    bucket: int | None = None
    split_seed: int | None = None
    seed: int | None = None
    # Sorted validation-set scores: turn a raw score into a rank in [0, 1] (see rank_of).
    calibration: tuple[float, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    format: int = CHECKPOINT_FORMAT
    prompt_format: str = "raw"   # "chat": the prompt is wrapped in the tokenizer's chat template

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"ranker pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"ranker prompt_format must be one of {PROMPT_FORMATS}, got {self.prompt_format!r}")
        if self.max_length < 2:
            raise ValueError(f"ranker max_length must be >= 2 tokens, got {self.max_length}")
        cal = tuple(float(c) for c in self.calibration)
        if any(b < a for a, b in zip(cal, cal[1:])) or not all(math.isfinite(c) for c in cal):
            raise ValueError("ranker calibration scores must be finite and sorted")
        object.__setattr__(self, "calibration", cal)

    def rank_of(self, score: float) -> float:
        """The fraction of calibration prompts scored below ``score``: in [0, 1], 1 = shortest."""
        if not self.calibration:
            raise ValueError("this ranker has no calibration scores (it was not trained with a validation set)")
        return float(np.searchsorted(self.calibration, score, side="right")) / len(self.calibration)


def _torch():
    require_transformers()
    import torch

    return torch


def _build_module(encoder: Any, pooling: str):
    torch = _torch()

    class LengthRanker(torch.nn.Module):
        """Backbone encoder + pooling + linear head -> one score per prompt (higher = shorter)."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.head = torch.nn.Linear(encoder.config.hidden_size, 1)
            self.pooling = pooling

        def forward(self, input_ids, attention_mask):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.to(hidden.dtype)
            if self.pooling == "mean":
                pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
            else:  # the last real token (right padding)
                last = attention_mask.sum(1) - 1
                pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
            return self.head(pooled).squeeze(-1)

    return LengthRanker()


class Ranker:
    """Tokenizer + ``LengthRanker`` module + ``RankerMeta``; scores prompt texts."""

    def __init__(self, tokenizer: Any, module: Any, meta: RankerMeta):
        self.tokenizer = tokenizer
        self.module = module
        self.meta = meta
        self._graphed = None  # agents.ranker_graphs.GraphedScorer once use_cuda_graphs() is called

    @classmethod
    def from_backbone(cls, backbone: str, seed: int = 0, max_length: int | None = None, pooling: str | None = None,
                      prompt_format: str = "raw") -> "Ranker":
        """A fresh ranker: pretrained backbone weights, a head initialised from ``seed``.

        ``pooling`` None is the backbone's own (``BackboneInfo.pooling``).
        """
        info = backbone_info(backbone)
        meta = RankerMeta(backbone=backbone, pooling=info.pooling if pooling is None else pooling,
                          max_length=info.max_length if max_length is None else int(max_length), seed=seed,
                          prompt_format=prompt_format)
        torch = _torch()
        tokenizer, encoder = load_backbone(backbone)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = _build_module(encoder, meta.pooling)
        ranker = cls(tokenizer, module.float(), meta)
        ranker._check_prompt_format()
        return ranker

    def set_input(self, pooling: str, prompt_format: str) -> "Ranker":
        """Read prompts with ``pooling`` and ``prompt_format`` from now on (set before training: the head's input)."""
        from dataclasses import replace

        meta = replace(self.meta, pooling=pooling, prompt_format=prompt_format)  # checks both names
        self._check_prompt_format(meta)
        self.meta = meta
        self.module.pooling = pooling
        return self

    def _check_prompt_format(self, meta: RankerMeta | None = None) -> None:
        meta = meta or self.meta
        if meta.prompt_format == "chat" and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"prompt_format 'chat' needs a tokenizer with a chat template; backbone "
                             f"{meta.backbone!r}'s tokenizer has none (use prompt_format 'raw')")

    @property
    def device(self):
        return next(self.module.parameters()).device

    def to(self, device: str) -> "Ranker":
        """Move the module to a torch device (``cpu``, ``cuda``); inputs follow it.

        With CUDA graphs on, the graphs are recaptured on the new device (which must be CUDA).
        """
        graphed = self._graphed
        if graphed is not None and _torch().device(device).type != "cuda":
            raise ValueError(f"this ranker scores through CUDA graphs; it cannot move to {device!r} "
                             "(call use_cuda_graphs(False) first)")
        self.module.to(_torch().device(device))
        if graphed is not None:
            self.use_cuda_graphs(max_rows=graphed.max_rows, token_step=graphed.token_step)
        return self

    @property
    def cuda_graphs(self):
        """The ``GraphedScorer`` scoring this ranker, or None when scoring runs eagerly."""
        return self._graphed

    def use_cuda_graphs(self, enabled: bool = True, max_rows: int = 64, token_step: int = 64) -> "Ranker":
        """Score through CUDA graphs captured per padded batch shape (``agents.ranker_graphs``).

        Why: an eager forward of a deep backbone is bound by kernel launches on the host.
        ``score``/``score_ids`` then run in chunks of ``max_rows`` prompts whatever their
        ``batch_size``. The ranker must be on a CUDA device.
        """
        if not enabled:
            self._graphed = None
            return self
        from agents.ranker_graphs import GraphedScorer

        self._graphed = GraphedScorer(self.module, self.tokenizer.pad_token_id, self.meta.max_length,
                                      max_rows=max_rows, token_step=token_step)
        return self

    # --- inputs -------------------------------------------------------------------

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, with the backbone's special tokens, truncated to ``max_length``.

        With ``prompt_format`` "chat" the text is the user turn of the tokenizer's chat
        template, followed by the generation prompt; a prompt too long keeps its last
        ``max_length`` tokens, so the generation prompt is never cut off.
        """
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"prompt {i} must be a string, got {type(t).__name__}")
        if not texts:
            return []
        if self.meta.prompt_format == "chat":
            self._check_prompt_format()
            chats = [self.tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                        add_generation_prompt=True) for t in texts]
            out = self.tokenizer(chats, add_special_tokens=False)["input_ids"]
            return [list(ids)[-self.meta.max_length:] for ids in out]
        out = self.tokenizer(list(texts), truncation=True, max_length=self.meta.max_length)["input_ids"]
        return [list(ids) for ids in out]

    def collate(self, id_lists: Sequence[Sequence[int]]):
        """Right-padded ``(input_ids, attention_mask)`` tensors for a batch of token-id lists."""
        from agents.ranker_graphs import right_padded

        width = max(len(ids) for ids in id_lists)
        return right_padded(id_lists, self.tokenizer.pad_token_id, len(id_lists), width)

    def forward_ids(self, id_lists: Sequence[Sequence[int]], chunk: int = 16):
        """Scores (a torch tensor, with gradients) of a list of prompts, in the list's order.

        The list is run in chunks of similar length, so a long prompt pads only its own
        chunk: training memory follows the list's real token count, not its size times the
        longest prompt.
        """
        torch = _torch()
        device = self.device
        order = sorted(range(len(id_lists)), key=lambda i: (len(id_lists[i]), i))
        parts = []
        for start in range(0, len(order), chunk):
            ids, mask = self.collate([id_lists[i] for i in order[start:start + chunk]])
            parts.append(self.module(ids.to(device), mask.to(device)))
        scores = torch.cat(parts)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.as_tensor(order)] = torch.arange(len(order))
        return scores[inverse.to(device)]

    # --- scoring ------------------------------------------------------------------

    def score_ids(self, id_lists: Sequence[Sequence[int]], batch_size: int = 64):
        """Scores (numpy float64) of pre-tokenised prompts, in eval mode, without gradients."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = np.empty(len(id_lists), dtype=np.float64)
        was_training = self.module.training
        self.module.eval()
        try:
            if self._graphed is not None:
                out[:] = self._graphed(id_lists)
            else:
                self._score_eager(id_lists, batch_size, out)
        finally:
            self.module.train(was_training)
        if not np.isfinite(out).all():
            raise FloatingPointError("the ranker produced a non-finite score")
        return out

    def _score_eager(self, id_lists: Sequence[Sequence[int]], batch_size: int, out: np.ndarray) -> None:
        torch = _torch()
        order = sorted(range(len(id_lists)), key=lambda i: (len(id_lists[i]), i))
        device = self.device
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                ids, mask = self.collate([id_lists[i] for i in rows])
                out[rows] = self.module(ids.to(device), mask.to(device)).double().cpu().numpy()

    def score(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """One score per prompt text (higher = shorter expected output)."""
        return self.score_ids(self.encode(texts), batch_size)

    # --- checkpoints --------------------------------------------------------------

    def save(self, directory: str | Path, meta: RankerMeta | None = None) -> Path:
        """Write a self-contained checkpoint to ``directory`` (created); returns it."""
        from safetensors.torch import save_file

        if meta is not None:
            self.meta = meta
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.module.state_dict().items()}
        save_file(state, str(d / WEIGHTS_FILE))
        self.module.encoder.config.save_pretrained(str(d / "backbone"))
        self.tokenizer.save_pretrained(str(d / "tokenizer"))
        payload = asdict(self.meta)
        payload["calibration"] = list(self.meta.calibration)
        (d / META_FILE).write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "Ranker":
        """Load a checkpoint written by ``save``; errors name the missing or malformed file."""
        require_transformers()
        d = Path(directory)
        meta_path = d / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{d} is not a ranker checkpoint: {META_FILE} is missing")
        try:
            payload = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{meta_path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{meta_path}: expected a ranker checkpoint of format {CHECKPOINT_FORMAT}, "
                             f"got format {payload.get('format') if isinstance(payload, dict) else None!r}")
        try:
            meta = RankerMeta(**payload)
        except TypeError as exc:
            raise ValueError(f"{meta_path}: {exc}") from None
        for part in (WEIGHTS_FILE, "backbone/config.json", "tokenizer"):
            if not (d / part).exists():
                raise FileNotFoundError(f"ranker checkpoint {d}: {part} is missing")
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        config = AutoConfig.from_pretrained(str(d / "backbone"), local_files_only=True)
        encoder = AutoModel.from_config(config)
        module = _build_module(encoder, meta.pooling).float()
        state = load_file(str(d / WEIGHTS_FILE))
        missing, unexpected = module.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"ranker checkpoint {d}: weights do not match the backbone "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        module.eval()
        tokenizer = AutoTokenizer.from_pretrained(str(d / "tokenizer"), local_files_only=True)
        prepare_tokenizer(tokenizer)
        return cls(tokenizer, module, meta)
