"""`python -m inference.benchmark`: our engine vs HF transformers vs llama.cpp, same model, same prompts.

Engines (each in its own process, so peak RSS is its own; all on the same unique random token prompts, no
prefix-cache hits, EOS ignored so every request makes exactly --max-tokens tokens):
- ours-fp32, ours-int8, ours-int4 (group 32): our engine, with the fused AVX2 kernels (weight-only
  quantization);
- ours-w8a8: int8 weights times activations quantized to int8 per block of 32 (not weight-only);
- ours-fp32-torch: our engine on plain PyTorch ops (OPSLAB_CPU_KERNELS=0), the kernels' baseline;
- ours-int8-per-op: int8 with the kernels called op by op from the modules (OPSLAB_FUSED_DECODE=0), the
  baseline of the one-call decode step;
- hf: HF transformers `generate` on the same (dequantized) weights, float32;
- llama-cpp-python: llama.cpp in-process on the GGUF itself (batch 1 only: it runs one sequence at a time);
- llama-server: llama.cpp's native server, `--parallel N -cb`, over HTTP on loopback.
The llama.cpp peers are built by scripts/build-peers.sh (never in CI's test path); a missing peer is skipped
loudly and recorded, or fails the run with --require-peers (the default when CI=true).
Measured per engine, after an untimed warm-up: TTFT of one --prompt-tokens prompt; batch-1 decode tok/s
= (tokens - 1) / (last token time - first token time); output tok/s with --concurrency requests submitted
together; peak RSS; the roofline = measured read bandwidth / bytes of weights one decode step reads.
Writes benchmark.json and benchmark.png into --out, and prints the issue's target ratios.
Timings are medians over --repeats runs.
"""
from __future__ import annotations

import argparse
import asyncio
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

import torch

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
    except an untied embedding table, of which a step reads only a few rows."""
    embedding = model.model.embed_tokens.weight
    lm_head = getattr(model, "lm_head", None)
    skip = {embedding.data_ptr()} if lm_head is not None and lm_head.weight.data_ptr() != embedding.data_ptr() \
        else set()
    tensors = {t.data_ptr(): t for t in model.state_dict().values() if t.data_ptr() not in skip}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def read_bandwidth_gb_s(threads: int, device: str = "cpu") -> float:
    """Sustained read bandwidth of the device the engines run on: a torch sum over a buffer much larger than
    the caches (median of 5; 512 MiB on the CPU, 4 GiB on a GPU, whose L2 holds tens of MB)."""
    torch.set_num_threads(threads)
    size_mb = 4096 if device.startswith("cuda") else 512
    buffer = torch.ones(size_mb * 2**20 // 4, device=device)
    buffer.sum()
    times = []
    for _ in range(5):
        start = _sync_time(device)
        buffer.sum()
        times.append(_sync_time(device) - start)
    return buffer.numel() * 4 / statistics.median(times) / 1e9


# ---- our engine ----

OURS = {"ours-fp32": ("none", {}), "ours-fp32-torch": ("none", {"OPSLAB_CPU_KERNELS": "0"}),
        "ours-int8": ("int8", {}), "ours-int8-per-op": ("int8", {"OPSLAB_FUSED_DECODE": "0"}),
        "ours-int4": ("int4", {}), "ours-w8a8": ("w8a8", {})}  # variant: (quant, environment it runs under)
BASELINES = ("ours-fp32-torch", "ours-int8-per-op")  # our own baselines: never count as ours in the targets
INT4_GROUP_SIZE = 32  # SmolLM2's GGUF is Q4_1 over groups of 32: int4 g32 re-encodes it losslessly


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
    from inference.engine import LLM

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

def bench_hf(config: BenchConfig) -> EngineResult:
    torch.set_num_threads(config.threads)
    model = _hf_model(config)
    prompts = make_prompts(config.concurrency + 2, config.prompt_tokens, model.config.vocab_size)
    _hf_generate(model, [prompts[-1]], 4, config.device)  # warm-up
    ttft = statistics.median(_hf_generate(model, [prompts[-2]], 1, config.device) for _ in range(config.repeats))
    full = statistics.median(_hf_generate(model, [prompts[-2]], config.max_tokens, config.device)
                             for _ in range(config.repeats))
    batch = statistics.median(_hf_generate(model, prompts[:config.concurrency], config.max_tokens, config.device)
                              for _ in range(config.repeats))
    return EngineResult("hf-transformers", ttft * 1000, (config.max_tokens - 1) / (full - ttft),
                        config.concurrency * config.max_tokens / batch, _peak_rss_mb(),
                        weight_bytes_per_token(model))


def _hf_model(config: BenchConfig):
    from transformers import LlamaConfig, LlamaForCausalLM

    from inference.loaders import load_checkpoint

    checkpoint = load_checkpoint(config.gguf)
    hf_config = LlamaConfig(**{k: v for k, v in checkpoint.config.to_dict().items() if v is not None})
    model = LlamaForCausalLM(hf_config)
    model.load_state_dict(checkpoint.state_dict, strict=False)
    if hf_config.tie_word_embeddings:
        model.tie_weights()
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[config.dtype]
    return model.to(device=config.device, dtype=dtype).eval()


def _hf_generate(model, prompts: list[list[int]], new_tokens: int, device: str) -> float:
    """Seconds for a greedy batch generate of exactly `new_tokens` tokens (prompts have equal length)."""
    ids = torch.tensor(prompts, device=device)
    start = _sync_time(device)
    with torch.inference_mode():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return _sync_time(device) - start


# ---- llama.cpp ----

def bench_llama_cpp_python(config: BenchConfig) -> EngineResult:
    """llama.cpp in-process, run by the llama-cpp-python venv's interpreter (see llama_cpp_inprocess.py)."""
    from inference.peers.servers import llama_cpp_python

    prompts = make_prompts(config.repeats + 1, config.prompt_tokens, _gguf_vocab_size(config.gguf))
    job = {"gguf": config.gguf, "threads": config.threads, "n_ctx": config.prompt_tokens + config.max_tokens + 64,
           "prompts": prompts, "max_tokens": config.max_tokens, "repeats": config.repeats}
    script = Path(__file__).parent / "benchmarks" / "llama_cpp_inprocess.py"
    result = subprocess.run([llama_cpp_python(), script], input=json.dumps(job), capture_output=True, text=True,
                            timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"llama-cpp-python benchmark failed: {result.stderr.strip()[-2000:]}")
    measured = json.loads(result.stdout)
    return EngineResult("llama-cpp-python", measured["ttft_s"] * 1000, measured["decode_tok_s_batch1"], None,
                        measured["peak_rss_mb"], Path(config.gguf).stat().st_size)


def bench_llama_server(config: BenchConfig) -> EngineResult:
    """llama.cpp's native server with one slot per concurrent request, over HTTP on loopback."""
    from inference.peers.servers import free_port, llama_server

    prompts = make_prompts(config.concurrency + config.repeats + 1, config.prompt_tokens,
                           _gguf_vocab_size(config.gguf))
    port = free_port()
    with llama_server(Path(config.gguf), port, config.threads, parallel=config.concurrency,
                      ctx_per_slot=config.prompt_tokens + config.max_tokens + 64) as url:
        result = asyncio.run(_bench_server(url, prompts, config))
        result.peak_rss_mb = _peak_rss_of_listener(port)
    return result


async def _bench_server(url: str, prompts: list[list[int]], config: BenchConfig) -> EngineResult:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await _stream_tokens(client, prompts[-1], 4)  # warm-up
        singles = [await _stream_tokens(client, prompt, config.max_tokens)
                   for prompt in prompts[config.concurrency:config.concurrency + config.repeats]]
        concurrent = []
        for _ in range(config.repeats):
            start = time.perf_counter()
            streams = await asyncio.gather(*(_stream_tokens(client, prompt, config.max_tokens)
                                             for prompt in prompts[:config.concurrency]))
            concurrent.append(sum(len(times) for times in streams) / (time.perf_counter() - start))
    return EngineResult("llama-server", statistics.median(times[0] for times in singles) * 1000,
                        statistics.median((len(t) - 1) / (t[-1] - t[0]) for t in singles),
                        statistics.median(concurrent), None, Path(config.gguf).stat().st_size)


async def _stream_tokens(client, prompt: list[int], max_tokens: int) -> list[float]:
    """Arrival times (seconds after sending) of the streamed tokens of one /completion request."""
    payload = {"prompt": prompt, "n_predict": max_tokens, "ignore_eos": True, "temperature": 0.0,
               "cache_prompt": False, "stream": True}
    start, times = time.perf_counter(), []
    async with client.stream("POST", "/completion", json=payload) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: ") and not json.loads(line[6:]).get("stop"):
                times.append(time.perf_counter() - start)
    return times


def _peak_rss_of_listener(port: int) -> float | None:
    """Peak RSS (VmHWM) in MB of the process listening on `port`, if it can be found."""
    import psutil

    for connection in psutil.net_connections("tcp"):
        if connection.laddr and connection.laddr.port == port and connection.status == psutil.CONN_LISTEN:
            status = Path(f"/proc/{connection.pid}/status").read_text()
            return next(int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM"))
    return None


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
           "hf-transformers": bench_hf, "llama-cpp-python": bench_llama_cpp_python,
           "llama-server": bench_llama_server}
PEERS = ("llama-cpp-python", "llama-server")


def run_isolated(name: str, config: BenchConfig) -> EngineResult:
    """Run one engine's benchmark in a fresh process (the llama.cpp peers run in their own anyway)."""
    if name in PEERS:
        return RUNNERS[name](config)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(RUNNERS[name], config).result()


TARGETS = (  # (name, what it compares, bound): the performance targets
    ("concurrent_vs_llama_server", "best ours output tok/s at --concurrency / llama-server's", ">=", 2.0),
    ("concurrent_vs_hf", "best ours output tok/s at --concurrency / HF's", ">=", 3.0),
    ("quantized_batch1_vs_llama_cpp_python", "best of ours-int8/int4/w8a8 batch-1 decode / llama-cpp-python's", ">=",
     1.0),
    ("fp32_fraction_of_roofline", "ours-fp32 batch-1 decode / its roofline", ">=", 0.6),
    ("ttft_vs_llama_cpp", "best ours TTFT / llama.cpp's best TTFT", "<=", 1.0),
)


def summarize(results: list[EngineResult], bandwidth_gb_s: float, config: BenchConfig,
              skipped: dict[str, str]) -> dict:
    report = {"config": asdict(config), "read_bandwidth_gb_s": bandwidth_gb_s, "skipped": skipped, "engines": {}}
    for result in results:
        roofline = bandwidth_gb_s * 1e9 / result.weight_bytes_per_token
        report["engines"][result.engine] = {**asdict(result), "roofline_tok_s_batch1": roofline,
                                            "fraction_of_roofline": result.decode_tok_s_batch1 / roofline}
    ours = [r for r in results if r.engine in OURS]
    report["ours_vs"] = {f"{mine.engine} / {peer.engine}": {
        "decode_batch1": mine.decode_tok_s_batch1 / peer.decode_tok_s_batch1,
        "concurrent": _ratio(mine.output_tok_s_concurrent, peer.output_tok_s_concurrent),
        "ttft": mine.ttft_ms / peer.ttft_ms} for mine in ours for peer in results if peer.engine not in OURS}
    report["targets"] = targets(report["engines"])
    return report


def targets(engines: dict[str, dict]) -> dict[str, dict]:
    """Each target's measured value, the engine of ours that gave it, and whether it is met (None where an
    engine it needs did not run)."""
    def best(names, key, pick=max):
        values = {n: engines[n][key] for n in names if n in engines and engines[n][key] is not None}
        if not values:
            return None, None
        name = pick(values, key=values.get)
        return values[name], name

    ours = [name for name in OURS if name not in BASELINES]
    llama_cpp = ("llama-cpp-python", "llama-server")
    concurrent, concurrent_by = best(ours, "output_tok_s_concurrent")
    batch1, batch1_by = best(["ours-int8", "ours-int4", "ours-w8a8"], "decode_tok_s_batch1")
    ttft, ttft_by = best(ours, "ttft_ms", min)
    values = {
        "concurrent_vs_llama_server": (_ratio(concurrent, best(["llama-server"], "output_tok_s_concurrent")[0]),
                                       concurrent_by),
        "concurrent_vs_hf": (_ratio(concurrent, best(["hf-transformers"], "output_tok_s_concurrent")[0]),
                             concurrent_by),
        "quantized_batch1_vs_llama_cpp_python": (_ratio(batch1, best(["llama-cpp-python"], "decode_tok_s_batch1")[0]),
                                                 batch1_by),
        "fp32_fraction_of_roofline": best(["ours-fp32"], "fraction_of_roofline"),
        "ttft_vs_llama_cpp": (_ratio(ttft, best(llama_cpp, "ttft_ms", min)[0]), ttft_by),
    }
    return {name: {"what": what, "value": values[name][0], "by": values[name][1], "bound": f"{relation} {bound}",
                   "met": None if values[name][0] is None else
                   (values[name][0] >= bound if relation == ">=" else values[name][0] <= bound)}
            for name, what, relation, bound in TARGETS}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


def print_report(report: dict) -> None:
    """The engines side by side, then the targets."""
    print(f"{'engine':18} {'TTFT ms':>9} {'b1 tok/s':>9} {'conc tok/s':>11} {'RSS MB':>8} {'roofline':>9}")
    for name, r in report["engines"].items():
        concurrent = "-" if r["output_tok_s_concurrent"] is None else f"{r['output_tok_s_concurrent']:.1f}"
        rss = "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"
        print(f"{name:18} {r['ttft_ms']:9.1f} {r['decode_tok_s_batch1']:9.1f} {concurrent:>11} {rss:>8} "
              f"{r['fraction_of_roofline']:8.0%}")
    for name, reason in report["skipped"].items():
        print(f"SKIPPED {name}: {reason}")
    for name, target in report["targets"].items():
        value = "n/a" if target["value"] is None else f"{target['value']:.2f}"
        verdict = {True: "met", False: "NOT met", None: "not measured"}[target["met"]]
        by = f", by {target['by']}" if target["by"] else ""
        print(f"target {name}: {value}{by} (want {target['bound']}; {target['what']}) -> {verdict}")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("decode_tok_s_batch1", "batch-1 decode tok/s"),
               ("output_tok_s_concurrent", f"{report['config']['concurrency']} concurrent: output tok/s"),
               ("ttft_ms", f"TTFT ms ({report['config']['prompt_tokens']}-token prompt)")]
    names = list(report["engines"])
    figure, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.5))
    for axis, (key, title) in zip(axes, metrics):
        axis.bar(names, [report["engines"][n][key] or 0 for n in names],
                 color=["tab:blue" if n in OURS else "tab:orange" for n in names])
        axis.set_title(title, fontsize=10)
        axis.tick_params(axis="x", labelrotation=60, labelsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m inference.benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", help="a Llama GGUF file (default: the cached SmolLM2-135M Q4_1)")
    parser.add_argument("--engines", nargs="+", choices=list(RUNNERS), default=list(RUNNERS))
    parser.add_argument("--require-peers", action="store_true", default=os.environ.get("CI") == "true",
                        help="fail when a llama.cpp peer is not built (default when CI=true)")
    for name, default in (("max-tokens", 128), ("concurrency", 16), ("prompt-tokens", 64), ("threads", 2),
                          ("repeats", 3)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--out", type=Path, default=Path("results/benchmark"))
    return parser.parse_args(argv)


def _default_model() -> Path:
    from inference.models import fetch_model

    return fetch_model()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    config = BenchConfig(args.gguf or str(_default_model()), args.max_tokens, args.concurrency, args.prompt_tokens,
                         args.threads, args.repeats, args.device, args.dtype)
    from inference.peers.servers import missing_peers

    skipped = missing_peers(args.engines)
    if skipped and args.require_peers:
        raise SystemExit("Error: " + "; ".join(skipped.values()))
    for name, reason in skipped.items():
        print(f"SKIPPING {name}: {reason}")
    results = [run_isolated(name, config) for name in args.engines if name not in skipped]
    report = summarize(results, read_bandwidth_gb_s(config.threads, config.device), config, skipped)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out / "benchmark.png")
    print_report(report)
    return report


if __name__ == "__main__":
    main()
