"""Scheduler: token budget, decode-first mixing, chunked prefill, max_num_seqs, preemption, finish."""
from __future__ import annotations

from inference.block_manager import BlockManager
from inference.config import EngineConfig, SamplingParams
from inference.scheduler import Scheduler, SchedulerOutput
from inference.sequence import Sequence, SequenceStatus


def _scheduler(num_blocks: int = 32, block_size: int = 4, **config) -> Scheduler:
    engine_config = EngineConfig(kv_block_size=block_size, **config)
    return Scheduler(engine_config, BlockManager(num_blocks, block_size))


def _add(scheduler: Scheduler, length: int, name: str) -> Sequence:
    seq = Sequence(name, list(range(length)), SamplingParams())
    scheduler.add(seq)
    return seq


def _complete(output: SchedulerOutput, next_token: int = 7) -> None:
    """Pretend the model ran: advance computed counts and sample where a sequence completed."""
    for chunk in output.chunks:
        completes = chunk.completes_sequence
        chunk.seq.num_computed_tokens += chunk.num_new_tokens
        if completes:
            chunk.seq.append_token(next_token)


def _plan(output: SchedulerOutput) -> list[tuple[str, int]]:
    return [(chunk.seq.request_id, chunk.num_new_tokens) for chunk in output.chunks]


def test_long_prompt_is_chunked_under_the_token_budget():
    scheduler = _scheduler(max_num_batched_tokens=8, max_num_seqs=4)
    _add(scheduler, 20, "long")
    plans = []
    for _ in range(3):
        output = scheduler.schedule()
        plans.append(_plan(output))
        _complete(output)
    assert plans == [[("long", 8)], [("long", 8)], [("long", 4)]]


def test_decodes_go_first_and_prefill_fills_the_rest_of_the_budget():
    scheduler = _scheduler(max_num_batched_tokens=10, max_num_seqs=4)
    _add(scheduler, 3, "a")
    _complete(scheduler.schedule())  # a prefilled, has one output token
    _add(scheduler, 30, "b")
    output = scheduler.schedule()
    assert _plan(output) == [("a", 1), ("b", 9)]
    assert output.num_tokens == 10


def test_max_num_seqs_limits_running_sequences():
    scheduler = _scheduler(max_num_seqs=2)
    for name in "abc":
        _add(scheduler, 3, name)
    output = scheduler.schedule()
    assert [seq_id for seq_id, _ in _plan(output)] == ["a", "b"]
    assert [seq.request_id for seq in scheduler.waiting] == ["c"]


def test_newest_sequence_is_preempted_when_blocks_run_out():
    scheduler = _scheduler(num_blocks=3, block_size=4)
    old, new = _add(scheduler, 4, "old"), _add(scheduler, 4, "new")
    _complete(scheduler.schedule())  # both prefilled: 2 blocks used, 1 free; each now needs a second block
    output = scheduler.schedule()
    assert _plan(output) == [("old", 1)]
    assert output.preempted == [new]
    assert new.status == SequenceStatus.WAITING and new.block_table == [] and new.num_computed_tokens == 0
    assert scheduler.waiting[0] is new and scheduler.num_preemptions == 1


def test_preempted_sequence_is_recomputed_with_its_output_tokens():
    scheduler = _scheduler(num_blocks=3, block_size=4)
    old, new = _add(scheduler, 4, "old"), _add(scheduler, 4, "new")
    _complete(scheduler.schedule())
    _complete(scheduler.schedule())  # new preempted
    scheduler.finish(old, "stop")
    output = scheduler.schedule()
    assert _plan(output) == [("new", 5)]  # 4 prompt tokens + the token it had generated


def test_waiting_request_waits_for_blocks():
    scheduler = _scheduler(num_blocks=2, block_size=4)
    _add(scheduler, 8, "big")
    _add(scheduler, 4, "next")
    assert _plan(scheduler.schedule()) == [("big", 8)]
    assert len(scheduler.waiting) == 1


def test_finish_frees_blocks_and_removes_from_queues():
    scheduler = _scheduler(num_blocks=8)
    running, waiting = _add(scheduler, 5, "run"), _add(scheduler, 5, "wait")
    scheduler.max_num_seqs = 1
    scheduler.schedule()
    scheduler.finish(running, "abort")
    scheduler.finish(waiting, "abort")
    assert not scheduler.has_unfinished()
    assert scheduler.block_manager.num_free_blocks == 8
    assert running.finish_reason == waiting.finish_reason == "abort"


def test_first_scheduled_time_is_set_on_first_admission_only():
    scheduler = _scheduler(num_blocks=3, block_size=4, max_num_seqs=2)
    old, new = _add(scheduler, 4, "old"), _add(scheduler, 4, "new")
    late = _add(scheduler, 4, "late")
    _complete(scheduler.schedule())
    assert late.first_scheduled_time is None  # behind a full batch: still queued
    admitted = new.first_scheduled_time
    assert admitted >= new.arrival_time
    output = scheduler.schedule()
    assert output.preempted == [new] and late.first_scheduled_time is None
    _complete(output)
    scheduler.finish(old, "stop")
    assert _plan(scheduler.schedule()) == [("new", 5), ("late", 4)]
    assert new.first_scheduled_time == admitted  # readmission after preemption keeps the first time
    assert late.first_scheduled_time >= late.arrival_time
