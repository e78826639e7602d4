"""Programmatic dependent launch (PDL) for our Triton kernels on Hopper and later GPUs (experiment, session 12).

A kernel launched with the programmatic-stream-serialization attribute may be dispatched while
the kernel before it still runs; each of ours then waits (``griddepcontrol.wait``) for that
kernel to finish before touching memory. Measured no faster inside the decode graph: BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import threading

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None
    tl = None

_state = threading.local()


def supported(device: torch.device) -> bool:
    if device.type != "cuda" or triton is None or not torch.cuda.is_available():
        return False
    gdc = getattr(getattr(getattr(tl, "extra", None), "cuda", None), "gdc_wait", None)
    return gdc is not None and torch.cuda.get_device_capability(device)[0] >= 9


def active() -> bool:
    return getattr(_state, "on", False)


@contextlib.contextmanager
def dependent_launches(on: bool):
    before = active()
    _state.on = before or on
    try:
        yield
    finally:
        _state.on = before


def launch_options() -> dict:
    return {"PDL": True, "launch_pdl": True} if active() else {"PDL": False}


if triton is not None:
    @triton.jit
    def wait_for_previous_grid(PDL: tl.constexpr):
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
