"""`python -m inference.server --engine DIR`: serve an engine over the OpenAI API with graceful SIGTERM drain."""

import asyncio
import dataclasses
import logging
import signal
import sys
from pathlib import Path

import click
import uvicorn
import yaml

from inference.config import EngineConfig
from inference.server.app import create_app
from inference.server.state import ServerSettings, ServerState

log = logging.getLogger("inference.server")

DEFAULT_PORT = 8000  # the capstone passes its port from lab_tasks/ports.yml explicitly
PROG = "python -m inference.server"
HELP = ("Serve an engine over the OpenAI API (/v1/completions, /v1/chat/completions, /v1/models) with /health, "
        "/metrics and a graceful SIGTERM drain.")
DEFAULTS = ServerSettings(served_model_name="")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def engine_overrides(pairs: tuple[str, ...]) -> dict:
    """KEY=VALUE strings → keyword arguments for AsyncLLMEngine.from_path (values parsed as YAML)."""
    known = {field.name for field in dataclasses.fields(EngineConfig)}
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--engine-arg")
        if key not in known:
            raise click.BadParameter(f"unknown engine option {key!r} (known: {', '.join(sorted(known))})",
                                     param_hint="--engine-arg")
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
        """The engine could not load or its loop died: stop serving, exit 1 (the supervisor restarts us)."""
        self.exit_code, self.should_exit = 1, True


@click.command(name=PROG, help=HELP, context_settings={"help_option_names": ["-h", "--help"],
                                                         "max_content_width": 110})
@click.option("--engine", "engine_dir", required=True, help="engine directory (python -m inference build ...)")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True,
              help="port to listen on")
@click.option("--api-key", envvar="OPSLAB_API_KEY", show_envvar=True,
              help="require `Authorization: Bearer KEY` on /v1")
@click.option("--max-queue", type=click.IntRange(min=1), default=64, show_default=True,
              help="engine requests in flight before 429")
@click.option("--served-model-name", help="model id clients send (default: the engine dir's name)")
@click.option("--drain-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="seconds SIGTERM waits for streams")
@click.option("--stall-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="busy engine without a step for this long makes /health 503")
@click.option("--max-body-bytes", type=click.IntRange(min=1024), default=DEFAULTS.max_body_bytes,
              show_default=True, help="larger request bodies get 413 (checked while reading, never buffered whole)")
@click.option("--max-prompts", type=click.IntRange(min=1), default=DEFAULTS.max_prompts, show_default=True,
              help="prompts in one /v1/completions request (more: 400)")
@click.option("--max-messages", type=click.IntRange(min=1), default=DEFAULTS.max_messages, show_default=True,
              help="messages in one /v1/chat/completions request (more: 400)")
@click.option("--max-prompt-chars", type=click.IntRange(min=1), default=DEFAULTS.max_prompt_chars,
              show_default=True, help="characters of one prompt or conversation, checked before tokenizing (more: 400)")
@click.option("--engine-arg", "engine_args", multiple=True, metavar="KEY=VALUE",
              help="engine override, e.g. max_num_seqs=32 (repeatable; values parsed as YAML)")
@click.option("--access-log", is_flag=True, help="log every HTTP request")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="info", show_default=True,
              help="log level of the server and uvicorn")
def serve(engine_dir: str, host: str, port: int, api_key: str | None, max_queue: int,
          served_model_name: str | None, drain_timeout: float, stall_timeout: float, max_body_bytes: int,
          max_prompts: int, max_messages: int, max_prompt_chars: int, engine_args: tuple[str, ...],
          access_log: bool, log_level: str) -> int:
    log_level = log_level.lower()
    logging.basicConfig(level=logging.getLevelName(log_level.upper()) if log_level != "trace" else 5,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = engine_overrides(engine_args)
    name = served_model_name or Path(engine_dir).resolve().name

    def load_engine():
        from inference.async_engine import AsyncLLMEngine  # torch loads here, in the background thread

        return AsyncLLMEngine.from_path(engine_dir, **overrides)

    settings = ServerSettings(served_model_name=name, api_key=api_key or None, max_queue=max_queue,
                              stall_timeout_s=stall_timeout, max_body_bytes=max_body_bytes, max_prompts=max_prompts,
                              max_messages=max_messages, max_prompt_chars=max_prompt_chars)
    server: DrainingServer | None = None
    state = ServerState(settings, load_engine, on_fatal=lambda: server.fail())
    config = uvicorn.Config(create_app(state), host=host, port=port, log_level=log_level, access_log=access_log,
                            timeout_graceful_shutdown=5, lifespan="on")
    server = DrainingServer(config, state, drain_timeout)
    server.run()
    return server.exit_code


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve; bad flags are one `Error: ...; ...` line and exit 2."""
    try:
        return serve.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.exceptions.Abort:
        return 130
    except click.UsageError as error:
        click.echo(f"Error: {error.format_message().rstrip('.')}; see `{PROG} --help`", err=True)
        return 2
    except click.ClickException as error:
        error.show()
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
