"""The plots ``servegym benchmark`` writes: latency CDFs, per-client service over time, the quantum sweep.

Why these three: they are the figures the reproduced papers argue with — LTR's latency
distributions, VTC's per-client service rates over time (fairness is visible as lines
that stay together), DLPM's throughput-fairness trade-off as its quantum moves. matplotlib
is imported here only, with the non-interactive Agg backend, so the simulator and the
rest of the command line never need it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from train.benchmark_runs import SeedRun

W_PROMPT, W_OUTPUT = 1.0, 2.0      # VTC's service weights, as envs.metrics uses them
_NUM_TICKS = 200
_MAX_LEGEND_CLIENTS = 10


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("servegym benchmark's plots need matplotlib: pip install 'servegym[plots]' "
                          "(or pass --no-plots)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(out_dir: Path, scenario, runs: dict[str, list[SeedRun]], sweep: dict[str, Any] | None,
                quanta, results: dict[str, dict[str, Any]]) -> list[str]:
    """Write the plots into ``out_dir``; returns the file names written."""
    plt = _pyplot()
    written = [latency_cdf(plt, out_dir / "latency_cdf.png", scenario, runs),
               client_service(plt, out_dir / "client_service.png", scenario, runs)]
    if sweep:
        written.append(quantum_sweep(plt, out_dir / "quantum_sweep.png", scenario, sweep, quanta, results))
    return written


def _latencies(runs: list[SeedRun]) -> tuple[np.ndarray, np.ndarray]:
    ttft, e2e = [], []
    for run in runs:
        for r in run.record.requests:
            if r.finished and r.rejected_reason is None:
                ttft.append(r.first_token_time - r.arrival_time)
                e2e.append(r.finish_time - r.arrival_time)
    return np.asarray(ttft), np.asarray(e2e)


def latency_cdf(plt, path: Path, scenario, runs: dict[str, list[SeedRun]]) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, rs in runs.items():
        ttft, e2e = _latencies(rs)
        for ax, values in zip(axes, (ttft, e2e)):
            if values.size:
                ax.ecdf(values, label=label)
    for ax, what in zip(axes, ("time to first token (s)", "end-to-end latency (s)")):
        ax.set_xlabel(what)
        ax.set_ylabel("fraction of finished requests")
        ax.set_xscale("symlog", linthresh=0.01)
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize="small", loc="lower right")
    fig.suptitle(f"{scenario.id}: latency CDFs (all seeds pooled)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def service_rates(run: SeedRun, window_s: float, num_ticks: int = _NUM_TICKS) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Each client's service rate (input x1 + output x2 tokens per second) in a ``window_s`` window
    centred on each tick, with every finished request's service spread over [first token, finish]
    as ``envs.metrics`` does. Returns (tick times, client -> rates)."""
    reqs = [r for r in run.record.requests if r.finished and r.rejected_reason is None]
    if not reqs:
        return np.zeros(0), {}
    t0 = min(r.arrival_time for r in run.record.requests)
    t1 = max(r.finish_time for r in reqs)
    ticks = np.linspace(t0, t1, num_ticks)
    lo, hi = ticks - window_s / 2, ticks + window_s / 2
    out: dict[int, np.ndarray] = {}
    clients = np.asarray([r.client_id for r in reqs])
    start = np.asarray([r.first_token_time for r in reqs])
    end = np.asarray([r.finish_time for r in reqs])
    amount = np.asarray([W_PROMPT * r.prompt_len + W_OUTPUT * r.num_output_tokens for r in reqs])
    span = np.maximum(end - start, 1e-12)

    def delivered(q: np.ndarray, sel: np.ndarray) -> np.ndarray:
        frac = np.clip((q[:, None] - start[sel][None, :]) / span[sel][None, :], 0.0, 1.0)
        return frac @ amount[sel]

    for c in np.unique(clients):
        sel = clients == c
        out[int(c)] = (delivered(hi, sel) - delivered(lo, sel)) / window_s
    return ticks - t0, out


def client_service(plt, path: Path, scenario, runs: dict[str, list[SeedRun]]) -> str:
    labels = list(runs)
    cols = min(3, len(labels))
    rows = math.ceil(len(labels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False, sharey=True)
    for ax, label in zip(axes.ravel(), labels):
        ticks, rates = service_rates(runs[label][0], scenario.service_window_s)
        for c, r in sorted(rates.items()):
            ax.plot(ticks, r, label=f"client {c}", linewidth=1.0)
        ax.set_title(label, fontsize="medium")
        ax.set_xlabel("time (s)")
        ax.grid(True, alpha=0.3)
        if 0 < len(rates) <= _MAX_LEGEND_CLIENTS:
            ax.legend(fontsize="x-small", loc="upper right")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"service (tokens/s, {scenario.service_window_s:g} s window)")
    for ax in axes.ravel()[len(labels):]:
        ax.set_visible(False)
    fig.suptitle(f"{scenario.id}: per-client service over time (seed {runs[labels[0]][0].seed})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def quantum_sweep(plt, path: Path, scenario, sweep: dict[str, dict[str, Any]], quanta,
                  results: dict[str, dict[str, Any]]) -> str:
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    xs, ys = [], []
    for q, (label, r) in zip(quanta, sweep.items()):
        x, y = r.get("jain_index"), r.get("throughput_tok_s")
        if x is None or y is None:
            continue
        xs.append(x)
        ys.append(y)
        ax.annotate(f"Q={q:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    base = next(iter(sweep)).split("@")[0] if sweep else "dlpm"
    ax.plot(xs, ys, "o-", label=f"{base}, quantum sweep")
    for label, r in results.items():
        x, y = r.get("jain_index"), r.get("throughput_tok_s")
        if x is not None and y is not None:
            ax.plot([x], [y], "s", label=label)
    ax.set_xlabel("Jain's index (backlogged clients, windowed)")
    ax.set_ylabel("throughput (tokens/s)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small")
    ax.set_title(f"{scenario.id}: locality-fairness trade-off (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name
