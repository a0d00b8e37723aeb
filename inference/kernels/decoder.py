"""A whole decode step in one C call (decoder_avx2.c) for a float32 Llama model on the CPU.

The model's weights and KV caches are described once, as C structs pointing into the model's own tensors
(nothing is copied); each decode step then passes only the new tokens, their positions and cache slots,
and the block tables, and gets the logits back. `FusedDecoder.for_model` returns None (and logs why) for
a model or cache the kernel cannot take; the runner then uses the module path. OPSLAB_FUSED_DECODE=0 turns
it off (the benchmarks use that to measure the per-operator path side by side).
"""
from __future__ import annotations

import ctypes
import logging
import os

import torch
from torch import nn

from inference import kernels
from inference.quant import Int4Linear, Int8Linear

log = logging.getLogger(__name__)
_i64, _pointer = ctypes.c_int64, ctypes.c_void_p
WEIGHT_DTYPES = (torch.float32, torch.int8, torch.uint8)  # what weights the descriptors point into may be


class LinearDesc(ctypes.Structure):
    _fields_ = [("format", _i64), ("in_features", _i64), ("out_features", _i64), ("weight", _pointer),
                ("row_bytes", _i64), ("scales", _pointer), ("mins", _pointer), ("groups", _i64),
                ("group_size", _i64), ("bias", _pointer)]


class LayerDesc(ctypes.Structure):
    _fields_ = [("input_norm", _pointer), ("post_attention_norm", _pointer), ("qkv", LinearDesc),
                ("o", LinearDesc), ("gate_up", LinearDesc), ("down", LinearDesc), ("key_cache", _pointer),
                ("value_cache", _pointer)]


class DecoderDesc(ctypes.Structure):
    _fields_ = [("num_layers", _i64), ("hidden", _i64), ("heads", _i64), ("kv_heads", _i64), ("head_dim", _i64),
                ("intermediate", _i64), ("block_size", _i64), ("kv_half", _i64), ("eps", ctypes.c_float),
                ("embedding", _pointer), ("final_norm", _pointer), ("inv_freq", _pointer), ("head", LinearDesc),
                ("layers", ctypes.POINTER(LayerDesc))]


class Unsupported(ValueError):
    """The fused decoder cannot take this model or cache (the message says why)."""


class FusedDecoder:
    """Logits for one new token per sequence, computed by one call into decoder_avx2.c."""

    def __init__(self, model: nn.Module, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]):
        config, decoder = model.config, model.model
        _check(config, kv_caches)
        self._library = kernels.library()  # one path for the decoder's life, even if OPSLAB_CPU_PATH changes
        self._keep: list[torch.Tensor] = []  # every tensor a descriptor points into
        layers = (LayerDesc * len(decoder.layers))()
        for desc, layer, (keys, values) in zip(layers, decoder.layers, kv_caches):
            desc.input_norm = self._address(layer.input_layernorm.weight)
            desc.post_attention_norm = self._address(layer.post_attention_layernorm.weight)
            desc.qkv, desc.o = self._linear(layer.self_attn.qkv_proj), self._linear(layer.self_attn.o_proj)
            desc.gate_up, desc.down = self._linear(layer.mlp.gate_up_proj), self._linear(layer.mlp.down_proj)
            desc.key_cache = self._address(keys, kernels.KV_CACHE_DTYPES)
            desc.value_cache = self._address(values, kernels.KV_CACHE_DTYPES)
        head = model.lm_head if model.lm_head is not None else _tied_head(decoder.embed_tokens.weight)
        self._layers = layers
        self._desc = DecoderDesc(
            num_layers=len(decoder.layers), hidden=config.hidden_size, heads=config.num_attention_heads,
            kv_heads=config.num_key_value_heads, head_dim=config.head_dim, intermediate=config.intermediate_size,
            block_size=kv_caches[0][0].shape[1], kv_half=kv_caches[0][0].dtype == torch.float16,
            eps=config.rms_norm_eps,
            embedding=self._address(decoder.embed_tokens.weight), final_norm=self._address(decoder.norm.weight),
            inv_freq=self._address(decoder.rotary_emb.inv_freq.float()), head=self._linear(head), layers=layers)
        self.vocab_size = head.out_features

    @classmethod
    def for_model(cls, model: nn.Module, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> FusedDecoder | None:
        """The fused decoder for this model and cache, or None (logged) when it cannot take them."""
        if os.environ.get("OPSLAB_FUSED_DECODE", "1") == "0":
            log.info("fused decode step: switched off by OPSLAB_FUSED_DECODE=0")
            return None
        try:
            return cls(model, kv_caches)
        except (Unsupported, kernels.KernelUnavailable) as reason:
            log.info("fused decode step unavailable, using the module path: %s", reason)
            return None

    def __call__(self, token_ids: list[int], positions: list[int], slots: list[int], block_tables: list[list[int]],
                 context_lens: list[int]) -> torch.Tensor:
        """Logits [M, vocab] for token_ids[m] at positions[m] of sequence m, whose K/V go to cache slot slots[m]
        and whose context (the new token included) is context_lens[m] tokens, found through block_tables[m]."""
        width = max(len(table) for table in block_tables)
        tables = torch.tensor([table + [0] * (width - len(table)) for table in block_tables], dtype=torch.long)
        ids, pos, slot, lens = (torch.tensor(values, dtype=torch.long)
                                for values in (token_ids, positions, slots, context_lens))
        logits = torch.empty(len(token_ids), self.vocab_size, dtype=torch.float32)
        status = self._library.opslab_decode_step(
            ctypes.byref(self._desc), len(token_ids), ids.data_ptr(), pos.data_ptr(), slot.data_ptr(),
            tables.data_ptr(), width, lens.data_ptr(), max(context_lens), logits.data_ptr())
        if status != 0:
            raise MemoryError("fused decode step: allocating its activations failed")
        return logits

    def _address(self, tensor: torch.Tensor, dtypes: tuple[torch.dtype, ...] = WEIGHT_DTYPES) -> int:
        if tensor.dtype not in dtypes or tensor.device.type != "cpu":
            raise Unsupported(f"a {tensor.dtype} tensor on {tensor.device}")
        if not tensor.is_contiguous():
            raise Unsupported("a non-contiguous weight")
        self._keep.append(tensor)
        return tensor.data_ptr()

    def _linear(self, module: nn.Module) -> LinearDesc:
        """The C description of a float32 nn.Linear, an Int8Linear (w8a8 too) or an Int4Linear (float32 scales)."""
        in_features, out_features = module.in_features, module.out_features
        bias = None if module.bias is None else self._address(module.bias)
        if isinstance(module, Int4Linear):
            fmt, groups = "int4", module.scales.shape[1]
        elif isinstance(module, Int8Linear):
            fmt = "w8a8" if module.int8_activations else "int8"
            groups = 0 if module.group_size is None else module.scales.shape[1]
            if fmt == "w8a8" and groups:
                raise Unsupported("w8a8 with a scale per group")
        elif isinstance(module, nn.Linear):
            fmt, groups = "float32", 0
        else:
            raise Unsupported(f"no kernel for {type(module).__name__}")
        if not kernels.tiles(in_features, out_features, fmt, grouped=bool(groups)):
            raise Unsupported(f"{fmt} layer {in_features}->{out_features} does not tile")
        weight = module.weight
        return LinearDesc(
            format=kernels.FORMATS[fmt], in_features=in_features, out_features=out_features,
            weight=self._address(weight), row_bytes=weight.stride(0) * weight.element_size(),
            scales=self._address(module.scales) if fmt != "float32" else None,
            mins=self._address(module.mins) if fmt == "int4" else None, groups=groups,
            group_size=getattr(module, "group_size", None) or 0, bias=bias)


def _tied_head(embedding: torch.Tensor) -> nn.Linear:
    with torch.device("meta"):
        head = nn.Linear(embedding.shape[1], embedding.shape[0], bias=False)
    head.weight = nn.Parameter(embedding, requires_grad=False)
    return head


def _check(config, kv_caches) -> None:
    kernels.library()  # raises KernelUnavailable with the reason
    heads, kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    if head_dim % 16 or heads % kv_heads or heads // kv_heads > kernels.MAX_GROUP:
        raise Unsupported(f"{heads} heads / {kv_heads} kv heads of {head_dim} dims")
    if config.hidden_size % 8 or config.intermediate_size % 8:
        raise Unsupported("hidden or intermediate size not a multiple of 8")
    keys = kv_caches[0][0]
    if keys.dtype not in kernels.KV_CACHE_DTYPES or keys.device.type != "cpu":
        raise Unsupported(f"a {keys.dtype} KV cache on {keys.device}")
