"""Server-wide state: engine loading, health, admission (bounded queue), drain, and the watchdog that ends the
process when the engine loop has died (a supervisor restarts it; a live process with a dead engine is an outage
no balancer sees until its health check runs)."""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from inference.server.errors import APIError
from inference.server.metrics import ServerMetrics

log = logging.getLogger("inference.server")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What the command line decides."""

    served_model_name: str
    api_key: str | None = None
    max_queue: int = 64  # engine requests in flight (running + waiting) before 429
    stall_timeout_s: float = 10.0  # engine loop without a step or idle tick for this long → /health 503
    retry_after_s: int = 1
    max_body_bytes: int = 2 * 2**20  # larger request bodies get 413 (read no further)
    max_prompts: int = 64  # prompts in one /v1/completions request
    max_messages: int = 256  # messages in one /v1/chat/completions request
    max_prompt_chars: int = 100_000  # characters of one prompt (or one conversation) before tokenization
    watchdog_interval_s: float = 0.5  # how often the watchdog looks at the engine loop


class ServerState:
    """Owns the engine once loaded and answers: healthy? may this request in? are we drained?"""

    def __init__(self, settings: ServerSettings, load_engine: Callable[[], object],
                 on_fatal: Callable[[], None] = lambda: None) -> None:
        self.settings, self.load_engine, self.on_fatal = settings, load_engine, on_fatal
        self.engine = None
        self.load_error: str | None = None
        self.draining = False
        self.in_flight = 0
        self.metrics = ServerMetrics(settings.served_model_name, self.read_stats)
        self.watchdog: asyncio.Task | None = None

    def read_stats(self):
        """The engine's stats, or None while loading."""
        return self.engine.stats() if self.engine is not None else None

    async def load(self) -> None:
        """Load and start the engine off the event loop; a failure is fatal for the process."""
        try:
            engine = await asyncio.to_thread(self.load_engine)
            await engine.start()
            self.engine = engine
            log.info("engine ready: %s", self.settings.served_model_name)
        except Exception as error:
            self.load_error = f"{type(error).__name__}: {error}"
            log.exception("engine failed to load")
            self.on_fatal()
            return
        self.watchdog = asyncio.create_task(self.watch_engine())

    async def watch_engine(self) -> None:
        """Once the engine loop is dead, call on_fatal (the process exits non-zero) instead of serving 503s."""
        while self.engine.is_alive:
            await asyncio.sleep(self.settings.watchdog_interval_s)
        log.critical("engine loop died (%s); exiting so the supervisor restarts the server", self.engine.error)
        self.on_fatal()

    async def stop(self) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
        if self.engine is not None:
            await self.engine.stop()

    def health(self) -> tuple[bool, str]:
        """(healthy, reason). The engine loop ticks even when idle, so a stale last_step_time means hung."""
        if self.draining:
            return False, "draining"
        if self.engine is None:
            return False, f"engine failed to load: {self.load_error}" if self.load_error else "loading"
        stats = self.engine.stats()
        if not stats.is_alive:
            return False, "engine loop is not running"
        silent_for = time.monotonic() - stats.last_step_time
        if silent_for > self.settings.stall_timeout_s:
            return False, f"engine loop has not stepped for {silent_for:.1f}s"
        return True, "ok"

    def ready_engine(self):
        """The engine, or 503 while loading or draining."""
        if self.draining:
            raise APIError(503, "server is draining; retry on another replica", code="draining",
                           headers={"Retry-After": str(self.settings.retry_after_s)})
        if self.engine is None:
            raise APIError(503, "model is still loading", code="loading",
                           headers={"Retry-After": str(self.settings.retry_after_s)})
        if not self.engine.is_alive:
            raise APIError(503, "the engine stopped; the server is restarting, retry on another replica",
                           code="engine_unavailable", headers={"Retry-After": str(self.settings.retry_after_s)})
        return self.engine

    def admit(self, count: int) -> Callable[[], None]:
        """Reserve `count` queue slots or refuse with 429; returns the (idempotent) release."""
        if count > self.settings.max_queue:
            raise APIError(400, f"the request needs {count} engine requests (prompts × n) but the server admits "
                           f"{self.settings.max_queue} at once", param="n", code="too_many_choices")
        if self.in_flight + count > self.settings.max_queue:
            self.metrics.rejected.inc()
            raise APIError(429, f"server queue is full ({self.settings.max_queue} requests); retry later",
                           code="queue_full", headers={"Retry-After": str(self.settings.retry_after_s)})
        self.in_flight += count
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released, self.in_flight = True, self.in_flight - count

        return release

    async def drain(self, timeout_s: float) -> bool:
        """Stop admitting, then wait up to `timeout_s` for in-flight requests; True when all finished."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        log.info("drain %s", "complete" if not self.in_flight else f"timed out with {self.in_flight} in flight")
        return not self.in_flight
