"""Workloads, the serving engine, metrics and the Gymnasium environment.

Importing ``envs`` registers the Gymnasium ids (``servegym/Serve-v0``) when gymnasium
is installed.
"""

try:
    import gymnasium as _gym
except ImportError:  # the simulator and CLI work without gymnasium's env registry
    _gym = None

if _gym is not None and "servegym/Serve-v0" not in _gym.registry:
    _gym.register(id="servegym/Serve-v0", entry_point="envs.serve_env:ServeEnv", nondeterministic=False)
if _gym is not None and "servegym/ServeTorch-v0" not in _gym.registry:
    # the same env over the real model (TorchExecutor): measured iteration times, so not reproducible
    _gym.register(id="servegym/ServeTorch-v0", entry_point="envs.serve_env:ServeEnv", nondeterministic=True,
                  kwargs={"backend": "torch"})
