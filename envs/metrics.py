"""Turn a ``RunRecord`` into the numbers a user reads: latency, throughput, cache, fairness, SLOs.

One function, ``compute_metrics``, reads the raw records the engine left and returns a
``RunMetrics``. The definitions follow ``vllm bench serve`` for latency and throughput and
the VTC artifact (Sheng et al., OSDI 2024, ``fair_bench/plot/visualize.py``) for the
windowed service and service-difference metrics, so numbers can be put next to theirs.
Everything is vectorised with numpy: the engine calls this after every episode, and an
episode may have tens of thousands of requests and millions of inter-token gaps.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs.records import ItlLog, RequestRecord, RunRecord

_PERCENTILES = (50.0, 90.0, 99.0)


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Summary of one latency sample set, in seconds. NaN everywhere when ``count == 0``."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def empty(cls) -> LatencyStats:
        return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)

    @classmethod
    def of(cls, values: np.ndarray) -> LatencyStats:
        """Stats of ``values`` with numpy's default (linear) percentile interpolation."""
        values = np.asarray(values, dtype=np.float64)
        if values.size == 0:
            return cls.empty()
        p50, p90, p99 = np.percentile(values, _PERCENTILES)
        return cls(int(values.size), float(values.mean()), float(p50), float(p90), float(p99),
                   float(values.max()))


@dataclass(frozen=True, slots=True)
class ClientMetrics:
    """What one client experienced; the raw material of per-client fairness plots."""

    client_id: int
    num_requests: int
    num_finished: int
    num_rejected: int
    ttft: LatencyStats
    e2e: LatencyStats
    total_service: float          # w_prompt·prompt + w_output·output over finished requests
    mean_service_rate: float      # mean over ticks of the windowed service rate, tokens/s
    slo_attainment: float         # NaN when none of this client's requests has an SLO

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "num_requests": self.num_requests,
            "num_finished": self.num_finished,
            "num_rejected": self.num_rejected,
            "total_service": self.total_service,
            "mean_service_rate": self.mean_service_rate,
            "slo_attainment": self.slo_attainment,
        }
        out.update(_stats_items("ttft", self.ttft))
        out.update(_stats_items("e2e", self.e2e))
        return {k: _json_number(v) for k, v in out.items()}


@dataclass(frozen=True, slots=True)
class RunMetrics:
    """Every statistic of one run. Latencies in seconds; ``to_dict`` adds vllm's ms names."""

    num_requests: int
    num_finished: int
    num_rejected: int
    num_unfinished: int           # neither finished nor rejected when the run stopped
    rejected_by_reason: dict[str, int]
    duration_s: float
    total_input_tokens: int       # prompt tokens of finished requests
    total_output_tokens: int      # output tokens of finished requests
    request_throughput: float     # finished requests / duration
    output_throughput: float      # output tokens / duration
    total_token_throughput: float  # (prompt + output) tokens / duration
    ttft: LatencyStats
    tpot: LatencyStats
    itl: LatencyStats
    e2e: LatencyStats
    max_waiting_time: LatencyStats
    cache_hit_rate: float
    preemptions: int
    preemptions_swap: int
    preemptions_recompute: int
    swap_out_bytes: int
    swap_in_bytes: int
    swap_out_tokens: float        # swap bytes / kv_bytes_per_token; NaN when that is not given
    swap_in_tokens: float
    iterations: int
    busy_time_s: float
    max_service_diff: float
    avg_service_diff: float
    jain_index: float
    jain_index_total: float
    slo_attainment: float
    per_client: dict[int, ClientMetrics] = field(default_factory=dict)
    # the same over *actual* service: prompt tokens computed (cache hits are free), not all of them
    max_actual_service_diff: float = math.nan
    jain_index_actual: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (NaN becomes None): our names, then ``vllm bench serve``'s (its units)."""
        out: dict[str, Any] = {
            "num_requests": self.num_requests,
            "num_finished": self.num_finished,
            "num_rejected": self.num_rejected,
            "num_unfinished": self.num_unfinished,
            "duration_s": self.duration_s,
            "throughput_tok_s": self.total_token_throughput,
            "cache_hit_rate": self.cache_hit_rate,
            "preemptions": self.preemptions,
            "preemptions_swap": self.preemptions_swap,
            "preemptions_recompute": self.preemptions_recompute,
            "swap_out_bytes": self.swap_out_bytes,
            "swap_in_bytes": self.swap_in_bytes,
            "swap_out_tokens": self.swap_out_tokens,
            "swap_in_tokens": self.swap_in_tokens,
            "iterations": self.iterations,
            "busy_time_s": self.busy_time_s,
            "max_service_diff": self.max_service_diff,
            "avg_service_diff": self.avg_service_diff,
            "jain_index": self.jain_index,
            "jain_index_total": self.jain_index_total,
            "max_actual_service_diff": self.max_actual_service_diff,
            "jain_index_actual": self.jain_index_actual,
            "slo_attainment": self.slo_attainment,
        }
        out.update(_stats_items("ttft", self.ttft))
        out.update(_stats_items("tpot", self.tpot))
        out.update(_stats_items("itl", self.itl))
        out.update(_stats_items("e2e", self.e2e))
        out.update(_stats_items("max_waiting_time", self.max_waiting_time))
        # vllm bench serve's names and units (ms, and "duration" in seconds).
        out.update({
            "completed": self.num_finished,
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
            "request_throughput": self.request_throughput,
            "output_throughput": self.output_throughput,
            "total_token_throughput": self.total_token_throughput,
            "duration": self.duration_s,
        })
        for ours, theirs in (("ttft", "ttft"), ("tpot", "tpot"), ("itl", "itl"), ("e2e", "e2el")):
            stats: LatencyStats = getattr(self, ours)
            out[f"mean_{theirs}_ms"] = stats.mean * 1e3
            out[f"median_{theirs}_ms"] = stats.p50 * 1e3
            out[f"p90_{theirs}_ms"] = stats.p90 * 1e3
            out[f"p99_{theirs}_ms"] = stats.p99 * 1e3
        out = {k: _json_number(v) for k, v in out.items()}
        out["rejected_by_reason"] = dict(self.rejected_by_reason)
        out["per_client"] = {str(c): m.to_dict() for c, m in self.per_client.items()}
        return out


def compute_metrics(
    run: RunRecord,
    *,
    service_window_s: float = 60.0,
    num_ticks: int = 100,
    w_prompt: float = 1.0,
    w_output: float = 2.0,
    kv_bytes_per_token: int | None = None,
) -> RunMetrics:
    """Compute every statistic of ``run``.

    Latency (finished, non-rejected requests only; rejected and unfinished ones have none):

    * TTFT = first_token_time − arrival_time; E2E = finish_time − arrival_time.
    * TPOT = (finish − first_token) / (num_output_tokens − 1), only for requests with at
      least 2 output tokens (as ``vllm bench serve``).
    * ITL = every inter-token gap in ``run.itl`` (single samples and expanded runs).
    * Max waiting time (LTR's starvation metric) = max(TTFT, max_itl_s) per request.
    * Stats are mean, p50, p90, p99, max with numpy's linear percentile; NaN with no samples.

    Throughput: duration = (last finish) − (first arrival among non-rejected requests), or
    ``run.end_time − run.start_time`` when nothing finished. ``request_throughput``,
    ``output_throughput`` and ``total_token_throughput`` divide finished requests, their
    output tokens, and their prompt + output tokens by it (NaN if the duration is not > 0).

    Cache and memory: cache_hit_rate = prompt_tokens_cached / prompt_tokens_admitted (0.0 if
    nothing was admitted); preemptions and swap bytes come from ``run.counters``; swap
    tokens = bytes / ``kv_bytes_per_token`` when it is given.

    Fairness, as the VTC artifact measures it. A finished request's service
    w_prompt·prompt_len + w_output·output_tokens is spread uniformly over
    [first_token_time, finish_time] (all at that instant when they coincide); unfinished
    and rejected requests give no service. A client's demand is w_prompt·prompt_len +
    w_output·output_len of its requests arriving in the window, whatever became of them.
    Ticks are x_i = T·i/num_ticks (i < num_ticks) after the first arrival, T = last − first
    arrival; each tick's window is [x − W/2, x + W/2] with W = ``service_window_s``, and
    service s_c and demand r_c are divided by W (tokens/s).

    * Service difference at a tick = Σ_c min(max_c' s_c' − s_c, |r_c − s_c|): a client that
      asked for less than the best-served client got is unfair only by what it missed of
      its own demand. ``max_service_diff`` / ``avg_service_diff`` are its max / mean over
      ticks (VTC artifact Table 2); 0.0 with fewer than two clients.
    * Jain's index at a tick is (Σs)² / (n·Σs²) over the n clients backlogged then (with a
      non-rejected request where arrival ≤ x < finish; unfinished ones stay in the system),
      1.0 when all their rates are 0. Ticks with fewer than 2 backlogged clients are
      skipped; ``jain_index`` is the mean over counted ticks, and 1.0 when no tick counts
      (no contention ever, so nothing to be unfair about). ``jain_index_total`` is Jain
      over every client's total service of the run (1.0 if all are 0, NaN with no client).
    * ``max_actual_service_diff`` / ``jain_index_actual``: the same two over *actual* service,
      the prompt tokens a request really computed (``prefill_tokens_computed``: cache hits are
      free, recomputation counts) instead of its prompt length, in service and in demand. This
      is the service DLPM and D²LPM equalise (Cao et al. 2025 separate it from the
      client-visible service above).

    SLO attainment: over requests with any SLO that finished or were rejected, the
    fraction that finished meeting all of theirs (TTFT ≤ slo_ttft_s; TPOT ≤ slo_tpot_s, which
    a 1-token request always meets). Rejections count as misses; requests still running at
    the end are left out. NaN when no such request exists.
    """
    if not service_window_s > 0:
        raise ValueError(f"service_window_s must be > 0, got {service_window_s!r}")
    if num_ticks < 1:
        raise ValueError(f"num_ticks must be >= 1, got {num_ticks!r}")
    if kv_bytes_per_token is not None and kv_bytes_per_token <= 0:
        raise ValueError(f"kv_bytes_per_token must be > 0, got {kv_bytes_per_token!r}")

    cols = _Columns.of(run.requests)
    fin = cols.finished
    arrival, first, finish = cols.arrival, cols.first_token, cols.finish

    ttft = first[fin] - arrival[fin]
    e2e = finish[fin] - arrival[fin]
    n_out_fin = cols.num_output[fin]
    multi = n_out_fin >= 2
    tpot = (finish[fin][multi] - first[fin][multi]) / (n_out_fin[multi] - 1)
    waiting = np.maximum(ttft, cols.max_itl[fin])

    num_finished = int(fin.sum())
    if num_finished:
        duration = float(finish[fin].max() - arrival[~cols.rejected].min())
    else:
        duration = float(run.end_time - run.start_time)
    total_in = int(cols.prompt[fin].sum())
    total_out = int(n_out_fin.sum())

    def per_second(amount: float) -> float:
        return amount / duration if duration > 0 else math.nan

    counters = run.counters
    admitted = counters.prompt_tokens_admitted
    fairness = _fairness(cols, service_window_s, num_ticks, w_prompt, w_output)
    actual = _fairness(cols, service_window_s, num_ticks, w_prompt, w_output, prompt=cols.prefill_computed)
    slo_met, slo_counted = _slo(cols)

    return RunMetrics(
        num_requests=cols.n,
        num_finished=num_finished,
        num_rejected=int(cols.rejected.sum()),
        num_unfinished=int((~fin & ~cols.rejected).sum()),
        rejected_by_reason=dict(Counter(r for r in cols.reasons if r is not None)),
        duration_s=duration,
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        request_throughput=per_second(num_finished),
        output_throughput=per_second(total_out),
        total_token_throughput=per_second(total_in + total_out),
        ttft=LatencyStats.of(ttft),
        tpot=LatencyStats.of(tpot),
        itl=LatencyStats.of(_itl_array(run.itl)),
        e2e=LatencyStats.of(e2e),
        max_waiting_time=LatencyStats.of(waiting),
        cache_hit_rate=counters.prompt_tokens_cached / admitted if admitted else 0.0,
        preemptions=counters.preemptions,
        preemptions_swap=counters.preemptions_swap,
        preemptions_recompute=counters.preemptions_recompute,
        swap_out_bytes=counters.swap_out_bytes,
        swap_in_bytes=counters.swap_in_bytes,
        swap_out_tokens=(counters.swap_out_bytes / kv_bytes_per_token
                         if kv_bytes_per_token else math.nan),
        swap_in_tokens=(counters.swap_in_bytes / kv_bytes_per_token
                        if kv_bytes_per_token else math.nan),
        iterations=counters.iterations,
        busy_time_s=counters.busy_time_s,
        max_service_diff=fairness.max_diff,
        avg_service_diff=fairness.avg_diff,
        jain_index=fairness.jain,
        jain_index_total=fairness.jain_total,
        max_actual_service_diff=actual.max_diff,
        jain_index_actual=actual.jain,
        slo_attainment=_ratio(slo_met.sum(), slo_counted.sum()),
        per_client=_per_client(cols, ttft, e2e, fairness, slo_met, slo_counted),
    )


@dataclass(frozen=True, slots=True)
class _Columns:
    """The request records as numpy columns, with client ids mapped to 0..C-1."""

    n: int
    client_ids: np.ndarray        # the distinct client ids, sorted; index = client index
    client: np.ndarray            # client index per request
    arrival: np.ndarray
    first_token: np.ndarray
    finish: np.ndarray
    prompt: np.ndarray
    prefill_computed: np.ndarray  # prompt (and recomputed) tokens actually computed: the actual service
    output_len: np.ndarray
    num_output: np.ndarray
    max_itl: np.ndarray
    slo_ttft: np.ndarray          # NaN where the request has none
    slo_tpot: np.ndarray
    rejected: np.ndarray
    finished: np.ndarray          # finished and not rejected
    reasons: list[str | None]

    @classmethod
    def of(cls, reqs: list[RequestRecord]) -> _Columns:
        n = len(reqs)

        def floats(get) -> np.ndarray:
            return np.fromiter(map(get, reqs), dtype=np.float64, count=n)

        def ints(get) -> np.ndarray:
            return np.fromiter(map(get, reqs), dtype=np.int64, count=n)

        nan = math.nan
        reasons = [r.rejected_reason for r in reqs]
        rejected = np.fromiter((x is not None for x in reasons), dtype=bool, count=n)
        finish = floats(lambda r: r.finish_time)
        first = floats(lambda r: r.first_token_time)
        finished = ~np.isnan(finish) & ~rejected
        bad = finished & ~(first <= finish)  # catches a NaN first token too
        if bad.any():
            r = reqs[int(np.flatnonzero(bad)[0])]
            raise ValueError(
                f"request {r.request_id} finished at {r.finish_time!r} with first_token_time "
                f"{r.first_token_time!r}; a finished request needs first_token_time <= finish_time")
        client_ids, client = np.unique(ints(lambda r: r.client_id), return_inverse=True)
        return cls(
            n=n,
            client_ids=client_ids,
            client=client.reshape(-1),
            arrival=floats(lambda r: r.arrival_time),
            first_token=first,
            finish=finish,
            prompt=ints(lambda r: r.prompt_len),
            prefill_computed=ints(lambda r: r.prefill_tokens_computed),
            output_len=ints(lambda r: r.output_len),
            num_output=ints(lambda r: r.num_output_tokens),
            max_itl=floats(lambda r: r.max_itl_s),
            slo_ttft=floats(lambda r: nan if r.slo_ttft_s is None else r.slo_ttft_s),
            slo_tpot=floats(lambda r: nan if r.slo_tpot_s is None else r.slo_tpot_s),
            rejected=rejected,
            finished=finished,
            reasons=reasons,
        )

    @property
    def num_clients(self) -> int:
        return len(self.client_ids)


def _itl_array(itl: ItlLog) -> np.ndarray:
    """``itl.to_array()`` without a Python loop over runs (an episode may log ~10^5 runs)."""
    samples = np.asarray(itl.samples, dtype=np.float64)
    if not itl.runs:
        return samples
    flat = itertools.chain.from_iterable(itl.runs)  # twice as fast as np.asarray on tuples
    runs = np.fromiter(flat, dtype=np.float64, count=4 * len(itl.runs)).reshape(-1, 4)
    k = runs[:, 2].astype(np.int64)
    width = runs[:, 3].astype(np.int64)
    keep = (k > 0) & (width > 0)
    first, step, k, width = runs[keep, 0], runs[keep, 1], k[keep], width[keep]
    run_of_iter = np.repeat(np.arange(k.size), k)
    iter_in_run = np.arange(run_of_iter.size) - np.repeat(np.cumsum(k) - k, k)
    gaps = first[run_of_iter] + step[run_of_iter] * iter_in_run.astype(np.float64)
    return np.concatenate([samples, np.repeat(gaps, np.repeat(width, k))])


@dataclass(frozen=True, slots=True)
class _Fairness:
    max_diff: float
    avg_diff: float
    jain: float
    jain_total: float
    total_service: np.ndarray     # per client index
    mean_rate: np.ndarray         # per client index, tokens/s


def _fairness(cols: _Columns, window: float, num_ticks: int, w_prompt: float,
              w_output: float, prompt: np.ndarray | None = None) -> _Fairness:
    """VTC's windowed service difference and Jain's index; see ``compute_metrics``. ``prompt``
    replaces the prompt lengths (in service and demand) for the actual-service variant."""
    prompt = cols.prompt if prompt is None else prompt
    num_c = cols.num_clients
    if cols.n == 0:
        empty = np.zeros(0)
        return _Fairness(0.0, 0.0, 1.0, math.nan, empty, empty)
    t0 = float(cols.arrival.min())
    arrival = cols.arrival - t0
    span = float(arrival.max())
    ticks = span * np.arange(num_ticks, dtype=np.float64) / num_ticks
    lo, hi = ticks - window / 2, ticks + window / 2

    fin = cols.finished
    amount = w_prompt * prompt[fin] + w_output * cols.num_output[fin]
    c_fin = cols.client[fin]
    start, end = cols.first_token[fin] - t0, cols.finish[fin] - t0
    # Window [lo, hi]: point masses count at hi inclusive (side="left") and are excluded at
    # lo only when strictly before it (side="right"); spread service is continuous anyway.
    service = (_delivered_by(hi, c_fin, start, end, amount, num_c, "left")
               - _delivered_by(lo, c_fin, start, end, amount, num_c, "right")) / window
    demand_amount = w_prompt * prompt + w_output * cols.output_len
    demand = (_delivered_by(hi, cols.client, arrival, arrival, demand_amount, num_c, "left")
              - _delivered_by(lo, cols.client, arrival, arrival, demand_amount, num_c, "right")
              ) / window

    total = np.bincount(c_fin, weights=amount, minlength=num_c)
    mean_rate = service.mean(axis=1)
    jain_total = _jain(total)
    if num_c < 2:
        return _Fairness(0.0, 0.0, 1.0, jain_total, total, mean_rate)

    diff = np.minimum(service.max(axis=0) - service, np.abs(demand - service)).sum(axis=0)

    live = ~cols.rejected
    departure = np.where(np.isnan(cols.finish), np.inf, cols.finish)[live] - t0
    ones = np.ones(int(live.sum()))
    c_live = cols.client[live]
    in_system = (_delivered_by(ticks, c_live, arrival[live], arrival[live], ones, num_c, "left")
                 - _delivered_by(ticks, c_live, departure, departure, ones, num_c, "left"))
    backlogged = in_system > 0.5
    n = backlogged.sum(axis=0)
    s = np.where(backlogged, service, 0.0)
    sum_s, sum_sq = s.sum(axis=0), (s * s).sum(axis=0)
    counted = n >= 2
    with np.errstate(divide="ignore", invalid="ignore"):
        per_tick = np.where(sum_sq > 0, sum_s * sum_s / (n * sum_sq), 1.0)
    jain = float(per_tick[counted].mean()) if counted.any() else 1.0
    return _Fairness(float(diff.max()), float(diff.mean()), jain, jain_total, total, mean_rate)


def _delivered_by(q: np.ndarray, client: np.ndarray, start: np.ndarray, end: np.ndarray,
                  amount: np.ndarray, num_clients: int, side: str) -> np.ndarray:
    """How much of ``amount`` each client had received by each (sorted) time in ``q``.

    Item j delivers amount[j] uniformly over [start[j], end[j]]; an item with end <= start
    delivers it all at ``start``, counted at q >= start (side="left") or q > start
    (side="right"). Returns a (num_clients, len(q)) array. The cumulative curve is
    piecewise linear, so it is a sum of prefix sums over the queries: completed items, plus
    rate·(q − start) for items in progress. Cost O((items + clients·len(q)) log), no loop.
    """
    nq = q.size
    out = np.zeros((num_clients, nq))
    spread = end > start
    point = ~spread
    if point.any():
        j = np.searchsorted(q, start[point], side=side)
        out += _prefix(client[point], j, amount[point], num_clients, nq)
    if spread.any():
        c, a, b = client[spread], start[spread], end[spread]
        rate = amount[spread] / (b - a)
        ja = np.searchsorted(q, a, side="left")
        jb = np.searchsorted(q, b, side="left")
        rate_on = _prefix(c, ja, rate, num_clients, nq) - _prefix(c, jb, rate, num_clients, nq)
        rate_start_on = (_prefix(c, ja, rate * a, num_clients, nq)
                         - _prefix(c, jb, rate * a, num_clients, nq))
        done = _prefix(c, jb, amount[spread], num_clients, nq)
        out += done + q * rate_on - rate_start_on
    return out


def _prefix(client: np.ndarray, j: np.ndarray, weight: np.ndarray, num_clients: int,
            nq: int) -> np.ndarray:
    """out[c, k] = Σ weight over items of client c with j <= k (j == nq: never counted)."""
    flat = np.bincount(client * (nq + 1) + j, weights=weight, minlength=num_clients * (nq + 1))
    return np.cumsum(flat.reshape(num_clients, nq + 1), axis=1)[:, :nq]


def _jain(x: np.ndarray) -> float:
    if x.size == 0:
        return math.nan
    sum_sq = float((x * x).sum())
    return float(x.sum()) ** 2 / (x.size * sum_sq) if sum_sq > 0 else 1.0


def _slo(cols: _Columns) -> tuple[np.ndarray, np.ndarray]:
    """Per request: (met all its SLOs, counts toward attainment); see ``compute_metrics``."""
    has_ttft, has_tpot = ~np.isnan(cols.slo_ttft), ~np.isnan(cols.slo_tpot)
    counted = (has_ttft | has_tpot) & (cols.finished | cols.rejected)
    ttft = cols.first_token - cols.arrival
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = (cols.finish - cols.first_token) / (cols.num_output - 1)
    ok_ttft = ~has_ttft | (ttft <= cols.slo_ttft)
    ok_tpot = ~has_tpot | (cols.num_output < 2) | (tpot <= cols.slo_tpot)
    met = counted & cols.finished & ok_ttft & ok_tpot
    return met, counted


def _per_client(cols: _Columns, ttft: np.ndarray, e2e: np.ndarray, fairness: _Fairness,
                slo_met: np.ndarray, slo_counted: np.ndarray) -> dict[int, ClientMetrics]:
    num_c = cols.num_clients
    c_fin = cols.client[cols.finished]
    n_req = np.bincount(cols.client, minlength=num_c)
    n_fin = np.bincount(c_fin, minlength=num_c)
    n_rej = np.bincount(cols.client[cols.rejected], minlength=num_c)
    n_met = np.bincount(cols.client[slo_met], minlength=num_c)
    n_slo = np.bincount(cols.client[slo_counted], minlength=num_c)
    ttft_stats = _grouped_stats(ttft, c_fin, num_c)
    e2e_stats = _grouped_stats(e2e, c_fin, num_c)
    return {
        int(cid): ClientMetrics(
            client_id=int(cid),
            num_requests=int(n_req[i]),
            num_finished=int(n_fin[i]),
            num_rejected=int(n_rej[i]),
            ttft=ttft_stats[i],
            e2e=e2e_stats[i],
            total_service=float(fairness.total_service[i]),
            mean_service_rate=float(fairness.mean_rate[i]),
            slo_attainment=_ratio(n_met[i], n_slo[i]),
        )
        for i, cid in enumerate(cols.client_ids)
    }


def _grouped_stats(values: np.ndarray, group: np.ndarray, num_groups: int) -> list[LatencyStats]:
    """``LatencyStats.of`` per group in one sort, matching numpy's linear percentile."""
    order = np.lexsort((values, group))
    v = values[order]
    count = np.bincount(group, minlength=num_groups)
    start = np.cumsum(count) - count
    nonempty = count > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.bincount(group, weights=values, minlength=num_groups) / count
    last = np.where(nonempty, start + count - 1, 0)
    pct = []
    for p in _PERCENTILES:
        virtual = (count - 1) * (p / 100.0)
        below = np.floor(virtual)
        t = virtual - below
        i_lo = np.where(nonempty, start + below.astype(np.int64), 0)
        i_hi = np.minimum(i_lo + 1, last)
        a = v[i_lo] if v.size else np.zeros(num_groups)
        b = v[i_hi] if v.size else np.zeros(num_groups)
        # numpy's _lerp: interpolate from the nearer end so that t == 1 returns b exactly.
        pct.append(np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t))
    top = v[last] if v.size else np.zeros(num_groups)
    return [
        LatencyStats(int(count[g]), float(mean[g]), float(pct[0][g]), float(pct[1][g]),
                     float(pct[2][g]), float(top[g])) if nonempty[g] else LatencyStats.empty()
        for g in range(num_groups)
    ]


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def _stats_items(name: str, stats: LatencyStats) -> dict[str, float]:
    """``ttft`` → ``ttft_mean_s``, ``ttft_p50_s``, … (seconds)."""
    parts = ("mean", "p50", "p90", "p99", "max")
    return {f"{name}_{part}_s": getattr(stats, part) for part in parts}


def _json_number(x: Any) -> Any:
    """NaN and ±inf become None so ``json.dumps(..., allow_nan=False)`` accepts the dict."""
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x
