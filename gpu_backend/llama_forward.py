"""Our Llama forward pass over packed tokens and the paged KV cache.

One call runs one engine iteration: the tokens of every prefill chunk and every decode in
the batch are packed into one ``[T]`` row list (prefill rows first, decode rows last), so
each linear layer is one matrix product over all of them — the mixed batches of Orca's
iteration-level scheduling and Sarathi-Serve's chunked prefills (papers.md §7) — and only
attention is split: each prefill chunk attends causally over its cached prefix plus
itself, decode rows go through paged decode attention.

The arithmetic follows the Llama architecture as transformers implements it (RMSNorm in
float32 then cast, rotate-half RoPE with float32 angles, GQA, SwiGLU), so that its logits
match ``LlamaForCausalLM`` to rounding; the layout is ours (fused QKV and gate/up
matrices, the KV written straight into the paged cache, the residual add fused with the
next norm: ``gpu_backend.fused_ops``; optionally, few-row products split over K, either by our
Triton kernel or as batched cuBLAS products whose partials the fused kernels sum:
``gpu_backend.skinny_gemm``; optionally, the gate/up product of a decode batch applying SwiGLU
in its epilogue: ``gpu_backend.epilogue_gemms``; optionally, a decode-only batch of many sequences
rotating, writing its KV and attending in one kernel per layer: ``gpu_backend.rope_decode_attention``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from gpu_backend.epilogue_gemms import gate_up_silu
from gpu_backend.fused_ops import add_rms_norm, rope_and_cache, silu_mul
from gpu_backend.kv_store import PagedKVStore
from gpu_backend.models import LlamaWeights, rope_inv_freq
from gpu_backend.paged_attention import causal_attention, decode_attention, gather_kv, prefill_attention
from gpu_backend.paged_prefill import DevicePrefillTiles, paged_prefill_attention
from gpu_backend.rope_decode_attention import fused_applies, rope_decode_attention
from gpu_backend.skinny_gemm import LinearPlan


@dataclass(slots=True)
class PrefillSegment:
    """One prefill chunk's rows in the packed batch."""

    row: int                                  # first row of the chunk
    num_tokens: int
    start: int                                # tokens already in the cache (prefix + earlier chunks)
    block_table: torch.Tensor | None = None   # device block ids (read to gather the cached keys)


@dataclass(slots=True)
class ForwardBatch:
    """Device tensors for one forward pass (all index tensors int64)."""

    input_ids: torch.Tensor                   # [T]
    positions: torch.Tensor                   # [T]
    write_blocks: torch.Tensor                # [T] block receiving each token's KV
    write_slots: torch.Tensor                 # [T] slot inside that block
    prefills: list[PrefillSegment] = field(default_factory=list)
    num_prefill_rows: int = 0                 # rows [0, P) are prefill, [P, T) decode
    decode_block_tables: torch.Tensor | None = None   # [D, W]
    decode_context_lens: torch.Tensor | None = None   # [D] (position + 1)
    logit_rows: torch.Tensor | None = None    # rows whose logits are computed; None: all
    paged_prefill: DevicePrefillTiles | None = None   # chunks over cached tokens, for the Triton kernel


class LlamaForward:
    """The model: weights, RoPE tables and the KV store it reads and writes."""

    def __init__(self, weights: LlamaWeights, store: PagedKVStore, max_model_len: int):
        d = weights.dims
        if store.dims != d:
            raise ValueError(f"KV store is laid out for {store.dims.name!r}, the weights are {d.name!r}")
        self.w = weights
        self.dims = d
        self.store = store
        self.scale = d.head_dim ** -0.5
        inv = rope_inv_freq(d).to(weights.device)
        angles = torch.arange(max_model_len, dtype=torch.float32, device=weights.device)[:, None] * inv[None, :]
        emb = torch.cat((angles, angles), dim=-1)
        self.cos = emb.cos().to(weights.dtype)
        self.sin = emb.sin().to(weights.dtype)
        self._q = d.num_heads * d.head_dim
        self.linear = LinearPlan()     # F.linear unless ``TorchExecutor(tune_gemms=True)`` or ``split_gemms=True``
        self.epilogues = False         # ``TorchExecutor(epilogue_gemms=True)``: gate/up applies SwiGLU itself
        self.fused_rope = False        # ``TorchExecutor(fused_rope=True)``: decode-only batches rotate in attention

    @staticmethod
    def _groups(prefills: list[PrefillSegment]):
        """(row, count, tokens, None) for runs of adjacent fresh chunks of equal length;
        (row, 1, tokens, segment) for a chunk that starts over cached tokens."""
        i = 0
        while i < len(prefills):
            s = prefills[i]
            if s.start:
                yield s.row, 1, s.num_tokens, s
                i += 1
                continue
            j = i + 1
            while (j < len(prefills) and prefills[j].start == 0 and prefills[j].num_tokens == s.num_tokens
                   and prefills[j].row == s.row + (j - i) * s.num_tokens):
                j += 1
            yield s.row, j - i, s.num_tokens, None
            i = j

    # ---------------------------------------------------------------- pieces (also replayed as graphs)
    def embed(self, ids: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """The residual stream ``h`` (written into ``h`` when given) and layer 0's normalised input."""
        e = F.embedding(ids, self.w.embed)
        if h is None:
            h = e
        else:
            h.copy_(e)
        return add_rms_norm(None, h, self.w.input_norm[0], self.dims.rms_norm_eps)

    def pre_attention(self, layer: int, x: torch.Tensor, positions: torch.Tensor, write_blocks: torch.Tensor,
                      write_slots: torch.Tensor, want_kv: bool):
        """QKV projection and RoPE; K and V written into the cache. Returns (q, k, v)."""
        d = self.dims
        k_cache, v_cache = self.store.layers[layer]
        return rope_and_cache(self.linear.partials(x, self.w.qkv[layer]), self.cos, self.sin, positions, write_blocks,
                              write_slots, k_cache, v_cache, d.num_heads, d.num_kv_heads, d.head_dim,
                              want_kv=want_kv)

    def attention(self, layer: int, q: torch.Tensor, k, v, b: ForwardBatch, attn: torch.Tensor) -> None:
        """Every row's attention into ``attn``: prefill chunks causally over their cache, decodes paged."""
        d = self.dims
        nh, nkv, hd = d.num_heads, d.num_kv_heads, d.head_dim
        k_cache, v_cache = self.store.layers[layer]
        if b.paged_prefill is not None:     # every chunk over cached tokens in one launch
            paged_prefill_attention(q, k_cache, v_cache, b.paged_prefill, self.scale, attn)
        for r0, g, n, seg in self._groups(b.prefills):
            if seg is not None and b.paged_prefill is not None:
                continue
            if seg is None:     # g fresh chunks of n tokens each, adjacent rows: one batched call
                e = r0 + g * n
                attn[r0:e] = causal_attention(q[r0:e].view(g, n, nh, hd), k[r0:e].view(g, n, nkv, hd),
                                              v[r0:e].view(g, n, nkv, hd), self.scale).reshape(g * n, nh, hd)
            else:               # a chunk over cached tokens: gather them through its block table
                ks = gather_kv(k_cache, seg.block_table, seg.start + n)
                vs = gather_kv(v_cache, seg.block_table, seg.start + n)
                attn[r0:r0 + n] = prefill_attention(q[r0:r0 + n], ks, vs, self.scale)
        P = b.num_prefill_rows
        if q.shape[0] > P:
            decode_attention(q[P:], k_cache, v_cache, b.decode_block_tables, b.decode_context_lens,
                             self.scale, out=attn[P:])

    def decode_attention_from_qkv(self, layer: int, x: torch.Tensor, b: ForwardBatch) -> torch.Tensor:
        """A decode-only batch's attention from the layer's normalised input: the QKV product, then RoPE, the KV
        write and paged attention in one kernel (``gpu_backend.rope_decode_attention``)."""
        d = self.dims
        k_cache, v_cache = self.store.layers[layer]
        return rope_decode_attention(self.linear.partials(x, self.w.qkv[layer]), self.cos, self.sin, b.positions,
                                     b.write_blocks, b.write_slots, k_cache, v_cache, b.decode_block_tables,
                                     b.decode_context_lens, self.scale, d.num_heads, d.num_kv_heads, d.head_dim)

    def post_attention(self, layer: int, attn: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Output projection and MLP, both added to ``h`` in place; returns the next layer's normalised
        input (after the last layer: the final norm's output)."""
        w = self.w
        eps = self.dims.rms_norm_eps
        x = add_rms_norm(self.linear.partials(attn.view(attn.shape[0], self._q), w.o_proj[layer]), h,
                         w.post_norm[layer], eps)
        if self.epilogues:     # the epilogue kernel where it measured faster, else the pair below
            a = gate_up_silu(x, w.gate_up[layer], self.linear)
        else:
            a = silu_mul(self.linear(x, w.gate_up[layer]))
        nxt = w.input_norm[layer + 1] if layer + 1 < self.dims.num_layers else w.final_norm
        return add_rms_norm(self.linear.partials(a, w.down[layer]), h, nxt, eps)

    def logits(self, x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        return self.linear(x if rows is None else x[rows], self.w.lm_head)

    @torch.no_grad()
    def __call__(self, b: ForwardBatch) -> torch.Tensor:
        """Logits ``[rows, vocab]`` of ``b.logit_rows`` (all rows when None); writes the batch's KV."""
        h = F.embedding(b.input_ids, self.w.embed)             # the residual stream, updated in place
        x = add_rms_norm(None, h, self.w.input_norm[0], self.dims.rms_norm_eps)
        fused = (self.fused_rope and not b.prefills and b.num_prefill_rows == 0
                 and (not b.input_ids.is_cuda
                      or fused_applies(b.input_ids.shape[0], self.dims.num_kv_heads, self.dims.head_dim,
                                       b.input_ids.device)))
        for layer in range(self.dims.num_layers):
            if fused:
                x = self.post_attention(layer, self.decode_attention_from_qkv(layer, x, b), h)
                continue
            q, k, v = self.pre_attention(layer, x, b.positions, b.write_blocks, b.write_slots, bool(b.prefills))
            attn = torch.empty_like(q)
            self.attention(layer, q, k, v, b, attn)
            x = self.post_attention(layer, attn, h)
        return self.logits(x, b.logit_rows)
