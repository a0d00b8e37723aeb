"""Block manager: allocation, prefix sharing, revival, and property tests for leaks and double frees."""
from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from inference import block_manager as bm_module
from inference.block_manager import BlockManager
from inference.config import SamplingParams
from inference.sequence import Sequence

BLOCK = 4


def _seq(tokens: list[int], name: str = "r") -> Sequence:
    return Sequence(name, tokens, SamplingParams(max_tokens=4))


def _run_prefill(manager: BlockManager, seq: Sequence) -> None:
    """What the engine does after the model computed the whole prompt."""
    seq.num_computed_tokens = seq.num_tokens
    manager.cache_computed_blocks(seq)


def test_allocate_gives_blocks_for_every_token_and_free_returns_them():
    manager = BlockManager(num_blocks=8, block_size=BLOCK)
    seq = _seq(list(range(10)))
    assert manager.can_allocate(seq)
    manager.allocate(seq)
    assert len(seq.block_table) == 3 and manager.num_free_blocks == 5
    manager.deallocate(seq)
    assert manager.num_free_blocks == 8 and seq.block_table == []


def test_identical_prefix_is_shared_and_last_token_recomputed():
    manager = BlockManager(num_blocks=8, block_size=BLOCK)
    first = _seq(list(range(12)), "a")
    manager.allocate(first)
    _run_prefill(manager, first)
    second = _seq(list(range(12)), "b")
    manager.allocate(second)
    # 12 tokens = 3 full blocks, but the block holding the last token is never taken from the cache
    assert second.block_table[:2] == first.block_table[:2]
    assert second.block_table[2] != first.block_table[2]
    assert second.num_computed_tokens == 8
    assert [manager.blocks[b].ref_count for b in second.block_table] == [2, 2, 1]
    assert (manager.num_prefix_queries, manager.num_prefix_hits) == (2 + 2, 2)


def test_blocks_are_shared_only_after_their_kv_is_computed():
    manager = BlockManager(num_blocks=8, block_size=BLOCK)
    first = _seq(list(range(12)), "a")
    manager.allocate(first)
    second = _seq(list(range(12)), "b")
    manager.allocate(second)
    assert second.num_computed_tokens == 0
    assert not set(first.block_table) & set(second.block_table)


def test_different_first_block_breaks_the_chain():
    manager = BlockManager(num_blocks=8, block_size=BLOCK)
    first = _seq([1, 2, 3, 4, 5, 6, 7, 8, 9], "a")
    manager.allocate(first)
    _run_prefill(manager, first)
    second = _seq([0, 2, 3, 4, 5, 6, 7, 8, 9], "b")  # same second block, different first
    manager.allocate(second)
    assert second.num_computed_tokens == 0


def test_freed_blocks_are_revived_by_a_later_hit():
    manager = BlockManager(num_blocks=4, block_size=BLOCK)
    first = _seq(list(range(9)), "a")
    manager.allocate(first)
    _run_prefill(manager, first)
    cached = first.block_table[:2]
    manager.deallocate(first)
    assert manager.num_free_blocks == 4
    again = _seq(list(range(9)) + [42], "b")
    manager.allocate(again)
    assert again.block_table[:2] == cached and again.num_computed_tokens == 8


def test_reused_block_loses_its_old_prefix_entry():
    manager = BlockManager(num_blocks=2, block_size=BLOCK)
    first = _seq([1, 2, 3, 4, 5], "a")
    manager.allocate(first)
    _run_prefill(manager, first)
    manager.deallocate(first)
    other = _seq([9, 9, 9, 9, 9, 9, 9], "b")  # takes both blocks, overwriting the cached content
    manager.allocate(other)
    manager.deallocate(other)
    assert manager._prefix_hits(_seq([1, 2, 3, 4, 5], "c")) == []


def test_hash_collision_is_caught_by_token_comparison(monkeypatch):
    monkeypatch.setattr(bm_module, "chain_hash", lambda tokens, previous: 7)
    manager = BlockManager(num_blocks=8, block_size=BLOCK)
    first = _seq([1, 2, 3, 4, 5], "a")
    manager.allocate(first)
    _run_prefill(manager, first)
    second = _seq([5, 6, 7, 8, 9], "b")
    manager.allocate(second)
    assert second.num_computed_tokens == 0


def test_can_allocate_and_can_append_respect_free_blocks():
    manager = BlockManager(num_blocks=3, block_size=BLOCK)
    seq = _seq(list(range(12)))
    assert manager.can_allocate(seq)
    assert not manager.can_allocate(_seq(list(range(13))))
    manager.allocate(seq)
    seq.append_token(1)
    assert manager.num_blocks_to_append(seq) == 1 and not manager.can_append(seq)


def test_double_free_is_detected():
    manager = BlockManager(num_blocks=4, block_size=BLOCK)
    seq = _seq(list(range(5)))
    manager.allocate(seq)
    table = list(seq.block_table)
    manager.deallocate(seq)
    seq.block_table = table
    with pytest.raises(RuntimeError, match="double free"):
        manager.deallocate(seq)


def test_prefix_caching_can_be_disabled():
    manager = BlockManager(num_blocks=8, block_size=BLOCK, enable_prefix_caching=False)
    first = _seq(list(range(9)), "a")
    manager.allocate(first)
    _run_prefill(manager, first)
    second = _seq(list(range(9)), "b")
    manager.allocate(second)
    assert second.num_computed_tokens == 0 and manager.hash_to_block_id == {}


PREFIXES = [[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 9, 9, 9, 9], [5, 5, 5, 5]]


class BlockManagerMachine(RuleBasedStateMachine):
    """Random admissions, prefill progress, decode growth, finishes and aborts over a small shared pool."""

    def __init__(self):
        super().__init__()
        self.manager = BlockManager(num_blocks=12, block_size=BLOCK)
        self.live: list[Sequence] = []
        self.count = 0

    @rule(prefix=st.sampled_from(PREFIXES), tail=st.lists(st.integers(0, 3), max_size=7))
    def admit(self, prefix, tail):
        seq = _seq(prefix + tail, f"s{self.count}")
        self.count += 1
        if self.manager.can_allocate(seq):
            free_before = self.manager.num_free_blocks
            self.manager.allocate(seq)
            assert self.manager.num_free_blocks <= free_before
            self.live.append(seq)

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, 100), amount=st.integers(1, 9))
    def compute(self, index, amount):
        seq = self.live[index % len(self.live)]
        seq.num_computed_tokens = min(seq.num_tokens, seq.num_computed_tokens + amount)
        self.manager.cache_computed_blocks(seq)

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, 100), token=st.integers(0, 3))
    def decode(self, index, token):
        seq = self.live[index % len(self.live)]
        if seq.num_computed_tokens == seq.num_tokens:
            seq.append_token(token)
            if self.manager.can_append(seq):
                self.manager.may_append(seq)
            else:
                self._free(seq, abort=True)

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, 100), abort=st.booleans())
    def finish(self, index, abort):
        self._free(self.live[index % len(self.live)], abort)

    def _free(self, seq: Sequence, abort: bool) -> None:
        (self.manager.abort if abort else self.manager.deallocate)(seq)
        self.live.remove(seq)

    @invariant()
    def ref_counts_match_holders(self):
        holders = {}
        for seq in self.live:
            assert len(set(seq.block_table)) == len(seq.block_table)
            for block_id in seq.block_table:
                holders[block_id] = holders.get(block_id, 0) + 1
        for block in self.manager.blocks:
            assert block.ref_count == holders.get(block.block_id, 0)
        assert self.manager.used_block_ids == set(holders)

    @invariant()
    def every_block_is_free_or_used_exactly_once(self):
        free, used = set(self.manager.free_block_ids), self.manager.used_block_ids
        assert not free & used and len(free | used) == self.manager.num_blocks

    @invariant()
    def prefix_index_points_at_matching_blocks(self):
        for block_hash, block_id in self.manager.hash_to_block_id.items():
            block = self.manager.blocks[block_id]
            assert block.hash == block_hash and len(block.token_ids) == BLOCK

    @invariant()
    def every_live_token_has_a_slot(self):
        for seq in self.live:
            assert len(seq.block_table) * BLOCK >= seq.num_tokens

    def teardown(self):
        for seq in list(self.live):
            self._free(seq, abort=False)
        assert self.manager.num_free_blocks == self.manager.num_blocks
        assert all(block.ref_count == 0 for block in self.manager.blocks)


BlockManagerMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestBlockManagerProperties = BlockManagerMachine.TestCase
