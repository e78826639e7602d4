"""The real executor: runs each ``BatchPlan`` through our Llama forward pass over the paged KV cache.

It sits beside ``SimExecutor`` and takes exactly the same plans; where the simulator
predicts how long a plan takes, this one runs it on the device (a CUDA GPU, or the CPU
for tests), samples real tokens greedily and reports the measured time. The KV blocks it
reads and writes are the ids the engine's ``KVCacheManager`` assigned (eager ids:
``needs_block_ids``), so prefix-cache hits, chunked prefill, swaps and recomputes are
the bookkeeping's, executed for real.

One iteration: (1) swap copies, one per ``GroupMove``, on a side stream (``PagedKVStore``),
the compute waiting for them; (2) one forward over the packed tokens of every prefill
chunk and decode (``LlamaForward``) — a pure-decode batch replays a captured CUDA graph
(``DecodeGraphs``) instead; (3) greedy sampling for every decode and every chunk that
completes its prompt. Batches with prefill chunks replay one captured graph per token bucket,
attention included (``FullGraphs``), where the model is small enough for the host's launches
to dominate; otherwise piecewise CUDA graphs around an eager attention (``MixedGraphs``), up to
2,048 tokens (the engine's default token budget). Host-side inputs travel in one pinned
buffer and one copy.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from gpu_backend.block_tables import DeviceBlockTables
from gpu_backend.decode_graphs import DecodeGraphs, bucket_sizes
from gpu_backend.epilogue_gemms import supported as epilogue_gemms_supported
from gpu_backend.kv_store import PagedKVStore
from gpu_backend.launched_step import LaunchedStep, PinnedPair, fill_pending, pending_rows
from gpu_backend.llama_forward import ForwardBatch, LlamaForward, PrefillSegment
from gpu_backend.full_graphs import FULL_BUCKETS, FullGraphs
from gpu_backend.mixed_graphs import MixedGraphs
from gpu_backend.paged_prefill import DevicePrefillTiles, PrefillTiles, compile_kernel_variants, triton
from gpu_backend.models import LlamaWeights, load_weights
from gpu_backend.plan import BatchPlan, DecodeStepTime, KVCapacity, StepResult

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


# Whole-iteration graphs (``FullGraphs``) pay where launching each layer's attention from the host costs
# more than the GPU work: an H200 ran smollm2-135m's iterations with prefill 1.1-5.7x faster with them up
# to 2,048 tokens, llama-1b's 1.1-2.2x up to 640 tokens but 0.94x at 2,048 fresh tokens, llama-8b's 1.0-1.4x
# up to 72 tokens and 0.94-1.03x from 288 up (BENCHMARKS.md). So by default they take the token buckets up to
# this many token-parameter products (matrix parameters x tokens): smollm2 up to 8,192, llama-1b up to 1,024 tokens,
# llama-8b up to 128.
FULL_GRAPH_TOKEN_PARAMS = 1.5e12


def auto_full_graph_tokens(weights: LlamaWeights) -> int:
    """The largest iteration (tokens) the whole-iteration graphs take by default for this model."""
    params = weights.num_bytes_read_per_step / weights.lm_head.element_size()
    return int(FULL_GRAPH_TOKEN_PARAMS // params)


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """bf16 on CUDA and float32 on the CPU unless named."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


class TorchExecutor:
    """Runs plans on a real Llama-architecture model (see the module docstring).

    ``model``: a name from ``gpu_backend.models`` or ready ``LlamaWeights`` (on ``device``).
    KV memory: ``num_gpu_blocks`` (default: what ``gpu_memory_utilization`` of the device
    leaves after the weights and ``activation_reserve_bytes`` on CUDA; 1 GiB of KV on the
    CPU) and ``num_host_blocks`` (default: ``swap_space_bytes``). ``max_model_len`` defaults
    to the model's context length. ``keep_logits`` keeps every row's logits of the last
    iteration in ``last_logits`` (seq id -> [rows, vocab]; for tests) and turns graphs off.
    ``random_weights`` gives a checkpoint model (``smollm2-135m``) random weights of its shape.
    ``full_graph_max_tokens``: iterations with prefill up to this many tokens replay one captured graph
    each, attention included (``FullGraphs``; default ``auto_full_graph_tokens``, 0 turns them off);
    larger ones replay the piecewise graphs. ``tune_gemms`` (CUDA with graphs; off by default) times
    cuBLAS against the split-K kernel for each decode batch size of 32 rows or more before capture
    and keeps the faster (``gpu_backend.skinny_gemm``): faster in isolation on some shapes, but on an H200 the whole
    ``llama-1b`` decode step at batch 256 came out 2% slower with it (BENCHMARKS.md).
    ``split_gemms`` (default: on CUDA) cuts the QKV, output and down products of 64-512 rows into K
    slices multiplied as one batched cuBLAS call, summed by the fused kernel that follows
    (``gpu_backend.skinny_gemm.batched_split_count``). ``epilogue_gemms`` (default: on GPUs of compute
    capability 9.0+) lets the gate/up product apply SwiGLU as it writes its tiles, one kernel a layer
    fewer, for the weight shapes and rows where that measured faster (``llama-1b`` at 128-512 rows:
    ``gpu_backend.epilogue_gemms.MEASURED_FASTER``). Together they make the ``llama-1b`` decode
    step at batch 256 1.03-1.06x faster on an H200 (1.49-1.54x its byte roofline against 1.56-1.61x
    on three leases: BENCHMARKS.md, session 12); the shipped fitted profiles time the executor with
    both. ``fused_rope`` (default: on CUDA) runs each layer's RoPE, KV write and decode attention of a
    decode-only batch as one kernel (``gpu_backend.rope_decode_attention``). ``fine_decode_ranges``
    (default: on CUDA) gives each whole-iteration graph bucket decode ranges between 8 rows and all, so
    decodes beside a chunk get about the key splits of a batch of their size (``full_graphs.decode_ranges``).
    ``True`` where the device lacks what they need is an error; ``False`` turns them off.
    """

    supports_multi_step = False
    needs_token_ids = True
    needs_block_ids = True

    def __init__(self, model: str | LlamaWeights = "tiny", device: str | torch.device | None = None,
                 dtype: torch.dtype | str | None = None, num_gpu_blocks: int | None = None,
                 num_host_blocks: int | None = None, block_size: int = 16, max_model_len: int | None = None,
                 max_num_seqs: int = 256, cuda_graphs: bool = True, gpu_memory_utilization: float = 0.9,
                 activation_reserve_bytes: int = 4 * 2**30, swap_space_bytes: int | None = None,
                 seed: int = 0, keep_logits: bool = False, random_weights: bool = False,
                 tune_gemms: bool = False, full_graph_max_tokens: int | None = None,
                 split_gemms: bool | None = None, epilogue_gemms: bool | None = None,
                 fused_rope: bool | None = None, fine_decode_ranges: bool | None = None):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine")
        if self.device.type not in ("cuda", "cpu"):
            raise ValueError(f"device {device!r}: only 'cuda' and 'cpu' are supported")
        self.dtype = resolve_dtype(dtype, self.device)
        if isinstance(model, LlamaWeights):
            self.weights = model
            if model.device.type != self.device.type or model.dtype != self.dtype:
                raise ValueError(f"weights are {model.dtype} on {model.device}, the executor runs "
                                 f"{self.dtype} on {self.device}")
        else:
            self.weights = load_weights(model, self.device, self.dtype, seed, random_weights)
        dims = self.weights.dims
        self.dims = dims
        if max_model_len is None:
            max_model_len = dims.max_position_embeddings
        if not 1 <= max_model_len <= dims.max_position_embeddings:
            raise ValueError(f"max_model_len {max_model_len} must be in [1, {dims.max_position_embeddings}] "
                             f"(model {dims.name!r})")
        if full_graph_max_tokens is not None and full_graph_max_tokens < 0:
            raise ValueError(f"full_graph_max_tokens must be >= 0 (0 turns whole-iteration graphs off), "
                             f"got {full_graph_max_tokens}")
        if max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
        if split_gemms is None:
            split_gemms = self.device.type == "cuda"
        if epilogue_gemms is None:
            epilogue_gemms = epilogue_gemms_supported(self.device)
        if split_gemms and self.device.type != "cuda":
            raise ValueError(f"split_gemms=True needs a CUDA device (the split products run on cuBLAS), "
                             f"device is {self.device.type!r}")
        if epilogue_gemms and not epilogue_gemms_supported(self.device):
            raise ValueError(f"epilogue_gemms=True needs a CUDA GPU of compute capability 9.0 or newer and a Triton "
                             f"with tensor descriptors (the product reads through the tensor memory accelerator); "
                             f"device is {self.device}")
        if fused_rope is None:
            fused_rope = self.device.type == "cuda" and triton is not None
        if fused_rope and (self.device.type != "cuda" or triton is None):
            raise ValueError(f"fused_rope=True needs a CUDA device with triton (it is one Triton kernel), "
                             f"device is {self.device.type!r}")
        if fine_decode_ranges is None:
            fine_decode_ranges = self.device.type == "cuda"
        if fine_decode_ranges and self.device.type != "cuda":
            raise ValueError(f"fine_decode_ranges=True needs a CUDA device (it shapes captured graphs), "
                             f"device is {self.device.type!r}")
        self.split_gemms = split_gemms
        self.epilogue_gemms = epilogue_gemms
        self.fused_rope = fused_rope
        self.fine_decode_ranges = fine_decode_ranges
        self.max_model_len = max_model_len
        self.block_size = block_size
        elt = torch.empty((), dtype=self.dtype).element_size()
        bytes_per_block = dims.kv_bytes_per_token(elt) * block_size
        if num_gpu_blocks is None:
            num_gpu_blocks = self._default_gpu_blocks(bytes_per_block, gpu_memory_utilization,
                                                      activation_reserve_bytes)
        if num_host_blocks is None:
            if swap_space_bytes is None:
                swap_space_bytes = 4 * 2**30 if self.device.type == "cuda" else 64 * 2**20
            num_host_blocks = swap_space_bytes // bytes_per_block
        self.store = PagedKVStore(dims, num_gpu_blocks, num_host_blocks, block_size, self.dtype, self.device)
        self.model = LlamaForward(self.weights, self.store, max_model_len)
        self.model.epilogues = epilogue_gemms
        self.model.fused_rope = fused_rope
        if split_gemms:
            self.model.linear.split_sms = torch.cuda.get_device_properties(self.device).multi_processor_count
        self.is_cuda = self.device.type == "cuda"
        self.keep_logits = keep_logits
        self.last_logits: dict[int, torch.Tensor] = {}
        # pinned host buffers in turns: one iteration may run ahead of the host (``launch``/``collect``)
        self._staging = PinnedPair(1 << 16, self.is_cuda)
        self._token_host = PinnedPair(4 * max_num_seqs, self.is_cuda)
        self._uncollected: list[LaunchedStep] = []
        self._last_tokens: torch.Tensor | None = None    # the last launched iteration's sampled tokens (device)
        self._last_seq_ids: list[int] = []               # their sequences, in order
        if self.is_cuda:   # the forward pass's start and end, in turns like the pinned buffers
            self._compute_events = [tuple(torch.cuda.Event(enable_timing=True) for _ in range(2)) for _ in range(2)]
            self._compute_turn = 0
        # decode block tables live on the device, one row per sequence (fixed size: graphs read it)
        self.tables = DeviceBlockTables(4 * max_num_seqs, -(-max_model_len // block_size),
                                        self.store.scratch_block, self.device)
        # chunks over cached tokens: the Triton kernel on CUDA, the gather + SDPA path elsewhere
        self.paged_prefill_kernel = self.is_cuda and triton is not None
        if self.paged_prefill_kernel:
            compile_kernel_variants(*self.store.layers[0], self.dims.num_heads, self.store.scratch_block)
        self.graphs: DecodeGraphs | None = None
        self.mixed: MixedGraphs | None = None
        self.full: FullGraphs | None = None
        if self.is_cuda and cuda_graphs and not keep_logits:
            if tune_gemms and triton is not None:   # before capture: graphs record the chosen kernels
                w = self.weights
                self.model.linear.tune([s for s in bucket_sizes(max_num_seqs) if s >= 32],
                                       [w.qkv[0], w.o_proj[0], w.gate_up[0], w.down[0], w.lm_head])
            self.graphs = DecodeGraphs(self.model, self.tables, max_num_seqs)
            self.tables.growable = False
            self.mixed = MixedGraphs(self.model)
            if full_graph_max_tokens is None:
                full_graph_max_tokens = auto_full_graph_tokens(self.weights)
            sizes = tuple(n for n in FULL_BUCKETS if n <= full_graph_max_tokens)
            if sizes:
                self.full = FullGraphs(self.model, self.tables, max_num_seqs, sizes, fine_ranges=fine_decode_ranges)
        self.last_swap = None

    def token_regimes(self) -> tuple[int, ...]:
        """The token counts where the buckets an iteration with prefill runs in change family: the whole-iteration
        graphs' largest and the piecewise graphs' largest (none without graphs). Past the first the piecewise
        graphs or the eager path take it, and where whole-iteration graphs go past the piecewise ones' largest
        (small models), their buckets beyond it are the ones that stand in for the eager path. A fitted profile
        fits each stretch apart (``LinearCostModel``'s regimes)."""
        full = max(self.full.layouts)[0] if self.full is not None else 0
        piecewise = self.mixed.max_tokens if self.mixed is not None else 0
        return tuple(b for b in sorted({full, piecewise}) if b > 0)

    def _default_gpu_blocks(self, bytes_per_block: int, util: float, reserve: int) -> int:
        if not 0 < util <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {util}")
        if self.device.type != "cuda":
            return max(1, 2**30 // bytes_per_block)
        free, total = torch.cuda.mem_get_info(self.device)
        budget = total * util - (total - free) - reserve
        n = int(budget // bytes_per_block)
        if n < 1:
            raise ValueError(f"no GPU memory left for KV blocks: {free} of {total} bytes free, "
                             f"utilization {util}, activation reserve {reserve} bytes")
        return n

    # ------------------------------------------------------------------ protocol
    def capacity(self) -> KVCapacity:
        s = self.store
        return KVCapacity(s.num_gpu_blocks, s.num_host_blocks, self.block_size, s.bytes_per_block,
                          self.max_model_len)

    def decode_step_affine(self, num_seqs: int) -> DecodeStepTime:
        raise NotImplementedError("TorchExecutor runs one measured iteration at a time "
                                  "(supports_multi_step is False); it has no closed-form decode time")

    def execute(self, plan: BatchPlan) -> StepResult:
        """Run one iteration to completion; its duration is the host's wall clock around it."""
        return self._collect(self._launch(plan, ahead=False), wall_clock=True)

    def launch(self, plan: BatchPlan) -> LaunchedStep:
        """Enqueue one iteration and return without waiting for it (asynchronous scheduling). At most one
        iteration may be in flight when another is launched; a plan with swaps may be too (its copies wait
        for the iteration in flight on the device, ``PagedKVStore``). Decode input ids of ``PENDING_TOKEN`` take the token the previous launched iteration samples for that
        sequence. On the CPU the iteration runs here."""
        return self._launch(plan, ahead=True)

    def collect(self, step: LaunchedStep) -> StepResult:
        """Wait for a launched iteration. Its duration is device time: from the end of the iteration that
        was in flight when it was launched (so the host's work between them counts only where the device
        waited for it), or from its own launch."""
        return self._collect(step, wall_clock=False)

    def _launch(self, plan: BatchPlan, ahead: bool) -> LaunchedStep:
        """``ahead``: the host goes on while the iteration runs, so its tokens come back through a pinned
        buffer and events mark its end (``execute`` reads the tokens straight from the device instead)."""
        t0 = time.perf_counter()
        if plan.num_steps != 1:
            raise ValueError(f"TorchExecutor runs one iteration per plan, got num_steps={plan.num_steps}")
        if len(self._uncollected) > 1:
            raise RuntimeError(f"{len(self._uncollected)} iteration(s) in flight: collect them first (one may run "
                               f"ahead of the iteration being launched)")
        self._validate(plan)
        step = LaunchedStep(t0, None, [], after=self._uncollected[0] if self._uncollected else None)
        cuda_ahead = ahead and self.is_cuda
        if cuda_ahead:
            step.begin = torch.cuda.Event(enable_timing=True)
            step.begin.record()
        step.swap = self.store.start_swaps(plan.swap_out, plan.swap_in)
        if plan.prefills or plan.decode_seq_ids:
            tokens, seq_ids = self._compute(plan)
            step.seq_ids = seq_ids
            self._last_tokens = tokens
            self._last_seq_ids = seq_ids
            if self.is_cuda:
                step.compute = self._compute_events[self._compute_turn]
            else:
                step.compute_s = self._c_end - self._c_start
            if cuda_ahead:
                step.tokens = self._token_host.next(tokens.numel())[:tokens.numel()]
                step.tokens.copy_(tokens, non_blocking=True)
            else:
                step.tokens = tokens
        if cuda_ahead:
            step.done = torch.cuda.Event(enable_timing=True)
            step.done.record()     # after the compute, which waits for the swap copies
        elif not self.is_cuda:
            step.host_s = time.perf_counter() - t0
        self._uncollected.append(step)
        return step

    def _collect(self, step: LaunchedStep, wall_clock: bool) -> StepResult:
        if step.collected:
            raise RuntimeError("this iteration was collected already")
        device_s = step.host_s
        if step.done is not None:
            step.done.synchronize()
            first = step.after.done if step.after is not None and step.after.done is not None else step.begin
            device_s = first.elapsed_time(step.done) / 1e3
        tok_list = step.tokens.tolist() if step.tokens is not None else []   # from the device: synchronises
        compute_s = step.compute_s
        if step.compute is not None:
            step.compute[1].synchronize()
            compute_s = step.compute[0].elapsed_time(step.compute[1]) / 1e3
        elif self.is_cuda and step.swap.num_copies:
            torch.cuda.current_stream(self.device).synchronize()
        self.store.finish_swaps(step.swap)
        self.last_swap = step.swap
        step.collected = True
        step.after = None
        self._uncollected.remove(step)
        duration = time.perf_counter() - step.t0 if wall_clock else device_s
        return StepResult(duration, compute_s, step.swap.seconds, sampled_tokens=dict(zip(step.seq_ids, tok_list)))

    # ------------------------------------------------------------------ timing
    def _start_compute(self) -> None:
        """Mark the start of the device work (after the inputs are staged)."""
        if self.is_cuda:
            self._compute_turn ^= 1
            self._c0, self._c1 = self._compute_events[self._compute_turn]
            self._c0.record()
        else:
            self._c_start = time.perf_counter()

    def _end_compute(self) -> None:
        if self.is_cuda:
            self._c1.record()
        else:
            self._c_end = time.perf_counter()

    # ------------------------------------------------------------------ checks
    def _validate(self, plan: BatchPlan) -> None:
        bs = self.block_size
        limit = self.max_model_len
        for c in plan.prefills:
            if c.token_ids is None or len(c.token_ids) != c.num_tokens:
                got = None if c.token_ids is None else len(c.token_ids)
                raise ValueError(f"sequence {c.seq_id}: prefill chunk of {c.num_tokens} tokens carries "
                                 f"{got} token ids (the engine fills them when needs_token_ids is True)")
            if c.num_tokens < 1 or c.start < 0:
                raise ValueError(f"sequence {c.seq_id}: bad prefill chunk start={c.start} n={c.num_tokens}")
            end = c.start + c.num_tokens
            if end > limit:
                raise ValueError(f"sequence {c.seq_id}: prefill up to position {end - 1} exceeds the model's "
                                 f"context length (max_model_len {limit})")
            if len(c.block_table) * bs < end:
                raise ValueError(f"sequence {c.seq_id}: {len(c.block_table)} blocks cannot hold {end} tokens")
        n = len(plan.decode_seq_ids)
        if n:
            ids = plan.decode_input_ids
            if ids is None or len(ids) != n:
                raise ValueError(f"decode of {n} sequences carries {None if ids is None else len(ids)} input ids "
                                 f"(the engine fills them when needs_token_ids is True)")
            if len(plan.decode_positions) != n or len(plan.decode_block_tables) != n:
                raise ValueError(f"decode lists disagree: {n} ids, {len(plan.decode_positions)} positions, "
                                 f"{len(plan.decode_block_tables)} block tables")

    def _check_range(self, arr: np.ndarray, hi: int, what: str) -> None:
        if arr.size and (arr.min() < 0 or arr.max() >= hi):
            bad = int(arr[(arr < 0) | (arr >= hi)][0])
            raise ValueError(f"{what} {bad} is outside [0, {hi})")

    # ------------------------------------------------------------------ staging
    def _stage(self, parts: list[np.ndarray], align: int = 1) -> tuple[torch.Tensor, list[int]]:
        """Copy int64 host arrays into one pinned buffer and then to the device in one copy; returns the
        device buffer and each part's offset, a multiple of ``align`` elements."""
        offsets = []
        total = 0
        for p in parts:
            total = -(-total // align) * align
            offsets.append(total)
            total += p.size
        host = self._staging.next(total)
        buf = host.numpy()
        for o, p in zip(offsets, parts):
            buf[o:o + p.size] = p.ravel()
        return host[:total].to(self.device, non_blocking=True), offsets

    # ------------------------------------------------------------------ compute
    def _decode_inputs(self, plan: BatchPlan, with_chunks: bool = False):
        """Decode ids, positions and the block-table update, checked (vectorised: this runs every step).
        ``with_chunks``: the prefill chunks' sequences take device table slots too (after the decodes')."""
        bs = self.block_size
        sids = plan.decode_seq_ids
        pos = np.asarray(plan.decode_positions, dtype=np.int64)
        ids = np.asarray(plan.decode_input_ids if sids else [], dtype=np.int64)
        pending = pending_rows(sids, ids, self._last_seq_ids) if sids else None
        if pending is not None:
            ids = np.where(pending >= 0, 0, ids)     # filled on the device (``_fill_pending``)
        self._check_range(ids, self.dims.vocab_size, "decode input token id")
        bad = np.flatnonzero((pos >= self.max_model_len) | (pos < 0))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"sequence {sids[i]}: decode at position {int(pos[i])} exceeds the model's context "
                             f"length (max_model_len {self.max_model_len})")
        if with_chunks:
            upd = self.tables.prepare(list(sids) + [c.seq_id for c in plan.prefills],
                                      list(plan.decode_block_tables) + [c.block_table for c in plan.prefills])
        else:
            upd = self.tables.prepare(sids, plan.decode_block_tables)
        try:
            bad = np.flatnonzero(upd.lens[:len(sids)] * bs <= pos)
            if bad.size:
                i = int(bad[0])
                raise ValueError(f"sequence {sids[i]}: {int(upd.lens[i])} blocks cannot hold position {int(pos[i])}")
            self._check_range(upd.upd_vals, self.store.num_gpu_blocks, "decode block id")
        except ValueError:
            self.tables.forget()    # the slots took entries that were never written: start over
            raise
        return ids, pos, upd, pending

    def _fill_pending(self, ids: torch.Tensor, pending: torch.Tensor | None) -> None:
        """Decode inputs the previous iteration samples, copied on the device from its output."""
        if pending is not None:
            fill_pending(ids, pending, self._last_tokens)

    def _compute(self, plan: BatchPlan) -> tuple[torch.Tensor, list[int]]:
        nd = len(plan.decode_seq_ids)
        if not plan.prefills and self.graphs is not None and nd <= self.graphs.max_batch:
            ids, pos, upd, pending = self._decode_inputs(plan)
            bucket = self.graphs.bucket(nd)
            pad = bucket - nd
            staged, offsets = self._stage([
                np.concatenate([ids, np.zeros(pad, np.int64)]),
                np.concatenate([pos, np.zeros(pad, np.int64)]),
                np.concatenate([upd.slots, np.full(pad, self.tables.pad_slot, np.int64)]),
                upd.upd_slots, upd.upd_cols, upd.upd_vals] + ([pending] if pending is not None else []))
            u = upd.upd_vals.size
            o = 3 * bucket
            self.tables.apply(staged[o:o + u], staged[o + u:o + 2 * u], staged[o + 2 * u:o + 3 * u])
            if pending is not None:
                self._fill_pending(staged[:nd], staged[offsets[-1]:offsets[-1] + nd])
            self._start_compute()
            tokens = self.graphs.run(staged[:3 * bucket], nd, bucket)
            self._end_compute()
            return tokens, list(plan.decode_seq_ids)
        if self.full is not None:
            got = self._compute_full(plan)
            if got is not None:
                return got
        return self._compute_eager(plan)

    def _compute_full(self, plan: BatchPlan) -> tuple[torch.Tensor, list[int]] | None:
        """An iteration with prefill chunks as one graph replay (``FullGraphs``); None when no bucket takes it."""
        nd = len(plan.decode_seq_ids)
        chunks = plan.prefills
        num_tokens = nd + sum(c.num_tokens for c in chunks)
        sample_ids = [c.seq_id for c in chunks if c.samples]
        bucket = self.full.bucket(num_tokens, nd, len(chunks), nd + len(sample_ids))
        if bucket is None:
            return None
        chunk_tokens = []
        for c in chunks:     # checked before any device-table slot is taken
            tok = np.asarray(c.token_ids, dtype=np.int64)
            self._check_range(tok, self.dims.vocab_size, "input token id")
            self._check_range(np.asarray(c.block_table, dtype=np.int64), self.store.num_gpu_blocks, "block id")
            chunk_tokens.append(tok)
        ids, pos, upd, pending = self._decode_inputs(plan, with_chunks=True)
        packed_chunks = [(tok, c.start, slot, c.samples)
                         for tok, c, slot in zip(chunk_tokens, chunks, upd.slots[nd:].tolist())]
        layout = self.full.layouts[bucket]
        vec, num_samples = layout.pack(ids, pos, upd.slots[:nd], packed_chunks, self.tables.pad_slot)
        staged, offsets = self._stage([vec, upd.upd_slots, upd.upd_cols, upd.upd_vals]
                                      + ([pending] if pending is not None else []))
        u = upd.upd_vals.size
        self.tables.apply(*(staged[o:o + u] for o in offsets[1:4]))
        if pending is not None:
            first = layout.offsets()["ids"][0]
            self._fill_pending(staged[first:first + nd], staged[offsets[4]:offsets[4] + nd])
        self._start_compute()
        tokens = self.full.run(bucket, staged[:layout.length], num_samples)
        self._end_compute()
        return tokens, list(plan.decode_seq_ids) + sample_ids

    def _compute_eager(self, plan: BatchPlan) -> tuple[torch.Tensor, list[int]]:
        bs = self.block_size
        nblocks = self.store.num_gpu_blocks
        ids, positions, wblocks, logit_rows, sample_rows, seq_ids = [], [], [], [], [], []
        segs: list[tuple[int, int, int, np.ndarray]] = []
        row = 0
        for c in plan.prefills:
            n = c.num_tokens
            p = np.arange(c.start, c.start + n, dtype=np.int64)
            table = np.asarray(c.block_table[:-(-(c.start + n) // bs)], dtype=np.int64)
            self._check_range(table, nblocks, "block id")
            ids.append(np.asarray(c.token_ids, dtype=np.int64))
            positions.append(p)
            wblocks.append(table[p // bs])
            segs.append((row, n, c.start, table))
            if self.keep_logits:
                logit_rows.append(np.arange(row, row + n, dtype=np.int64))
            if c.samples:
                sample_rows.append(row + n - 1)
                seq_ids.append(c.seq_id)
            row += n
        num_prefill = row
        nd = len(plan.decode_seq_ids)
        empty = np.zeros(0, dtype=np.int64)
        upd_parts = [empty, empty, empty, empty]
        pending = None
        if nd:
            d_ids, d_pos, upd, pending = self._decode_inputs(plan)
            ids.append(d_ids)
            positions.append(d_pos)
            upd_parts = [upd.slots, upd.upd_slots, upd.upd_cols, upd.upd_vals]
            dec_rows = np.arange(row, row + nd, dtype=np.int64)
            if self.keep_logits:
                logit_rows.append(dec_rows)
            sample_rows.extend(dec_rows.tolist())
            seq_ids.extend(plan.decode_seq_ids)
            width = int(d_pos.max() // bs) + 1
        ids_a = np.concatenate(ids)
        pos_a = np.concatenate(positions)
        wb_a = np.concatenate(wblocks) if wblocks else empty
        self._check_range(ids_a, self.dims.vocab_size, "input token id")
        if self.keep_logits:
            lr = np.concatenate(logit_rows)
            pick = np.asarray(sample_rows, dtype=np.int64)   # sampled rows among the kept (all) rows
        else:
            lr = np.asarray(sample_rows, dtype=np.int64)
            pick = np.arange(lr.size, dtype=np.int64)
        parts = [ids_a, pos_a, wb_a, lr, pick, *upd_parts] + [s[3] for s in segs]
        over_cache = [s for s in segs if s[2]] if self.paged_prefill_kernel else []
        host_tiles = PrefillTiles.build(over_cache) if over_cache else None
        if host_tiles is not None:
            parts += host_tiles.arrays()
        if pending is not None:
            parts.append(pending)
        # every part starts 16-byte aligned: Triton compiles a kernel variant per pointer alignment, and a
        # variant first met while serving stalls that iteration for the compile
        staged, offsets = self._stage(parts, align=2)
        views = [staged[o:o + part.size] for o, part in zip(offsets, parts)]
        d_ids, d_pos, d_wb, d_lr, d_pick, d_slots, u_slots, u_cols, u_vals = views[:9]
        pt = iter(views[9:])
        segments = [PrefillSegment(r, n, start, next(pt)) for r, n, start, _ in segs]
        if pending is not None:
            self._fill_pending(d_ids[num_prefill:], views.pop())
        tiles = DevicePrefillTiles.from_views(views[-6:], host_tiles) if host_tiles is not None else None
        tables = lens = None
        if nd:
            self.tables.apply(u_slots, u_cols, u_vals)
            tables = self.tables.table.index_select(0, d_slots)[:, :width]
            dpos = d_pos[num_prefill:]
            d_wb = torch.cat([d_wb, tables.gather(1, (dpos // bs).unsqueeze(1)).squeeze(1)])
            lens = dpos + 1
        batch = ForwardBatch(d_ids, d_pos, d_wb, d_pos % bs, segments, num_prefill, tables, lens, d_lr, tiles)
        self._start_compute()
        bucket = self.mixed.bucket(d_ids.shape[0]) if self.mixed is not None else None
        logits = self.mixed.forward(batch, bucket) if bucket is not None else self.model(batch)
        tokens = logits[d_pick].argmax(-1) if d_pick.numel() else torch.zeros(0, dtype=torch.long)
        self._end_compute()
        if self.keep_logits:
            self._keep(plan, logits, num_prefill)
        return tokens, seq_ids

    def _keep(self, plan: BatchPlan, logits: torch.Tensor, num_prefill: int) -> None:
        out: dict[int, torch.Tensor] = {}
        r = 0
        for c in plan.prefills:
            out[c.seq_id] = logits[r:r + c.num_tokens].float().cpu()
            r += c.num_tokens
        for i, sid in enumerate(plan.decode_seq_ids):
            out[sid] = logits[num_prefill + i:num_prefill + i + 1].float().cpu()
        self.last_logits = out
