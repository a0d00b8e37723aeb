"""`python -m inference.bench` / `lab bench`: load-test OpenAI-compatible endpoints side by side."""

import asyncio
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from inference.bench.client import Endpoint, RequestOptions
from inference.bench.dataset import prompt_stream
from inference.bench.metrics import parse_goodput
from inference.bench.plots import write_plots
from inference.bench.report import compare_tables, print_tables, run_record, summary_table, write_json
from inference.bench.load import Load, benchmark_endpoint


class BenchError(click.ClickException):
    """Bad input: one `Error: <problem>; <fix>` line, exit status 2."""

    exit_code = 2


def parse_endpoint(spec: str, api: str, model: str | None, api_key: str | None) -> Endpoint:
    """`name=http://host:port` or a bare URL (named "default")."""
    name, _, url = spec.rpartition("=") if "=" in spec.split("://")[0] else ("default", "", spec)
    if not url.startswith(("http://", "https://")) or not name:
        raise BenchError(f"bad endpoint {spec!r}; use NAME=http://HOST:PORT")
    return Endpoint(name=name, base_url=url.removesuffix("/v1").rstrip("/"), api=api, model=model, api_key=api_key)


def parse_numbers(text: str, kind: type, option: str) -> list:
    """A comma list of positive numbers ("1,2,4" or "0.5,inf")."""
    try:
        values = [kind(item) for item in text.split(",") if item.strip()]
    except ValueError:
        values = []
    if not values or any(value <= 0 for value in values):
        raise BenchError(f"bad {option} {text!r}; give positive numbers separated by commas")
    return values


def build_loads(concurrency: str | None, request_rate: str | None, num_prompts: int, max_duration: float, seed: int):
    """The load levels of the run: a concurrency sweep or a list of request rates."""
    if concurrency and request_rate:
        raise BenchError("--concurrency and --request-rate exclude each other; pick one mode")
    if request_rate:
        rates = parse_numbers(request_rate, float, "--request-rate")
        return [Load(request_rate=r, num_prompts=num_prompts, max_duration_s=max_duration, seed=seed) for r in rates]
    levels = parse_numbers(concurrency or "1", int, "--concurrency")
    return [Load(concurrency=c, num_prompts=num_prompts, max_duration_s=max_duration, seed=seed) for c in levels]


def run_all(endpoints, loads, options, params: dict, slos) -> list[dict]:
    """Benchmark every endpoint in turn (same prompts for each) under a live progress view."""
    records = []
    progress_columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*progress_columns, console=Console(stderr=True)) as progress:
        for endpoint in endpoints:
            task = progress.add_task(endpoint.name, total=len(loads) * params["num_prompts"])
            prompts = prompt_stream(params["input_len"], params["output_len"], params["seed"])
            outcomes = asyncio.run(
                benchmark_endpoint(endpoint, prompts, loads, options, params["warmup"], slos,
                                   on_result=lambda result, task=task: progress.advance(task))
            )
            records += [run_record(outcome, endpoint.base_url) for outcome in outcomes]
    return records


@click.command("bench")
@click.option("--endpoint", "endpoint_specs", multiple=True, metavar="NAME=URL",
              help="OpenAI-compatible server, repeatable (URL without /v1).")
@click.option("--api", type=click.Choice(["completions", "chat"]), default="completions", show_default=True)
@click.option("--model", help="Model name to send (default: the first of GET /v1/models).")
@click.option("--api-key", envvar="OPENAI_API_KEY", help="Bearer key (env OPENAI_API_KEY).")
@click.option("--concurrency", help="Concurrency sweep, e.g. 1,2,4,8 (default 1).")
@click.option("--request-rate", help="Poisson request rates per second, e.g. 2 or 1,4,inf.")
@click.option("--num-prompts", type=click.IntRange(min=1), default=32, show_default=True, help="Requests per load level.")
@click.option("--max-duration", type=click.FloatRange(min=0, min_open=True), default=600.0, show_default=True,
              help="Seconds per load level after which no new request starts.")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True, help="Unmeasured warm-up requests.")
@click.option("--input-len", type=click.IntRange(min=1), default=64, show_default=True, help="Prompt tokens (approx).")
@click.option("--output-len", type=click.IntRange(min=1), default=64, show_default=True, help="max_tokens per request.")
@click.option("--ignore-eos/--no-ignore-eos", default=True, show_default=True, help="Send vLLM's ignore_eos.")
@click.option("--temperature", type=float, default=0.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Data set and arrival-time seed.")
@click.option("--goodput", "goodput_specs", multiple=True, metavar="NAME:MS", help="SLOs, e.g. ttft:500 tpot:100.")
@click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True), default=300.0, show_default=True)
@click.option("--retries", type=click.IntRange(min=0), default=0, show_default=True,
              help="Retry a request that failed before its first chunk (failover drills).")
@click.option("--result-dir", type=click.Path(file_okay=False, path_type=Path), help="Write JSON results and plots here.")
@click.option("--plots/--no-plots", default=True, show_default=True, help="With --result-dir, also write PNG plots.")
@click.option("--compare", is_flag=True, help="Compare result files (the arguments) side by side instead of running.")
@click.argument("extra", nargs=-1, metavar="[FILES | NAME:MS]...")
def bench(endpoint_specs, api, model, api_key, concurrency, request_rate, num_prompts, max_duration, warmup,
          input_len, output_len, ignore_eos, temperature, seed, goodput_specs, request_timeout, retries,
          result_dir, plots, compare, extra):
    """Load-test OpenAI-compatible endpoints with vLLM's metric definitions (TTFT, TPOT, ITL, E2EL).

    Arguments are result files under --compare, otherwise more goodput SLOs (`--goodput ttft:500 tpot:100`).
    """
    if compare:
        return compare_runs([Path(name) for name in extra])
    if not endpoint_specs:
        raise BenchError("no endpoint given; pass --endpoint NAME=http://HOST:PORT")
    endpoints = [parse_endpoint(spec, api, model, api_key) for spec in endpoint_specs]
    if len({endpoint.name for endpoint in endpoints}) != len(endpoints):
        raise BenchError("endpoint names repeat; give each --endpoint a distinct NAME=")
    try:
        slos = parse_goodput([*goodput_specs, *extra])
    except ValueError as error:
        raise BenchError(str(error)) from None
    loads = build_loads(concurrency, request_rate, num_prompts, max_duration, seed)
    options = RequestOptions(temperature=temperature, ignore_eos=ignore_eos, timeout_s=request_timeout, retries=retries)
    params = dict(api=api, num_prompts=num_prompts, warmup=warmup, input_len=input_len, output_len=output_len,
                  seed=seed, goodput_ms=slos, max_duration_s=max_duration, retries=retries, ignore_eos=ignore_eos)
    runs = run_all(endpoints, loads, options, params, slos)
    print_tables([summary_table(runs)])
    if result_dir:
        save_results({"created": time.time(), "config": params, "runs": runs}, result_dir, plots)


def save_results(document: dict, result_dir: Path, plots: bool) -> None:
    """JSON document plus (optionally) the plots; prints where they went."""
    path = write_json(document, result_dir)
    click.echo(f"results: {path}")
    if plots:
        for plot in write_plots(document["runs"], result_dir, path.stem):
            click.echo(f"plot: {plot}")


def compare_runs(files: list[Path]) -> None:
    """`--compare a.json b.json`: print each run's metrics with ratios to the first."""
    missing = [str(path) for path in files if not path.is_file()] or ([] if files else ["(none given)"])
    if missing:
        raise BenchError(f"result file {missing[0]} not found; pass JSON files written by --result-dir")
    try:
        print_tables(compare_tables(files))
    except (ValueError, KeyError) as error:
        raise BenchError(f"cannot read result files ({error}); pass JSON files written by --result-dir") from None
