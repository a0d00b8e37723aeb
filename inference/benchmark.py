"""`python -m inference.benchmark`: our engine vs HF transformers `generate`, same weights, same prompts.

Each engine runs in its own process (so peak RSS is its own) on the same unique random prompts (no
prefix-cache hits). Measured per engine, after an untimed warm-up:
- TTFT of one `--prompt-tokens` prompt (prefill + first token);
- batch-1 decode tok/s: (tokens - 1) / (time of last token - time of first token);
- output tok/s with `--concurrency` requests submitted together (total new tokens / wall time);
- peak RSS of the process; the roofline: measured read bandwidth / bytes of weights read per token;
- for our engine, the median host-side overhead per step (scheduling, tensor building, post-processing).
Writes benchmark.json and benchmark.png into `--out`. Timings are medians over `--repeats` runs.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass(slots=True)
class BenchConfig:
    model: str
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
    output_tok_s_concurrent: float
    peak_rss_mb: float
    weight_bytes_per_token: int
    host_overhead_ms_per_step: float | None = None  # scheduling, tensor building, post-processing


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


def read_bandwidth_gb_s(threads: int, size_mb: int = 512) -> float:
    """Sustained read bandwidth: a torch sum over a buffer much larger than the caches (median of 5)."""
    torch.set_num_threads(threads)
    buffer = torch.ones(size_mb * 2**20 // 4)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        buffer.sum()
        times.append(time.perf_counter() - start)
    return buffer.numel() * 4 / statistics.median(times) / 1e9


# ---- our engine ----

def bench_ours(config: BenchConfig) -> EngineResult:
    from inference.config import SamplingParams
    from inference.engine import LLM

    torch.set_num_threads(config.threads)
    llm = LLM(config.model, max_num_seqs=max(config.concurrency, 1), device=config.device, dtype=config.dtype,
              enable_prefix_caching=False, kv_cache_bytes=256 * 2**20)
    engine = llm.engine
    prompts = make_prompts(config.concurrency + 2, config.prompt_tokens, engine.model_config.vocab_size)
    params = SamplingParams(temperature=0, max_tokens=config.max_tokens, ignore_eos=True)
    llm.generate([prompts[-1]], SamplingParams(temperature=0, max_tokens=4))  # warm-up
    runs = [_ours_single(engine, prompts[-2], params, config.device) for _ in range(config.repeats)]
    concurrent = [_ours_concurrent(engine, prompts[:config.concurrency], params, config.device)
                  for _ in range(config.repeats)]
    return EngineResult("ours", statistics.median(r[0] for r in runs) * 1000, statistics.median(r[1] for r in runs),
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

    checkpoint = load_checkpoint(config.model)
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


# ---- shared ----

def _sync_time(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


RUNNERS = {"ours": bench_ours, "hf": bench_hf}


def run_isolated(name: str, config: BenchConfig) -> EngineResult:
    """Run one engine's benchmark in a fresh process."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(RUNNERS[name], config).result()


def summarize(results: list[EngineResult], bandwidth_gb_s: float, config: BenchConfig) -> dict:
    ours = next((r for r in results if r.engine == "ours"), None)
    report = {"config": asdict(config), "read_bandwidth_gb_s": bandwidth_gb_s, "engines": {}}
    for result in results:
        roofline = bandwidth_gb_s * 1e9 / result.weight_bytes_per_token
        report["engines"][result.engine] = {**asdict(result), "roofline_tok_s_batch1": roofline,
                                            "fraction_of_roofline": result.decode_tok_s_batch1 / roofline}
    if ours:
        report["ours_vs"] = {r.engine: {"decode_batch1": ours.decode_tok_s_batch1 / r.decode_tok_s_batch1,
                                        "concurrent": ours.output_tok_s_concurrent / r.output_tok_s_concurrent,
                                        "ttft": r.ttft_ms / ours.ttft_ms}
                             for r in results if r is not ours}
    return report


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
        axis.bar(names, [report["engines"][n][key] for n in names], color=["tab:blue", "tab:orange", "tab:green"])
        axis.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, list[str], Path]:
    parser = argparse.ArgumentParser(prog="python -m inference.benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="engine dir, .gguf or HF dir (default: the cached SmolLM2 GGUF)")
    parser.add_argument("--engines", nargs="+", choices=sorted(RUNNERS), default=["ours", "hf"])
    for name, default in (("max-tokens", 128), ("concurrency", 16), ("prompt-tokens", 64), ("threads", 2),
                          ("repeats", 3)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--out", type=Path, default=Path("results/benchmark"))
    args = parser.parse_args(argv)
    model = args.model or str(_default_model())
    config = BenchConfig(model, args.max_tokens, args.concurrency, args.prompt_tokens, args.threads, args.repeats,
                         args.device, args.dtype)
    return config, args.engines, args.out


def _default_model() -> Path:
    from inference.models import fetch_model

    return fetch_model()


def main(argv: list[str] | None = None) -> dict:
    config, engines, out = parse_args(argv)
    results = [run_isolated(name, config) for name in engines]
    report = summarize(results, read_bandwidth_gb_s(config.threads), config)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(report, indent=2))
    plot(report, out / "benchmark.png")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
