"""The observation of ``servegym/Serve-v0``: request, client and system features, scaled to [0, 1].

Every feature is a bounded float so that one ``Box(0, 1)`` per table describes it; the
scales below are the points where a feature saturates (a request that has waited ten
minutes looks like one that waited an hour). The tables are the env's documented
contract: change a column and the env's version must change.
"""

from __future__ import annotations

import math

from envs.live_request import Request, RequestState

REQUEST_FEATURES = (
    "valid",              # 1 for a real candidate, 0 for padding
    "waiting_time",       # log1p(seconds since arrival) / log1p(600)
    "prompt_tokens",      # log1p(prompt tokens) / log1p(131072)
    "computed_fraction",  # tokens with KV / tokens so far
    "output_tokens",      # log1p(tokens generated) / log1p(4096)
    "cached_fraction",    # prompt tokens the prefix cache holds now / prompt tokens
    "predicted_rank",     # scorer's rank score in [0, 1] (1 = shortest predicted output), 0.5 without one
    "client_service",     # the client's share of all service so far
    "is_waiting",
    "is_running",
    "is_swapped",
    "slo_slack",          # 1 - waiting / TTFT SLO, mapped from [-1, 1] to [0, 1]; 1 without an SLO or after the first token
    "preemptions",        # min(preemptions, 10) / 10
)
CLIENT_FEATURES = (
    "active",             # the slot holds a client seen in this episode
    "live_requests",      # log1p(live requests) / log1p(1024)
    "waiting_requests",   # log1p(waiting requests) / log1p(1024)
    "service_share",      # share of all service so far (input tokens 1, output tokens 2)
    "oldest_wait",        # log1p(longest current wait, s) / log1p(600)
)
SYSTEM_FEATURES = (
    "free_blocks",        # free GPU blocks / GPU blocks
    "available_blocks",   # (free + evictable cached) / GPU blocks
    "free_host_blocks",   # free host blocks / host blocks (1 without a host pool)
    "running",            # running requests / max_num_seqs
    "waiting",            # log1p(waiting requests) / log1p(4096)
    "swapped",            # log1p(swapped requests) / log1p(4096)
    "progress",           # requests done / requests in the episode
    "last_iteration",     # log1p(last iteration duration in ms) / log1p(1000)
)

_LOG_600 = math.log1p(600.0)
_LOG_CTX = math.log1p(131072.0)
_LOG_OUT = math.log1p(4096.0)
_LOG_1024 = math.log1p(1024.0)
_LOG_4096 = math.log1p(4096.0)
_LOG_1000 = math.log1p(1000.0)


def _unit(x: float) -> float:
    return 0.0 if x < 0.0 else (1.0 if x > 1.0 else x)


def request_features(req: Request, now: float, cached_tokens: int, client_share: float,
                     predicted_rank: float) -> list[float]:
    """One candidate's row (REQUEST_FEATURES order)."""
    st = req.state
    slo = req.spec.slo_ttft_s
    if slo is None or req.num_output_tokens > 0:
        slack = 1.0
    else:
        x = 1.0 - (now - req.arrival_time) / slo
        slack = ((-1.0 if x < -1.0 else (1.0 if x > 1.0 else x)) + 1.0) / 2.0
    return [
        1.0,
        _unit(math.log1p(max(now - req.arrival_time, 0.0)) / _LOG_600),
        _unit(math.log1p(req.prompt_len) / _LOG_CTX),
        req.num_computed_tokens / req.num_tokens,
        _unit(math.log1p(req.num_output_tokens) / _LOG_OUT),
        _unit(cached_tokens / req.prompt_len),
        predicted_rank,
        client_share,
        1.0 if st is RequestState.WAITING else 0.0,
        1.0 if st is RequestState.RUNNING else 0.0,
        1.0 if st is RequestState.SWAPPED else 0.0,
        slack,
        min(req.record.num_preemptions, 10) / 10.0,
    ]


def log_count(n: int, scale: float) -> float:
    return _unit(math.log1p(n) / scale)


def system_features(free: int, available: int, total: int, host_free: int, host_total: int,
                    running: int, max_seqs: int, waiting: int, swapped: int, done: int,
                    episode_requests: int, last_iteration_s: float) -> list[float]:
    """The system row (SYSTEM_FEATURES order)."""
    return [
        free / total,
        _unit(available / total),
        host_free / host_total if host_total else 1.0,
        _unit(running / max_seqs),
        log_count(waiting, _LOG_4096),
        log_count(swapped, _LOG_4096),
        done / episode_requests if episode_requests else 1.0,
        _unit(math.log1p(last_iteration_s * 1e3) / _LOG_1000),
    ]


def client_features(live: int, waiting: int, share: float, oldest_wait: float) -> list[float]:
    """One client slot's row (CLIENT_FEATURES order)."""
    x1 = math.log1p(live) / _LOG_1024
    x2 = math.log1p(waiting) / _LOG_1024
    x4 = math.log1p(oldest_wait) / _LOG_600 if oldest_wait > 0.0 else 0.0
    return [1.0, x1 if x1 < 1.0 else 1.0, x2 if x2 < 1.0 else 1.0,
            share if share < 1.0 else 1.0, x4 if x4 < 1.0 else 1.0]
