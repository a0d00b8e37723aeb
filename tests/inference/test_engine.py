"""LLMEngine / LLM / AsyncLLMEngine: batching equals one-at-a-time, preemption, abort, stops, limits, streaming."""
from __future__ import annotations

import asyncio
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_llama import hf_tiny, random_prompts, tiny_llm

from inference.build import build_engine
from inference.config import SamplingParams
from inference.async_engine import AsyncLLMEngine
from inference.llm import LLM
from inference.tokenizer import Tokenizer

GREEDY = SamplingParams(temperature=0, max_tokens=12)
LETTERS = range(ord("a"), ord("z") + 1)


@pytest.fixture(scope="module")
def hf_model():
    return hf_tiny()


@pytest.fixture(scope="module")
def letters_llm():
    """Byte-level tokenizer + a model whose only non-zero logits are 'a'..'z', so its text is plain ASCII."""
    hf = hf_tiny(vocab_size=258)
    with torch.no_grad():
        keep = torch.zeros(258, dtype=torch.bool)
        keep[list(LETTERS)] = True
        hf.lm_head.weight[~keep] = 0.0
    return tiny_llm(hf, Tokenizer.byte_level())


def _one_at_a_time(hf_model, prompts, params):
    llm = tiny_llm(hf_model, max_num_seqs=1)
    return [llm.generate([prompt], params)[0].token_ids for prompt in prompts]


def _shared_prefix_prompts() -> list[list[int]]:
    base = random_prompts([24], seed=5)[0]
    tails = random_prompts([1, 6, 13, 3, 9, 2], seed=6)
    return [base + tail for tail in tails] + random_prompts([5, 31], seed=7)


def test_batched_paged_generation_equals_one_at_a_time(hf_model):
    prompts = _shared_prefix_prompts()
    llm = tiny_llm(hf_model, max_num_batched_tokens=16, kv_block_size=4)
    batched = [out.token_ids for out in llm.generate(prompts, GREEDY)]
    assert batched == _one_at_a_time(hf_model, prompts, GREEDY)
    stats = llm.engine.stats()
    assert stats.prefix_cache_hits > 0, "the shared 24-token prefix should have been reused"
    assert stats.num_free_blocks == stats.num_total_blocks


def test_seeded_sampling_is_independent_of_batching(hf_model):
    prompts = random_prompts([4, 17, 9])
    params = [SamplingParams(temperature=0.9, top_p=0.9, top_k=50, seed=100 + i, max_tokens=10) for i in range(3)]
    batched = [out.token_ids for out in tiny_llm(hf_model).generate(prompts, params)]
    alone = [tiny_llm(hf_model).generate([p], [sp])[0].token_ids for p, sp in zip(prompts, params)]
    assert batched == alone
    assert batched[0] != tiny_llm(hf_model).generate([prompts[0]], SamplingParams(
        temperature=0.9, top_p=0.9, top_k=50, seed=999, max_tokens=10))[0].token_ids


def test_preemption_under_a_tiny_kv_budget_keeps_tokens_identical(hf_model):
    prompts = random_prompts([10, 7, 12, 9, 11, 6], seed=3)
    # 12 blocks of 4 tokens (the float16 cache "auto" picks: 1024 bytes a block)
    llm = tiny_llm(hf_model, kv_cache_bytes=12 * 1024, max_num_batched_tokens=16)
    assert llm.engine.block_manager.num_blocks == 12
    params = SamplingParams(temperature=0, max_tokens=16)
    batched = [out.token_ids for out in llm.generate(prompts, params)]
    assert llm.engine.scheduler.num_preemptions > 0
    assert batched == _one_at_a_time(hf_model, prompts, params)
    assert llm.engine.block_manager.num_free_blocks == 12


def test_abort_frees_every_block(hf_model):
    engine = tiny_llm(hf_model).engine
    for i, prompt in enumerate(random_prompts([9, 14, 22, 5])):
        engine.add_request(f"r{i}", prompt, SamplingParams(temperature=0, max_tokens=50))
    for _ in range(3):
        engine.step()
    assert engine.block_manager.num_free_blocks < engine.block_manager.num_blocks
    outputs = [engine.abort_request(f"r{i}") for i in range(4)]
    assert all(out.finished and out.finish_reason == "abort" for out in outputs)
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert not engine.has_unfinished() and engine.abort_request("r0") is None


def test_request_that_can_never_fit_raises(hf_model):
    llm = tiny_llm(hf_model, kv_cache_bytes=4 * 1024)  # 4 float16 blocks = 16 tokens
    with pytest.raises(ValueError, match="never fit"):
        llm.generate([list(range(10))], SamplingParams(max_tokens=10))
    with pytest.raises(ValueError, match="max_model_len"):
        tiny_llm(hf_model, max_model_len=8).generate([list(range(8))], GREEDY)
    with pytest.raises(ValueError, match="tokenizer"):
        llm.generate(["text needs a tokenizer"], GREEDY)
    with pytest.raises(ValueError, match="empty"):
        llm.generate([[]], GREEDY)


def test_generation_stops_at_max_model_len(hf_model):
    out = tiny_llm(hf_model, max_model_len=20).generate([list(range(15))], SamplingParams(max_tokens=100))[0]
    assert len(out.token_ids) == 5 and out.finish_reason == "length"


def test_stop_token_ids_and_eos(hf_model):
    prompt = random_prompts([6])[0]
    free_run = tiny_llm(hf_model).generate([prompt], GREEDY)[0].token_ids
    stopped = tiny_llm(hf_model).generate([prompt], SamplingParams(temperature=0, max_tokens=12,
                                                                   stop_token_ids=[free_run[2]]))[0]
    first = free_run.index(free_run[2])
    assert stopped.token_ids == free_run[:first + 1] and stopped.finish_reason == "stop"


def test_stop_strings_cut_the_text(letters_llm):
    prompt = "hello"
    full = letters_llm.generate([prompt], SamplingParams(temperature=0, max_tokens=20))[0]
    assert len(full.text) == 20 and full.text.isascii()
    stop = full.text[6:9]
    cut = full.text.index(stop)
    out = letters_llm.generate([prompt], SamplingParams(temperature=0, max_tokens=20, stop=[stop, "#"]))[0]
    assert (out.text, out.finish_reason) == (full.text[:cut], "stop")
    assert out.token_ids == full.token_ids[:cut + len(stop)]
    kept = letters_llm.generate([prompt], SamplingParams(temperature=0, max_tokens=20, stop=stop,
                                                         include_stop_str_in_output=True))[0]
    assert kept.text == full.text[:cut + len(stop)]


def test_async_engine_builds_its_engine_on_the_loop_thread_and_raises_build_errors(letters_llm):
    """Loading and stepping share one thread (OpenMP teams on a second thread slow every step)."""
    built_on = []

    def build():
        built_on.append(threading.current_thread())
        return letters_llm.engine

    def broken():
        raise ValueError("no such engine")

    async def scenario():
        engine = AsyncLLMEngine(build=build)
        await engine.start()
        stepping_thread, alive = engine._thread, engine.is_alive
        outputs = [out async for out in engine.add_request("r", "abc", SamplingParams(temperature=0, max_tokens=3))]
        await engine.stop()
        failing = AsyncLLMEngine(build=broken)
        with pytest.raises(ValueError, match="no such engine"):
            await failing.start()
        return stepping_thread, alive, outputs, failing.is_alive

    stepping_thread, alive, outputs, failing_alive = asyncio.run(scenario())
    assert built_on == [stepping_thread] and alive and not failing_alive
    assert outputs[-1].finished


def test_async_engine_streams_aborts_and_reports(letters_llm):
    async def scenario():
        stop_text = letters_llm.generate(["abc"], SamplingParams(temperature=0, max_tokens=12))[0].text[4:6]
        engine = AsyncLLMEngine(letters_llm.engine)  # steps letters_llm.engine from now on: no generate()
        await engine.start()
        streamed = engine.add_request("s", "abc", SamplingParams(temperature=0, max_tokens=12, stop=[stop_text]))
        endless = engine.add_request("e", "xyz", SamplingParams(temperature=0, max_tokens=200, ignore_eos=True))
        with pytest.raises(ValueError):
            engine.add_request("too-long", "x" * 500, SamplingParams())
        deltas = [out async for out in streamed]
        first = await anext(endless)
        engine.abort("e")
        rest = [out async for out in endless]
        stats = engine.stats()
        await engine.stop()
        return stop_text, deltas, first, rest, stats

    stop_text, deltas, first, rest, stats = asyncio.run(scenario())
    text = "".join(out.text for out in deltas)
    assert deltas[-1].finished and deltas[-1].finish_reason == "stop" and stop_text not in text
    assert text == letters_llm.generate(["abc"], SamplingParams(temperature=0, max_tokens=12, stop=[stop_text]))[0].text
    assert first.first_token_time >= first.arrival_time
    assert rest[-1].finish_reason == "abort" and rest[-1].finished
    assert stats.is_alive and stats.num_running == 0 and stats.num_free_blocks == stats.num_total_blocks
    assert stats.generation_tokens_total > 0 and stats.num_steps > 0


def test_llm_loads_an_hf_checkpoint_dir_and_a_built_engine(tmp_path):
    hf = hf_tiny(vocab_size=258)
    hf.save_pretrained(tmp_path / "hf")
    Tokenizer.byte_level().save(tmp_path / "hf")
    expected = tiny_llm(hf, Tokenizer.byte_level()).generate(["hi there"], GREEDY)[0]
    from_checkpoint = LLM(tmp_path / "hf", kv_block_size=4, kv_cache_bytes=2**20).generate(["hi there"], GREEDY)[0]
    assert from_checkpoint.token_ids == expected.token_ids and from_checkpoint.prompt_token_ids[0] == 256  # <s>
    build_engine(tmp_path / "hf", tmp_path / "engine", runtime_overrides={"max_num_seqs": 3, "kv_block_size": 8})
    llm = LLM(tmp_path / "engine", kv_cache_bytes=2**20)
    assert (llm.engine.config.max_num_seqs, llm.engine.config.kv_block_size) == (3, 8)
    assert llm.generate(["hi there"], GREEDY)[0].token_ids == expected.token_ids


def test_bfloat16_engine_runs_and_agrees_with_float32(hf_model):
    prompts = random_prompts([5, 12, 20], seed=9)
    params = SamplingParams(temperature=0, max_tokens=4)
    reference = [out.token_ids for out in tiny_llm(hf_model).generate(prompts, params)]
    llm = tiny_llm(hf_model, dtype="bfloat16")
    assert llm.engine.runner.kv_caches[0][0].dtype == torch.bfloat16
    outputs = [out.token_ids for out in llm.generate(prompts, params)]
    assert [tokens[0] for tokens in outputs] == [tokens[0] for tokens in reference]


def test_async_engine_ticks_while_idle_and_fails_streams_when_the_engine_breaks(hf_model):
    async def scenario():
        engine = AsyncLLMEngine(tiny_llm(hf_model).engine)
        await engine.start()
        before = engine.stats().last_step_time
        await asyncio.sleep(3 * AsyncLLMEngine.IDLE_TICK_S)
        ticked = engine.stats().last_step_time > before

        def broken_step():
            raise RuntimeError("kernel exploded")

        engine.engine.step = broken_step
        stream = engine.add_request("x", [1, 2, 3], SamplingParams(max_tokens=4))
        with pytest.raises(RuntimeError, match="kernel exploded"):
            await anext(stream)
        alive = engine.stats().is_alive
        await engine.stop()
        return ticked, alive, engine.error

    ticked, alive, error = asyncio.run(scenario())
    assert ticked and not alive and isinstance(error, RuntimeError)


_OPS = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(1, 14), st.integers(1, 12)),
    st.tuples(st.just("abort"), st.integers(0, 50), st.just(0)),
    st.tuples(st.just("step"), st.integers(1, 4), st.just(0))), max_size=25)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS)
def test_any_mix_of_adds_aborts_and_steps_returns_every_block(hf_model, ops):
    """Tiny KV pool (10 blocks of 4), prefix-sharing prompts: preemption, prefix hits and aborts interleave."""
    engine = tiny_llm(hf_model, kv_cache_bytes=10 * 2048, max_num_batched_tokens=8, max_num_seqs=4).engine
    shared = random_prompts([8], seed=11)[0]
    added = []
    for kind, a, b in ops:
        if kind == "add":
            added.append(f"r{len(added)}")
            engine.add_request(added[-1], (shared + list(range(a)))[:a + 4], SamplingParams(temperature=0, max_tokens=b))
        elif kind == "abort" and added:
            engine.abort_request(added[a % len(added)])
        else:
            for _ in range(a):
                engine.step()
    while engine.has_unfinished():
        engine.step()
    manager = engine.block_manager
    assert manager.num_free_blocks == manager.num_blocks and not engine.requests
    assert all(block.ref_count == 0 for block in manager.blocks)


class _ExplodingDetokenizer:
    """Stands in for one request's detokenizer: its second token raises."""

    def __init__(self):
        self.calls = 0

    def push(self, token_id: int) -> str:
        self.calls += 1
        if self.calls == 2:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected decode failure")
        return "a"

    def flush(self) -> str:
        return ""


def _run_to_end(engine) -> dict:
    outputs: dict[str, list] = {}
    while engine.has_unfinished():
        for output in engine.step().outputs:
            outputs.setdefault(output.request_id, []).append(output)
    return outputs


@pytest.mark.parametrize("seed", [2**64, -2**63 - 1])
def test_params_the_sampler_cannot_take_are_refused_up_front(letters_llm, seed):
    """A 65-bit seed used to reach torch.Generator.manual_seed inside the step and kill the engine loop."""
    for bad in (dict(seed=seed), dict(top_k=2**63), dict(temperature=float("nan")), dict(top_p=float("inf")),
                dict(repetition_penalty=float("inf")), dict(max_tokens=2.0), dict(logprobs=21), dict(stop=["x" * 257]),
                dict(stop_token_ids=[-1])):
        with pytest.raises(ValueError):
            letters_llm.generate(["abc"], SamplingParams(**bad))
    with pytest.raises(ValueError, match="stop_token_ids"):
        letters_llm.generate(["abc"], SamplingParams(stop_token_ids=[258]))
    assert SamplingParams(temperature=1e-9).is_greedy  # softmax(logits / 1e-9) would overflow
    edges = [SamplingParams(temperature=0.8, top_k=2**31 - 1, seed=2**64 - 1, max_tokens=3),
             SamplingParams(temperature=1e-5, top_p=1e-300, seed=-2**63, logprobs=20, max_tokens=3),
             SamplingParams(temperature=2, min_p=1, repetition_penalty=100, presence_penalty=-2, max_tokens=3)]
    assert [out.finish_reason for out in letters_llm.generate(["abc"] * 3, edges)] == ["length"] * 3
    assert not letters_llm.engine.has_unfinished()


def test_a_request_whose_detokenizer_or_sampler_raises_fails_alone(letters_llm, monkeypatch):
    """Fault injection: one request's detokenizer raises, another's generator cannot be made, a third's row breaks
    the batched sampler. Those three end with finish_reason "error"; the others give what they give alone."""
    import inference.model_runner as model_runner

    real_make_generator, real_sample = model_runner.make_generator, model_runner.sample

    def make_generator(seed, device):
        if seed == 13:
            raise OverflowError("injected: no generator for seed 13")
        return real_make_generator(seed, device)

    def sample(logits, rows):
        if any(row.params.seed == 666 for row in rows):
            raise RuntimeError("injected: seed 666 breaks the batch")
        return real_sample(logits, rows)

    monkeypatch.setattr(model_runner, "make_generator", make_generator)
    monkeypatch.setattr(model_runner, "sample", sample)
    engine = letters_llm.engine
    good = {"greedy": ("abc", SamplingParams(temperature=0, max_tokens=8)),
            "seeded": ("xyz", SamplingParams(temperature=0.8, seed=7, max_tokens=8)),
            "stopped": ("abc", SamplingParams(temperature=0, max_tokens=8, stop=["zz"]))}
    bad = {"bad-detok": ("abc", SamplingParams(temperature=0, max_tokens=8)),
           "bad-generator": ("abc", SamplingParams(temperature=0.8, seed=13, max_tokens=8)),
           "bad-sample": ("abc", SamplingParams(temperature=0.8, seed=666, max_tokens=8))}
    for request_id, (prompt, params) in {**good, **bad}.items():
        engine.add_request(request_id, prompt, params)
    engine.requests["bad-detok"].stream.detokenizer = _ExplodingDetokenizer()
    outputs = _run_to_end(engine)
    for request_id in bad:
        last = outputs[request_id][-1]
        assert (last.finished, last.finish_reason) == (True, "error") and last.error, request_id
    assert "injected" in outputs["bad-generator"][-1].error and "injected" in outputs["bad-sample"][-1].error
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert not engine.requests and not engine.runner.generators
    for request_id, (prompt, params) in good.items():
        alone = letters_llm.generate([prompt], params)[0]
        assert [t for out in outputs[request_id] for t in out.token_ids] == alone.token_ids, request_id
        assert "".join(out.text for out in outputs[request_id]) == alone.text
        assert outputs[request_id][-1].finish_reason == alone.finish_reason != "error"


def test_a_failed_model_step_fails_its_sequences_and_the_engine_goes_on(hf_model, monkeypatch):
    llm = tiny_llm(hf_model)
    engine = llm.engine
    real_run, calls = engine.runner.run, []

    def run_fails_once(chunks):
        calls.append(len(chunks))
        if len(calls) == 2:
            raise RuntimeError("injected kernel failure")
        return real_run(chunks)

    monkeypatch.setattr(engine.runner, "run", run_fails_once)
    for i, prompt in enumerate(random_prompts([5, 9])):
        engine.add_request(f"r{i}", prompt, SamplingParams(temperature=0, max_tokens=6))
    outputs = _run_to_end(engine)
    assert [outputs[f"r{i}"][-1].finish_reason for i in range(2)] == ["error", "error"]
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks and not engine.requests
    after = llm.generate(random_prompts([7], seed=4), GREEDY)[0]
    assert after.finish_reason == "length" and len(after.token_ids) == 12
    failed = LLM(engine=engine)
    engine.runner.run = lambda chunks: (_ for _ in ()).throw(RuntimeError("injected"))
    result = failed.generate([[1, 2, 3]], GREEDY)[0]
    assert result.finish_reason == "error" and "injected" in result.error


def test_async_engine_fails_one_stream_and_keeps_serving_the_others(letters_llm):
    from inference.async_engine import RequestFailed

    async def scenario():
        engine = AsyncLLMEngine(letters_llm.engine)
        await engine.start()
        real_add = engine.engine.add_request

        def add_request(request_id, *args):
            seq = real_add(request_id, *args)
            if request_id == "bad":
                engine.engine.requests[request_id].stream.detokenizer = _ExplodingDetokenizer()
            return seq

        engine.engine.add_request = add_request
        params = SamplingParams(temperature=0, max_tokens=10)
        streams = {rid: engine.add_request(rid, "abc", params) for rid in ("good-1", "bad", "good-2")}

        async def consume(stream):
            try:
                return [out async for out in stream]
            except RequestFailed as error:
                return error

        results = dict(zip(streams, await asyncio.gather(*(consume(s) for s in streams.values()))))
        later = [out async for out in engine.add_request("later", "xyz", params)]
        stats, alive = engine.stats(), engine.is_alive
        del engine.engine.add_request
        await engine.stop()
        return results, later, stats, alive

    results, later, stats, alive = asyncio.run(scenario())
    assert isinstance(results["bad"], RequestFailed) and "injected" in str(results["bad"])
    assert results["good-1"][-1].finish_reason == results["good-2"][-1].finish_reason == "length"
    assert later[-1].finish_reason == "length" and alive
    assert stats.num_free_blocks == stats.num_total_blocks
