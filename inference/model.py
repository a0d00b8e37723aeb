"""Llama-architecture decoder, read top-down: LlamaForCausalLM → LlamaModel → DecoderLayer → Attention / MLP.

Tokens arrive flattened ([T] ids from every sequence of the step, with their positions); attention finds
each token's sequence and cached context through an explicit AttentionMetadata (see attention.py).
Projections are fused (qkv_proj, gate_up_proj); `convert_hf_state_dict` maps Hugging Face names onto ours.
Shapes: T = tokens in the step, H = hidden_size, h / kvh = query / key-value heads, d = head_dim.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from inference import kernels
from inference.attention import AttentionMetadata, KVCache, paged_attention
from inference.config import ModelConfig


class LlamaForCausalLM(nn.Module):
    """Decoder stack plus the LM head (shared with the embedding when the checkpoint ties them)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(
            config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVCache] | None,
                meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions: [T] → hidden states [T, H] (call compute_logits on the rows you need)."""
        return self.model(input_ids, positions, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, H] → [N, vocab] in float32."""
        if self.lm_head is None:
            return F.linear(hidden, self.model.embed_tokens.weight).float()
        return self.lm_head(hidden).float()


class LlamaModel(nn.Module):
    """Embedding → N decoder layers → final RMSNorm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVCache] | None,
                meta: AttentionMetadata) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)  # [T, H]
        rope = self.rotary_emb(positions, hidden.dtype)  # (cos, sin), each [T, d]
        caches = kv_caches if kv_caches is not None else [None] * len(self.layers)
        for layer, kv_cache in zip(self.layers, caches):
            hidden = layer(hidden, rope, kv_cache, meta)
        return self.norm(hidden)


class DecoderLayer(nn.Module):
    """Pre-norm residual block: x + Attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                                   config.head_dim, bias=config.attention_bias)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                kv_cache: KVCache | None, meta: AttentionMetadata) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, kv_cache, meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class Attention(nn.Module):
    """Multi-head attention with h query heads sharing kvh key/value heads (MHA: kvh = h, MQA: kvh = 1, GQA).

    in-projection (fused q|k|v) → rotary embedding (optional) → scaled-dot-product attention over the
    paged K/V → out-projection, like F.multi_head_attention_forward.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, bias: bool = False):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.qkv_proj = nn.Linear(hidden_size, (num_heads + 2 * num_kv_heads) * head_dim, bias=bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                kv_cache: KVCache | None, meta: AttentionMetadata) -> torch.Tensor:
        qk, v = self.in_projection(x)  # [T, h + kvh, d], [T, kvh, d]
        if rope is not None:
            qk = apply_rotary(qk, *rope)  # q and k heads rotated together: one set of ops
        q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)
        out = paged_attention(q, k, v, kv_cache, meta)  # [T, h, d]
        return self.o_proj(out.flatten(1))  # [T, H]

    def in_projection(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, H] → query and key heads [T, h + kvh, d], value heads [T, kvh, d]."""
        qk_size = (self.num_heads + self.num_kv_heads) * self.head_dim
        qk, v = self.qkv_proj(x).split([qk_size, self.num_kv_heads * self.head_dim], dim=-1)
        return qk.unflatten(-1, (-1, self.head_dim)), v.unflatten(-1, (-1, self.head_dim))


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)), with gate and up fused into one matmul."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False):
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[T, 2I] holding [gate | up] → silu(gate) * up [T, I] (one fused pass on a CPU with the kernels)."""
    if kernels.supports_elementwise(gate_up, multiple=16):
        return kernels.silu_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class RMSNorm(nn.Module):
    """x / rms(x) * weight, normalized in float32 (then cast back before the weight, as HF does)."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernels.supports_elementwise(x) and self.weight.dtype == torch.float32:  # one pass on the CPU
            return kernels.rms_norm(x, self.weight, self.eps)
        if x.dtype == torch.float32:  # same math as below
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for the given positions (HF "rotate_half" layout), with llama3 / linear scaling.

    The inverse frequencies are a plain tensor, not a buffer: they are recomputed from the config, so the
    module works after construction on the meta device.
    """

    def __init__(self, head_dim: int, theta: float, scaling: dict | None = None):
        super().__init__()
        self.inv_freq = rope_inverse_frequencies(head_dim, theta, scaling)  # [d/2]
        self._inv_freq_on: dict[torch.device, torch.Tensor] = {}

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self._inv_freq_on.setdefault(positions.device, self.inv_freq.to(positions.device))
        freqs = positions.float()[:, None] * inv_freq[None, :]  # [T, d/2]
        angles = torch.cat([freqs, freqs], dim=-1)  # [T, d]
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, heads, d]; cos, sin: [T, d]. The CPU kernel rotates x in place (one pass instead of six ops)."""
    if kernels.supports_rotary(x, cos):
        return kernels.rotary(x, cos, sin)
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim))
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type == "linear":
        return inv_freq / scaling["factor"]
    if rope_type == "llama3":
        return _llama3_scaled(inv_freq, scaling)
    return inv_freq


def _llama3_scaled(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Llama 3.1 scaling: long wavelengths divided by `factor`, short ones kept, the middle band interpolated."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
    return torch.where(is_medium, smoothed, scaled)


def convert_hf_state_dict(state_dict: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """HF Llama names → ours: fuse q/k/v into qkv_proj and gate/up into gate_up_proj; drop a tied lm_head."""
    out = {}
    for name, tensor in state_dict.items():
        if name.startswith("lm_head.") and config.tie_word_embeddings:
            continue
        if "rotary_emb" in name or any(f".{p}_proj." in name for p in ("q", "k", "v", "gate", "up")):
            continue
        out[name] = tensor
    for i in range(config.num_hidden_layers):
        _fuse(state_dict, out, f"model.layers.{i}.self_attn.", ("q_proj", "k_proj", "v_proj"), "qkv_proj")
        _fuse(state_dict, out, f"model.layers.{i}.mlp.", ("gate_proj", "up_proj"), "gate_up_proj")
    return out


def _fuse(source: dict, target: dict, prefix: str, parts: tuple[str, ...], fused: str) -> None:
    for suffix in ("weight", "bias"):
        names = [f"{prefix}{part}.{suffix}" for part in parts]
        if all(name in source for name in names):
            target[f"{prefix}{fused}.{suffix}"] = torch.cat([source[name] for name in names], dim=0)
        elif any(name in source for name in names):
            raise ValueError(f"checkpoint has only some of {names}")
