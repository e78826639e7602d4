"""The real executor's optional kernels on the command line: one definition for every CLI that builds a
``TorchExecutor`` (``servegym simulate``, ``profile``, ``fidelity`` and ``benchmarks/calibrate_gpu.py``).

Each is ``--NAME`` / ``--no-NAME``; left out, the executor's default applies (on where the device
supports it). A fitted profile records which were on, since they change the times it was fitted to.
No torch here: the CLIs import it before they know whether they need a GPU.
"""

from __future__ import annotations

import argparse

FLAGS = {
    "split_gemms": "few-row QKV, output and down products cut into batched K slices (CUDA)",
    "epilogue_gemms": "the gate/up product applies SwiGLU itself where measured faster (compute capability 9.0+)",
    "fused_rope": "decode-only batches apply RoPE and write the new KV inside the attention kernel (CUDA)",
    "fine_decode_ranges": "iterations with prefill chunks replay a graph whose decode range, and so its key "
                          "splits, fits their decodes within 2x, not only 8 rows or all (CUDA graphs)",
}


def add_executor_flag_args(p: argparse.ArgumentParser) -> None:
    for name, what in FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), action=argparse.BooleanOptionalAction, default=None,
                       help=f"TorchExecutor {name}: {what}; default: on where the device supports it")


def executor_flag_options(args: argparse.Namespace) -> dict:
    """The flags given on the command line, as ``TorchExecutor`` keyword arguments."""
    return {name: getattr(args, name) for name in FLAGS if getattr(args, name, None) is not None}


def flag_spelling(name: str, on: bool) -> str:
    """How the command line spells a flag's setting: ``--split-gemms`` or ``--no-split-gemms``."""
    return ("--" if on else "--no-") + name.replace("_", "-")
