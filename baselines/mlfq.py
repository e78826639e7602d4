"""MLFQ: FastServe's skip-join multi-level feedback queue, counted in output tokens.

Wu et al., "Fast Distributed Inference Serving for Large Language Models" (FastServe),
arXiv 2305.05920, 2023, §4: output lengths are unknown, so approximate
shortest-remaining-first by *least attained service*: a request starts in a high-priority
queue and is demoted each time it has used its queue's quantum, so long requests sink and
short ones finish ahead of them. LTR (``../shared/papers.md`` §4.3-4.4) uses it as its
learning-free comparison (vllm-ltr's ``mlfq-quant<q>-thres<t>``).

- Levels ``0 .. num_levels - 1``; level ``i``'s quantum is ``base_quantum * quantum_ratio**i``
  output tokens (FastServe's quanta double from one decode iteration, the highest queue's;
  one output token is one decode iteration). The last level has no quantum.
- Skip-join: a new request joins the highest level whose quantum covers its prefill, the
  first iteration FastServe measures; the prefill is counted as ``prompt_len /
  prefill_tokens_per_token`` decode iterations (256 by default: on the h100-llama-8b
  profile a 256-token prefill takes as long as one decode iteration, 6.1 ms). So with the
  defaults prompts up to 256 tokens join level 0, up to 512 level 1, up to 1,024 level 2, ...
- Demotion: after ``quantum(level)`` output tokens at a level the request moves to the next
  one, behind the requests already there.
- Starvation promotion (FastServe promotes a job that waited too long to the highest
  queue): a request unscheduled for ``starvation_threshold`` (200) iterations goes to
  level 0 with a fresh quantum; ``None`` turns this off.
- Order over every live request (preemptive, as FastServe): by level, then by the
  iteration the request entered its level (first come first served within a level), then
  arrival time, then request id.

Our parameters, where FastServe's are in time: quanta in output tokens, ratio 2, 10
levels (the last holds requests past 511 output tokens with the defaults), the prefill
estimate above, and the 200-iteration starvation threshold of the LTR evaluation.
Demotion moves with every token, so ``stable_between_events`` is False. Requests are kept
sorted by their key (``baselines.sorted_requests``) and starvation is found from a heap of
deadlines (``baselines.starvation``), so an iteration costs work in the changes, not in the
queue length. When a
closed-form decode run hands ``on_tokens`` several tokens at once, each demotion is dated
by the iteration of the token that used up the quantum, so the order is the one stepping
one iteration at a time gives.
"""

from __future__ import annotations

from baselines.sorted_requests import SortedRequests
from baselines.starvation import StarvationWatch
from envs.live_request import Request
from envs.policy import Policy, SchedulerView, register_policy


def _positive_int(name: str, v, allow_none: bool = False):
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"MLFQ: {name} must be an int >= 1{' or None' if allow_none else ''}, got {v!r}")
    return v


class MLFQ(Policy):
    """Skip-join multi-level feedback queue on output tokens, with starvation promotion."""

    name = "mlfq"
    stable_between_events = False

    def __init__(self, num_levels: int = 10, base_quantum: int = 1, quantum_ratio: int = 2,
                 prefill_tokens_per_token: int = 256, starvation_threshold: int | None = 200):
        self.num_levels = _positive_int("num_levels", num_levels)
        base_quantum = _positive_int("base_quantum", base_quantum)
        quantum_ratio = _positive_int("quantum_ratio", quantum_ratio)
        self.prefill_tokens_per_token = _positive_int("prefill_tokens_per_token", prefill_tokens_per_token)
        self.starvation_threshold = _positive_int("starvation_threshold", starvation_threshold, allow_none=True)
        # quanta[i] for the levels that have one (all but the last)
        self.quanta = [base_quantum * quantum_ratio ** i for i in range(self.num_levels - 1)]
        self._clear()

    def _clear(self) -> None:
        self._level: dict[int, int] = {}
        self._used: dict[int, int] = {}        # output tokens used at the current level
        self._entered: dict[int, int] = {}     # the iteration from which it ranks at its level
        self._sorted = SortedRequests()        # by (level, entered, arrival, id)
        self._watch = StarvationWatch(self.starvation_threshold) if self.starvation_threshold is not None else None
        self._updated_at: int | None = None
        self._order: list[Request] | None = None

    def reset(self, view: SchedulerView) -> None:
        super().reset(view)
        self._clear()

    def join_level(self, prompt_len: int) -> int:
        """Skip-join: the highest level whose quantum covers the prefill (the last level if none does)."""
        prefill_iterations = prompt_len / self.prefill_tokens_per_token
        for i, q in enumerate(self.quanta):
            if q >= prefill_iterations:
                return i
        return self.num_levels - 1

    def level(self, request_id: int) -> int:
        return self._level[request_id]

    def _place(self, req: Request, level: int, entered: int, new: bool = False) -> None:
        rid = req.request_id
        self._level[rid] = level
        self._entered[rid] = entered
        key = (level, entered, req.arrival_time, rid)
        if new:
            self._sorted.insert(req, key)
        else:
            self._sorted.rekey(req, key)
        self._order = None

    # ------------------------------------------------------------------ hooks
    def on_arrival(self, req: Request) -> None:
        rid = req.request_id
        it = self.view.iteration
        self._used[rid] = 0
        self._place(req, self.join_level(req.prompt_len), it, new=True)
        if self._watch is not None:
            self._watch.add(rid, it)

    def on_tokens(self, req: Request, n: int) -> None:
        rid = req.request_id
        level = self._level[rid]
        used = self._used[rid] + n
        quanta = self.quanta
        if level < len(quanta) and used >= quanta[level]:
            # token j (1-based) of these n was produced in iteration last - n + j
            first_iteration = req.last_scheduled_iteration - n + 1
            tokens_before = self._used[rid]
            entered = self._entered[rid]
            while level < len(quanta) and used >= quanta[level]:
                j = quanta[level] - tokens_before          # the token that used up this level's quantum
                used -= quanta[level]
                tokens_before -= quanta[level]             # relative to the next level's start
                level += 1
                entered = first_iteration + j              # ranks at the new level from the next iteration
            self._place(req, level, entered)
        self._used[rid] = used

    def on_finish(self, req: Request) -> None:
        rid = req.request_id
        for d in (self._level, self._used, self._entered):
            d.pop(rid, None)
        self._sorted.remove(rid)
        self._order = None
        if self._watch is not None:
            self._watch.remove(rid)

    # ------------------------------------------------------------------ order
    def _promote_starved(self, view: SchedulerView) -> None:
        it = view.iteration
        if it == self._updated_at:
            return
        live = view.live
        for rid in self._watch.starved(live, it):
            self._used[rid] = 0
            self._place(live[rid], 0, it)
        self._updated_at = it

    def ordered_requests(self, view: SchedulerView) -> list[Request]:
        if self._watch is not None:
            self._promote_starved(view)
        if self._order is None:
            self._order = list(self._sorted.requests())
        return self._order   # the engine only reads it

    def order(self, view: SchedulerView) -> list[int]:
        return [r.request_id for r in self.ordered_requests(view)]


register_policy("mlfq", MLFQ, "FastServe-style skip-join multi-level feedback queue on output tokens, "
                "starvation promotion (Wu et al. 2023)")
