"""The tiny random Llama the executor tests compare against transformers."""

from __future__ import annotations

import torch

from gpu_backend.models import build_hf_model


def perturbed_tiny_model(seed: int, norm_seed: int):
    """transformers' tiny Llama (float32, CPU) with its norm weights moved off 1.0: norms at 1.0
    would hide a norm applied to the wrong tensor."""
    model = build_hf_model("tiny", torch.float32, "cpu", seed=seed)
    gen = torch.Generator().manual_seed(norm_seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model
