"""The simulator's executor: a cost model's prediction in place of running the model.

It takes exactly the ``BatchPlan`` a real executor takes and returns how long that plan
would have run. It also accepts decode plans of ``num_steps > 1`` (identical decode
iterations, context growing by one token per sequence per step) and times them in
closed form, which is what makes the simulator fast enough to be an RL training loop.

It also offers ``launch``/``collect``, so an engine with asynchronous scheduling runs on it with the
same iteration order as on the GPU: requests arriving during an iteration join one iteration later.
The prediction is the iteration's whole duration, so a profile fitted with ``--timing async`` belongs
with it. An iteration launched while none is in flight starts on an idle device, and the real
executor times it from its own launch, so the host's launch path counts: the cost model's
``idle_start_s`` is added to it.
"""

from __future__ import annotations

from dataclasses import replace

from gpu_backend.cost_model import BatchShape
from gpu_backend.plan import BatchPlan, DecodeStepTime, KVCapacity, StepResult, longest_context
from gpu_backend.profiles import CostProfile, load_profile


class SimExecutor:
    """Predicts iteration durations with a profile's cost model."""

    supports_multi_step = True
    needs_token_ids = False
    needs_block_ids = False   # it never reads KV, so the engine may assign block ids lazily

    def __init__(self, profile: CostProfile | str, num_gpu_blocks: int | None = None,
                 num_host_blocks: int | None = None):
        self.profile = load_profile(profile) if isinstance(profile, str) else profile
        self.cost = self.profile.cost
        self._num_gpu_blocks = num_gpu_blocks if num_gpu_blocks is not None else self.profile.num_gpu_blocks
        self._num_host_blocks = num_host_blocks if num_host_blocks is not None else self.profile.num_host_blocks
        if self._num_gpu_blocks < 1:
            raise ValueError(f"num_gpu_blocks must be >= 1, got {self._num_gpu_blocks}")
        if self._num_host_blocks < 0:
            raise ValueError(f"num_host_blocks must be >= 0, got {self._num_host_blocks}")
        self._in_flight = 0     # launched and not yet collected

    def capacity(self) -> KVCapacity:
        p = self.profile
        return KVCapacity(self._num_gpu_blocks, self._num_host_blocks, p.block_size,
                          p.bytes_per_block, p.max_model_len)

    def decode_step_affine(self, num_seqs: int) -> DecodeStepTime:
        return self.cost.decode_affine(num_seqs)

    def execute(self, plan: BatchPlan) -> StepResult:
        swap = self.cost.plan_swap_time(plan.swap_in, plan.swap_out)
        k = plan.num_steps
        if k == 1:
            compute = self.cost.compute_time(BatchShape.from_plan(plan))
            return StepResult(compute + swap, compute, swap, compute, 0.0)
        if plan.prefills or swap:
            raise ValueError(f"a {k}-step plan must be decode-only without swaps")
        n = plan.num_decode
        step = self.cost.decode_affine(n)
        first = step.first(plan.decode_context_sum, longest_context(plan.decode_context_max, plan.decode_context_sum, n))
        inc = step.increment(n)
        compute = k * first + inc * (k * (k - 1) / 2)
        return StepResult(compute, compute, 0.0, first, inc)

    def launch(self, plan: BatchPlan) -> StepResult:
        """Asynchronous scheduling's half of ``execute``: nothing runs, so the prediction is the handle; with
        nothing in flight it includes the cost model's ``idle_start_s``."""
        result = self.execute(plan)
        if self._in_flight == 0 and self.cost.idle_start_s:
            result = replace(result, duration_s=result.duration_s + self.cost.idle_start_s)
        self._in_flight += 1
        return result

    def collect(self, launched: StepResult) -> StepResult:
        if self._in_flight == 0:
            raise RuntimeError("collect without an iteration in flight: launch it first")
        self._in_flight -= 1
        return launched
