"""End-to-end metrics of a real run's own plan sequence, re-timed by the simulator's cost model.

Why: ``servegym fidelity`` compares two end-to-end figures. The closed-loop one serves the
workload again on the simulator, whose scheduler then makes its own choices; on an overloaded
workload a few per cent of iteration time become different preemptions and 10-40% of latency
(BENCHMARKS.md, session 13), so it mixes the cost model's error with the scheduling's
sensitivity to it. This one keeps the real run's plans exactly, as issue #4 words the check
("replays the identical plan sequence through the simulator"), and re-times them:

- iteration ``i`` starts when iteration ``i - 1`` ends, or when the last of the requests it
  schedules for the first time arrives, whichever is later (a replay faster than the real run
  waits for arrivals; a slower one starts each iteration late);
- it lasts the cost model's prediction for its plan;
- each request's first token and finish come at the end of the iterations that produced them
  in the real run, so TTFT, TPOT, E2E and throughput follow from ``envs.metrics`` as for a run.

With the measured durations this reproduces the real run's metrics exactly (the engine's clock
works the same way), which the tests pin. The real run must have been recorded with each
iteration's start and new requests and each request's iterations (``servegym fidelity`` does so
since session 14); older recordings have no replay.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

REQUEST_FIELDS = ("request_id", "client_id", "arrival_time", "prompt_len", "output_len", "num_output_tokens",
                  "first_token_iteration", "finish_iteration", "rejected")


def request_table(requests, iteration_ends: Sequence[float]) -> list[list]:
    """One row per request (``REQUEST_FIELDS``): the iterations whose ends were its first token and its
    finish (-1: never), found by the end times the engine stamped on it."""
    index = {t: i for i, t in enumerate(iteration_ends)}

    def at(t: float, what: str, rid: int) -> int:
        if math.isnan(t):
            return -1
        try:
            return index[t]
        except KeyError:
            raise ValueError(f"request {rid}: its {what} time {t!r} is the end of no recorded iteration") from None

    return [[r.request_id, r.client_id, r.arrival_time, r.prompt_len, r.output_len, r.num_output_tokens,
             at(r.first_token_time, "first-token", r.request_id), at(r.finish_time, "finish", r.request_id),
             int(r.rejected)] for r in requests]


def replayed_ends(records: list[dict], arrivals: dict[int, float], durations: np.ndarray) -> np.ndarray:
    """Each iteration's end on the replayed clock (module docstring)."""
    ends = np.empty(len(records))
    t = 0.0
    for i, (rec, d) in enumerate(zip(records, durations)):
        start = max([t] + [arrivals[s] for s in rec["new_ids"]])
        t = start + float(d)
        ends[i] = t
    return ends


def can_replay(real: dict) -> bool:
    """Whether the recording carries what a replay needs (``servegym fidelity`` since session 14)."""
    records = real.get("records") or []
    return bool(real.get("requests")) and bool(records) and "new_ids" in records[0]


def replay_metrics(real: dict, durations: np.ndarray, kv_bytes_per_token: int | None = None) -> dict:
    """``envs.metrics`` of the real run's plans on the clock the ``durations`` give."""
    from envs.metrics import compute_metrics
    from envs.records import EngineCounters, ItlLog, RequestRecord, RunRecord

    records = real["records"]
    if len(durations) != len(records):
        raise ValueError(f"{len(durations)} durations for {len(records)} recorded iterations")
    rows = [dict(zip(REQUEST_FIELDS, row)) for row in real["requests"]]
    arrivals = {r["request_id"]: r["arrival_time"] for r in rows}
    ends = replayed_ends(records, arrivals, durations)

    def end(i: int) -> float:
        return float(ends[i]) if i >= 0 else math.nan

    requests = [RequestRecord(r["request_id"], r["client_id"], r["arrival_time"], r["prompt_len"], r["output_len"],
                              num_output_tokens=r["num_output_tokens"],
                              first_token_time=end(r["first_token_iteration"]),
                              finish_time=end(r["finish_iteration"]),
                              rejected_reason="rejected" if r["rejected"] else None) for r in rows]
    run = RunRecord(requests, ItlLog(), EngineCounters(), 0.0, float(ends[-1]) if len(ends) else 0.0)
    return compute_metrics(run, kv_bytes_per_token=kv_bytes_per_token).to_dict()
