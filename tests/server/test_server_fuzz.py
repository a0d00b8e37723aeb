"""Fuzzing the live server: schemathesis builds requests from /openapi.json (valid ones and ones that break the
schema) and hypothesis adds hand-picked edge values (64-bit and 400-digit integers, NaN and Infinity, empty,
huge and unpaired-surrogate strings, wrong types) to otherwise valid bodies.

Every response must be a non-5xx with a documented status, content type and body; a request that breaks the
schema must be refused. After every BATCH generated requests (and once at the end) a normal completion and
/health must succeed, so every generated request is followed by a health-checked normal request before the test
ends. To keep the run short on 2 cores, generated bodies are adjusted before sending: a string `model` becomes the
served name (else most cases stop at 404), valid `max_tokens` / `max_completion_tokens` above 8 become 8 (chat
requests without either get 8), valid `n` above 4 becomes 4. Everything outside the schema's bounds goes as generated.
"""
from __future__ import annotations

import json
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (content_type_conformance, negative_data_rejection, not_a_server_error,
                                 response_schema_conformance, status_code_conformance)

pytestmark = pytest.mark.timeout(600)

ROUTES = ("/v1/completions", "/v1/chat/completions")
SCHEMA_EXAMPLES = 40  # per route and generation mode: 2 × 2 × 40 = 160 schema-driven requests
EDGE_EXAMPLES = 100  # random fields of a valid body set to edge values; plus every edge value as each route's text
MIN_REQUESTS = 300
BATCH = 5
SHORT_TOKENS, FEW_CHOICES = 8, 4
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
FUZZ_SETTINGS = settings(deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                         suppress_health_check=list(HealthCheck))

EDGE_VALUES = [2**64, 2**63, -2**63 - 1, 2**31, 2**31 - 1, -1, 0, 10**400, float("nan"), float("inf"), float("-inf"),
               1e308, 5e-324, -0.0, 1.5, "", "x" * 5000, "\ud800", "🦄" * 300, "\x00", True, False, None, [], {},
               [2**64], [[]], ["", ""], [{"role": "user"}], {"include_usage": "yes"}]
FIELDS = ["prompt", "messages", "model", "n", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
          "min_p", "seed", "stop", "stop_token_ids", "logprobs", "top_logprobs", "presence_penalty",
          "frequency_penalty", "repetition_penalty", "stream", "stream_options", "ignore_eos", "user", "unknown"]
VALID = {"/v1/completions": {"prompt": "fuzz", "max_tokens": 2},
         "/v1/chat/completions": {"messages": [{"role": "user", "content": "fuzz"}], "max_tokens": 2}}


class Probe:
    """Counts generated requests and, after every BATCH of them, checks the server still serves."""

    def __init__(self, url: str) -> None:
        self.url, self.sent, self.unchecked = url, 0, 0

    def sent_one(self) -> None:
        self.sent += 1
        self.unchecked += 1
        if self.unchecked >= BATCH:
            self.check()

    def check(self) -> None:
        normal = httpx.post(self.url + "/v1/completions", json={"prompt": "still serving?", "max_tokens": 2},
                            timeout=60)
        assert normal.status_code == 200, f"after fuzzed requests a normal one got {normal.status_code}: {normal.text}"
        assert httpx.get(self.url + "/health", timeout=10).status_code == 200
        self.unchecked = 0


def keep_short(body, path: str) -> None:
    """The adjustments the module docstring lists (valid values only)."""
    if not isinstance(body, dict):
        return
    if isinstance(body.get("model"), str):
        body["model"] = "tiny"
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if type(value) is int and SHORT_TOKENS < value < 2**31:
            body[name] = SHORT_TOKENS
    if path.endswith("chat/completions") and "max_tokens" not in body and "max_completion_tokens" not in body:
        body["max_completion_tokens"] = SHORT_TOKENS
    if type(body.get("n")) is int and FEW_CHOICES < body["n"] <= 64:
        body["n"] = FEW_CHOICES


def fuzz_route(schema, path: str, mode: GenerationMode, probe: Probe) -> None:
    checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])

    @settings(FUZZ_SETTINGS, max_examples=SCHEMA_EXAMPLES)
    @given(case=schema[path]["POST"].as_strategy(generation_mode=mode))
    def run(case):
        keep_short(case.body, path)
        response = case.call(timeout=60)
        probe.sent_one()
        case.validate_response(response, checks=checks)

    run()


@st.composite
def edge_requests(draw):
    path = draw(st.sampled_from(ROUTES))
    body = dict(VALID[path])
    changes = draw(st.dictionaries(st.sampled_from(FIELDS), st.sampled_from(EDGE_VALUES) | st.integers() | st.text(),
                                   min_size=1, max_size=3))
    body.update(changes)
    return path, body


def with_text(path: str, value) -> dict:
    """A valid body whose prompt (or message content) is `value`."""
    if path == "/v1/completions":
        return {**VALID[path], "prompt": value}
    return {**VALID[path], "messages": [{"role": "user", "content": value}]}


def send_raw(url: str, path: str, body: dict) -> None:
    """POST `body` as Python's JSON encoder writes it (NaN and Infinity as bare words); no 5xx, errors OpenAI-shaped."""
    keep_short(body, path)
    raw = json.dumps(body)
    response = httpx.post(url + path, content=raw, headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code < 500, f"{path} {raw[:300]} -> {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_fuzzed_requests_never_get_5xx_and_the_server_keeps_serving(server):
    start = time.monotonic()
    probe = Probe(server.url)
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    for path in ROUTES:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz_route(schema, path, mode, probe)

    for value in EDGE_VALUES:
        for path in ROUTES:
            send_raw(server.url, path, with_text(path, value))
            probe.sent_one()

    @settings(FUZZ_SETTINGS, max_examples=EDGE_EXAMPLES)
    @given(request=edge_requests())
    def edge(request):
        send_raw(server.url, *request)
        probe.sent_one()

    edge()
    probe.check()
    print(f"fuzzed {probe.sent} requests in {time.monotonic() - start:.0f}s")
    assert probe.sent >= MIN_REQUESTS
