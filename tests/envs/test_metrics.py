"""Pin ``envs.metrics`` and ``envs.metrics_table`` on hand-computed runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from envs.metrics import (ClientMetrics, LatencyStats, RunMetrics, _grouped_stats, _itl_array,
                          compute_metrics)
from envs.metrics_table import format_metrics_table, format_single_run
from envs.records import EngineCounters, ItlLog, RequestRecord, RunRecord


def req(rid, client, arrival, prompt, out, first=None, finish=None, *, max_itl=0.0,
        slo_ttft=None, slo_tpot=None, rejected=None) -> RequestRecord:
    """A request; finished when ``finish`` is given (then all ``out`` tokens were produced)."""
    r = RequestRecord(rid, client, arrival, prompt, out, slo_ttft_s=slo_ttft, slo_tpot_s=slo_tpot,
                      rejected_reason=rejected, max_itl_s=max_itl)
    if first is not None:
        r.first_token_time = first
        r.num_output_tokens = 1
    if finish is not None:
        r.finish_time = finish
        r.num_output_tokens = out
    return r


def run_of(reqs, itl=None, counters=None, start=0.0, end=0.0) -> RunRecord:
    return RunRecord(reqs, itl or ItlLog(), counters or EngineCounters(), start, end)


def stats_approx(stats: LatencyStats, count, mean, p50, p90, p99, mx):
    assert stats.count == count
    got = (stats.mean, stats.p50, stats.p90, stats.p99, stats.max)
    assert got == pytest.approx((mean, p50, p90, p99, mx), rel=1e-12, abs=1e-12)


# ---------------------------------------------------------------- latency and throughput

@pytest.fixture
def latency_run() -> RunRecord:
    return run_of([
        req(0, 0, 0.0, 10, 5, 0.5, 2.5, max_itl=0.7),    # TTFT 0.5, E2E 2.5, TPOT 2/4
        req(1, 0, 1.0, 20, 5, 2.0, 3.0, max_itl=0.3),    # TTFT 1.0, E2E 2.0, TPOT 1/4
        req(2, 1, 2.0, 30, 1, 4.0, 4.0),                 # TTFT 2.0, E2E 2.0, no TPOT
        req(3, 1, 3.0, 40, 11, 3.5, 7.5, max_itl=0.6),   # TTFT 0.5, E2E 4.5, TPOT 4/10
        req(4, 1, -10.0, 50, 8, rejected="prompt_too_long"),
        req(5, 0, 5.0, 60, 8, 6.0),                      # still decoding at the end
    ], end=9.0)


def test_latency_percentiles_by_hand(latency_run):
    m = compute_metrics(latency_run)
    # TTFT sorted [0.5, 0.5, 1.0, 2.0]; linear percentile at (n-1)·p.
    stats_approx(m.ttft, 4, 1.0, 0.75, 1.0 + 0.7 * 1.0, 1.0 + 0.97 * 1.0, 2.0)
    # E2E sorted [2.0, 2.0, 2.5, 4.5].
    stats_approx(m.e2e, 4, 2.75, 2.25, 2.5 + 0.7 * 2.0, 2.5 + 0.97 * 2.0, 4.5)
    # TPOT sorted [0.25, 0.4, 0.5]; the 1-token request has none.
    stats_approx(m.tpot, 3, 1.15 / 3, 0.4, 0.4 + 0.8 * 0.1, 0.4 + 0.98 * 0.1, 0.5)
    # max(TTFT, max ITL) sorted [0.6, 0.7, 1.0, 2.0].
    stats_approx(m.max_waiting_time, 4, 4.3 / 4, 0.85, 1.7, 1.97, 2.0)


def test_rejected_and_unfinished_are_excluded_from_latency_and_throughput(latency_run):
    m = compute_metrics(latency_run)
    assert (m.num_requests, m.num_finished, m.num_rejected, m.num_unfinished) == (6, 4, 1, 1)
    assert m.rejected_by_reason == {"prompt_too_long": 1}
    # Last finish 7.5 − first non-rejected arrival 0.0 (the rejection at −10 is ignored).
    assert m.duration_s == pytest.approx(7.5)
    assert (m.total_input_tokens, m.total_output_tokens) == (100, 22)
    assert m.request_throughput == pytest.approx(4 / 7.5)
    assert m.output_throughput == pytest.approx(22 / 7.5)
    assert m.total_token_throughput == pytest.approx(122 / 7.5)


def test_to_dict_uses_vllm_names_and_units(latency_run):
    d = compute_metrics(latency_run).to_dict()
    assert d["completed"] == 4
    assert d["mean_ttft_ms"] == pytest.approx(1000.0)
    assert d["median_ttft_ms"] == pytest.approx(750.0)
    assert d["p99_e2el_ms"] == pytest.approx(4440.0)
    assert d["median_tpot_ms"] == pytest.approx(400.0)
    assert d["duration"] == pytest.approx(7.5)
    assert d["throughput_tok_s"] == d["total_token_throughput"]
    assert d["e2e_p90_s"] == pytest.approx(3.9)
    assert d["per_client"]["0"]["num_finished"] == 2
    assert d["per_client"]["1"]["num_rejected"] == 1


def test_per_client_latency(latency_run):
    m = compute_metrics(latency_run)
    assert set(m.per_client) == {0, 1}
    c0, c1 = m.per_client[0], m.per_client[1]
    assert isinstance(c0, ClientMetrics)
    assert (c0.num_requests, c0.num_finished, c0.num_rejected) == (3, 2, 0)
    stats_approx(c0.ttft, 2, 0.75, 0.75, 0.95, 0.995, 1.0)
    stats_approx(c1.e2e, 2, 3.25, 3.25, 4.25, 4.475, 4.5)
    assert c0.total_service == pytest.approx(10 + 2 * 5 + 20 + 2 * 5)


def test_grouped_stats_match_numpy():
    rng = np.random.default_rng(7)
    values = rng.exponential(1.0, 500)
    groups = rng.integers(0, 6, 500)
    groups[groups == 4] = 3  # leave group 4 empty
    got = _grouped_stats(values, groups, 6)
    for g in range(6):
        want = LatencyStats.of(values[groups == g])
        if want.count == 0:
            assert got[g].count == 0 and math.isnan(got[g].p50)
            continue
        assert (got[g].p50, got[g].p90, got[g].p99, got[g].max) == (want.p50, want.p90, want.p99,
                                                                    want.max)
        assert got[g].mean == pytest.approx(want.mean, rel=1e-12)


# ---------------------------------------------------------------- ITL

def test_itl_runs_expand_in_order():
    itl = ItlLog(samples=[], runs=[(0.1, 0.01, 3, 2)])
    assert _itl_array(itl) == pytest.approx([0.1, 0.1, 0.11, 0.11, 0.12, 0.12])
    m = compute_metrics(run_of([], itl=itl))
    stats_approx(m.itl, 6, 0.11, 0.11, 0.12, 0.12, 0.12)


def test_itl_matches_to_array_with_samples_and_empty_runs():
    rng = np.random.default_rng(1)
    runs = [(float(rng.uniform(0.01, 0.05)), float(rng.uniform(0, 1e-3)), int(rng.integers(0, 6)),
             int(rng.integers(0, 4))) for _ in range(200)]
    itl = ItlLog(samples=list(rng.uniform(0, 0.1, 50)), runs=runs)
    np.testing.assert_array_equal(_itl_array(itl), itl.to_array())
    assert compute_metrics(run_of([], itl=itl)).itl.count == itl.to_array().size


# ---------------------------------------------------------------- counters

def test_cache_hit_rate_and_counters():
    counters = EngineCounters(iterations=42, preemptions_swap=3, preemptions_recompute=2,
                              swap_out_bytes=4096, swap_in_bytes=2048,
                              prompt_tokens_admitted=200, prompt_tokens_cached=50)
    m = compute_metrics(run_of([], counters=counters), kv_bytes_per_token=1024)
    assert m.cache_hit_rate == 0.25
    assert (m.preemptions, m.preemptions_swap, m.preemptions_recompute) == (5, 3, 2)
    assert (m.swap_out_bytes, m.swap_in_bytes, m.iterations) == (4096, 2048, 42)
    assert (m.swap_out_tokens, m.swap_in_tokens) == (4.0, 2.0)
    assert compute_metrics(run_of([])).cache_hit_rate == 0.0
    assert math.isnan(compute_metrics(run_of([])).swap_out_tokens)


# ---------------------------------------------------------------- fairness

def test_one_client_served_while_both_backlogged():
    reqs = [
        req(0, 0, 0.0, 20, 40, 0.0, 20.0),    # client 0: service 100 over [0, 20]
        req(1, 1, 0.0, 20, 40, 20.0, 40.0),   # client 1: service 100 over [20, 40]
        req(2, 1, 20.0, 20, 40, rejected="queue_full"),  # demand 100 at t = 20, never served
    ]
    m = compute_metrics(run_of(reqs), service_window_s=20.0, num_ticks=2)
    # T = 20, ticks at 0 and 10; windows [-10, 10] and [0, 20]; rates in tokens/s (÷ 20).
    # tick 0:  s = (50/20, 0) = (2.5, 0), r = (5, 5): diff = 0 + min(2.5, 5) = 2.5
    # tick 10: s = (5, 0), r = (5, 10):               diff = 0 + min(5, 10) = 5
    assert m.max_service_diff == pytest.approx(5.0)
    assert m.avg_service_diff == pytest.approx(3.75)
    # Both clients are in the system at both ticks and one gets everything.
    assert m.jain_index == pytest.approx(0.5)
    assert m.jain_index_total == pytest.approx(1.0)  # the totals are equal over the whole run
    assert m.per_client[0].mean_service_rate == pytest.approx(3.75)
    assert m.per_client[1].mean_service_rate == pytest.approx(0.0)


def test_equal_service_is_fair():
    reqs = [
        req(0, 0, 0.0, 20, 40, 0.0, 20.0), req(1, 1, 0.0, 20, 40, 0.0, 20.0),
        req(2, 0, 20.0, 20, 40, 20.0, 40.0), req(3, 1, 20.0, 20, 40, 20.0, 40.0),
    ]
    m = compute_metrics(run_of(reqs), service_window_s=10.0, num_ticks=4)
    assert m.max_service_diff == pytest.approx(0.0, abs=1e-9)
    assert m.avg_service_diff == pytest.approx(0.0, abs=1e-9)
    assert m.jain_index == pytest.approx(1.0)
    assert m.jain_index_total == pytest.approx(1.0)


def test_actual_service_counts_only_computed_prompt_tokens():
    """Two clients with equal client-visible service; client 0's prompts come from the prefix
    cache (it computed 4 tokens of each 100), so its actual service is far smaller."""
    reqs = [req(0, 0, 0.0, 100, 10, 0.0, 20.0), req(1, 1, 0.0, 100, 10, 0.0, 20.0)]
    reqs[0].prefill_tokens_computed, reqs[1].prefill_tokens_computed = 4, 100
    m = compute_metrics(run_of(reqs), service_window_s=100.0, num_ticks=1)
    # one tick at 0, window [-50, 50]: visible s = (120, 120) / 100; actual s = (24, 120) / 100
    assert m.max_service_diff == pytest.approx(0.0, abs=1e-12)
    assert m.jain_index == pytest.approx(1.0)
    assert m.max_actual_service_diff == pytest.approx(0.0, abs=1e-12)   # client 0 asked for no more
    assert m.jain_index_actual == pytest.approx((0.24 + 1.2) ** 2 / (2 * (0.24 ** 2 + 1.2 ** 2)))
    d = m.to_dict()
    assert d["jain_index_actual"] == m.jain_index_actual and "max_actual_service_diff" in d


def test_client_asking_for_less_is_not_unfair():
    reqs = [
        req(0, 0, 0.0, 20, 40, 0.0, 20.0),     # client 0 asks for 100 and gets it
        req(1, 1, 0.0, 100, 150, 0.0, 20.0),   # client 1 asks for 400 and gets it
    ]
    m = compute_metrics(run_of(reqs), service_window_s=100.0, num_ticks=1)
    # One tick at 0, window [-50, 50]: s = r = (1, 4). Without the |r − s| term client 0
    # would count max(s) − s = 3 of unfairness.
    assert m.max_service_diff == pytest.approx(0.0, abs=1e-12)
    assert m.per_client[0].mean_service_rate == pytest.approx(1.0)
    assert m.per_client[1].mean_service_rate == pytest.approx(4.0)
    assert m.jain_index == pytest.approx(25 / (2 * 17))


def test_single_client_and_no_contention():
    one = compute_metrics(run_of([req(0, 7, 0.0, 10, 10, 1.0, 2.0), req(1, 7, 5.0, 10, 10)]))
    assert (one.max_service_diff, one.avg_service_diff, one.jain_index) == (0.0, 0.0, 1.0)
    assert one.jain_index_total == 1.0
    # Two clients that are never in the system together: no tick counts for Jain.
    apart = compute_metrics(run_of([req(0, 0, 0.0, 10, 10, 0.5, 1.0),
                                    req(1, 1, 10.0, 10, 10, 10.5, 11.0)]),
                            service_window_s=4.0, num_ticks=10)
    assert apart.jain_index == 1.0


def naive_fairness(reqs, window, num_ticks, wp=1.0, wo=2.0):
    """The VTC artifact's loops, written plainly, as an oracle for the vectorised code."""
    t0 = min(r.arrival_time for r in reqs)
    span = max(r.arrival_time for r in reqs) - t0
    clients = sorted({r.client_id for r in reqs})
    diffs, jains = [], []
    for i in range(num_ticks):
        x = t0 + span * i / num_ticks
        lo, hi = x - window / 2, x + window / 2
        s, d, backlogged = {}, {}, set()
        for c in clients:
            s[c] = d[c] = 0.0
            for r in (r for r in reqs if r.client_id == c):
                if lo <= r.arrival_time <= hi:
                    d[c] += wp * r.prompt_len + wo * r.output_len
                if r.rejected:
                    continue
                end = r.finish_time if r.finished else math.inf
                if r.arrival_time <= x < end:
                    backlogged.add(c)
                if not r.finished:
                    continue
                amount = wp * r.prompt_len + wo * r.num_output_tokens
                a, b = r.first_token_time, r.finish_time
                if b > a:
                    s[c] += amount * max(min(hi, b) - max(lo, a), 0.0) / (b - a)
                elif lo <= a <= hi:
                    s[c] += amount
            s[c] /= window
            d[c] /= window
        top = max(s.values())
        diffs.append(sum(min(top - s[c], abs(d[c] - s[c])) for c in clients))
        if len(backlogged) >= 2:
            v = [s[c] for c in backlogged]
            sq = sum(x * x for x in v)
            jains.append(sum(v) ** 2 / (len(v) * sq) if sq > 0 else 1.0)
    return max(diffs), sum(diffs) / len(diffs), (sum(jains) / len(jains) if jains else 1.0)


@pytest.mark.parametrize("seed", range(12))
def test_fairness_matches_naive_loops(seed):
    rng = np.random.default_rng(seed)
    reqs = []
    for i in range(int(rng.integers(5, 40))):
        arrival = float(rng.uniform(0, 60))
        out = int(rng.integers(1, 50))
        kind = rng.uniform()
        if kind < 0.1:
            reqs.append(req(i, int(rng.integers(0, 4)), arrival, 30, out, rejected="full"))
        elif kind < 0.2:
            reqs.append(req(i, int(rng.integers(0, 4)), arrival, 30, out))  # unfinished
        else:
            first = arrival + float(rng.exponential(3))
            finish = first if out == 1 else first + float(rng.exponential(10))
            reqs.append(req(i, int(rng.integers(0, 4)), arrival, int(rng.integers(1, 100)), out,
                            first, finish))
    window, ticks = float(rng.uniform(3, 30)), int(rng.integers(1, 30))
    m = compute_metrics(run_of(reqs), service_window_s=window, num_ticks=ticks)
    want_max, want_avg, want_jain = naive_fairness(reqs, window, ticks)
    assert m.max_service_diff == pytest.approx(want_max, rel=1e-9, abs=1e-9)
    assert m.avg_service_diff == pytest.approx(want_avg, rel=1e-9, abs=1e-9)
    assert m.jain_index == pytest.approx(want_jain, rel=1e-9, abs=1e-9)


# ---------------------------------------------------------------- SLOs

def test_slo_attainment_with_miss_and_rejection():
    reqs = [
        req(0, 0, 0.0, 10, 5, 0.5, 2.5, slo_ttft=1.0),                  # met
        req(1, 0, 0.0, 10, 5, 2.0, 3.0, slo_ttft=1.0),                  # TTFT 2.0 > 1.0
        req(2, 1, 0.0, 10, 1, 5.0, 5.0, slo_tpot=0.1),                  # 1 token: met
        req(3, 1, 0.0, 10, 3, 1.0, 1.4, slo_ttft=2.0, slo_tpot=0.1),    # TPOT 0.2 > 0.1
        req(4, 1, 0.0, 10, 3, slo_ttft=5.0, rejected="queue_full"),     # a miss
        req(5, 1, 0.0, 10, 3, 1.0, 2.0),                                # no SLO: ignored
        req(6, 1, 0.0, 10, 3, slo_ttft=5.0),                            # unfinished: ignored
    ]
    m = compute_metrics(run_of(reqs, end=10.0))
    assert m.slo_attainment == pytest.approx(2 / 5)
    assert m.per_client[0].slo_attainment == pytest.approx(1 / 2)
    assert m.per_client[1].slo_attainment == pytest.approx(1 / 3)


def test_no_slos_gives_nan():
    m = compute_metrics(run_of([req(0, 0, 0.0, 10, 5, 0.5, 2.5)]))
    assert math.isnan(m.slo_attainment)
    assert m.to_dict()["slo_attainment"] is None


# ---------------------------------------------------------------- empty runs and to_dict

REQUIRED_KEYS = {
    "num_requests", "num_finished", "num_rejected", "throughput_tok_s", "ttft_p50_s",
    "ttft_p99_s", "tpot_p99_s", "e2e_p50_s", "e2e_p90_s", "e2e_p99_s", "cache_hit_rate",
    "preemptions", "max_service_diff", "jain_index",
    "completed", "total_input_tokens", "total_output_tokens", "request_throughput",
    "output_throughput", "total_token_throughput", "mean_ttft_ms", "median_ttft_ms",
    "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms", "mean_itl_ms",
    "median_itl_ms", "p99_itl_ms", "mean_e2el_ms", "median_e2el_ms", "p99_e2el_ms", "duration",
    "ttft_mean_s", "ttft_p90_s", "tpot_mean_s", "tpot_p50_s", "tpot_p90_s", "itl_p90_s",
    "e2e_mean_s", "max_waiting_time_p99_s", "max_waiting_time_max_s", "avg_service_diff",
    "jain_index_total", "preemptions_swap", "preemptions_recompute", "swap_out_bytes",
    "swap_in_bytes", "slo_attainment", "iterations", "per_client",
}


@pytest.mark.parametrize("reqs", [
    [],
    [req(0, 0, 1.0, 10, 5), req(1, 1, 2.0, 10, 5, 2.5), req(2, 1, 2.0, 10, 5, rejected="x")],
], ids=["no-requests", "none-finished"])
def test_run_with_nothing_finished(reqs):
    m = compute_metrics(run_of(reqs, start=1.0, end=11.0))
    assert m.num_finished == 0
    assert m.duration_s == 10.0
    assert m.total_token_throughput == 0.0
    for stats in (m.ttft, m.tpot, m.itl, m.e2e, m.max_waiting_time):
        assert stats.count == 0 and math.isnan(stats.p50) and math.isnan(stats.mean)
    d = m.to_dict()
    assert d["ttft_p50_s"] is None and d["mean_e2el_ms"] is None
    json.dumps(d, allow_nan=False)


def test_to_dict_has_every_key_and_is_json_safe(latency_run):
    d = compute_metrics(latency_run).to_dict()
    assert REQUIRED_KEYS <= set(d)
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text)["num_requests"] == 6


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="num_ticks.*0"):
        compute_metrics(run_of([]), num_ticks=0)
    with pytest.raises(ValueError, match="service_window_s.*-1"):
        compute_metrics(run_of([]), service_window_s=-1.0)
    bad = req(3, 0, 0.0, 10, 5, finish=2.0)  # finished without a first token
    with pytest.raises(ValueError, match="request 3"):
        compute_metrics(run_of([bad]))


# ---------------------------------------------------------------- tables

def test_metrics_table_rows_and_alignment(latency_run):
    rows = {"fcfs": compute_metrics(latency_run), "vtc-long-name": compute_metrics(run_of([]))}
    text = format_metrics_table(rows)
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[2].startswith("fcfs ") and lines[3].startswith("vtc-long-name ")
    assert "TTFT p99 (s)" in lines[0] and "Jain" in lines[0]
    # Numbers are right-aligned, so every line ends at the same column.
    assert len({len(line) for line in lines}) == 1
    header_end = lines[0].index("TTFT p50 (s)") + len("TTFT p50 (s)")
    assert lines[2][header_end - 5:header_end] == "0.750"
    assert lines[3][header_end - 1] == "-"  # NaN prints as "-"


def test_metrics_table_columns_and_list_input(latency_run):
    m = compute_metrics(latency_run)
    text = format_metrics_table([("a", m), ("b", m)], columns=["finished", "mean_ttft_ms"])
    assert text.splitlines()[0].split() == ["run", "finished", "mean_ttft_ms"]
    assert text.splitlines()[2].split() == ["a", "4", "1000.00"]
    with pytest.raises(ValueError, match="'nope'"):
        format_metrics_table([("a", m)], columns=["nope"])


def test_single_run_layout(latency_run):
    text = format_single_run(compute_metrics(latency_run))
    lines = text.splitlines()
    assert lines[0] == "============ Serving Benchmark Result ============"
    assert lines[-1] == "=" * 50
    assert any(line.startswith("Successful requests:") and line.endswith(" 4") for line in lines)
    assert any("Time to First Token" in line for line in lines)
    assert any(line.startswith("Median TTFT (ms):") and line.endswith("750.00") for line in lines)
    assert isinstance(compute_metrics(latency_run), RunMetrics)
