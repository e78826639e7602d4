"""``servegym/Serve-v0``: the serving engine as a Gymnasium environment.

The env is a thin adapter: at each decision point the agent's action becomes the order
in which the engine serves requests until the next decision; the engine, the KV
memory and the cost model are the same ones ``servegym simulate`` runs.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.engine import ServingEngine, StepInfo
from envs.engine_config import EngineConfig
from envs.env_features import (CLIENT_FEATURES, REQUEST_FEATURES, SYSTEM_FEATURES, client_features,
                               request_features, system_features)
from envs.live_request import Request, RequestState
from envs.policy import Policy, SchedulerView
from envs.request import RequestSpec
from envs.workloads import get_workload, retime_poisson
from gpu_backend.executors import make_executor
from gpu_backend.profiles import DEFAULT_PROFILE
from gpu_backend.sim_executor import SimExecutor

ACTION_MODES = ("pick", "score", "weights")
REWARD_PRESETS = ("latency", "throughput", "fairness", "slo")
_RUNNING = RequestState.RUNNING


class AgentPolicy(Policy):
    """The agent's ranking, set at each decision; everything it did not rank follows in arrival order.

    It also keeps each finished request's service per client (input tokens 1, output
    tokens 2, as VTC counts it); ``client_service`` adds the live requests' share so far.
    """

    name = "agent"

    def __init__(self, w_prompt: float = 1.0, w_output: float = 2.0):
        self.w_prompt = w_prompt
        self.w_output = w_output

    def reset(self, view: SchedulerView) -> None:
        super().reset(view)
        self.ranked: list[int] = []
        self.finished_service: dict[int, float] = {}

    def ordered_requests(self, view: SchedulerView) -> list[Request]:
        live = view.live
        if not self.ranked:
            return list(live.values())
        first = [live[r] for r in self.ranked if r in live]
        chosen = set(self.ranked)
        return first + [r for rid, r in live.items() if rid not in chosen]

    def order(self, view: SchedulerView) -> list[int]:
        return [r.request_id for r in self.ordered_requests(view)]

    def on_arrival(self, req: Request) -> None:
        self.finished_service.setdefault(req.client_id, 0.0)

    def on_finish(self, req: Request) -> None:
        self.finished_service[req.client_id] += self.w_prompt * req.prompt_len + self.w_output * req.num_output_tokens

    def client_service(self, live, output_tokens) -> dict[int, float]:
        """Service per client: finished requests' plus, for each live request, its prompt once it
        has a first token and its output tokens (``output_tokens(req)`` gives the true count)."""
        out = dict(self.finished_service)
        for r in live:
            n = output_tokens(r)
            if n:
                out[r.client_id] += self.w_prompt * r.prompt_len + self.w_output * n
        return out


class ServeEnv(gym.Env):
    """Schedule an LLM-serving engine: choose which requests it serves first.

    ## Description
    A simulated inference server (paged KV cache, radix prefix cache, swap to host memory,
    chunked prefill; iteration times from a device and model cost profile) serves a
    workload slice. At each decision point the agent ranks the live requests; the engine
    serves them in that order (under its token budget, sequence cap and KV memory,
    preempting the lowest-ranked when memory runs out) until the next decision point.

    ## Decision points
    ``decision="event"`` (default): after any arrival, completion or preemption, when at
    least one candidate exists. ``decision="interval"``: every ``decision_interval``
    engine iterations (or at an arrival when the server was idle).

    ## Action Space
    Candidates are the ``top_k`` oldest live requests that are not decoding (waiting,
    in prefill, or swapped out); they fill the rows of ``candidates`` in that order.
    - ``action_mode="pick"``: ``Discrete(top_k)``; the chosen candidate is served first,
      the rest in arrival order. ``action_masks()`` marks the rows that hold a candidate
      (for MaskablePPO); picking an empty row means no preference (arrival order).
    - ``action_mode="score"``: ``Box(-1, 1, (top_k,))``; candidates are served in
      descending score, then the rest in arrival order.
    - ``action_mode="weights"``: ``Box(-1, 1, (len(REQUEST_FEATURES),))``; each candidate's
      score is the dot product of its feature row with the weights (a linear ranking
      rule that does not depend on ``top_k``).
    A NaN or out-of-range action raises ``ValueError``.

    ## Observation Space
    A flat ``Dict`` of one-dimensional ``Box(0, 1)`` float32 arrays (every feature is scaled
    to [0, 1]; see ``envs/env_features.py`` for the exact scales). Tables are stored row
    after row: ``candidates[i * 13 + j]`` is feature ``j`` of candidate ``i``.

    | key            | shape                                | content                                          |
    |----------------|--------------------------------------|--------------------------------------------------|
    | ``candidates`` | (top_k * 13,)                        | per candidate: valid, waiting time, prompt tokens, computed fraction, output tokens, cached fraction, predicted rank, client service share, is waiting / running / swapped, TTFT-SLO slack, preemptions |
    | ``clients``    | (max_clients * 5,)                   | per client slot (clients with id = slot mod max_clients, summed): active, live and waiting requests, service share, oldest wait |
    | ``system``     | (8,)                                 | free and available KV blocks, free host blocks, running, waiting, swapped, episode progress, last iteration time |
    | ``action_mask``| (top_k,)                             | 1 where a candidate row is valid                 |

    ## Rewards
    Accumulated between decisions (``reward=``):
    - ``latency``: -∫ (requests in the system) dt, in request-seconds × ``reward_scale``;
      its episode sum is minus the total end-to-end latency (Little's law).
    - ``throughput``: output tokens produced × ``reward_scale``.
    - ``fairness``: -∫ (max - min service among clients with live requests) dt × ``reward_scale``.
    - ``slo``: +1 per request that finishes within its SLOs (TTFT and TPOT; the env's
      ``slo_ttft_s``/``slo_tpot_s`` apply where the workload sets none), -1 per miss or rejection.

    ## Starting State
    ``reset(seed)`` draws the workload slice: a random window of ``num_requests`` consecutive
    requests of a trace, or a freshly seeded synthetic workload, re-timed as Poisson at
    ``rate`` req/s if given; then advances to the first decision point.

    ## Episode End
    Terminated when every request of the slice has finished or been rejected; truncated
    after ``max_decisions`` decisions if set. The final ``info["episode_metrics"]`` holds the
    run's metrics (``envs.metrics``).

    ## Arguments
    ``workload``, ``num_requests``, ``rate``, ``profile`` (a cost profile name),
    ``engine_config`` (``EngineConfig``), ``action_mode``, ``top_k``, ``max_clients``,
    ``reward``, ``reward_scale``, ``decision``, ``decision_interval``, ``max_decisions``,
    ``slo_ttft_s``, ``slo_tpot_s``, ``scorer`` (callable spec -> rank score in [0, 1]).
    ``backend="torch"`` serves the same loop on a real model instead of the cost model:
    ``model`` (``tiny``, ``smollm2-135m``, ``llama-1b``, ``llama-8b``), ``device`` (``cuda`` or
    ``cpu``; default: cuda when available) and ``executor_options`` (``TorchExecutor``
    arguments such as ``num_gpu_blocks``); iteration times are then measured, so episodes
    are not reproducible (``servegym/ServeTorch-v0`` is registered nondeterministic).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, workload: str = "arena-27", num_requests: int = 200, rate: float | None = None,
                 profile: str = DEFAULT_PROFILE, engine_config: EngineConfig | None = None,
                 action_mode: str = "pick", top_k: int = 16, max_clients: int = 8, reward: str = "latency",
                 reward_scale: float = 0.1, decision: str = "event", decision_interval: int = 8,
                 max_decisions: int | None = None, slo_ttft_s: float = 2.0, slo_tpot_s: float = 0.1,
                 scorer: Callable[[RequestSpec], float] | None = None, render_mode: str | None = None,
                 backend: str = "sim", model: str = "tiny", device: str | None = None,
                 executor_options: dict[str, Any] | None = None):
        if action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode {action_mode!r} is not one of {ACTION_MODES}")
        if reward not in REWARD_PRESETS:
            raise ValueError(f"reward {reward!r} is not one of {REWARD_PRESETS}")
        if decision not in ("event", "interval"):
            raise ValueError(f"decision {decision!r} must be 'event' or 'interval'")
        for name, v in (("num_requests", num_requests), ("top_k", top_k), ("max_clients", max_clients),
                        ("decision_interval", decision_interval)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number of requests per second, got {rate!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode {render_mode!r} is not one of {self.metadata['render_modes']}")
        self.workload = get_workload(workload)
        if self.workload.kind == "trace" and self.workload.num_requests < num_requests:
            raise ValueError(f"num_requests {num_requests} exceeds the {self.workload.num_requests} "
                             f"requests of trace {workload!r}")
        self.workload_name = workload
        self.num_requests = num_requests
        self.rate = rate
        self.action_mode = action_mode
        self.top_k = top_k
        self.max_clients = max_clients
        self.reward_name = reward
        self.reward_scale = float(reward_scale)
        self.decision = decision
        self.decision_interval = decision_interval
        self.max_decisions = max_decisions
        self.slo_ttft_s = slo_ttft_s
        self.slo_tpot_s = slo_tpot_s
        self.scorer = scorer
        self.render_mode = render_mode
        self.policy = AgentPolicy()
        if backend == "sim":
            executor = SimExecutor(profile)
        else:  # the real model (gpu_backend.torch_executor); torch is imported only here
            executor = make_executor(backend, profile, model, device, executor_options)
        self.backend = backend
        self.engine = ServingEngine(executor, self.policy, engine_config or EngineConfig())
        nf, nc, ns = len(REQUEST_FEATURES), len(CLIENT_FEATURES), len(SYSTEM_FEATURES)
        self.observation_space = spaces.Dict({
            "candidates": spaces.Box(0.0, 1.0, (top_k * nf,), np.float32),
            "clients": spaces.Box(0.0, 1.0, (max_clients * nc,), np.float32),
            "system": spaces.Box(0.0, 1.0, (ns,), np.float32),
            "action_mask": spaces.Box(0.0, 1.0, (top_k,), np.float32),
        })
        if action_mode == "pick":
            self.action_space = spaces.Discrete(top_k)
        elif action_mode == "score":
            self.action_space = spaces.Box(-1.0, 1.0, (top_k,), np.float32)
        else:
            self.action_space = spaces.Box(-1.0, 1.0, (nf,), np.float32)
        self._candidates: list[Request] = []
        self._features = np.zeros((top_k, nf), np.float32)
        self._scores: dict[int, float] = {}
        self._decisions = 0
        self._last_duration = 0.0

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        specs = self._draw_slice()
        self.engine.load(specs)
        self._scores = {s.request_id: float(self.scorer(s)) for s in specs} if self.scorer else {}
        self._decisions = 0
        self._last_duration = 0.0
        self._reward_acc = 0.0
        self._tokens_seen = 0
        self._completed_seen = 0
        self._advance()
        return self._observe(), self._info()

    def step(self, action):
        if self.engine.done:
            raise RuntimeError("step() called after the episode ended; call reset()")
        self._apply_action(action)
        self._reward_acc = 0.0
        self._advance()
        self._decisions += 1
        terminated = self.engine.done
        truncated = (not terminated and self.max_decisions is not None
                     and self._decisions >= self.max_decisions)
        info = self._info()
        if terminated or truncated:
            from envs.metrics import compute_metrics
            info["episode_metrics"] = compute_metrics(self.engine.result()).to_dict()
        return self._observe(), float(self._reward_acc), terminated, truncated, info

    def action_masks(self) -> np.ndarray:
        mask = np.zeros(self.top_k, dtype=bool)
        mask[:len(self._candidates)] = True
        return mask

    def render(self):
        if self.render_mode == "ansi":
            e = self.engine
            lines = [f"t={e.clock:9.3f}s it={e.iteration} live={len(e.live)} running={e.num_running} "
                     f"swapped={e.num_swapped} free_blocks={e.kv.gpu.num_free}/{e.kv.gpu.num_blocks}"]
            for i, r in enumerate(self._candidates):
                lines.append(f"  [{i:2d}] {r!r}")
            return "\n".join(lines)
        return None

    # ------------------------------------------------------------------ episode
    def _draw_slice(self) -> list[RequestSpec]:
        rng = self.np_random
        wl = self.workload
        if wl.kind == "trace":
            start = int(rng.integers(0, wl.num_requests - self.num_requests + 1))
            specs = wl.generate_slice(start, self.num_requests)
        else:
            specs = wl.generate(int(rng.integers(0, 2**31 - 1)), self.num_requests)
        if self.rate is not None:
            specs = retime_poisson(specs, self.rate, int(rng.integers(0, 2**31 - 1)))
        return specs

    def _apply_action(self, action) -> None:
        cands = self._candidates
        if self.action_mode == "pick":
            try:
                i = int(action)
            except (TypeError, ValueError) as e:
                raise ValueError(f"action {action!r} is not an integer in Discrete({self.top_k})") from e
            if i != action or not 0 <= i < self.top_k:
                raise ValueError(f"action {action!r} is outside Discrete({self.top_k})")
            # an empty row expresses no preference: arrival order (action_masks() hides such rows)
            self.policy.ranked = [cands[i].request_id] if i < len(cands) else []
            return
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.action_space.shape:
            raise ValueError(f"action shape {a.shape} != {self.action_space.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action contains NaN or infinity: {action!r}")
        if np.any(a < -1.0) or np.any(a > 1.0):
            raise ValueError(f"action outside [-1, 1]: min {a.min()}, max {a.max()}")
        if self.action_mode == "score":
            scores = a[:len(cands)]
        else:
            scores = self._features[:len(cands)] @ a
        ranked = sorted(range(len(cands)), key=lambda j: (-scores[j], j))
        self.policy.ranked = [cands[j].request_id for j in ranked]

    def _advance(self) -> None:
        """Run the engine to the next decision point (or the end), accumulating the reward."""
        eng = self.engine
        iters = 0
        while not eng.done:
            n_before = len(eng.live)
            t_before = eng.clock
            if self.decision == "interval":
                info = eng.step(max_iterations=self.decision_interval - iters)
            else:
                # while every live request decodes there is nothing to decide: let the engine go on
                # (not for the fairness reward, which samples the service gap at each completion)
                info = eng.step(chain=self.reward_name != "fairness")
            self._account(info, n_before, t_before)
            if info.num_iterations:
                self._last_duration = info.duration_s / info.num_iterations
            iters += info.num_iterations
            if self.decision == "event":
                due = info.arrived or info.finished or info.preempted
            else:
                due = iters >= self.decision_interval or (info.arrived and info.num_iterations == 0)
            if due:
                self._find_candidates()
                if self._candidates:
                    return
                iters = 0
        self._find_candidates()

    def _account(self, info: StepInfo, n_before: int, t_before: float) -> None:
        eng = self.engine
        dt = eng.clock - t_before
        name = self.reward_name
        if name == "latency":
            # live through the whole step, plus each arrival from its arrival time on, less each
            # completion inside the step from its finish time on
            area = (n_before * dt + info.arrived * eng.clock - info.arrival_time_sum
                    - (info.finished * eng.clock - info.finish_time_sum))
            self._reward_acc -= self.reward_scale * area
        elif name == "throughput":
            total = eng.counters.output_tokens
            self._reward_acc += self.reward_scale * (total - self._tokens_seen)
            self._tokens_seen = total
        elif name == "fairness":
            active = {r.client_id for r in eng.live.values()}
            if len(active) > 1:
                service = self.policy.client_service(eng.live.values(), eng.output_tokens_of)
                vals = [service[c] for c in active]
                self._reward_acc -= self.reward_scale * (max(vals) - min(vals)) * dt / 1000.0
        else:
            self._reward_acc += self._slo_outcomes()

    def _slo_outcomes(self) -> float:
        """+1 per request completed within its SLOs since the last call, -1 per miss or rejection."""
        done = self.engine.completed
        score = 0.0
        for rec in done[self._completed_seen:]:
            if rec.rejected:
                score -= 1.0
                continue
            ttft_slo = rec.slo_ttft_s if rec.slo_ttft_s is not None else self.slo_ttft_s
            tpot_slo = rec.slo_tpot_s if rec.slo_tpot_s is not None else self.slo_tpot_s
            ttft = rec.first_token_time - rec.arrival_time
            tpot = ((rec.finish_time - rec.first_token_time) / (rec.num_output_tokens - 1)
                    if rec.num_output_tokens > 1 else 0.0)
            score += 1.0 if (ttft <= ttft_slo and tpot <= tpot_slo) else -1.0
        self._completed_seen = len(done)
        return score

    # ------------------------------------------------------------------ observation
    def _find_candidates(self) -> None:
        eng = self.engine
        k = self.top_k
        out = []
        for r in eng.live.values():
            if eng.in_group(r) or (r.state is _RUNNING and r.num_output_tokens
                                   and r.num_computed_tokens == r.num_tokens - 1):
                continue  # decoding (a decode-group member's own counters are stale: never read them)
            out.append(r)
            if len(out) == k:
                break
        self._candidates = out

    def _observe(self) -> dict[str, np.ndarray]:
        eng = self.engine
        now = eng.clock
        live = eng.live
        policy = self.policy
        w_p, w_q = policy.w_prompt, policy.w_output
        slots = self.max_clients
        # one pass over the live requests: per-client service and the client slots' counts
        service = dict(policy.finished_service)
        agg = [[0.0, 0, 0, 0.0] for _ in range(slots)]   # active, live, waiting, oldest wait
        waiting_state = RequestState.WAITING
        out_of = eng.output_tokens_of
        for r in live.values():
            row = agg[r.client_id % slots]
            row[1] += 1
            if r.state is waiting_state:
                row[2] += 1
            n = out_of(r)
            if n:
                service[r.client_id] += w_p * r.prompt_len + w_q * n
            else:
                w = now - r.arrival_time
                if w > row[3]:
                    row[3] = w
        total = sum(service.values()) or 1.0
        shares = [0.0] * slots
        for cid, amount in service.items():
            slot = cid % slots
            agg[slot][0] = 1.0
            shares[slot] += amount / total
        view = eng.view
        scores = self._scores
        cand = np.zeros(self.top_k * len(REQUEST_FEATURES), np.float32)
        if self._candidates:
            flat: list[float] = []
            for r in self._candidates:
                flat += request_features(r, now, view.cached_prefix_tokens(r) if r.state is not _RUNNING else 0,
                                         service[r.client_id] / total, scores.get(r.request_id, 0.5))
            cand[:len(flat)] = flat
        self._features = cand.reshape(self.top_k, len(REQUEST_FEATURES))
        if self.action_mode == "weights":
            cand = cand.copy()  # the weights action scores self._features; keep it from the caller
        clients: list[float] = []
        empty = [0.0] * len(CLIENT_FEATURES)
        for slot, (active, n_live, n_wait, oldest) in enumerate(agg):
            clients += client_features(n_live, n_wait, shares[slot], oldest) if active else empty
        kv = eng.kv
        host = kv.host
        system = np.array(system_features(
            kv.gpu.num_free, kv.num_available_blocks, kv.gpu.num_blocks,
            host.num_free if host else 0, host.num_blocks if host else 0,
            eng.num_running, eng.config.max_num_seqs, len(live) - eng.num_running - eng.num_swapped,
            eng.num_swapped, eng._num_done, eng._num_specs, self._last_duration), np.float32)
        mask = np.zeros(self.top_k, np.float32)
        mask[:len(self._candidates)] = 1.0
        return {"candidates": cand, "clients": np.array(clients, np.float32), "system": system,
                "action_mask": mask}

    def _info(self) -> dict[str, Any]:
        e = self.engine
        return {"sim_time_s": e.clock, "iterations": e.iteration, "num_live": len(e.live),
                "num_candidates": len(self._candidates), "num_done": e._num_done}
