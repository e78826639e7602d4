"""The batch executor: KV blocks, prefix cache, swap space, cost model and executors.

Nothing here imports ``envs`` (the dependency points the other way) or torch at import
time, so the simulator stays light.
"""
