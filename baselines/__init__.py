"""Published schedulers, one file each, all behind ``envs.policy.Policy``.

Importing this package registers every baseline with ``envs.policy.register_policy``.
"""

from baselines.fcfs import FCFS
from baselines.sjf import SJF, SRTF

__all__ = ["FCFS", "SJF", "SRTF"]
