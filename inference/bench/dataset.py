"""Deterministic synthetic prompts: seeded word sequences drawn from the bundled word list.

The word list holds common English words, which GPT-2-style BPE vocabularies (SmolLM2's included)
encode as about one token each, so `input_len` words is roughly `input_len` tokens. The bench
reports the real prompt length from the server's `usage`, never this estimate.
"""

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

WORDS_FILE = Path(__file__).parent / "data" / "words.json"


@dataclass(frozen=True, slots=True)
class BenchPrompt:
    """One request of the data set: the prompt text and the number of tokens to generate."""

    text: str
    approx_input_tokens: int
    max_tokens: int


@cache
def load_words() -> tuple[str, ...]:
    """The bundled word list (read once)."""
    return tuple(json.loads(WORDS_FILE.read_text()))


def prompt_stream(input_len: int, output_len: int, seed: int) -> Iterator[BenchPrompt]:
    """An endless, seeded stream of unique prompts of about `input_len` tokens each."""
    if input_len < 1 or output_len < 1:
        raise ValueError("input and output lengths must be at least 1 token")
    rng = random.Random(seed)
    words = load_words()
    while True:
        text = " ".join(rng.choices(words, k=input_len))
        yield BenchPrompt(text=text, approx_input_tokens=input_len, max_tokens=output_len)
