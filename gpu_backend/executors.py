"""One place that turns a backend name into an executor, for the env and the command line.

``sim`` is the cost model (``SimExecutor``, a profile name or path); ``torch`` runs a named
model (``gpu_backend.models``) for real through ``TorchExecutor`` on ``cuda`` or ``cpu``.
torch is imported only when the torch backend is asked for, so the simulator's import path
stays free of it.
"""

from __future__ import annotations

from typing import Any

BACKENDS = ("sim", "torch")


def make_executor(backend: str = "sim", profile: str | None = None, model: str = "tiny",
                  device: str | None = None, options: dict[str, Any] | None = None):
    """The executor for ``backend``; ``options`` go to the executor's constructor."""
    if backend == "sim":
        from gpu_backend.profiles import DEFAULT_PROFILE
        from gpu_backend.sim_executor import SimExecutor

        return SimExecutor(profile or DEFAULT_PROFILE, **(options or {}))
    if backend == "torch":
        from gpu_backend.torch_executor import TorchExecutor

        return TorchExecutor(model, device=device, **(options or {}))
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
