"""Paged KV-cache bookkeeping: fixed-size blocks, reference counts, and prefix sharing.

A full block whose K/V have been computed is registered under a hash that chains the previous block's hash
with its own token ids, so identical prompt prefixes map to the same blocks. A hit is verified by comparing
the token ids, so a hash collision can never corrupt output. Freed blocks keep their hash and content and
can be revived by a later hit until they are handed out again (least recently freed first).
"""
from __future__ import annotations

from inference.sequence import Sequence


class Block:
    """One block of `block_size` token slots in every layer's KV cache."""

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None
        self.token_ids: list[int] = []

    def reset(self) -> None:
        self.ref_count = 1
        self.hash = None
        self.token_ids = []


def chain_hash(token_ids: list[int], previous: int | None) -> int:
    """Hash of a full block given the hash of the block before it (None for the first block)."""
    return hash((previous, tuple(token_ids)))


class BlockManager:
    """Hands KV blocks to sequences and takes them back."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be > 0")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.hash_to_block_id: dict[int, int] = {}
        self.free_block_ids: dict[int, None] = dict.fromkeys(range(num_blocks))  # insertion-ordered set
        self.used_block_ids: set[int] = set()
        self.num_prefix_queries = 0  # blocks looked up in the prefix cache
        self.num_prefix_hits = 0

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- allocation of a whole sequence (admission) ----

    def can_allocate(self, seq: Sequence) -> bool:
        hits = self._prefix_hits(seq)
        num_revived = sum(1 for block_id in hits if block_id in self.free_block_ids)
        return self.blocks_for(seq.num_tokens) - len(hits) + num_revived <= self.num_free_blocks

    def allocate(self, seq: Sequence) -> None:
        """Give `seq` blocks for all its tokens, reusing cached prefix blocks; marks those tokens computed."""
        if seq.block_table:
            raise ValueError(f"sequence {seq.request_id} already has blocks")
        hits = self._prefix_hits(seq)
        self.num_prefix_queries += self._num_lookup_blocks(seq)
        self.num_prefix_hits += len(hits)
        for block_id in hits:
            self._take_cached(block_id)
        seq.block_table = hits + [self._take_free() for _ in range(self.blocks_for(seq.num_tokens) - len(hits))]
        seq.num_computed_tokens = len(hits) * self.block_size
        seq.num_hashed_blocks = len(hits)

    def _num_lookup_blocks(self, seq: Sequence) -> int:
        """Full blocks that may come from the cache: the last token is always recomputed (its logits are needed)."""
        return (seq.num_tokens - 1) // self.block_size if self.enable_prefix_caching else 0

    def _prefix_hits(self, seq: Sequence) -> list[int]:
        """Block ids of the longest cached prefix of `seq`, verified by token ids."""
        hits, previous = [], None
        for index in range(self._num_lookup_blocks(seq)):
            token_ids = seq.block_tokens(index, self.block_size)
            previous = chain_hash(token_ids, previous)
            block_id = self.hash_to_block_id.get(previous)
            if block_id is None or self.blocks[block_id].hash != previous \
                    or self.blocks[block_id].token_ids != token_ids:
                break
            hits.append(block_id)
        return hits

    def _take_cached(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block_id in self.free_block_ids:  # revive a freed block with its content
            del self.free_block_ids[block_id]
            self.used_block_ids.add(block_id)
        block.ref_count += 1

    def _take_free(self) -> int:
        if not self.free_block_ids:
            raise RuntimeError("no free KV blocks (call can_allocate / can_append first)")
        block_id = next(iter(self.free_block_ids))
        del self.free_block_ids[block_id]
        block = self.blocks[block_id]
        if block.hash is not None and self.hash_to_block_id.get(block.hash) == block_id:
            del self.hash_to_block_id[block.hash]
        block.reset()
        self.used_block_ids.add(block_id)
        return block_id

    # ---- growth during decode ----

    def num_blocks_to_append(self, seq: Sequence) -> int:
        """Blocks `seq` still needs so that every one of its tokens has a slot."""
        return max(0, self.blocks_for(seq.num_tokens) - len(seq.block_table))

    def can_append(self, seq: Sequence) -> bool:
        return self.num_blocks_to_append(seq) <= self.num_free_blocks

    def may_append(self, seq: Sequence) -> None:
        """Add blocks if `seq` has outgrown its table."""
        for _ in range(self.num_blocks_to_append(seq)):
            seq.block_table.append(self._take_free())

    # ---- prefix registration after the model ran ----

    def cache_computed_blocks(self, seq: Sequence) -> None:
        """Register every full block whose K/V are now computed, so later requests can share it."""
        if not self.enable_prefix_caching:
            return
        num_full = min(seq.num_computed_tokens // self.block_size, len(seq.block_table))
        for index in range(seq.num_hashed_blocks, num_full):
            previous = self.blocks[seq.block_table[index - 1]].hash if index else None
            block = self.blocks[seq.block_table[index]]
            block.token_ids = seq.block_tokens(index, self.block_size)
            block.hash = chain_hash(block.token_ids, previous)
            self.hash_to_block_id[block.hash] = block.block_id
        seq.num_hashed_blocks = max(seq.num_hashed_blocks, num_full)

    # ---- release ----

    def deallocate(self, seq: Sequence) -> None:
        """Drop `seq`'s reference to each of its blocks; blocks nobody holds become free (and revivable)."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            if block.ref_count <= 0 or block_id not in self.used_block_ids:
                raise RuntimeError(f"double free of KV block {block_id}")
            block.ref_count -= 1
            if block.ref_count == 0:
                self.used_block_ids.remove(block_id)
                self.free_block_ids[block_id] = None
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.num_hashed_blocks = 0

    abort = deallocate  # an aborted request frees every block at once, exactly like a finished one
