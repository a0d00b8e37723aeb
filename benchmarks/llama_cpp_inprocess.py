"""llama.cpp in-process (llama-cpp-python's `Llama`), measured for `python -m benchmarks.engine`.

Runs under the llama-cpp-python venv's interpreter (scripts/build-peers.sh), so it imports nothing but the
standard library and llama_cpp. Reads a job as JSON on stdin, prints one JSON result on stdout: TTFT of one
prompt, batch-1 decode tok/s and the process's peak RSS. Tokens come one at a time from `Llama.generate`
(greedy; the loop ignores EOS, so every run makes max_tokens tokens, counted exactly rather than from text
chunks). llama-cpp-python runs one sequence at a time, so it has no concurrent number.
"""
import json
import resource
import statistics
import sys
import time

from llama_cpp import Llama


def timed_generation(llm: Llama, prompt: list[int], max_tokens: int) -> list[float]:
    """Arrival time of each generated token, relative to the start."""
    llm.reset()  # no KV reuse between runs
    start, times = time.perf_counter(), []
    for _ in llm.generate(prompt, temp=0.0, reset=True):
        times.append(time.perf_counter() - start)
        if len(times) == max_tokens:
            break
    return times


def main() -> None:
    job = json.load(sys.stdin)
    llm = Llama(model_path=job["gguf"], n_threads=job["threads"], n_threads_batch=job["threads"],
                n_ctx=job["n_ctx"], n_batch=512, seed=0, verbose=False)
    prompts = job["prompts"]
    timed_generation(llm, prompts[0], 4)  # warm-up
    ttfts, rates, tokens = [], [], []
    for prompt in prompts[1:1 + job["repeats"]]:
        times = timed_generation(llm, prompt, job["max_tokens"])
        ttfts.append(times[0])
        rates.append((len(times) - 1) / (times[-1] - times[0]))
        tokens.append(len(times))
    print(json.dumps({"ttft_s": statistics.median(ttfts), "decode_tok_s_batch1": statistics.median(rates),
                      "tokens": tokens, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
