"""llama.cpp in-process (llama-cpp-python), measured for `python -m inference.benchmark`.

Runs under the llama-cpp-python venv's interpreter (scripts/build-peers.sh), so it imports nothing but the
standard library and llama_cpp. Reads a job as JSON on stdin, prints one JSON result on stdout:
TTFT of one prompt, batch-1 decode tok/s (EOS suppressed so every run makes max_tokens tokens), and the
process's peak RSS. llama-cpp-python runs one sequence at a time, so it has no concurrent number.
"""
import json
import resource
import statistics
import sys
import time

from llama_cpp import Llama


def timed_completion(llm: Llama, prompt: list[int], max_tokens: int) -> list[float]:
    """Arrival time of every streamed token, relative to the request."""
    llm.reset()  # no KV reuse between runs
    start, times = time.perf_counter(), []
    for _ in llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, stream=True,
                                   logit_bias={llm.token_eos(): -1e9}):
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    job = json.load(sys.stdin)
    llm = Llama(model_path=job["gguf"], n_threads=job["threads"], n_threads_batch=job["threads"],
                n_ctx=job["n_ctx"], n_batch=512, seed=0, verbose=False)
    prompts = job["prompts"]
    timed_completion(llm, prompts[0], 4)  # warm-up
    ttfts, rates = [], []
    for prompt in prompts[1:1 + job["repeats"]]:
        times = timed_completion(llm, prompt, job["max_tokens"])
        ttfts.append(times[0])
        rates.append((len(times) - 1) / (times[-1] - times[0]))
    print(json.dumps({"ttft_s": statistics.median(ttfts), "decode_tok_s_batch1": statistics.median(rates),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
