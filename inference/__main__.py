"""`python -m inference build MODEL ... -o ENGINE_DIR` and `python -m inference fetch-model`.

Bad input prints one line `Error: <problem>` and exits 2 (no traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inference.config import DTYPES
from inference.quant import GROUP_SIZES, QUANT_MODES


class CliError(Exception):
    """A user error: reported as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as a single `Error:` line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CliError(f"{message}; see `{self.prog} --help`")


def build_parser() -> Parser:
    parser = Parser(prog="python -m inference", description="Build and manage inference engines.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    build = commands.add_parser("build", help="build an engine directory from a .gguf file or an HF directory")
    build.add_argument("model", type=Path, help="a .gguf file or an HF directory (config.json + *.safetensors)")
    build.add_argument("-o", "--output", type=Path, required=True, help="engine directory to write")
    build.add_argument("--dtype", choices=DTYPES, default="float32")
    build.add_argument("--quant", choices=QUANT_MODES, default="none")
    build.add_argument("--group-size", type=int, choices=GROUP_SIZES, default=128, help="int4 group size")
    build.add_argument("--full-precision-head", action="store_true",
                       help="with --quant, keep the output head in --dtype (default: int8)")
    build.add_argument("--lora", type=Path, help="PEFT LoRA adapter directory to merge")
    _add_runtime_arguments(build)
    fetch = commands.add_parser("fetch-model", help="download and cache SmolLM2-135M-Instruct Q4_1 GGUF")
    fetch.add_argument("--dir", type=Path, help="cache directory (default ${OPSLAB_CACHE:-/var/cache/opslab}/models)")
    return parser


def _add_runtime_arguments(build: argparse.ArgumentParser) -> None:
    runtime = build.add_argument_group("runtime memory parameters (recorded in the engine config)")
    runtime.add_argument("--max-num-seqs", type=int, help="sequences decoded together per step")
    runtime.add_argument("--max-num-batched-tokens", type=int, help="tokens (prefill + decode) per step")
    runtime.add_argument("--kv-block-size", type=int, help="tokens per KV-cache block")
    runtime.add_argument("--max-model-len", type=int, help="longest prompt + output, in tokens")
    budget = runtime.add_mutually_exclusive_group()
    budget.add_argument("--kv-cache-memory-fraction", type=float, help="share of free memory for the KV cache")
    budget.add_argument("--kv-cache-bytes", type=int, help="KV cache size in bytes")


def run_build(args: argparse.Namespace) -> str:
    from inference.build import RUNTIME_KEYS, build_engine

    if not args.model.exists():
        raise CliError(f"model path {args.model} does not exist; pass a .gguf file or an HF model directory")
    if args.lora is not None and not args.lora.is_dir():
        raise CliError(f"LoRA adapter directory {args.lora} does not exist")
    overrides = {key: getattr(args, key) for key in RUNTIME_KEYS if getattr(args, key) is not None}
    spec = build_engine(args.model, args.output, args.dtype, args.quant, args.group_size, args.lora, overrides,
                        quantize_head=not args.full_precision_head)
    return f"built {args.output} ({spec.dtype}, quant {spec.quant.mode}, lora {'yes' if spec.lora else 'no'})"


def run_fetch(args: argparse.Namespace) -> str:
    from inference.models import fetch_model

    return str(fetch_model(directory=args.dir))


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        print({"build": run_build, "fetch-model": run_fetch}[args.command](args))
    except (CliError, ValueError, OSError, RuntimeError) as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
