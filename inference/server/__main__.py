"""`python -m inference.server --engine DIR`: serve an engine over the OpenAI API with graceful SIGTERM drain."""

import argparse
import asyncio
import logging
import os
import signal
import sys
from importlib.resources import files
from pathlib import Path

import uvicorn
import yaml

from inference.server.app import create_app
from inference.server.state import ServerSettings, ServerState

log = logging.getLogger("inference.server")


def default_port() -> int:
    """The capstone's inference port from lab_tasks/ports.yml (the one place for ports)."""
    return yaml.safe_load(files("lab_tasks").joinpath("ports.yml").read_text())["opslab_ports"]["inference"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m inference.server", description=__doc__)
    parser.add_argument("--engine", required=True, help="engine directory (python -m inference build ...)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port())
    parser.add_argument("--api-key", default=os.environ.get("OPSLAB_API_KEY"),
                        help="require `Authorization: Bearer KEY` on /v1 (default: env OPSLAB_API_KEY)")
    parser.add_argument("--max-queue", type=int, default=64, help="engine requests in flight before 429")
    parser.add_argument("--served-model-name", help="model id clients send (default: the engine dir's name)")
    parser.add_argument("--drain-timeout", type=float, default=30.0, help="seconds SIGTERM waits for streams")
    parser.add_argument("--stall-timeout", type=float, default=10.0,
                        help="busy engine without a step for this long makes /health 503")
    parser.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="engine override, e.g. max_num_seqs=32 (repeatable; values parsed as YAML)")
    parser.add_argument("--access-log", action="store_true", help="log every HTTP request")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if args.max_queue < 1 or args.drain_timeout < 0 or args.stall_timeout <= 0:
        parser.error("--max-queue must be >= 1, --drain-timeout >= 0 and --stall-timeout > 0")
    return args


def engine_overrides(pairs: list[str]) -> dict:
    """KEY=VALUE strings → keyword arguments for AsyncLLMEngine.from_path."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"Error: bad --engine-arg {pair!r}; use KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    return overrides


class DrainingServer(uvicorn.Server):
    """uvicorn, except SIGTERM first drains: /health and new requests 503, streams finish, then exit 0."""

    def __init__(self, config: uvicorn.Config, state: ServerState, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.state, self.drain_timeout_s = state, drain_timeout_s
        self.exit_code = 0
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets=None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    def handle_exit(self, sig: int, frame) -> None:
        if sig != signal.SIGTERM or self.state.draining or self.loop is None:
            return super().handle_exit(sig, frame)
        log.info("SIGTERM: draining for up to %.0fs", self.drain_timeout_s)
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self.drain_then_exit()))

    async def drain_then_exit(self) -> None:
        await self.state.drain(self.drain_timeout_s)
        self.should_exit = True

    def fail(self) -> None:
        """The engine could not load: stop serving, exit 1."""
        self.exit_code, self.should_exit = 1, True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = engine_overrides(args.engine_arg)
    name = args.served_model_name or Path(args.engine).resolve().name

    def load_engine():
        from inference.engine import AsyncLLMEngine  # torch loads here, in the background thread

        return AsyncLLMEngine.from_path(args.engine, **overrides)

    settings = ServerSettings(served_model_name=name, api_key=args.api_key or None, max_queue=args.max_queue,
                              stall_timeout_s=args.stall_timeout)
    server: DrainingServer | None = None
    state = ServerState(settings, load_engine, on_fatal=lambda: server.fail())
    config = uvicorn.Config(create_app(state), host=args.host, port=args.port, log_level=args.log_level,
                            access_log=args.access_log, timeout_graceful_shutdown=5, lifespan="on")
    server = DrainingServer(config, state, args.drain_timeout)
    server.run()
    return server.exit_code


if __name__ == "__main__":
    sys.exit(main())
