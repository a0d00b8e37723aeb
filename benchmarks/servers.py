"""`python -m benchmarks.servers`: our server against its peers, over one HTTP client, on the same prompts.

Servers (started ONE at a time, each for the whole concurrency sweep, with the same thread count):
  ours              python -m inference.server over an engine dir (max_num_seqs = the highest concurrency);
                    named ours-<quant> in the results, like the engine benchmark's engines
  llama-server      llama.cpp's native server, --parallel <highest concurrency> -cb
  llama-cpp-python  llama-cpp-python's OpenAI server (one request at a time)
  hf-transformers   benchmarks.hf_server, transformers generate, one request at a time
Every server is measured by the product's load tester (`inference.bench`: the same streaming client, the
same `/v1/completions` requests, `vllm bench serve`'s metrics) running in this process, which runs no
model: the servers run in processes of their own, and the offline engine baseline (`LLM.generate` on the
same prompts in batches of N) runs in a child process before them. Unique seeded prompts, fixed output
length with ignore_eos, warm-up excluded, every level bounded by prompt count and wall time. The content
chunks each server streamed are checked against the token counts it reports in `usage`. Writes JSON
(with the CPU model and flags and the peers' build records) + plots and prints ours ÷ peer ratios and the
server targets (benchmarks/report.py TARGETS), each naming the mode served. Peers that are not built are
skipped loudly (recorded in the JSON), or fail the run with --require-peers or CI=true.
"""

import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import click
from rich.console import Console

from benchmarks.launchers import (PeerError, free_port, hf_baseline_server, llama_cpp_python_server, llama_server,
                                  missing_peers, ours_server)
from benchmarks.machine import gguf_weight_type, machine
from benchmarks.names import HF, LLAMA_CPP_PYTHON, LLAMA_SERVER, arithmetic, ours
from benchmarks.report import plot_servers, ratio_table, server_ratios, servers_table, targets_lines
from inference import kernels
from inference.bench.client import Endpoint, RequestOptions
from inference.bench.dataset import BenchPrompt, prompt_stream
from inference.bench.load import Load, benchmark_endpoint
from inference.bench.plots import write_plots
from inference.bench.report import print_tables, run_record

OURS = "ours"
SERVERS = (OURS, LLAMA_SERVER, LLAMA_CPP_PYTHON, HF)
console = Console(stderr=True)


class CompareError(click.ClickException):
    """Bad input or a required peer missing: one `Error: ...` line, exit status 2."""

    exit_code = 2


@dataclass(frozen=True)
class Plan:
    """What to run: servers, sweep, request shape, and the model files."""

    servers: tuple[str, ...]
    concurrency: tuple[int, ...]
    num_prompts: int | None  # per level; None: 4 × concurrency, at least 8
    input_len: int
    output_len: int
    threads: int
    max_duration_s: float
    warmup: int
    seed: int
    request_timeout_s: float
    engine_dir: Path | None
    gguf: Path | None
    hf_model: Path | None
    offline: bool
    log_dir: Path

    def loads(self) -> list[Load]:
        return [Load(concurrency=c, num_prompts=self.num_prompts or max(8, 4 * c), max_duration_s=self.max_duration_s,
                     seed=self.seed) for c in self.concurrency]

    def prompts(self):
        """The prompt stream every server (and the offline engine) consumes: warm-up first, then each level."""
        return prompt_stream(self.input_len, self.output_len, self.seed)

    @property
    def ctx_per_slot(self) -> int:
        """Context per llama.cpp slot: room for the prompt (words may split into several tokens) and the output."""
        return max(512, 2 * self.input_len + self.output_len + 64)

    @property
    def ours_name(self) -> str:
        """ours-<quant mode of the engine dir>."""
        config = json.loads((self.engine_dir / "config.json").read_text())
        return ours(config["quant"]["mode"])

    def name(self, server: str) -> str:
        return self.ours_name if server == OURS else server

    def as_json(self) -> dict:
        return {key: str(value) if isinstance(value, Path) else value
                for key, value in dataclasses.asdict(self).items()}


LAUNCHERS: dict[str, Callable] = {
    OURS: lambda plan, port: ours_server(plan.engine_dir, port, plan.threads, max(plan.concurrency),
                                         log_dir=plan.log_dir),
    LLAMA_SERVER: lambda plan, port: llama_server(plan.gguf, port, plan.threads, max(plan.concurrency),
                                                  plan.ctx_per_slot, log_dir=plan.log_dir),
    LLAMA_CPP_PYTHON: lambda plan, port: llama_cpp_python_server(plan.gguf, port, plan.threads, plan.ctx_per_slot,
                                                                 log_dir=plan.log_dir),
    HF: lambda plan, port: hf_baseline_server(plan.hf_model, port, plan.threads, log_dir=plan.log_dir),
}


def token_check(record: dict, output_len: int) -> dict:
    """What the server really generated (a server may ignore ignore_eos) and whether its streamed content
    chunks agree with the token counts it reported (one chunk per token, unless a chunk carried several)."""
    metrics = record["metrics"]
    mean = metrics["total_output_tokens"] / metrics["completed"] if metrics["completed"] else None
    from_usage = metrics["output_tokens_counted_from_chunks"] == 0
    return {**record, "mean_output_tokens": mean, "honoured_ignore_eos": None if mean is None else mean == output_len,
            "tokens_from": "usage" if from_usage else "content chunks",
            "chunks_match_usage": (metrics["chunk_usage_mismatches"] == 0) if from_usage else None}


def run_server(server: str, plan: Plan) -> list[dict]:
    """Start one server, run the whole sweep against it, stop it; one record per level."""
    name = plan.name(server)
    console.print(f"[bold]{name}[/]: starting")
    options = RequestOptions(temperature=0.0, ignore_eos=True, timeout_s=plan.request_timeout_s)
    with LAUNCHERS[server](plan, free_port()) as url:
        console.print(f"[bold]{name}[/]: ready at {url}; sweeping concurrency {','.join(map(str, plan.concurrency))}")
        outcomes = asyncio.run(benchmark_endpoint(Endpoint(name, url), plan.prompts(), plan.loads(), options,
                                                  plan.warmup))
    records = [token_check(run_record(outcome, url), plan.output_len) for outcome in outcomes]
    for record in records:
        if record["honoured_ignore_eos"] is False:
            console.print(f"[yellow]{name} {record['label']}: ignored ignore_eos; mean output "
                          f"{record['mean_output_tokens']:.1f} tokens, not {plan.output_len}[/]")
        if record["chunks_match_usage"] is False:
            console.print(f"[yellow]{name} {record['label']}: {record['metrics']['chunk_usage_mismatches']} "
                          f"requests streamed a different number of content chunks than their usage tokens[/]")
    return records


def offline_level(llm, params, prompts: list[BenchPrompt], load: Load) -> dict:
    """`LLM.generate` over `prompts` in batches of `load.concurrency`, bounded by the level's wall time."""
    start = time.perf_counter()
    completed = tokens = 0
    for first in range(0, len(prompts), load.concurrency):
        if time.perf_counter() - start >= load.max_duration_s:
            break
        batch = [prompt.text for prompt in prompts[first:first + load.concurrency]]
        tokens += sum(len(output.token_ids) for output in llm.generate(batch, params))
        completed += len(batch)
    duration = time.perf_counter() - start
    return {"label": load.label, "concurrency": load.concurrency, "completed": completed,
            "total_output_tokens": tokens, "duration": duration, "output_throughput": tokens / duration}


def offline_levels(plan: Plan) -> list[dict]:
    """The offline engine on the same prompts the servers get (warm-up excluded). Runs in a child process."""
    from inference.config import SamplingParams
    from inference.llm import LLM

    llm = LLM(plan.engine_dir, num_threads=plan.threads, max_num_seqs=max(plan.concurrency))
    params = SamplingParams(temperature=0.0, max_tokens=plan.output_len, ignore_eos=True)
    prompts = plan.prompts()
    warmup = [prompt.text for prompt in islice(prompts, plan.warmup)]
    if warmup:
        llm.generate(warmup, params)
    return [offline_level(llm, params, list(islice(prompts, load.num_prompts)), load) for load in plan.loads()]


def run_offline(plan: Plan) -> list[dict]:
    """offline_levels in a child process, so this (client) process never holds a torch thread pool."""
    console.print("[bold]offline engine[/]: LLM.generate in batches of each concurrency")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(offline_levels, plan).result()
        except (ValueError, OSError) as error:
            raise CompareError(f"cannot load the engine {plan.engine_dir}: {error}") from None


def announce_skipped(skipped: dict[str, str]) -> None:
    for name, reason in skipped.items():
        console.print(f"[bold red]SKIPPED {name}[/]: {reason}")


def run_servers(plan: Plan, require_peers: bool, skipped: dict[str, str]) -> list[dict]:
    """Every requested server that is available, one after the other; failures to start are fatal only if required."""
    runs = []
    for server in plan.servers:
        if server in skipped:
            continue
        try:
            runs += run_server(server, plan)
        except PeerError as error:
            if require_peers or server == OURS:
                raise CompareError(f"{plan.name(server)} did not run: {error}") from None
            skipped[server] = f"failed to start: {error}"
            announce_skipped({server: skipped[server]})
    return runs


def run_comparison(plan: Plan, require_peers: bool) -> dict:
    """Offline baseline, then each server in turn; the JSON document with ratios."""
    skipped = missing_peers(plan.servers)
    if skipped and require_peers:
        raise CompareError("peers not built: " + "; ".join(skipped.values()))
    announce_skipped(skipped)
    offline = run_offline(plan) if plan.offline and OURS in plan.servers else []
    runs = run_servers(plan, require_peers, skipped)
    if not runs:
        raise CompareError("no server ran (all skipped); build the peers with scripts/build-peers.sh or add ours")
    weight_type = gguf_weight_type(plan.gguf) if plan.gguf else None
    names = [plan.name(server) for server in plan.servers]
    kernel_info = kernels.describe()  # our server runs the path this process would choose (same CPU, same env)
    document = {"created": time.time(), "config": plan.as_json(), "machine": machine(), "skipped": skipped,
                "ours": plan.name(OURS) if OURS in plan.servers else None, "kernels": kernel_info,
                "arithmetic": {name: arithmetic(name, weight_type, kernel_info["path"]) for name in names},
                "runs": runs, "offline": offline}
    document.update(server_ratios(runs, offline, document["ours"]))
    return document


def write_results(document: dict, output: Path) -> list[Path]:
    """The JSON document, the comparison plot, and the bench's detailed throughput/latency plots."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2) + "\n")
    plots = [plot_servers(document, output.with_name(f"{output.stem}-vs-concurrency.png"))]
    return [output, *plots, *write_plots(document["runs"], output.parent, output.stem)]


def default_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF, fetched into the opslab cache if missing."""
    from inference.model_store import SMOLLM2, FetchError, fetch_model

    try:
        return fetch_model(SMOLLM2)
    except (FetchError, OSError) as error:
        raise CompareError(f"cannot fetch the SmolLM2 model ({error}); pass --gguf") from None


def default_engine(gguf: Path, quant: str) -> Path:
    """An engine built from `gguf` into the opslab cache (built once; int4 with SmolLM2's own group of 32)."""
    from inference.build import cached_engine

    console.print(f"engine: {gguf.name}, quant {quant} (built into the opslab cache if missing)")
    return cached_engine(gguf, quant, group_size=32)


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    """SIGTERM/SIGHUP end the run by SystemExit, so the launchers' cleanup stops the server under test; the
    previous handlers come back afterwards (main runs in-process in tests)."""
    previous = {sig: signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
                for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def parse_list(text: str, option: str, choices: tuple[str, ...] | None = None) -> tuple:
    """Comma list → tuple of names (checked against `choices`) or of positive ints."""
    items = tuple(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))  # each once
    if choices is not None:
        unknown = [item for item in items if item not in choices]
        if unknown or not items:
            raise CompareError(f"bad {option} {text!r}; choose from {','.join(choices)}")
        return items
    if not items or not all(item.isdigit() and int(item) > 0 for item in items):
        raise CompareError(f"bad {option} {text!r}; give positive integers separated by commas")
    return tuple(int(item) for item in items)


@click.command("servers")
@click.option("--servers", default=",".join(SERVERS), show_default=True, help="Servers to run, in this order.")
@click.option("--concurrency", default="1,2,4,8,16,32", show_default=True, help="Concurrency sweep.")
@click.option("--num-prompts", type=click.IntRange(min=1), help="Requests per level [default: 4 × concurrency, min 8].")
@click.option("--input-len", type=click.IntRange(min=1), default=64, show_default=True, help="Prompt tokens (approx).")
@click.option("--output-len", type=click.IntRange(min=1), default=128, show_default=True, help="Tokens per request.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="Threads of every server.")
@click.option("--max-duration", type=click.FloatRange(min=0, min_open=True), default=180.0, show_default=True,
              help="Seconds per level after which no new request starts.")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True, help="Unmeasured requests first.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True), default=900.0, show_default=True)
@click.option("--engine-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Our engine dir [default: built from the GGUF into the opslab cache].")
@click.option("--quant", type=click.Choice(["none", "int8", "int4", "w8a8"]), default="int8", show_default=True,
              help="Quantization of the default engine build (int8 and int4: weight-only; w8a8: int8 activations "
                   "too, like llama.cpp's 8-bit activations).")
@click.option("--gguf", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="GGUF for the llama.cpp peers [default: the fetched SmolLM2-135M-Instruct Q4_1].")
@click.option("--hf-model", type=click.Path(exists=True, path_type=Path), help="HF dir or GGUF [default: --gguf].")
@click.option("--offline/--no-offline", default=True, show_default=True, help="Also measure LLM.generate.")
@click.option("--require-peers", is_flag=True, help="Fail when a peer is not built (always on when CI=true).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("results/servers/servers.json"),
              show_default=True, help="JSON file; plots are written next to it.")
def main(servers, concurrency, num_prompts, input_len, output_len, threads, max_duration, warmup, seed,
         request_timeout, engine_dir, quant, gguf, hf_model, offline, require_peers, output):
    """Our server vs llama-server, llama-cpp-python and an HF baseline: throughput, TTFT, ratios."""
    servers = parse_list(servers, "--servers", SERVERS)
    with exit_on_signals():
        compare(servers, concurrency, num_prompts, input_len, output_len, threads, max_duration, warmup, seed,
                request_timeout, engine_dir, quant, gguf, hf_model, offline, require_peers, output)


def compare(servers, concurrency, num_prompts, input_len, output_len, threads, max_duration, warmup, seed,
            request_timeout, engine_dir, quant, gguf, hf_model, offline, require_peers, output) -> None:
    """The body of `main`, with the signal handlers in place."""
    levels = parse_list(concurrency, "--concurrency")
    if engine_dir is not None and not (engine_dir / "config.json").is_file():
        raise CompareError(f"{engine_dir} is not an engine directory (no config.json); build one with "
                           f"`python -m inference build`")
    build_engine = OURS in servers and engine_dir is None
    llama_peers = {LLAMA_SERVER, LLAMA_CPP_PYTHON} & set(servers)
    needs_gguf = build_engine or (HF in servers and hf_model is None) or llama_peers
    gguf = gguf or (default_gguf() if needs_gguf else None)
    plan = Plan(servers, levels, num_prompts, input_len, output_len, threads, max_duration, warmup, seed,
                request_timeout, default_engine(gguf, quant) if build_engine else engine_dir, gguf, hf_model or gguf,
                offline, output.parent / f"{output.stem}-logs")
    document = run_comparison(plan, require_peers or os.environ.get("CI") == "true")
    tables = [servers_table(document)] + ([ratio_table(document)] if document["ours"] else [])
    print_tables(tables)
    for line in targets_lines(document["targets"]):
        click.echo(line)
    for path in write_results(document, output):
        click.echo(f"wrote {path}")


if __name__ == "__main__":
    main(prog_name="python -m benchmarks.servers")
