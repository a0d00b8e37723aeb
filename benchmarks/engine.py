"""`python -m benchmarks.engine`: in-process engines, like for like — our `LLM` engine against HF
transformers `generate` and llama.cpp's `Llama` (llama-cpp-python), same model, same prompts, same threads.

Engines (names in benchmarks/names.py; each runs in a process of its own, so peak RSS is its own and no
engine's thread pool competes with another's; all on the same unique random token prompts, no prefix-cache
hits, EOS ignored so every request makes exactly --max-tokens tokens):
- ours-fp32, ours-int8, ours-int4 (group 32): our engine with the fused kernels (weight-only quantization);
- ours-w8a8: int8 weights times activations rounded to int8 per block of 32 (not weight-only);
- ours-fp32-torch (plain PyTorch ops) and ours-int8-per-op (kernels called op by op): our baselines;
- hf-transformers: `generate` on the same (dequantized) weights, float32, loaded with strict key checking;
- hf-transformers-bf16: the same in bfloat16, HF's fastest dtype on CPUs with AVX512_BF16 or AMX (oneDNN);
  the targets compare with whichever HF engine was faster;
- llama-cpp-python: llama.cpp in-process on the GGUF itself (one sequence at a time: batch 1 only).
Servers are compared with servers by `python -m benchmarks.servers`, over one HTTP client.
Measured per engine, after an untimed warm-up: TTFT of one --prompt-tokens prompt; batch-1 decode tok/s =
(tokens - 1) / (last token time - first token time); output tok/s with --concurrency requests together;
peak RSS; the roofline = read bandwidth / bytes of weights one decode step reads, where the bandwidth is
the probe's or, if higher, what the fastest decode step demonstrably moved (a roofline never exceeds 100 %).
The ceiling at --concurrency = that bandwidth / the same bytes x --concurrency (one step reads the weights
once for every sequence in the batch): what memory alone would allow. Timings are medians over --repeats
runs. Writes benchmark.json (with the CPU model and flags and the peers' build records) and benchmark.png
into --out.
--dtype (for GPU runs) runs our engines and hf-transformers in that dtype; hf-transformers-bf16 always runs
in bfloat16, so under --dtype bfloat16 it would repeat hf-transformers and is skipped when both are asked for.
"""
from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import torch
from rich.console import Console

from benchmarks.launchers import PeerError, llama_cpp_python, missing_peers
from benchmarks.machine import gguf_weight_type, machine, read_bandwidth_gb_s
from benchmarks.names import HF, HF_BF16, LLAMA_CPP_PYTHON, OURS, arithmetic
from benchmarks.report import engine_table, engine_targets, plot_engines, targets_lines
from inference import kernels
from inference.bench.report import quotient

INT4_GROUP_SIZE = 32  # SmolLM2's GGUF is Q4_1 over groups of 32: int4 g32 re-encodes it losslessly


class BenchmarkError(click.ClickException):
    """Bad input or a required peer missing: one `Error: ...` line, exit status 2."""

    exit_code = 2


@dataclass(slots=True)
class BenchConfig:
    gguf: str
    max_tokens: int = 128
    concurrency: int = 16
    prompt_tokens: int = 64
    threads: int = 2
    repeats: int = 3
    device: str = "cpu"
    dtype: str = "float32"


@dataclass(slots=True)
class EngineResult:
    engine: str
    ttft_ms: float
    decode_tok_s_batch1: float
    output_tok_s_concurrent: float | None  # None: the engine runs one sequence at a time
    peak_rss_mb: float | None
    weight_bytes_per_token: int
    host_overhead_ms_per_step: float | None = None  # ours: scheduling, tensor building, post-processing


def make_prompts(count: int, length: int, vocab_size: int, seed: int = 0) -> list[list[int]]:
    """Random token-id prompts whose first tokens all differ (no shared prefix)."""
    generator = torch.Generator().manual_seed(seed)
    low, high = min(1000, vocab_size // 4), vocab_size - 1
    first = torch.randperm(high - low, generator=generator)[:count] + low
    rest = torch.randint(low, high, (count, length - 1), generator=generator)
    return torch.cat([first[:, None], rest], dim=1).tolist()


def weight_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of weights one decode step reads: the state dict (quantized buffers included, shared tensors once)
    except an embedding table that is not also the head, of which a step reads only a few rows."""
    embedding = model.model.embed_tokens.weight
    lm_head = getattr(model, "lm_head", None)
    skip = {embedding.data_ptr()} if lm_head is not None and lm_head.weight.data_ptr() != embedding.data_ptr() \
        else set()
    tensors = {t.data_ptr(): t for t in model.state_dict().values() if t.data_ptr() not in skip}
    return sum(t.numel() * t.element_size() for t in tensors.values())


# ---- our engine ----

def bench_ours(config: BenchConfig, variant: str) -> EngineResult:
    quant, environment = OURS[variant]
    with _environment(environment):  # read when the engine loads; restored after (in-process runs, tests)
        return _bench_ours(config, quant, variant)


@contextlib.contextmanager
def _environment(variables: dict[str, str]):
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _bench_ours(config: BenchConfig, quant: str, variant: str) -> EngineResult:
    from inference.build import cached_engine
    from inference.config import SamplingParams
    from inference.llm import LLM

    torch.set_num_threads(config.threads)
    source = cached_engine(config.gguf, quant, INT4_GROUP_SIZE) if quant != "none" else config.gguf
    llm = LLM(source, max_num_seqs=max(config.concurrency, 1), device=config.device, dtype=config.dtype,
              enable_prefix_caching=False, kv_cache_bytes=256 * 2**20)
    engine = llm.engine
    prompts = make_prompts(config.concurrency + 2, config.prompt_tokens, engine.model_config.vocab_size)
    params = SamplingParams(temperature=0, max_tokens=config.max_tokens, ignore_eos=True)
    llm.generate([prompts[-1]], SamplingParams(temperature=0, max_tokens=4))  # warm-up
    runs = [_ours_single(engine, prompts[-2], params, config.device) for _ in range(config.repeats)]
    concurrent = [_ours_concurrent(engine, prompts[:config.concurrency], params, config.device)
                  for _ in range(config.repeats)]
    return EngineResult(variant, statistics.median(r[0] for r in runs) * 1000, statistics.median(r[1] for r in runs),
                        statistics.median(r[0] for r in concurrent), _peak_rss_mb(),
                        weight_bytes_per_token(engine.runner.model),
                        statistics.median(r[1] for r in concurrent) * 1000)


def _ours_single(engine, prompt: list[int], params, device: str) -> tuple[float, float]:
    """(TTFT seconds, decode tok/s) of one request alone."""
    engine.add_request("single", prompt, params)
    start, token_times = _sync_time(device), []
    while engine.has_unfinished():
        if engine.step().outputs:
            token_times.append(_sync_time(device))
    return ttft_and_decode_rate(start, token_times)


def ttft_and_decode_rate(start: float, token_times: list[float]) -> tuple[float, float]:
    """(TTFT seconds, decode tok/s) of one request from its start and the time each token arrived: the one
    definition every in-process engine is measured by."""
    return token_times[0] - start, (len(token_times) - 1) / (token_times[-1] - token_times[0])


def _ours_concurrent(engine, prompts: list[list[int]], params, device: str) -> tuple[float, float]:
    """(output tok/s, median host-side seconds per step outside model + sampling) for requests added together."""
    for i, prompt in enumerate(prompts):
        engine.add_request(f"c{i}", prompt, params)
    start, generated, overheads = _sync_time(device), 0, []
    while engine.has_unfinished():
        step = engine.step()
        generated += sum(len(output.token_ids) for output in step.outputs)
        overheads.append(step.elapsed - step.model_elapsed)
    return generated / (_sync_time(device) - start), statistics.median(overheads)


# ---- HF transformers ----

def bench_hf(config: BenchConfig, variant: str = HF) -> EngineResult:
    from benchmarks.hf_engine import model_from_checkpoint

    torch.set_num_threads(config.threads)
    model = model_from_checkpoint(config.gguf, hf_dtype(variant, config.dtype), config.device)
    prompts = make_prompts(config.concurrency + 2, config.prompt_tokens, model.config.vocab_size)
    _hf_generate(model, [prompts[-1]], 4, config.device)  # warm-up
    runs = [_hf_single(model, prompts[-2], config.max_tokens, config.device) for _ in range(config.repeats)]
    batch = statistics.median(_hf_generate(model, prompts[:config.concurrency], config.max_tokens, config.device)
                              for _ in range(config.repeats))
    return EngineResult(variant, statistics.median(r[0] for r in runs) * 1000, statistics.median(r[1] for r in runs),
                        config.concurrency * config.max_tokens / batch, _peak_rss_mb(),
                        weight_bytes_per_token(model))


def _hf_single(model, prompt: list[int], new_tokens: int, device: str) -> tuple[float, float]:
    """(TTFT seconds, decode tok/s) of one greedy generate, timed per token as ours is (a separate 1-token
    generate for the TTFT would make the decode rate the difference of two noisy timings)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    token_times: list[float] = []

    class TimeEachToken(StoppingCriteria):  # generate calls it once per token it appends
        def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
            token_times.append(_sync_time(device))
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    start = _sync_time(device)
    _hf_generate(model, [prompt], new_tokens, device, StoppingCriteriaList([TimeEachToken()]))
    return ttft_and_decode_rate(start, token_times)


def hf_dtype(variant: str, dtype: str) -> str:
    """hf-transformers runs in --dtype (float32 unless a GPU run asks otherwise); hf-transformers-bf16 in bf16."""
    return "bfloat16" if variant == HF_BF16 else dtype


def repeated_engines(engines: list[str], dtype: str) -> dict[str, str]:
    """{engine: why} for the engines that would repeat another one's run under this --dtype."""
    if HF in engines and HF_BF16 in engines and hf_dtype(HF, dtype) == hf_dtype(HF_BF16, dtype):
        return {HF_BF16: f"--dtype {dtype} runs {HF} in bfloat16 already"}
    return {}


def _hf_generate(model, prompts: list[list[int]], new_tokens: int, device: str, stopping_criteria=None) -> float:
    """Seconds for a greedy batch generate of exactly `new_tokens` tokens (prompts have equal length)."""
    ids = torch.tensor(prompts, device=device)
    start = _sync_time(device)
    with torch.inference_mode():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, stopping_criteria=stopping_criteria)
    return _sync_time(device) - start


# ---- llama.cpp in-process ----

def bench_llama_cpp_python(config: BenchConfig) -> EngineResult:
    """llama.cpp in-process, run by the llama-cpp-python venv's interpreter (see llama_cpp_inprocess.py)."""
    prompts = make_prompts(config.repeats + 1, config.prompt_tokens, _gguf_vocab_size(config.gguf))
    job = {"gguf": config.gguf, "threads": config.threads, "n_ctx": config.prompt_tokens + config.max_tokens + 64,
           "prompts": prompts, "max_tokens": config.max_tokens, "repeats": config.repeats}
    script = Path(__file__).with_name("llama_cpp_inprocess.py")
    result = subprocess.run([llama_cpp_python(), script], input=json.dumps(job), capture_output=True, text=True,
                            timeout=1800)
    if result.returncode != 0:
        raise PeerError(f"llama-cpp-python benchmark failed: {result.stderr.strip()[-2000:]}")
    measured = json.loads(result.stdout)
    if measured["tokens"] != [config.max_tokens] * config.repeats:
        raise PeerError(f"llama-cpp-python made {measured['tokens']} tokens, not {config.max_tokens} per run")
    return EngineResult(LLAMA_CPP_PYTHON, measured["ttft_s"] * 1000, measured["decode_tok_s_batch1"], None,
                        measured["peak_rss_mb"], Path(config.gguf).stat().st_size)


def _gguf_vocab_size(path: str) -> int:
    from inference.loaders.gguf import read_config

    return read_config(Path(path)).vocab_size


# ---- shared ----

def _sync_time(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


RUNNERS = {**{variant: functools.partial(bench_ours, variant=variant) for variant in OURS},
           HF: bench_hf, HF_BF16: functools.partial(bench_hf, variant=HF_BF16),
           LLAMA_CPP_PYTHON: bench_llama_cpp_python}


def run_isolated(name: str, config: BenchConfig) -> EngineResult:
    """Run one engine's benchmark in a fresh process (llama-cpp-python runs in its venv's process anyway)."""
    if name == LLAMA_CPP_PYTHON:
        return RUNNERS[name](config)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(RUNNERS[name], config).result()


def summarize(results: list[EngineResult], probe_gb_s: float, config: BenchConfig, skipped: dict[str, str]) -> dict:
    """The report: each engine with its arithmetic, roofline and ceiling at --concurrency, the targets, the
    machine it ran on."""
    demonstrated = {r.engine: r.decode_tok_s_batch1 * r.weight_bytes_per_token / 1e9 for r in results}
    fastest = max(demonstrated, key=demonstrated.get, default=None)
    bandwidth, source = probe_gb_s, "read probe"
    if fastest is not None and demonstrated[fastest] > probe_gb_s:  # the probe read low: trust what a step moved
        bandwidth, source = demonstrated[fastest], f"moved by a {fastest} decode step (probe read {probe_gb_s:.1f})"
    report = {"config": asdict(config), "machine": machine(), "kernels": kernels.describe(),
              "read_bandwidth_gb_s": bandwidth, "bandwidth_source": source, "probe_gb_s": probe_gb_s,
              "demonstrated_gb_s": demonstrated, "skipped": skipped, "engines": {}}
    weight_type, kernel_path = gguf_weight_type(config.gguf), report["kernels"]["path"]
    for result in results:
        roofline = bandwidth * 1e9 / result.weight_bytes_per_token
        ceiling = None if result.output_tok_s_concurrent is None else roofline * config.concurrency
        computes_in = arithmetic(result.engine, weight_type, kernel_path)
        if result.engine not in (LLAMA_CPP_PYTHON, HF_BF16) and config.dtype != "float32":  # GPU runs
            computes_in = computes_in.replace("fp32", config.dtype)
        report["engines"][result.engine] = {
            **asdict(result), "arithmetic": computes_in, "roofline_tok_s_batch1": roofline,
            "fraction_of_roofline": result.decode_tok_s_batch1 / roofline, "ceiling_tok_s_concurrent": ceiling,
            "fraction_of_ceiling_concurrent": quotient(result.output_tok_s_concurrent, ceiling)}
    report["targets"] = engine_targets(report["engines"])
    return report


def run_benchmark(config: BenchConfig, engines: list[str], require_peers: bool, out: Path,
                  console: Console | None = None) -> dict:
    """Every engine in turn; the report, also written to out/benchmark.json with a plot."""
    console = console or Console(width=200)
    skipped = missing_peers(engines)
    if skipped and require_peers:
        raise BenchmarkError("; ".join(skipped.values()))
    skipped.update(repeated_engines(engines, config.dtype))
    for name, reason in skipped.items():
        console.print(f"[bold red]SKIPPING {name}[/]: {reason}")
    results = [run_isolated(name, config) for name in engines if name not in skipped]
    report = summarize(results, read_bandwidth_gb_s(config.threads, config.device), config, skipped)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_engines(report, out / "benchmark.png")
    console.print(engine_table(report))
    for line in targets_lines(report["targets"]):
        console.print(line, highlight=False)
    return report


def _default_model() -> Path:
    from inference.model_store import FetchError, fetch_model

    try:
        return fetch_model()
    except (FetchError, OSError) as error:
        raise BenchmarkError(f"cannot fetch the SmolLM2 model ({error}); pass --gguf") from None


@click.command("engine", help=__doc__.split("\n\n")[0])
@click.option("--gguf", type=click.Path(exists=True), help="A Llama GGUF file or HF directory [default: the cached "
                                                            "SmolLM2-135M Q4_1].")
@click.option("--engines", default=",".join(RUNNERS), show_default=True, help="Engines to run, comma-separated.")
@click.option("--require-peers", is_flag=True, help="Fail when a llama.cpp peer is not built (always on when CI=true).")
@click.option("--max-tokens", type=click.IntRange(min=2), default=128, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--prompt-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results/benchmark"),
              show_default=True)
def main(gguf, engines, require_peers, max_tokens, concurrency, prompt_tokens, threads, repeats, device, dtype, out):
    names = list(dict.fromkeys(name.strip() for name in engines.split(",") if name.strip()))  # each once
    unknown = [name for name in names if name not in RUNNERS]
    if unknown or not names:
        raise BenchmarkError(f"unknown engine {', '.join(unknown) or '(none)'}; choose from {','.join(RUNNERS)}")
    config = BenchConfig(gguf or str(_default_model()), max_tokens, concurrency, prompt_tokens, threads, repeats,
                         device, dtype)
    try:
        run_benchmark(config, names, require_peers or os.environ.get("CI") == "true", out)
    except PeerError as error:
        raise BenchmarkError(f"{error}; rebuild the peer with scripts/build-peers.sh") from None


if __name__ == "__main__":
    main(prog_name="python -m benchmarks.engine")
