"""Workloads: who sends which requests when, as lists of ``envs.request.RequestSpec``.

Synthetic workloads combine per-client arrival processes (``arrivals``), length
distributions (``lengths``) and prompt programs that fix the prefix sharing
(``programs``); trace workloads replay the real traces shipped in ``envs/data``
(``traces``). Every built-in workload is registered by name (``registry``)::

    from envs.workloads import get_workload
    specs = get_workload("shared-doc-qa").generate(seed=0)
"""

from envs.workloads.arrivals import ArrivalProcess, Deterministic, Gamma, OnOff, Poisson, Ramp
from envs.workloads.lengths import Constant, Empirical, LengthDist, LogNormal, Uniform
from envs.workloads.programs import (ClientDraws, DraftRequest, MultiTurn, NoSharing, PromptProgram,
                                     SharedDocument, StreamIds, SystemPrompt)
from envs.workloads.registry import (UnknownWorkloadError, Workload, WorkloadInfo, get_workload,
                                     list_workloads, register_workload)
from envs.workloads.retime import retime_poisson
from envs.workloads.synthetic import ClientSpec, MultiClientWorkload, assemble
from envs.workloads.traces import (DATA_DIR, ParsedTrace, SkippedRow, TraceFormatError, TraceLoadReport,
                                   TraceRowsSkippedWarning, TraceWorkload, load_arena_trace,
                                   load_azure_trace, load_mooncake_trace)

__all__ = [
    "ArrivalProcess", "Poisson", "Gamma", "Deterministic", "OnOff", "Ramp",
    "LengthDist", "Constant", "Uniform", "LogNormal", "Empirical",
    "PromptProgram", "NoSharing", "SystemPrompt", "SharedDocument", "MultiTurn",
    "ClientDraws", "DraftRequest", "StreamIds",
    "ClientSpec", "MultiClientWorkload", "assemble",
    "TraceWorkload", "TraceFormatError", "TraceLoadReport", "TraceRowsSkippedWarning", "SkippedRow",
    "ParsedTrace", "load_mooncake_trace", "load_azure_trace", "load_arena_trace", "DATA_DIR",
    "Workload", "WorkloadInfo", "UnknownWorkloadError", "register_workload", "get_workload",
    "list_workloads",
    "retime_poisson",
]
