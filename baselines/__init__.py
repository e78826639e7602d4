"""Published schedulers, one file each, all behind ``envs.policy.Policy``.

Importing this package registers every baseline with ``envs.policy.register_policy``, and
D²LPM's dispatcher with ``envs.routers.register_router``.
"""

from baselines.d2lpm import D2LPM
from baselines.deficit import DeficitLedger
from baselines.dlpm import DLPM
from baselines.fcfs import FCFS
from baselines.lpm import LPM
from baselines.ltr import LTR
from baselines.mlfq import MLFQ
from baselines.sjf import SJF, SRTF
from baselines.vtc import LCF, VTC

__all__ = ["D2LPM", "DLPM", "DeficitLedger", "FCFS", "LCF", "LPM", "LTR", "MLFQ", "SJF", "SRTF", "VTC"]
