"""`python -m inference build MODEL ... -o ENGINE_DIR` and `python -m inference fetch-model`.

Bad input prints one line `Error: <problem>; <fix>` and exits 2 (no traceback).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from inference.config import DTYPES, KV_CACHE_DTYPES
from inference.quant import GROUP_SIZES, QUANT_MODES

PROG = "python -m inference"


class CliError(click.ClickException):
    """A user error: reported as one line, exit status 2."""

    exit_code = 2


@click.group(help="Build and manage inference engines.", no_args_is_help=False)
def cli() -> None:
    pass


@cli.command(short_help="Build an engine directory from a .gguf file or an HF directory.",
             help="Build an engine directory from a .gguf file or an HF directory (config.json + *.safetensors).")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Engine directory to write.")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True)
@click.option("--quant", type=click.Choice(QUANT_MODES), default="none", show_default=True)
@click.option("--group-size", type=click.Choice([str(size) for size in GROUP_SIZES]), default="128",
              show_default=True, help="int4 group size.")
@click.option("--full-precision-head", is_flag=True, help="With --quant, keep the output head in --dtype "
                                                          "(default: int8).")
@click.option("--lora", type=click.Path(path_type=Path), help="PEFT LoRA adapter directory to merge.")
@click.option("--max-num-seqs", type=int, help="Sequences decoded together per step (recorded in the engine config).")
@click.option("--max-num-batched-tokens", type=int, help="Tokens (prefill + decode) per step.")
@click.option("--kv-block-size", type=int, help="Tokens per KV-cache block.")
@click.option("--max-model-len", type=int, help="Longest prompt + output, in tokens.")
@click.option("--kv-cache-memory-fraction", type=float, help="Share of free memory for the KV cache.")
@click.option("--kv-cache-bytes", type=int, help="KV cache size in bytes (excludes --kv-cache-memory-fraction).")
@click.option("--kv-cache-dtype", type=click.Choice(KV_CACHE_DTYPES),
              help="KV cache dtype [default: auto: float16 for a float32 model on the CPU, else the model's].")
def build(model: Path, output: Path, dtype: str, quant: str, group_size: str, full_precision_head: bool,
          lora: Path | None, **runtime) -> None:
    from inference.build import RUNTIME_KEYS, build_engine

    if runtime["kv_cache_memory_fraction"] is not None and runtime["kv_cache_bytes"] is not None:
        raise CliError("--kv-cache-bytes and --kv-cache-memory-fraction exclude each other; pass one of them")
    if not model.exists():
        raise CliError(f"model path {model} does not exist; pass a .gguf file or an HF model directory")
    if lora is not None and not lora.is_dir():
        raise CliError(f"LoRA adapter directory {lora} does not exist; pass a PEFT adapter directory")
    overrides = {key: runtime[key] for key in RUNTIME_KEYS if runtime.get(key) is not None}
    spec = build_engine(model, output, dtype, quant, int(group_size), lora, overrides,
                        quantize_head=not full_precision_head)
    click.echo(f"built {output} ({spec.dtype}, quant {spec.quant.mode}, lora {'yes' if spec.lora else 'no'})")


@cli.command("fetch-model", short_help="Download and cache the SmolLM2-135M-Instruct Q4_1 GGUF.",
             help="Download and cache SmolLM2-135M-Instruct Q4_1 GGUF; prints its path.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              help="Cache directory [default: ${OPSLAB_CACHE:-/var/cache/opslab}/models].")
def fetch_model(directory: Path | None) -> None:
    from inference.model_store import fetch_model as fetch

    click.echo(str(fetch(directory=directory)))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every error is one `Error: ...` line on stderr and exit status 2."""
    try:
        return cli.main(args=argv, prog_name=PROG, standalone_mode=False) or 0
    except click.UsageError as error:
        message = error.format_message().rstrip(".").replace("\n", " ")
        command = error.ctx.command_path if error.ctx else PROG
        print(f"Error: {message}; see `{command} --help`", file=sys.stderr)
    except click.ClickException as error:
        print(f"Error: {error.format_message()}", file=sys.stderr)
    except click.Abort:
        print("Error: aborted; run the command again", file=sys.stderr)
    except (ValueError, OSError, RuntimeError) as error:
        print(f"Error: {error}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
