"""The platform's edge on the sandbox: streams pass the VIP unbuffered, the edge adds little to the time to
first token, and the official `openai` client streams chat through the VIP.

The platform is deployed by site.yml (the fixture runs it on the edge and inference hosts when the VIP does
not answer yet). Every loop here is bounded in requests and time.
"""
from __future__ import annotations

import json
import statistics
import time

import httpx
import pytest


TTFT_ROUNDS = 7  # per path, interleaved, so both see the same background load


def stream_chat(base: str, model: str, max_tokens: int, prompt: str = "Count from one to one hundred in words.") \
        -> list[float]:
    """Seconds from sending to each content chunk of one streamed chat completion (EOS ignored)."""
    body = {"model": model, "stream": True, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0,
            "messages": [{"role": "user", "content": prompt}]}
    arrivals = []
    with httpx.Client(trust_env=False, timeout=120) as http:
        started = time.monotonic()
        with http.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
            assert response.status_code == 200, response.read()
            for line in response.iter_lines():
                if line.startswith("data: {") and any(c.get("delta", {}).get("content")
                                                       for c in json.loads(line[6:]).get("choices", [])):
                    arrivals.append(time.monotonic() - started)
    return arrivals


def test_stream_through_the_vip_is_not_buffered(platform):
    arrivals = stream_chat(platform["api"], platform["model"], max_tokens=64)
    first, last = arrivals[0], arrivals[-1]
    assert len(arrivals) >= 32, f"{len(arrivals)} content chunks for 64 tokens"
    # Buffered, every chunk lands together at the end; streamed, the first comes long before the last.
    assert first < 0.5 * last and last - first > 0.2, f"first chunk after {first:.3f} s, last after {last:.3f} s"


def test_time_to_first_token_through_the_vip_is_close_to_direct(platform):
    direct, through_vip = [], []
    for round_ in range(TTFT_ROUNDS):
        node = platform["node_urls"][round_ % len(platform["node_urls"])]
        direct.append(stream_chat(node, platform["model"], max_tokens=2, prompt="Say hi.")[0])
        through_vip.append(stream_chat(platform["api"], platform["model"], max_tokens=2, prompt="Say hi.")[0])
    direct_p50, vip_p50 = statistics.median(direct), statistics.median(through_vip)
    assert vip_p50 <= direct_p50 * 1.10 + 0.020, \
        f"median TTFT through the VIP {vip_p50 * 1000:.1f} ms vs direct {direct_p50 * 1000:.1f} ms"


def test_official_openai_client_streams_chat_through_the_vip(platform):
    import openai  # a dev extra: missing means the venv is stale (`make install`)

    client = openai.OpenAI(base_url=f"{platform['api']}/v1", api_key="not-needed", max_retries=0,
                           http_client=httpx.Client(trust_env=False, timeout=120))
    stream = client.chat.completions.create(
        model=platform["model"], stream=True, max_tokens=16, temperature=0,
        messages=[{"role": "user", "content": "Name three colours."}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text.strip() and finish in (["length"], ["stop"]), (text, finish)
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].object == "chat.completion.chunk"
