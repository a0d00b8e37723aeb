"""`python -m benchmarks.hf_server --model PATH`: the Hugging Face transformers baseline, OpenAI-compatible.

What a naive HF deployment does: fp32 `LlamaForCausalLM.generate` with a text streamer, ONE generation at a
time (later requests wait in a queue; no batching, no paged KV cache). The HTTP layer is our server's
(`inference.server.app`: same routes, SSE framing, usage, error bodies, /health, /metrics), so a comparison
against it measures the generation, not the web framework. Loads an HF checkpoint dir or a .gguf file
(transformers dequantizes GGUF to fp32, as our engine does), with strict key checking. Not supported: stop
strings, stop_token_ids, logprobs, presence/frequency penalties (400).
"""

import logging
import os
import sys
from pathlib import Path

import click
import uvicorn

from inference.server.__main__ import DrainingServer
from inference.server.app import create_app
from inference.server.state import ServerSettings, ServerState


class UsageError(click.ClickException):
    """Bad input: one `Error: ...` line, exit status 2."""

    exit_code = 2


def serve(model: Path, host: str, port: int, threads: int, served_model_name: str | None, max_queue: int,
          log_level: str) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local files only; nothing to fetch
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def load_engine():
        import torch

        from benchmarks.hf_engine import HFEngine  # transformers loads here, in the background thread

        torch.set_num_threads(threads)
        return HFEngine.from_path(model)

    settings = ServerSettings(served_model_name=served_model_name or model.name, max_queue=max_queue)
    server: DrainingServer | None = None
    state = ServerState(settings, load_engine, on_fatal=lambda: server.fail())
    config = uvicorn.Config(create_app(state), host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=5, lifespan="on")
    server = DrainingServer(config, state, drain_timeout_s=30.0)
    server.run()
    return server.exit_code


@click.command("hf_server", help=__doc__.split("\n\n")[0])
@click.option("--model", required=True, type=click.Path(path_type=Path), help="HF checkpoint directory or .gguf file.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="torch.set_num_threads.")
@click.option("--served-model-name", help="Model id clients send [default: the model path's name].")
@click.option("--max-queue", type=click.IntRange(min=1), default=256, show_default=True,
              help="Requests in flight before 429.")
@click.option("--log-level", default="info", show_default=True)
def main(model, host, port, threads, served_model_name, max_queue, log_level):
    if not model.exists():
        raise UsageError(f"model path {model} does not exist; pass an HF directory or a .gguf file")
    sys.exit(serve(model, host, port, threads, served_model_name, max_queue, log_level))


if __name__ == "__main__":
    main(prog_name="python -m benchmarks.hf_server")
