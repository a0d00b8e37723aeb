"""The server's front door: AsyncLLMEngine steps an LLMEngine on a background thread and streams each
request's RequestOutputs into its own asyncio queue.

A request the engine fails (finish_reason "error") raises RequestFailed from its own stream only. If the loop
thread itself dies, every stream raises that error and `is_alive` turns False (the server then exits).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import torch

from inference.config import EngineConfig, ModelConfig, SamplingParams
from inference.llm_engine import EngineStats, LLMEngine
from inference.outputs import RequestOutput

log = logging.getLogger(__name__)


class RequestFailed(RuntimeError):
    """The engine could not finish this one request (the others go on); the message says why."""


class AsyncLLMEngine:
    """LLMEngine stepped by a background thread; each request's outputs arrive on its own asyncio queue.

    The event loop never runs the model: add/abort are queued as commands that the thread applies between
    steps, and the thread hands outputs back with loop.call_soon_threadsafe.

    `from_path` defers loading to that same thread: once a second thread has run OpenMP teams (loading
    does), libgomp throttles its spin-waits and every parallel region of a step pays a futex wake-up
    (measured: a step twice as slow). Loading and stepping on one thread avoids it.
    """

    IDLE_TICK_S = 0.2  # how often an idle loop wakes up (keeps last_step_time fresh for health checks)

    def __init__(self, engine: LLMEngine | None = None, build: Callable[[], LLMEngine] | None = None):
        if (engine is None) == (build is None):
            raise ValueError("give exactly one of an engine or a function that builds one")
        self.engine, self._build = engine, build
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._streams: dict[str, asyncio.Queue] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.error: BaseException | None = None
        self.last_step_time = time.monotonic()

    @classmethod
    def from_path(cls, path: str | Path, **overrides) -> AsyncLLMEngine:
        """For an engine dir, a .gguf file or an HF checkpoint dir; `start()` loads it on the loop thread."""
        return cls(build=lambda: LLMEngine.from_path(path, **overrides))

    @classmethod
    def from_model(cls, model: torch.nn.Module, tokenizer, engine_config: EngineConfig | None = None):
        return cls(LLMEngine(model, tokenizer, engine_config or EngineConfig()))

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def model_config(self) -> ModelConfig:
        return self.engine.model_config

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    async def start(self) -> None:
        """Start the loop thread (building the engine there first, if it was given as a function); raises
        what building raised."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        ready = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="llm-engine", daemon=True)
        self._thread.start()
        try:
            await ready
        except BaseException:
            self._thread = None
            raise

    async def stop(self) -> None:
        """Stop the loop thread; requests still active end with finish_reason "abort"."""
        if self._thread is None:
            return
        for request_id in list(self._streams):
            self.abort(request_id)
        self._stopping = True
        self._wakeup.set()
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def add_request(self, request_id: str, prompt: str | list[int],
                    params: SamplingParams | None = None) -> AsyncIterator[RequestOutput]:
        """Queue a request and return its stream; raises ValueError now for a request that can never run."""
        if not self.is_alive:
            raise RuntimeError("engine is not running (call start(); see .error)")
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already active")
        params = params or SamplingParams()
        prompt_token_ids = self.engine.tokenize(prompt)
        self.engine.validate(prompt_token_ids, params)
        stream: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = stream
        self._command(("add", request_id, prompt_token_ids, params, time.monotonic()))
        return self._stream(request_id, stream)

    def check_fits_together(self, lengths: list[int]) -> None:
        """ValueError unless sequences growing to these lengths can hold their KV blocks at once."""
        self.engine.check_fits_together(lengths)

    def abort(self, request_id: str) -> None:
        """Free the request's KV blocks before the next step; its stream ends with finish_reason "abort"."""
        self._command(("abort", request_id))

    def stats(self) -> EngineStats:
        return dataclasses.replace(self.engine.stats(), last_step_time=self.last_step_time,
                                   is_alive=self.is_alive)

    async def _stream(self, request_id: str, stream: asyncio.Queue) -> AsyncIterator[RequestOutput]:
        finished = False
        try:
            while not finished:
                item = await stream.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                if item.error is not None:
                    raise RequestFailed(item.error)
                yield item
        finally:
            if not finished:  # the consumer went away: free the request's blocks
                self.abort(request_id)

    def _command(self, command: tuple) -> None:
        self._commands.put(command)
        self._wakeup.set()

    # ---- the loop thread ----

    def _run(self, ready: asyncio.Future) -> None:
        try:
            if self.engine is None:
                self.engine = self._build()
        except Exception as error:
            self._loop.call_soon_threadsafe(_settle, ready, error)
            return
        self._loop.call_soon_threadsafe(_settle, ready, None)
        try:
            while not self._stopping:
                self._apply_commands()
                if self.engine.has_unfinished():
                    self._publish(self.engine.step().outputs)
                else:
                    self._wakeup.wait(self.IDLE_TICK_S)
                    self._wakeup.clear()
                self.last_step_time = time.monotonic()
            self._apply_commands()  # aborts queued by stop()
        except BaseException as error:  # the engine is broken: fail every stream instead of hanging them
            log.critical("engine loop died", exc_info=error)
            self.error = error
            self._loop.call_soon_threadsafe(self._fail_all, error)

    def _apply_commands(self) -> None:
        while not self._commands.empty():
            kind, request_id, *args = self._commands.get()
            if kind == "add":
                self._add(request_id, *args)
            else:
                output = self.engine.abort_request(request_id)
                self._publish([output] if output else [])

    def _add(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
             arrival_time: float) -> None:
        try:
            self.engine.add_request(request_id, prompt_token_ids, params, arrival_time)
        except Exception as error:  # this request cannot start; the loop goes on
            failure = error if isinstance(error, ValueError) else RequestFailed(f"{type(error).__name__}: {error}")
            self._loop.call_soon_threadsafe(self._deliver_error, request_id, failure)

    def _publish(self, outputs: list[RequestOutput]) -> None:
        if outputs:
            self._loop.call_soon_threadsafe(self._deliver, outputs)

    # ---- on the event loop ----

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is not None:
                stream.put_nowait(output)
            if output.finished:
                self._streams.pop(output.request_id, None)

    def _deliver_error(self, request_id: str, error: BaseException) -> None:
        stream = self._streams.pop(request_id, None)
        if stream is not None:
            stream.put_nowait(error)

    def _fail_all(self, error: BaseException) -> None:
        for request_id in list(self._streams):
            self._deliver_error(request_id, error)


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    """Resolve `future` (on the event loop) unless whoever awaited it has gone."""
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
