"""`python -m inference.peers.hf_server --model PATH`: the Hugging Face transformers baseline, OpenAI-compatible.

What a naive HF deployment does: fp32 `LlamaForCausalLM.generate` with a text streamer, ONE generation at a
time (later requests wait in a queue; no batching, no paged KV cache). The HTTP layer is our server's
(`inference.server.app`: same routes, SSE framing, usage, error bodies, /health, /metrics), so a comparison
against it measures the generation, not the web framework. Loads an HF checkpoint dir or a .gguf file
(transformers dequantizes GGUF to fp32, as our engine does). Not supported: stop strings, stop_token_ids,
logprobs, presence/frequency penalties (400).
"""

import argparse
import logging
import os
import sys
from pathlib import Path

import uvicorn

from inference.server.__main__ import DrainingServer
from inference.server.app import create_app
from inference.server.state import ServerSettings, ServerState


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m inference.peers.hf_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="HF checkpoint directory or .gguf file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--served-model-name", help="model id clients send (default: the model path's name)")
    parser.add_argument("--max-queue", type=int, default=256, help="requests in flight before 429")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if not args.model.exists():
        parser.error(f"model path {args.model} does not exist; pass an HF directory or a .gguf file")
    if args.threads < 1 or args.max_queue < 1:
        parser.error("--threads and --max-queue must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local files only; nothing to fetch
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def load_engine():
        import torch

        from inference.peers.hf_engine import HFEngine  # transformers loads here, in the background thread

        torch.set_num_threads(args.threads)
        return HFEngine.from_path(args.model)

    settings = ServerSettings(served_model_name=args.served_model_name or args.model.name, max_queue=args.max_queue)
    server: DrainingServer | None = None
    state = ServerState(settings, load_engine, on_fatal=lambda: server.fail())
    config = uvicorn.Config(create_app(state), host=args.host, port=args.port, log_level=args.log_level,
                            access_log=False, timeout_graceful_shutdown=5, lifespan="on")
    server = DrainingServer(config, state, drain_timeout_s=30.0)
    server.run()
    return server.exit_code


if __name__ == "__main__":
    sys.exit(main())
