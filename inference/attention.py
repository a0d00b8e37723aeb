"""Attention over a paged KV cache, and the metadata that tells it where every token lives.

One engine step feeds the model a flat list of T new tokens from B sequences. Each sequence i brings
`query_lens[i]` new tokens on top of `context_lens[i] - query_lens[i]` tokens already in the cache.
Their K/V are written into the cache at `slot_mapping` (slot = block_id * block_size + offset), then the
queries attend to every key of their sequence, gathered through the sequence's block table.

Sequences are grouped so that each group is ONE padded `scaled_dot_product_attention` call: all decodes
(1 query each) together, all prefill chunks together. Padding queries repeat the last real query and are
dropped afterwards; padding keys are masked out. The cache may hold a narrower dtype than the queries
(EngineConfig.kv_cache_dtype): keys and values are stored rounded to it and widened when read. On a CPU
with float32 queries and a float32 or float16 cache the decode group instead runs the fused kernel
(inference/kernels), which reads keys and values in place through the block tables.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from inference import kernels

KVCache = tuple[torch.Tensor, torch.Tensor]  # (keys, values), each [num_blocks, block_size, kv_heads, head_dim]


@dataclass(slots=True)
class AttentionGroup:
    """Sequences attended together in one padded SDPA call (G sequences, Q queries, K keys)."""

    token_index: torch.Tensor  # [G, Q] flat-token index of each padded query
    output_index: torch.Tensor  # [n] rows of the flattened [G*Q] output that are real tokens
    flat_index: torch.Tensor  # [n] flat-token index of those rows
    block_tables: torch.Tensor  # [G, num_blocks] cache blocks of each sequence (padding: block 0)
    mask: torch.Tensor  # [G, 1, Q, K] True where the query may attend to the key
    context_lens: torch.Tensor  # [G] keys of each sequence, the new tokens included
    num_keys: int  # K: the longest context in the group
    is_decode: bool  # one query per sequence


@dataclass(slots=True)
class AttentionMetadata:
    """Everything attention needs for one step; built once per step by the runner, shared by all layers."""

    slot_mapping: torch.Tensor  # [T] cache slot of each new token's K/V
    groups: list[AttentionGroup]


def build_attention_metadata(query_lens: list[int], context_lens: list[int], block_tables: list[list[int]],
                             slot_mapping: list[int], block_size: int, device: torch.device | str) -> AttentionMetadata:
    """Turn per-sequence lists into tensors: one group for decodes, one for prefill chunks."""
    starts = [0]
    for length in query_lens[:-1]:
        starts.append(starts[-1] + length)
    decodes = [i for i, n in enumerate(query_lens) if n == 1]
    prefills = [i for i, n in enumerate(query_lens) if n > 1]
    groups = [_build_group([starts[i] for i in members], [query_lens[i] for i in members],
                           [context_lens[i] for i in members], [block_tables[i] for i in members], block_size)
              for members in (decodes, prefills) if members]
    return AttentionMetadata(
        slot_mapping=torch.tensor(slot_mapping, dtype=torch.long).to(device),
        groups=[_group_to(group, device) for group in groups])


def _build_group(starts: list[int], query_lens: list[int], context_lens: list[int],
                 block_tables: list[list[int]], block_size: int) -> AttentionGroup:
    start, q_len, ctx_len = (torch.tensor(x, dtype=torch.long) for x in (starts, query_lens, context_lens))
    num_queries, num_keys = max(query_lens), max(context_lens)
    step = torch.minimum(torch.arange(num_queries)[None, :], q_len[:, None] - 1)  # [G, Q], padding repeats the last
    query_pos = (ctx_len - q_len)[:, None] + step  # [G, Q] position of each query in its sequence
    mask = torch.arange(num_keys)[None, None, :] <= query_pos[:, :, None]  # [G, Q, K] causal + length
    valid = (torch.arange(num_queries)[None, :] < q_len[:, None]).flatten()
    output_index = valid.nonzero().squeeze(1)
    token_index = start[:, None] + step
    num_blocks = -(-num_keys // block_size)
    table = torch.zeros(len(starts), num_blocks, dtype=torch.long)
    for row, blocks in enumerate(block_tables):
        table[row, :len(blocks[:num_blocks])] = torch.tensor(blocks[:num_blocks], dtype=torch.long)
    return AttentionGroup(token_index=token_index, output_index=output_index,
                          flat_index=token_index.flatten()[output_index], block_tables=table,
                          mask=mask.unsqueeze(1), context_lens=ctx_len, num_keys=num_keys,
                          is_decode=num_queries == 1)


def _group_to(group: AttentionGroup, device: torch.device | str) -> AttentionGroup:
    return AttentionGroup(token_index=group.token_index.to(device), output_index=group.output_index.to(device),
                          flat_index=group.flat_index.to(device), block_tables=group.block_tables.to(device),
                          mask=group.mask.to(device), context_lens=group.context_lens.to(device),
                          num_keys=group.num_keys, is_decode=group.is_decode)


def dense_metadata(seq_lens: list[int], device: torch.device | str = "cpu") -> AttentionMetadata:
    """Metadata for causal attention over whole sequences with no KV cache (tests, one-shot scoring)."""
    return build_attention_metadata(seq_lens, seq_lens, [[0]] * len(seq_lens), [], max(seq_lens), device)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: KVCache | None,
                    meta: AttentionMetadata) -> torch.Tensor:
    """q: [T, heads, head_dim]; k, v: [T, kv_heads, head_dim] → [T, heads, head_dim].

    With `kv_cache`, the new K/V are stored first and keys come from the cache; without it, the
    sequences attend only to their own new tokens (their context must be exactly those tokens).
    """
    if kv_cache is not None:
        write_kv_cache(kv_cache, k, v, meta.slot_mapping)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    gqa = q.shape[1] != k.shape[1]
    for group in meta.groups:
        if group.is_decode and kv_cache is not None and kernels.supports_attention(q, kv_cache[0]):
            kernels.paged_decode_attention(q, group.flat_index, kv_cache, group.block_tables, group.context_lens,
                                           group.num_keys, out)
            continue
        keys, values = (t.to(q.dtype) for t in _group_keys(group, k, v, kv_cache))  # [G, kv_heads, K, head_dim]
        queries = q[group.token_index].transpose(1, 2)  # [G, heads, Q, head_dim]
        attended = _sdpa(queries, keys, values, group.mask, gqa)
        attended = attended.transpose(1, 2).flatten(0, 1)  # [G*Q, heads, head_dim]
        out[group.flat_index] = attended[group.output_index]
    return out


CUDA_BACKENDS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]  # masks, any dtype; no cuDNN (see _sdpa)


def _sdpa(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
          gqa: bool) -> torch.Tensor:
    """Masked scaled-dot-product attention. On CUDA the key length changes every decode step, and the cuDNN
    backend (PyTorch's pick for bf16 there) rebuilds its graph for each new shape: ~1.8 ms of host time per
    call, measured on an H100, more than the whole step's GPU work. The memory-efficient kernel takes any
    shape, but not enable_gqa, so the kv heads are repeated for it."""
    if not queries.is_cuda:
        return F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, enable_gqa=gqa)
    if gqa:
        group = queries.shape[1] // keys.shape[1]
        keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
    with sdpa_kernel(CUDA_BACKENDS):
        return F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask)


def write_kv_cache(kv_cache: KVCache, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store each new token's K/V at its slot."""
    key_cache, value_cache = kv_cache
    key_cache.flatten(0, 1).index_copy_(0, slot_mapping, k.to(key_cache.dtype))
    value_cache.flatten(0, 1).index_copy_(0, slot_mapping, v.to(value_cache.dtype))


def _group_keys(group: AttentionGroup, k: torch.Tensor, v: torch.Tensor,
                kv_cache: KVCache | None) -> tuple[torch.Tensor, torch.Tensor]:
    if kv_cache is None:
        return k[group.token_index].transpose(1, 2), v[group.token_index].transpose(1, 2)
    return tuple(_gather_blocks(cache, group) for cache in kv_cache)


def _gather_blocks(cache: torch.Tensor, group: AttentionGroup) -> torch.Tensor:
    """[num_blocks, block_size, kv_heads, head_dim] → [G, kv_heads, K, head_dim] through the block tables."""
    gathered = cache[group.block_tables]  # [G, blocks, block_size, kv_heads, head_dim]
    return gathered.flatten(1, 2)[:, :group.num_keys].transpose(1, 2)


def allocate_kv_caches(num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                       dtype: torch.dtype, device: torch.device | str) -> list[KVCache]:
    """One (keys, values) pair of zeroed tensors per layer."""
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    return [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(num_layers)]


def kv_bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int,
                       dtype: torch.dtype) -> int:
    """Bytes one block occupies across all layers (keys + values)."""
    return 2 * num_layers * block_size * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()
