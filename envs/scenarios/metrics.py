"""A scenario's metrics: ``envs.metrics`` with the scenario's settings, plus the few numbers papers add.

Why: the papers summarise a run with numbers ``compute_metrics`` does not name — DLPM and
D²LPM report *per-client* latency (the mean client's and the worst client's), LTR's data
generation reports the time to finish the first N requests — so they are computed here,
once, from the same records, and sit beside the standard keys in every benchmark output.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from envs.metrics import RunMetrics, compute_metrics
from envs.records import RunRecord
from envs.scenarios.registry import Scenario

EXTRA_KEYS = ("num_clients", "client_e2e_mean_avg_s", "client_e2e_mean_max_s", "client_ttft_mean_avg_s",
              "client_ttft_mean_max_s", "time_to_finish_target_s", "target_throughput_req_s")


def scenario_metrics(scenario: Scenario, record: RunRecord,
                     kv_bytes_per_token: int | None = None) -> tuple[RunMetrics, dict[str, Any]]:
    """``compute_metrics`` with the scenario's service window, and its ``to_dict()`` with ``EXTRA_KEYS`` added."""
    metrics = compute_metrics(record, service_window_s=scenario.service_window_s,
                              kv_bytes_per_token=kv_bytes_per_token)
    out = metrics.to_dict()
    out.update(extra_metrics(metrics, record, scenario.stop_after_finished))
    return metrics, out


def extra_metrics(metrics: RunMetrics, record: RunRecord, target: int | None) -> dict[str, float | int | None]:
    """The per-client latency summary and, with a ``target`` count, the time to finish that many.

    * ``client_e2e_mean_avg_s`` / ``client_e2e_mean_max_s``: each client's mean end-to-end
      latency over its finished requests, averaged over clients / the worst client (DLPM's
      "per-client latency"); the same for TTFT. Clients with no finished request are left
      out; None when no client finished anything.
    * ``time_to_finish_target_s``: the time from the first arrival until the ``target``-th
      request finished (LTR's data generation: 1,000 of 10,000); None when fewer finished
      or no target is set. ``target_throughput_req_s`` = target / that time.
    """
    e2e = [c.e2e.mean for c in metrics.per_client.values() if c.e2e.count]
    ttft = [c.ttft.mean for c in metrics.per_client.values() if c.ttft.count]
    out: dict[str, float | int | None] = {
        "num_clients": len(metrics.per_client),
        "client_e2e_mean_avg_s": float(np.mean(e2e)) if e2e else None,
        "client_e2e_mean_max_s": float(np.max(e2e)) if e2e else None,
        "client_ttft_mean_avg_s": float(np.mean(ttft)) if ttft else None,
        "client_ttft_mean_max_s": float(np.max(ttft)) if ttft else None,
        "time_to_finish_target_s": None,
        "target_throughput_req_s": None,
    }
    if target is not None:
        finishes = np.sort([r.finish_time for r in record.requests if r.finished and r.rejected_reason is None])
        if len(finishes) >= target:
            start = min(r.arrival_time for r in record.requests if r.rejected_reason is None)
            t = float(finishes[target - 1] - start)
            out["time_to_finish_target_s"] = t
            out["target_throughput_req_s"] = target / t if t > 0 else None
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}
