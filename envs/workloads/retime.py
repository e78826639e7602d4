"""Re-time a workload's arrivals as one Poisson process, keeping everything else.

Why: a trace fixes its own load. To sweep the load (latency against request rate, the
usual serving benchmark) the same requests are replayed at a chosen rate.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from envs.request import RequestSpec


def retime_poisson(specs: Sequence[RequestSpec], rate: float, seed: int) -> list[RequestSpec]:
    """The same requests, in the same order, with root arrivals at Poisson ``rate`` req/s.

    Root requests (no ``parent_id``) get new arrival times in list order: the first at
    0.0, then exponential gaps of mean ``1/rate``. A child keeps its parent link and its
    offset from its parent's arrival time, so it still cannot arrive before its parent.
    Request ids, prompts and lengths are unchanged.
    """
    if not (isinstance(rate, (int, float, np.floating, np.integer)) and math.isfinite(rate) and rate > 0):
        raise ValueError(f"retime_poisson: rate must be a finite number of requests per second > 0, got {rate!r}")
    rng = np.random.default_rng(seed)
    num_roots = sum(1 for s in specs if s.parent_id is None)
    gaps = rng.exponential(1.0 / rate, size=max(num_roots - 1, 0))
    root_times = np.concatenate([[0.0], np.cumsum(gaps)]) if num_roots else np.zeros(0)
    old_time = {s.request_id: s.arrival_time for s in specs}
    new_time: dict[int, float] = {}
    out: list[RequestSpec] = []
    next_root = 0
    for s in specs:
        if s.parent_id is None:
            t = float(root_times[next_root])
            next_root += 1
        else:
            if s.parent_id not in new_time:
                raise ValueError(f"retime_poisson: request {s.request_id} names parent {s.parent_id}, "
                                 "which does not come before it in the list")
            offset = max(0.0, s.arrival_time - old_time[s.parent_id])
            t = new_time[s.parent_id] + offset
        new_time[s.request_id] = t
        out.append(dataclasses.replace(s, arrival_time=t))
    return out
