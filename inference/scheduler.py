"""Continuous batching: which sequences run this step, and how many of their tokens.

Every step has a token budget (`max_num_batched_tokens`). Running sequences go first: a decode costs one
token, a prompt still being prefilled takes as many tokens as remain in the budget (chunked prefill). Then
waiting requests are admitted, oldest first, while the budget, `max_num_seqs` and the KV blocks allow.
When a running sequence needs a block and none is free, the newest running sequence is preempted: its blocks
are freed and it goes back to the front of the queue, to be recomputed later (prefix hits make that cheap).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from inference.block_manager import BlockManager
from inference.config import EngineConfig
from inference.sequence import Sequence, SequenceStatus


@dataclass(slots=True)
class ScheduledChunk:
    """`num_new_tokens` tokens of `seq`, starting at its first uncomputed token."""

    seq: Sequence
    num_new_tokens: int

    @property
    def completes_sequence(self) -> bool:
        """True when this chunk reaches the sequence's last token, so the step samples a new one."""
        return self.seq.num_computed_tokens + self.num_new_tokens == self.seq.num_tokens


@dataclass(slots=True)
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(chunk.num_new_tokens for chunk in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not self.chunks


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager):
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.block_manager = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order: the last one is preempted first
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        output = SchedulerOutput()
        budget = self._schedule_running(output, self.max_num_batched_tokens)
        self._schedule_waiting(output, budget)
        return output

    def _schedule_running(self, output: SchedulerOutput, budget: int) -> int:
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status != SequenceStatus.RUNNING:  # preempted while making room for an older one
                continue
            if not self._make_room(seq, output):
                continue
            num_new = min(seq.num_uncomputed_tokens, budget)
            output.chunks.append(ScheduledChunk(seq, num_new))
            budget -= num_new
        return budget

    def _make_room(self, seq: Sequence, output: SchedulerOutput) -> bool:
        """Preempt newer sequences until `seq` has its blocks; False if `seq` itself had to go."""
        while not self.block_manager.can_append(seq):
            victim = self.running[-1]
            self._preempt(victim, output)
            if victim is seq:
                return False
        self.block_manager.may_append(seq)
        return True

    def _schedule_waiting(self, output: SchedulerOutput, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self.block_manager.can_allocate(seq):
                break
            self.waiting.popleft()
            self.block_manager.allocate(seq)
            seq.status = SequenceStatus.RUNNING
            seq.mark_scheduled()
            self.running.append(seq)
            num_new = min(seq.num_uncomputed_tokens, budget)
            output.chunks.append(ScheduledChunk(seq, num_new))
            budget -= num_new

    def _preempt(self, seq: Sequence, output: SchedulerOutput) -> None:
        self.running.remove(seq)
        output.chunks[:] = [chunk for chunk in output.chunks if chunk.seq is not seq]
        self.block_manager.deallocate(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        output.preempted.append(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence, reason: str) -> None:
        """Mark `seq` finished (or aborted) and free its blocks at once."""
        if seq in self.running:
            self.running.remove(seq)
            self.block_manager.deallocate(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
