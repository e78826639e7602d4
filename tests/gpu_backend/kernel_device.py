"""Where the Triton kernels can run in a test: CUDA, or the CPU under Triton's interpreter
(``TRITON_INTERPRET=1`` with triton installed); None elsewhere (the kernel tests skip)."""

from __future__ import annotations

import os

import torch


def kernel_device() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return None
    if torch.cuda.is_available():
        return "cuda"
    return "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else None
