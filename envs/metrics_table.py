"""Plain-text tables of ``RunMetrics``: one row per policy, or one run in vllm's layout.

Comparing policies is the everyday use of the environment, and a terminal or a log file
is where the comparison is read, so this needs nothing beyond the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from envs.metrics import RunMetrics


@dataclass(frozen=True, slots=True)
class Column:
    """One table column: its header, how to read the value, how to print it."""

    header: str
    value: Callable[[RunMetrics], float | int | None]
    fmt: str = "{:.2f}"


COLUMNS: dict[str, Column] = {
    "finished": Column("finished", lambda m: m.num_finished, "{:d}"),
    "rejected": Column("rejected", lambda m: m.num_rejected, "{:d}"),
    "throughput": Column("throughput tok/s", lambda m: m.total_token_throughput, "{:.1f}"),
    "ttft_p50": Column("TTFT p50 (s)", lambda m: m.ttft.p50, "{:.3f}"),
    "ttft_p99": Column("TTFT p99 (s)", lambda m: m.ttft.p99, "{:.3f}"),
    "tpot_p99": Column("TPOT p99 (ms)", lambda m: m.tpot.p99 * 1e3, "{:.1f}"),
    "e2e_p50": Column("E2E p50 (s)", lambda m: m.e2e.p50, "{:.2f}"),
    "e2e_p90": Column("E2E p90 (s)", lambda m: m.e2e.p90, "{:.2f}"),
    "e2e_p99": Column("E2E p99 (s)", lambda m: m.e2e.p99, "{:.2f}"),
    "cache_hit": Column("cache hit %", lambda m: m.cache_hit_rate * 100, "{:.1f}"),
    "preemptions": Column("preemptions", lambda m: m.preemptions, "{:d}"),
    "max_service_diff": Column("max svc diff", lambda m: m.max_service_diff, "{:.1f}"),
    "jain": Column("Jain", lambda m: m.jain_index, "{:.3f}"),
}
DEFAULT_COLUMNS: tuple[str, ...] = tuple(COLUMNS)


def format_metrics_table(
    rows: dict[str, RunMetrics] | Sequence[tuple[str, RunMetrics]],
    columns: Sequence[str] | None = None,
) -> str:
    """An aligned table with one row per named run; missing values (NaN) print as "-".

    ``columns`` names entries of ``COLUMNS`` or any numeric key of ``RunMetrics.to_dict()``
    (printed under that key); the default is ``DEFAULT_COLUMNS``.
    """
    items = list(rows.items()) if isinstance(rows, dict) else list(rows)
    cols = [_column(name, items) for name in (DEFAULT_COLUMNS if columns is None else columns)]
    header = ["run"] + [c.header for c in cols]
    body = [[name] + [_cell(c, m) for c in cols] for name, m in items]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(w) for cell, w in zip(cells[1:], widths[1:]))
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule] + [line(r) for r in body])


def format_single_run(metrics: RunMetrics) -> str:
    """One run as a name/value table, laid out like ``vllm bench serve``'s result block."""
    m = metrics
    lines = [_banner(" Serving Benchmark Result ", "=")]

    def add(label: str, value: float | int | None, fmt: str = "{:.2f}") -> None:
        lines.append(f"{label:<40} {_fmt(value, fmt)}")

    add("Successful requests:", m.num_finished, "{:d}")
    add("Rejected requests:", m.num_rejected, "{:d}")
    for reason, count in sorted(m.rejected_by_reason.items()):
        add(f"  rejected ({reason}):", count, "{:d}")
    add("Unfinished requests:", m.num_unfinished, "{:d}")
    add("Benchmark duration (s):", m.duration_s)
    add("Total input tokens:", m.total_input_tokens, "{:d}")
    add("Total generated tokens:", m.total_output_tokens, "{:d}")
    add("Request throughput (req/s):", m.request_throughput)
    add("Output token throughput (tok/s):", m.output_throughput)
    add("Total token throughput (tok/s):", m.total_token_throughput)
    for title, short, stats in (
        ("Time to First Token", "TTFT", m.ttft),
        ("Time per Output Token (excl. 1st token)", "TPOT", m.tpot),
        ("Inter-token Latency", "ITL", m.itl),
        ("End-to-end Latency", "E2EL", m.e2e),
        ("Max Waiting Time (max of TTFT, ITL)", "wait", m.max_waiting_time),
    ):
        lines.append(_banner(title, "-"))
        add(f"Mean {short} (ms):", stats.mean * 1e3)
        add(f"Median {short} (ms):", stats.p50 * 1e3)
        add(f"P90 {short} (ms):", stats.p90 * 1e3)
        add(f"P99 {short} (ms):", stats.p99 * 1e3)
        add(f"Max {short} (ms):", stats.max * 1e3)
    lines.append(_banner("Cache and Memory", "-"))
    add("Prefix cache hit rate (%):", m.cache_hit_rate * 100)
    add("Preemptions (swap):", m.preemptions_swap, "{:d}")
    add("Preemptions (recompute):", m.preemptions_recompute, "{:d}")
    add("Swap out (bytes):", m.swap_out_bytes, "{:d}")
    add("Swap in (bytes):", m.swap_in_bytes, "{:d}")
    add("Engine iterations:", m.iterations, "{:d}")
    lines.append(_banner("Fairness and SLOs", "-"))
    add("Max service difference (tok/s):", m.max_service_diff)
    add("Avg service difference (tok/s):", m.avg_service_diff)
    add("Jain index (backlogged, windowed):", m.jain_index, "{:.4f}")
    add("Jain index (total service):", m.jain_index_total, "{:.4f}")
    add("SLO attainment (%):", None if _missing(m.slo_attainment) else m.slo_attainment * 100)
    lines.append("=" * 50)
    return "\n".join(lines)


def _column(name: str, items: list[tuple[str, RunMetrics]]) -> Column:
    if name in COLUMNS:
        return COLUMNS[name]
    sample = items[0][1].to_dict() if items else {}
    if name in sample and (sample[name] is None or isinstance(sample[name], (int, float))):
        return Column(name, lambda m: m.to_dict()[name])
    known = sorted(COLUMNS) + sorted(k for k, v in sample.items() if not isinstance(v, dict))
    raise ValueError(f"unknown column {name!r}; known: {', '.join(known)}")


def _cell(col: Column, m: RunMetrics) -> str:
    return _fmt(col.value(m), col.fmt)


def _fmt(value: float | int | None, fmt: str) -> str:
    if _missing(value):
        return "-"
    if isinstance(value, int) or fmt == "{:d}":
        return str(int(value))
    return fmt.format(value)


def _missing(value: float | int | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _banner(title: str, fill: str) -> str:
    return f"{title:{fill}^50}"
