"""Whole runs with asynchronous scheduling: iteration k+1 is planned while iteration k runs on the device.

vLLM's ``--async-scheduling`` hides the host's scheduling behind the GPU's work; this is the same idea
for ``ServingEngine.run`` over an executor with ``launch``/``collect`` (``TorchExecutor``). Each turn:

1. plan iteration k+1 from the requests' counts, which already include iteration k's;
2. launch it (the executor fills the decode inputs that k samples on the device);
3. advance the counts by k+1 (``ServingEngine._advance``): the requests it finishes leave the live set
   and the policy's books, so the next plan never schedules them;
4. wait for iteration k and stamp it (``ServingEngine._stamp``): the clock, token times and values,
   finish records; finished requests' KV leaves only now, so iteration k+2 is the first to reuse it.

What differs from the synchronous run, by design: requests arriving during iteration k join the plan
after the next one (the plan of k+1 was made before k ended), policies see the clock at the end of
iteration k-1 when they order k+1, and the policy's token hook is called when an iteration is planned.
A plan with swaps or preemptions is launched behind the iteration in flight like any other: the
executor orders its copies after that iteration and its forward pass after its copies on the device
(``PagedKVStore``), and the blocks it frees are only written by work enqueued after it. Iteration
durations are device time, back to back (see ``TorchExecutor.collect``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from envs.engine import ServingEngine, StepInfo


def supports_async(executor) -> bool:
    return callable(getattr(executor, "launch", None)) and callable(getattr(executor, "collect", None))


class _Pipeline:
    """The one iteration in flight: its work, what ``_advance`` learnt of it, and the executor's handle."""

    def __init__(self, eng: "ServingEngine", info: "StepInfo"):
        self.eng = eng
        self.info = info
        self.inflight = None

    def drain(self) -> None:
        if self.inflight is None:
            return
        work, adv, handle = self.inflight
        self.inflight = None
        eng = self.eng
        eng._stamp(work, eng.executor.collect(handle), adv, self.info)

    def launch(self, work) -> None:
        eng = self.eng
        handle = eng.executor.launch(work.plan)
        adv = eng._advance(work)
        if adv.finished:
            for req in adv.finished:
                eng._retire(req)
        self.drain()
        self.inflight = (work, adv, handle)


def run_pipelined(eng: "ServingEngine", progress: Callable[[int, int], None] | None,
                  max_iterations: int | None) -> None:
    """``ServingEngine.run``'s loop with one iteration in flight (see the module docstring)."""
    from envs.engine import EngineStallError, StepInfo

    info = StepInfo()
    pipe = _Pipeline(eng, info)
    total = eng._num_specs
    scheduler = eng.scheduler
    scheduler.pending_tokens_ok = True
    try:
        while not eng.done:
            if max_iterations is not None and eng.iteration >= max_iterations:
                break
            eng._admit_arrivals(info)
            if not eng.live:
                if pipe.inflight is not None:
                    pipe.drain()
                    continue
                t = eng.next_arrival_time()
                if t == math.inf:
                    break
                eng.clock = max(eng.clock, t)   # idle until the next arrival
                continue
            eng.sync()
            work = eng._schedule(info, stall_ok=True)
            if work.num_scheduled == 0 and not work.plan.swap_out:
                if pipe.inflight is None:
                    raise EngineStallError(eng._stall_report())
                pipe.drain()    # its finished requests' KV frees blocks
                continue
            pipe.launch(work)
            if progress is not None:
                progress(eng._num_done, total)
        pipe.drain()
    except BaseException:
        pipe.drain()    # the iteration in flight ran: keep its tokens and times, and leave the executor idle
        raise
    finally:
        scheduler.pending_tokens_ok = False
