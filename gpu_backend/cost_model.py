"""How long one engine iteration takes, predicted from the batch's shape.

Why a model of the batch's *shape*: an iteration's time is set by a handful of
quantities — tokens pushed through the linear layers, weight bytes read, attention work
and KV bytes read, bytes and copies moved over the host link — whatever requests they
came from. Predicting from these features (``BatchShape``) lets the analytic roofline
model that ships for a device and model be replaced by one fitted to the real executor
(``LinearCostModel``, coefficients from ``servegym profile``) without touching the engine.

Both models are affine in the decode context length for a fixed batch, which is what
lets the simulator advance many decode iterations at once in closed form
(``decode_affine``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Protocol, Sequence

from gpu_backend.plan import BatchPlan, DecodeStepTime, GroupMove, longest_context


@dataclass(frozen=True, slots=True)
class ModelShape:
    """A Llama-architecture model's dimensions: all the cost model needs to know about it."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    dtype_bytes: int = 2
    head_dim: int = 0             # 0: hidden_size // num_heads
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, int) and not isinstance(v, bool) and f.name != "head_dim" and v <= 0:
                raise ValueError(f"model {self.name!r}: {f.name} must be > 0, got {v}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model {self.name!r}: num_heads {self.num_heads} is not a multiple "
                             f"of num_kv_heads {self.num_kv_heads}")

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token across all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.dim_per_head * self.dtype_bytes

    @property
    def linear_params_per_token(self) -> int:
        """Parameters every token multiplies through (attention projections and MLP, all layers)."""
        h, d = self.hidden_size, self.dim_per_head
        attn = h * self.num_heads * d * 2 + h * self.num_kv_heads * d * 2
        mlp = 3 * h * self.intermediate_size
        return self.num_layers * (attn + mlp)

    @property
    def lm_head_params(self) -> int:
        return self.hidden_size * self.vocab_size

    @property
    def num_params(self) -> int:
        norms = (2 * self.num_layers + 1) * self.hidden_size
        embeddings = self.lm_head_params * (1 if self.tie_word_embeddings else 2)
        return self.linear_params_per_token + embeddings + norms

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.dtype_bytes

    @property
    def weight_bytes_read_per_step(self) -> int:
        """Weights streamed from memory once per iteration (the input embedding is only gathered)."""
        read = self.linear_params_per_token + self.lm_head_params + (2 * self.num_layers + 1) * self.hidden_size
        return read * self.dtype_bytes

    @property
    def attention_flops_per_pair(self) -> int:
        """FLOPs of one (query token, key token) pair: QK^T and PV over every head of every layer."""
        return 4 * self.num_layers * self.num_heads * self.dim_per_head


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """What the cost model needs to know about an accelerator and its host link."""

    name: str
    memory_bytes: int
    hbm_bandwidth: float          # bytes/s actually reached by large device copies
    matmul_flops: float           # dense bf16 FLOP/s reached by large matrix multiplies
    attention_flops: float        # FLOP/s reached by attention kernels
    host_bandwidth: float         # bytes/s of large pinned host<->device copies
    copy_latency_s: float         # fixed cost of one host<->device copy
    iteration_overhead_s: float   # scheduling, launches and sampling per iteration

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name != "name" and not (v > 0 and math.isfinite(v)):
                raise ValueError(f"device {self.name!r}: {f.name} must be a positive number, got {v}")


@dataclass(frozen=True, slots=True)
class BatchShape:
    """The features of one iteration that its duration depends on."""

    prefill_tokens: int = 0
    prefill_attention_pairs: float = 0.0   # sum over chunks of n * (start + (n + 1) / 2)
    prefill_kv_read_tokens: int = 0         # sum over chunks of start + n
    num_decode: int = 0
    decode_context_tokens: int = 0          # KV tokens read by decode attention (new token included)
    num_sampled: int = 0                    # sequences producing a token (each needs the LM head)
    num_prefill_chunks: int = 0             # prefill chunks (each costs the executor its own attention call)
    num_cached_chunks: int = 0              # of those, chunks over cached tokens (the paged prefill kernel)
    decode_context_max: int = 0             # the longest decode's context

    @property
    def num_tokens(self) -> int:
        return self.prefill_tokens + self.num_decode

    @classmethod
    def from_plan(cls, plan: BatchPlan) -> "BatchShape":
        p_tokens = 0
        pairs = 0.0
        kv_read = 0
        sampled = 0
        cached = 0
        for c in plan.prefills:
            n = c.num_tokens
            p_tokens += n
            pairs += n * (c.start + (n + 1) * 0.5)
            kv_read += c.start + n
            sampled += c.samples
            cached += c.start > 0
        nd = plan.num_decode
        return cls(p_tokens, pairs, kv_read, nd, plan.decode_context_sum, sampled + nd, len(plan.prefills), cached,
                   longest_context(plan.decode_context_max, plan.decode_context_sum, nd))


def copy_time(moves: Sequence[GroupMove], latency_s: float, bytes_per_block: int, bandwidth: float) -> float:
    """Host<->GPU copies: a fixed latency per copy (one per block group) plus bytes over bandwidth."""
    if not moves:
        return 0.0
    blocks = sum(m.num_blocks for m in moves)
    return len(moves) * latency_s + blocks * bytes_per_block / bandwidth


class CostModel(Protocol):
    def compute_time(self, shape: BatchShape) -> float: ...

    def decode_affine(self, num_seqs: int) -> DecodeStepTime:
        """``compute_time`` of a decode-only batch of ``num_seqs`` sequences, affine in the contexts it reads."""
        ...

    def swap_time(self, moves: Sequence[GroupMove]) -> float: ...

    def plan_swap_time(self, swap_in: Sequence[GroupMove], swap_out: Sequence[GroupMove]) -> float: ...

    idle_start_s: float     # asynchronous scheduling: an iteration launched on an idle device takes this longer


class _AffineDecode:
    """Shared by the cost models: a decode-only batch is timed by ``decode_affine`` exactly, so that
    stepping one iteration at a time and the closed-form runs use the same arithmetic."""

    # under asynchronous scheduling, what an iteration launched on an idle device adds to its back-to-back
    # time (the host's launch path no longer hides behind an iteration in flight); fitted profiles only
    idle_start_s = 0.0

    def plan_swap_time(self, swap_in: Sequence[GroupMove], swap_out: Sequence[GroupMove]) -> float:
        """What an iteration's swaps add to it: both directions' copies."""
        return self.swap_time(swap_in) + self.swap_time(swap_out) if (swap_in or swap_out) else 0.0

    def compute_time(self, s: BatchShape) -> float:
        if s.prefill_tokens == 0:
            if s.num_decode == 0:
                return 0.0
            return self.decode_affine(s.num_decode).first(s.decode_context_tokens, s.decode_context_max)
        return self._mixed_time(s)


class RooflineCostModel(_AffineDecode):
    """Analytic: each kernel class takes the longer of its compute time and its memory time.

    time = overhead
         + max(weight bytes / BW, linear FLOPs / matmul rate)                 (linear layers)
         + max(attention FLOPs / attention rate, KV bytes read / BW)          (attention)
         + KV bytes written / BW
    swap = sum over copies of (latency + bytes / host bandwidth)
    """

    def __init__(self, model: ModelShape, device: DeviceSpec, block_size: int):
        self.model = model
        self.device = device
        self.block_size = block_size
        self.bytes_per_block = model.kv_bytes_per_token * block_size
        bw = device.hbm_bandwidth
        self._weight_time = model.weight_bytes_read_per_step / bw
        self._flops_per_token = 2.0 * model.linear_params_per_token
        self._flops_per_sample = 2.0 * model.lm_head_params
        self._attn_s_per_pair = model.attention_flops_per_pair / device.attention_flops
        self._kv_s_per_token = model.kv_bytes_per_token / bw
        self._ctx_s_per_token = max(self._attn_s_per_pair, self._kv_s_per_token)
        self._affine_cache: dict[int, DecodeStepTime] = {}

    def _linear_time(self, tokens: int, sampled: int) -> float:
        flops = self._flops_per_token * tokens + self._flops_per_sample * sampled
        t = flops / self.device.matmul_flops
        return t if t > self._weight_time else self._weight_time

    def decode_affine(self, num_seqs: int) -> DecodeStepTime:
        hit = self._affine_cache.get(num_seqs)
        if hit is not None:
            return hit
        a = (self.device.iteration_overhead_s + self._linear_time(num_seqs, num_seqs)
             + self._kv_s_per_token * num_seqs)
        out = DecodeStepTime(a, self._ctx_s_per_token)
        self._affine_cache[num_seqs] = out
        return out

    def _mixed_time(self, s: BatchShape) -> float:
        attn = max(self._attn_s_per_pair * (s.prefill_attention_pairs + s.decode_context_tokens),
                   self._kv_s_per_token * (s.prefill_kv_read_tokens + s.decode_context_tokens))
        return (self.device.iteration_overhead_s + self._linear_time(s.num_tokens, s.num_sampled)
                + attn + self._kv_s_per_token * s.num_tokens)

    def swap_time(self, moves: Sequence[GroupMove]) -> float:
        return copy_time(moves, self.device.copy_latency_s, self.bytes_per_block, self.device.host_bandwidth)


LINEAR_FEATURES = ("intercept", "prefill_tokens", "prefill_attention_pairs", "prefill_kv_read_tokens",
                   "num_decode", "decode_context_tokens", "num_sampled", "has_prefill", "num_prefill_chunks",
                   "has_prefill_and_decode", "has_cached_chunk", "has_cached_chunk_and_decode")
# Features added after the first fitted profiles: a profile that lacks them was fitted without
# them, which is the same model as a coefficient of 0.
_LATER_FEATURES = ("has_prefill", "num_prefill_chunks", "has_prefill_and_decode", "has_cached_chunk",
                   "has_cached_chunk_and_decode")


def linear_features(s: BatchShape) -> tuple[float, ...]:
    """``s`` as the ``LINEAR_FEATURES`` vector (the intercept's feature is 1).

    ``has_prefill`` separates the two ways an iteration runs: a pure decode batch replays one
    CUDA graph, a batch with prefill chunks runs piecewise graphs with eager attention between
    them, a fixed cost of its own; ``num_prefill_chunks`` prices each chunk's attention launches;
    ``has_prefill_and_decode`` the decode attention launched eagerly in every layer of such a
    batch when it also holds decodes (on a small model, a fixed cost larger than the GPU work).
    ``has_cached_chunk`` (and with decodes) separates the two attention paths of prefill chunks:
    chunks from position 0 run dense causal attention, chunks over cached tokens the paged
    prefill kernel, whose fixed costs differ.
    """
    has_prefill = 1.0 if s.prefill_tokens else 0.0
    has_cached = 1.0 if s.num_cached_chunks else 0.0
    with_decode = 1.0 if s.num_decode else 0.0
    return (1.0, float(s.prefill_tokens), float(s.prefill_attention_pairs), float(s.prefill_kv_read_tokens),
            float(s.num_decode), float(s.decode_context_tokens), float(s.num_sampled),
            has_prefill, float(s.num_prefill_chunks), has_prefill * with_decode, has_cached, has_cached * with_decode)


def _coefficients(coefficients: dict[str, float], where: str) -> dict[str, float]:
    """``coefficients`` checked and in ``LINEAR_FEATURES`` order; features added later default to 0."""
    coefficients = {**{f: 0.0 for f in _LATER_FEATURES}, **coefficients}
    missing = [f for f in LINEAR_FEATURES if f not in coefficients]
    if missing:
        raise ValueError(f"{where}: missing coefficients {missing}")
    unknown = sorted(set(coefficients) - set(LINEAR_FEATURES))
    if unknown:
        raise ValueError(f"{where}: unknown coefficients {unknown}; known: {list(LINEAR_FEATURES)}")
    return {k: float(coefficients[k]) for k in LINEAR_FEATURES}


@dataclass(frozen=True, slots=True)
class DecodeTable:
    """Measured decode iterations: for each batch size, time = intercept + per-token * context tokens
    (+ per-longest-token * the longest context, where the sweep timed batches of unequal contexts).

    Why a table: a decode step replays a CUDA graph captured for its batch size, and how
    well attention spreads over the GPU depends on the batch (one sequence of 8,000 tokens
    reads its KV at half the rate 64 sequences do), so neither the fixed cost nor the cost
    per context token is one constant. Between measured sizes both are interpolated
    linearly; past the largest, extrapolated from the last two. With ``round_up`` (a table
    measured at every captured graph size) a size between two rows costs what the larger row
    costs, because the executor pads the batch to that graph's size.
    """

    num_seqs: tuple[int, ...]
    intercept_s: tuple[float, ...]
    per_context_token_s: tuple[float, ...]
    round_up: bool = False
    per_longest_token_s: tuple[float, ...] = ()     # empty: zero for every size (tables fitted before it)

    def __post_init__(self) -> None:
        n = len(self.num_seqs)
        if n < 2 or len(self.intercept_s) != n or len(self.per_context_token_s) != n:
            raise ValueError(f"decode table: num_seqs, intercept_s and per_context_token_s need the same length "
                             f">= 2, got {n}, {len(self.intercept_s)}, {len(self.per_context_token_s)}")
        if self.per_longest_token_s and len(self.per_longest_token_s) != n:
            raise ValueError(f"decode table: per_longest_token_s needs one entry per size ({n}), "
                             f"got {len(self.per_longest_token_s)}")
        if any(b <= a for a, b in zip(self.num_seqs, self.num_seqs[1:])) or self.num_seqs[0] < 1:
            raise ValueError(f"decode table: num_seqs must rise from >= 1, got {list(self.num_seqs)}")
        bad = [v for v in (*self.intercept_s, *self.per_context_token_s, *self.per_longest_token_s)
               if not (v >= 0 and math.isfinite(v))]
        if bad:
            raise ValueError(f"decode table: times must be finite and >= 0, got {bad[0]}")

    def _longest(self, i: int) -> float:
        return self.per_longest_token_s[i] if self.per_longest_token_s else 0.0

    def affine(self, num_seqs: int) -> DecodeStepTime:
        xs = self.num_seqs
        if num_seqs <= xs[0]:
            return DecodeStepTime(self.intercept_s[0], self.per_context_token_s[0], self._longest(0))
        i = 1
        while i < len(xs) - 1 and xs[i] < num_seqs:
            i += 1
        if self.round_up and num_seqs <= xs[i]:
            return DecodeStepTime(self.intercept_s[i], self.per_context_token_s[i], self._longest(i))
        f = (num_seqs - xs[i - 1]) / (xs[i] - xs[i - 1])

        def lerp(v0: float, v1: float) -> float:
            return max(v0 + f * (v1 - v0), 0.0)

        return DecodeStepTime(lerp(self.intercept_s[i - 1], self.intercept_s[i]),
                              lerp(self.per_context_token_s[i - 1], self.per_context_token_s[i]),
                              lerp(self._longest(i - 1), self._longest(i)))


class LinearCostModel(_AffineDecode):
    """Fitted: time = c · features, one coefficient per ``LINEAR_FEATURES`` entry (seconds per unit).

    ``servegym profile`` fits the coefficients on the real executor; swap time keeps the
    latency-plus-bandwidth form with fitted constants. With a ``DecodeTable`` (profiles fitted
    since it exists), decode-only iterations are timed from the table and the coefficients
    describe iterations with prefill chunks.

    ``regimes``: (``above_tokens``, coefficients) pairs, ascending: an iteration of more tokens than
    ``above_tokens`` takes those coefficients instead (the last such pair). Why: the real executor
    runs an iteration as one captured graph, as piecewise graphs or eagerly depending on its token
    count, and the eager path of a small model is bound by the host's launches, a cost no linear
    function of the shape shares with the graph paths (smollm2-135m on an H200: 2,048 tokens in a
    graph 3.8 ms, 2,049 eagerly 14 ms; session 18).
    """

    def __init__(self, coefficients: dict[str, float], copy_latency_s: float, host_bandwidth: float,
                 bytes_per_block: int, decode_table: DecodeTable | None = None,
                 swap_plan: tuple[float, float] = (0.0, 0.0), idle_start_s: float = 0.0,
                 regimes: Sequence[tuple[int, dict[str, float]]] = ()):
        self.c = _coefficients(coefficients, "linear cost model")
        self._vector = tuple(self.c[k] for k in LINEAR_FEATURES)
        bounds = [above for above, _ in regimes]
        if any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in bounds) or bounds != sorted(set(bounds)):
            raise ValueError(f"linear cost model: regimes need whole above_tokens >= 1, strictly rising, got {bounds}")
        self.regimes = tuple((above, _coefficients(c, f"linear cost model, regime above {above} tokens"))
                             for above, c in regimes)
        self._regime_vectors = tuple((above, tuple(c[k] for k in LINEAR_FEATURES)) for above, c in self.regimes)
        self.copy_latency_s = copy_latency_s
        self.host_bandwidth = host_bandwidth
        self.bytes_per_block = bytes_per_block
        self.decode_table = decode_table
        if len(swap_plan) != 2 or min(swap_plan) < 0:
            raise ValueError(f"linear cost model: swap_plan must be (overhead_s, per_copy_s) >= 0, got {swap_plan!r}")
        self.swap_plan = (float(swap_plan[0]), float(swap_plan[1]))
        if not (math.isfinite(idle_start_s) and idle_start_s >= 0):
            raise ValueError(f"linear cost model: idle_start_s must be finite and >= 0, got {idle_start_s!r}")
        self.idle_start_s = float(idle_start_s)
        self._table_cache: dict[int, DecodeStepTime] = {}

    def decode_affine(self, num_seqs: int) -> DecodeStepTime:
        if self.decode_table is not None:
            hit = self._table_cache.get(num_seqs)
            if hit is None:
                hit = self._table_cache[num_seqs] = self.decode_table.affine(num_seqs)
            return hit
        c = self.c
        a = c["intercept"] + (c["num_decode"] + c["num_sampled"]) * num_seqs
        return DecodeStepTime(a, c["decode_context_tokens"])

    def _mixed_time(self, s: BatchShape) -> float:
        vector = self._vector
        for above, v in self._regime_vectors:
            if s.num_tokens <= above:
                break
            vector = v
        return sum(c * x for c, x in zip(vector, linear_features(s)))

    def swap_time(self, moves: Sequence[GroupMove]) -> float:
        return copy_time(moves, self.copy_latency_s, self.bytes_per_block, self.host_bandwidth)

    def plan_swap_time(self, swap_in: Sequence[GroupMove], swap_out: Sequence[GroupMove]) -> float:
        """The copies, and for a profile fitted on asynchronous scheduling what else a plan with swaps adds to
        the forward pass it holds back (``swap_plan``: an overhead plus a cost per copy)."""
        if not (swap_in or swap_out):
            return 0.0
        overhead, per_copy = self.swap_plan
        return (self.swap_time(swap_in) + self.swap_time(swap_out) + overhead
                + per_copy * (len(swap_in) + len(swap_out)))
