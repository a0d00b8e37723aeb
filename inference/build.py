"""Engine build (like TensorRT-LLM's build step) and fast engine loading.

build_engine: checkpoint (.gguf or HF dir) -> merge LoRA (HF names) -> model names (fused projections)
-> cast dtype -> quantize -> ENGINE_DIR with model.safetensors, config.json and tokenizer files.
load_engine: model on the meta device -> swap quantized linears -> load_state_dict(assign=True) from the
memory-mapped safetensors: no second copy of the weights, no re-quantization.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from safetensors.torch import save_file

from inference.config import DTYPES, EngineConfig, ModelConfig
from inference.loaders import load_checkpoint
from inference.lora import merge_lora
from inference.model import LlamaForCausalLM, convert_hf_state_dict
from inference.model_store import sha256_of
from inference.quant import QuantConfig, convert_for_runtime, linear_names, quantize_state_dict, quantized_names
from inference.tokenizer import Tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
RUNTIME_KEYS = ("max_num_seqs", "max_num_batched_tokens", "kv_block_size", "kv_cache_memory_fraction",
                "kv_cache_bytes", "kv_cache_dtype", "max_model_len")
QUANT_METADATA = (".scales", ".mins")  # kept in the dtype quantization chose
FORMAT_VERSION = 2  # 2: int4 block-32 nibble layout, int8 output head


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """An engine directory's config.json."""

    model: ModelConfig
    dtype: str
    quant: QuantConfig
    lora: dict | None
    runtime: dict[str, Any]
    build: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "model": self.model.to_dict(), "dtype": self.dtype,
                "quant": self.quant.to_dict(), "lora": self.lora, "runtime": self.runtime, "build": self.build}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineSpec:
        return cls(ModelConfig.from_dict(data["model"]), data["dtype"], QuantConfig.from_dict(data["quant"]),
                   data.get("lora"), dict(data["runtime"]), dict(data.get("build", {})))

    def engine_config(self, **overrides: Any) -> EngineConfig:
        """The runtime settings recorded at build time, with `overrides` applied."""
        return EngineConfig.from_dict({**self.runtime, "dtype": self.dtype}).replace(**overrides)


def build_engine(src: str | Path, out_dir: str | Path, dtype: str = "float32", quant: str = "none",
                 group_size: int = 128, lora: str | Path | None = None,
                 runtime_overrides: dict[str, Any] | None = None, quantize_head: bool = True) -> EngineSpec:
    """Build an engine directory from a checkpoint; returns what was written to its config.json."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    quant_config = QuantConfig(quant, group_size, quantize_head)
    checkpoint = load_checkpoint(src)
    runtime = runtime_settings(checkpoint.config, runtime_overrides or {})
    state_dict, lora_info = merge_lora(checkpoint.state_dict, lora) if lora else (checkpoint.state_dict, None)
    state_dict = engine_state_dict(state_dict, checkpoint.config, getattr(torch, dtype), quant_config)
    spec = EngineSpec(checkpoint.config, dtype, quant_config, lora_info, runtime, build_info(checkpoint.source))
    write_engine(Path(out_dir), spec, state_dict, checkpoint.tokenizer)
    return spec


def cached_engine(source: str | Path, quant: str = "none", group_size: int = 32, dtype: str = "float32") -> Path:
    """An engine built from `source` into ${OPSLAB_CACHE:-/var/cache/opslab}/engines, once per source, settings
    and engine format (benchmarks and peer comparisons share it)."""
    from inference.model_store import cache_dir

    source = Path(source)
    name = f"{source.stem}-{dtype}-{quant}" + (f"-g{group_size}" if quant == "int4" else "")
    engine_dir = cache_dir().parent / "engines" / f"{name}-format{FORMAT_VERSION}"
    if not (engine_dir / CONFIG_FILE).is_file():
        build_engine(source, engine_dir, dtype=dtype, quant=quant, group_size=group_size)
    return engine_dir


def runtime_settings(model_config: ModelConfig, overrides: dict[str, Any]) -> dict[str, Any]:
    """Validated runtime memory parameters (EngineConfig defaults + overrides), max_model_len resolved."""
    config = EngineConfig().replace(**{k: v for k, v in overrides.items() if k in RUNTIME_KEYS})
    settings = {key: getattr(config, key) for key in RUNTIME_KEYS}
    settings["max_model_len"] = config.resolve_max_model_len(model_config)
    return settings


def engine_state_dict(hf_state_dict: dict[str, torch.Tensor], config: ModelConfig, dtype: torch.dtype,
                      quant: QuantConfig) -> dict[str, torch.Tensor]:
    """HF-named weights -> model-named, quantized (from full precision) and cast to `dtype`."""
    state_dict = convert_hf_state_dict(hf_state_dict, config)
    with torch.device("meta"), skip_parameter_init():
        names = linear_names(LlamaForCausalLM(config))
    state_dict = quantize_state_dict(state_dict, quant, names)
    return {name: _cast(name, tensor, dtype) for name, tensor in state_dict.items()}


def _cast(name: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if tensor.is_floating_point() and not name.endswith(QUANT_METADATA):
        tensor = tensor.to(dtype)
    return tensor.contiguous()


def build_info(source: Path) -> dict[str, Any]:
    """Where the weights came from: path, sha256 (of the file, or of a directory's files), build time."""
    return {"source": str(source.resolve()), "sha256": _sha256_of_source(source),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _sha256_of_source(source: Path) -> str:
    if source.is_file():
        return sha256_of(source)
    digest = hashlib.sha256()
    for path in sorted(p for p in source.iterdir() if p.is_file()):
        digest.update(f"{path.name}:{sha256_of(path)}\n".encode())
    return digest.hexdigest()


def write_engine(out_dir: Path, spec: EngineSpec, state_dict: dict[str, torch.Tensor], tokenizer: Tokenizer) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state_dict, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    tokenizer.save(out_dir)
    (out_dir / CONFIG_FILE).write_text(json.dumps(spec.to_dict(), indent=2) + "\n")


def read_spec(engine_dir: str | Path) -> EngineSpec:
    path = Path(engine_dir) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{engine_dir}: no {CONFIG_FILE} (not an engine directory)")
    data = json.loads(path.read_text())
    if data.get("format_version", 1) != FORMAT_VERSION:
        raise ValueError(f"{engine_dir} was built in engine format {data.get('format_version', 1)}; this version "
                         f"reads format {FORMAT_VERSION}: rebuild it with `python -m inference build`")
    return EngineSpec.from_dict(data)


def load_engine(engine_dir: str | Path, device: str | torch.device = "cpu") -> tuple[EngineSpec, torch.nn.Module, Tokenizer]:
    """(spec, model ready for inference on `device`, tokenizer) from a built engine directory."""
    spec = read_spec(engine_dir)
    state_dict = _load_weights(Path(engine_dir) / WEIGHTS_FILE, device)
    with torch.device("meta"), skip_parameter_init():
        model = LlamaForCausalLM(spec.model)
    convert_for_runtime(model, spec.quant, quantized_names(state_dict))
    model.load_state_dict(state_dict, assign=True)
    return spec, model.eval().requires_grad_(False), Tokenizer.load(engine_dir)


@contextmanager
def skip_parameter_init():
    """Skip nn.Linear / nn.Embedding random init while building a model whose weights get replaced anyway.

    On the meta device the init is a no-op, but its first call imports torch's python reference ops
    (seconds on a busy 2-core box); every weight is assigned from the engine file right after.
    """
    originals = {cls: cls.reset_parameters for cls in (nn.Linear, nn.Embedding)}
    try:
        for cls in originals:
            cls.reset_parameters = lambda self: None
        yield
    finally:
        for cls, method in originals.items():
            cls.reset_parameters = method


def _load_weights(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        return {name: f.get_tensor(name) for name in f.keys()}
