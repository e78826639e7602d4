"""Named cost profiles: a model shape, a device, the KV memory they leave, and a cost model.

A profile is one small JSON file in ``gpu_backend/profiles/`` (or any path), so that a
profile fitted on a GPU by ``servegym profile`` drops in beside the analytic ones that
ship. The KV block counts are derived from the device memory unless the file fixes them
(a fitted profile fixes them to what the real executor had, so both backends see the
same memory pressure).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from gpu_backend.cost_model import (CostModel, DecodeTable, DeviceSpec, LinearCostModel, ModelShape,
                                    RooflineCostModel)

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
DEFAULT_PROFILE = "h100-llama-8b"


class ProfileError(ValueError):
    """A profile file is missing, malformed or inconsistent; the message names the file and field."""


@dataclass(frozen=True, slots=True)
class CostProfile:
    name: str
    description: str
    model: ModelShape
    device: DeviceSpec
    block_size: int
    num_gpu_blocks: int
    num_host_blocks: int
    max_model_len: int
    cost: CostModel
    source: str

    @property
    def bytes_per_block(self) -> int:
        return self.model.kv_bytes_per_token * self.block_size


def _profile_paths() -> dict[str, Path]:
    """Every shipped profile by name: the analytic ones and those fitted by ``servegym profile``."""
    paths = {p.stem: p for p in PROFILE_DIR.glob("*.json")}
    for p in (PROFILE_DIR / "fitted").glob("*.json"):
        if p.stem in paths:
            raise ProfileError(f"profile name {p.stem!r} is shipped twice: {paths[p.stem]} and {p}")
        paths[p.stem] = p
    return paths


def list_profiles() -> list[str]:
    return sorted(_profile_paths())


def _field(obj: dict, key: str, where: str, kind=(int, float)):
    if key not in obj:
        raise ProfileError(f"{where}: missing field {key!r}")
    v = obj[key]
    if not isinstance(v, kind) or isinstance(v, bool):
        raise ProfileError(f"{where}: field {key!r} has the wrong type ({type(v).__name__}: {v!r})")
    return v


def _regimes(raw, src: str) -> list[tuple[int, dict]]:
    """``cost_model.regimes``: a list of {"above_tokens": N, "coefficients": {...}}."""
    if not isinstance(raw, list):
        raise ProfileError(f"{src}: cost_model.regimes must be a list, got {type(raw).__name__}")
    out = []
    for i, r in enumerate(raw):
        if not (isinstance(r, dict) and isinstance(r.get("above_tokens"), int) and isinstance(r.get("coefficients"), dict)):
            raise ProfileError(f"{src}: cost_model.regimes[{i}] must be an object with a whole above_tokens and "
                               f"a coefficients object, got {r!r}")
        out.append((r["above_tokens"], r["coefficients"]))
    return out


def _opt(obj: dict, key: str, default, where: str, kind=(int, float)):
    """An optional field: ``default`` when absent, else type-checked like ``_field``."""
    return _field(obj, key, where, kind) if key in obj else default


def load_profile(name_or_path: str) -> CostProfile:
    """Load a shipped profile by name (see ``list_profiles``) or any profile JSON by path."""
    path = Path(name_or_path)
    if not (path.suffix == ".json" and path.exists()):
        shipped = _profile_paths()
        if name_or_path not in shipped:
            raise ProfileError(f"unknown profile {name_or_path!r}; available: {', '.join(sorted(shipped))}")
        path = shipped[name_or_path]
    src = str(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ProfileError(f"{src}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ProfileError(f"{src}: the top level must be an object")
    m = data.get("model")
    d = data.get("device")
    kv = data.get("kv", {})
    cm = data.get("cost_model", {"kind": "roofline"})
    if not isinstance(m, dict) or not isinstance(d, dict):
        raise ProfileError(f"{src}: needs 'model' and 'device' objects")
    for key, obj in (("kv", kv), ("cost_model", cm)):
        if not isinstance(obj, dict):
            raise ProfileError(f"{src}: {key!r} must be an object")
    tie = m.get("tie_word_embeddings", False)
    if not isinstance(tie, bool):
        raise ProfileError(f"{src}: model: field 'tie_word_embeddings' has the wrong type ({type(tie).__name__}: {tie!r})")
    try:
        model = ModelShape(
            name=str(m.get("name", path.stem)),
            num_layers=_field(m, "num_layers", f"{src}: model", int),
            hidden_size=_field(m, "hidden_size", f"{src}: model", int),
            num_heads=_field(m, "num_heads", f"{src}: model", int),
            num_kv_heads=_field(m, "num_kv_heads", f"{src}: model", int),
            intermediate_size=_field(m, "intermediate_size", f"{src}: model", int),
            vocab_size=_field(m, "vocab_size", f"{src}: model", int),
            dtype_bytes=_opt(m, "dtype_bytes", 2, f"{src}: model", int),
            head_dim=_opt(m, "head_dim", 0, f"{src}: model", int),
            tie_word_embeddings=tie,
        )
        device = DeviceSpec(
            name=str(d.get("name", "device")),
            memory_bytes=_field(d, "memory_bytes", f"{src}: device"),
            hbm_bandwidth=_field(d, "hbm_bandwidth", f"{src}: device"),
            matmul_flops=_field(d, "matmul_flops", f"{src}: device"),
            attention_flops=_field(d, "attention_flops", f"{src}: device"),
            host_bandwidth=_field(d, "host_bandwidth", f"{src}: device"),
            copy_latency_s=_field(d, "copy_latency_s", f"{src}: device"),
            iteration_overhead_s=_field(d, "iteration_overhead_s", f"{src}: device"),
        )
    except ValueError as e:
        if isinstance(e, ProfileError):
            raise
        raise ProfileError(f"{src}: {e}") from e
    block_size = kv.get("block_size", 16)
    if not isinstance(block_size, int) or block_size < 1:
        raise ProfileError(f"{src}: kv.block_size must be a positive integer, got {block_size!r}")
    bytes_per_block = model.kv_bytes_per_token * block_size
    if "num_gpu_blocks" in kv:
        num_gpu_blocks = _field(kv, "num_gpu_blocks", f"{src}: kv", int)
        if num_gpu_blocks < 1:
            raise ProfileError(f"{src}: kv.num_gpu_blocks must be >= 1, got {num_gpu_blocks}")
    else:
        util = _opt(kv, "gpu_memory_utilization", 0.9, f"{src}: kv")
        reserve = _opt(kv, "activation_reserve_bytes", 2 * 2**30, f"{src}: kv")
        if not (0 < util <= 1):
            raise ProfileError(f"{src}: kv.gpu_memory_utilization must be in (0, 1], got {util!r}")
        free = device.memory_bytes * util - model.weight_bytes - reserve
        num_gpu_blocks = math.floor(free / bytes_per_block)
        if num_gpu_blocks < 1:
            raise ProfileError(
                f"{src}: device.memory_bytes ({device.memory_bytes}) * kv.gpu_memory_utilization ({util}) "
                f"minus the model's weights ({model.weight_bytes} bytes) and kv.activation_reserve_bytes "
                f"({reserve}) leave no GPU memory for KV blocks")
    if "num_host_blocks" in kv:
        num_host_blocks = _field(kv, "num_host_blocks", f"{src}: kv", int)
        if num_host_blocks < 0:
            raise ProfileError(f"{src}: kv.num_host_blocks must be >= 0, got {num_host_blocks}")
    else:
        num_host_blocks = math.floor(_opt(kv, "swap_space_bytes", 64 * 2**30, f"{src}: kv") / bytes_per_block)
    max_model_len = _opt(kv, "max_model_len", 131072, f"{src}: kv", int)
    kind = cm.get("kind")
    if kind == "roofline":
        cost: CostModel = RooflineCostModel(model, device, block_size)
    elif kind == "linear":
        coeffs = cm.get("coefficients")
        if not isinstance(coeffs, dict):
            raise ProfileError(f"{src}: cost_model.coefficients must be an object")
        table = cm.get("decode_table")
        if table is not None and not isinstance(table, dict):
            raise ProfileError(f"{src}: cost_model.decode_table must be an object")
        try:
            decode_table = None if table is None else DecodeTable(
                tuple(int(v) for v in table["num_seqs"]), tuple(float(v) for v in table["intercept_s"]),
                tuple(float(v) for v in table["per_context_token_s"]), bool(table.get("round_up", False)),
                tuple(float(v) for v in table.get("per_longest_token_s", ())))
            swap_plan = cm.get("swap_plan", {})
            if not isinstance(swap_plan, dict):
                raise ProfileError(f"{src}: cost_model.swap_plan must be an object")
            idle_start = cm.get("idle_start_s", 0.0)
            if isinstance(idle_start, bool) or not isinstance(idle_start, (int, float)):
                raise ProfileError(f"{src}: cost_model.idle_start_s must be a number, got {idle_start!r}")
            cost = LinearCostModel(coeffs, device.copy_latency_s, device.host_bandwidth, bytes_per_block,
                                   decode_table, (float(swap_plan.get("overhead_s", 0.0)),
                                                  float(swap_plan.get("per_copy_s", 0.0))), float(idle_start),
                                   _regimes(cm.get("regimes", []), src))
        except KeyError as e:
            raise ProfileError(f"{src}: cost_model.decode_table lacks {e}") from e
        except (TypeError, ValueError) as e:
            raise ProfileError(f"{src}: {e}") from e
    else:
        raise ProfileError(f"{src}: cost_model.kind must be 'roofline' or 'linear', got {kind!r}")
    return CostProfile(
        name=str(data.get("name", path.stem)), description=str(data.get("description", "")),
        model=model, device=device, block_size=block_size, num_gpu_blocks=int(num_gpu_blocks),
        num_host_blocks=int(num_host_blocks), max_model_len=int(max_model_len), cost=cost, source=src)
