"""Piecewise CUDA graphs for iterations with prefill chunks (mixed and prefill batches).

Why: outside the pure-decode graphs, an iteration is launched op by op from Python, and
for a small batch (a few hundred tokens) that launch cost — about 4 ms for a 16-layer
model — exceeds the GPU work. Attention cannot be captured (its shape depends on how the
batch splits into chunks and decodes), but everything between two attentions can: layer
``l``'s output projection and MLP, then layer ``l + 1``'s QKV projection, RoPE and KV write.
So for each token-count bucket there are ``layers + 1`` graphs over static buffers, and an
iteration replays them with the eager attention of each layer in between (the piecewise
scheme vLLM uses for its mixed batches).

Rows past the iteration's tokens (padding up to the bucket) take token 0 at position 0
and write their KV into the store's scratch block, so padding never touches a block the
bookkeeping handed out. Iterations with more tokens than the largest bucket run eagerly:
there the launch cost is small beside the work.
"""

from __future__ import annotations

import torch

from gpu_backend.decode_graphs import capture_graph
from gpu_backend.llama_forward import ForwardBatch, LlamaForward

MIXED_BUCKETS = (16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048)


class MixedGraphs:
    """``layers + 1`` captured pieces per token bucket, with the static buffers they read and write."""

    def __init__(self, model: LlamaForward, sizes: tuple[int, ...] = MIXED_BUCKETS):
        d = model.dims
        dev = model.store.device
        dt = model.w.dtype
        self.model = model
        self.sizes = tuple(sorted(sizes))
        self.max_tokens = self.sizes[-1]
        n = self.max_tokens
        self.scratch = model.store.scratch_block
        self.ids = torch.zeros(n, dtype=torch.long, device=dev)
        self.pos = torch.zeros(n, dtype=torch.long, device=dev)
        self.wb = torch.full((n,), self.scratch, dtype=torch.long, device=dev)
        self.ws = torch.zeros(n, dtype=torch.long, device=dev)
        self.h = torch.zeros(n, d.hidden_size, dtype=dt, device=dev)
        self.x = torch.zeros(n, d.hidden_size, dtype=dt, device=dev)
        self.q = torch.zeros(n, d.num_heads, d.head_dim, dtype=dt, device=dev)
        self.k = torch.zeros(n, d.num_kv_heads, d.head_dim, dtype=dt, device=dev)
        self.v = torch.zeros_like(self.k)
        self.attn = torch.zeros_like(self.q)
        self.graphs: dict[int, list] = {}
        self._capture()

    def _piece(self, n: int, i: int) -> None:
        """Piece ``i``: embedding (i = 0) or layer i-1's projection + MLP, then layer i's QKV + RoPE + KV write."""
        m = self.model
        L = m.dims.num_layers
        if i == 0:
            x = m.embed(self.ids[:n], self.h[:n])
        else:
            x = m.post_attention(i - 1, self.attn[:n], self.h[:n])
        if i < L:
            q, k, v = m.pre_attention(i, x, self.pos[:n], self.wb[:n], self.ws[:n], want_kv=True)
            self.q[:n].copy_(q)
            self.k[:n].copy_(k)
            self.v[:n].copy_(v)
        else:
            self.x[:n].copy_(x)

    def _capture(self) -> None:
        torch.cuda.synchronize()
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        pieces = self.model.dims.num_layers + 1
        with torch.no_grad():
            for n in reversed(self.sizes):
                graphs = []
                for i in range(pieces):
                    graphs.append(capture_graph(lambda: self._piece(n, i), pool, side))
                self.graphs[n] = graphs
        torch.cuda.synchronize()

    def bucket(self, tokens: int) -> int | None:
        for s in self.sizes:
            if s >= tokens:
                return s
        return None

    @torch.no_grad()
    def forward(self, b: ForwardBatch, bucket: int) -> torch.Tensor:
        """The same result as ``LlamaForward(b)``: logits of ``b.logit_rows``."""
        T = b.input_ids.shape[0]
        self.ids[:T].copy_(b.input_ids)
        self.pos[:T].copy_(b.positions)
        self.wb[:T].copy_(b.write_blocks)
        self.ws[:T].copy_(b.write_slots)
        if bucket > T:
            self.ids[T:bucket].zero_()
            self.pos[T:bucket].zero_()
            self.wb[T:bucket].fill_(self.scratch)
            self.ws[T:bucket].zero_()
        graphs = self.graphs[bucket]
        m = self.model
        for layer in range(m.dims.num_layers):
            graphs[layer].replay()
            m.attention(layer, self.q[:T], self.k[:T], self.v[:T], b, self.attn[:T])
        graphs[-1].replay()
        return m.logits(self.x[:T], b.logit_rows)
