"""Text <-> token ids, chat templates and streaming detokenization.

Built on the `tokenizers` library. A GGUF file carries a byte-level BPE (vocab + merges + token types);
an HF directory carries tokenizer.json + tokenizer_config.json. `save` writes the HF form, so an
engine directory can be loaded without the original checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as Backend

CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types

GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _split(pattern: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Split(Regex(pattern), behavior="isolated")


def _pre_tokenizer(pre_type: str) -> pre_tokenizers.PreTokenizer:
    """The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre` (GPT-2 style unless told otherwise)."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    splits = {
        "default": [_split(GPT2_SPLIT)],
        "gpt2": [_split(GPT2_SPLIT)],
        "smollm": [pre_tokenizers.Digits(individual_digits=True), _split(GPT2_SPLIT)],
        "llama-bpe": [_split(LLAMA3_SPLIT)],
        "llama3": [_split(LLAMA3_SPLIT)],
    }
    if pre_type not in splits:
        raise ValueError(f"GGUF tokenizer pre-type {pre_type!r} is not supported (known: {sorted(splits)})")
    return pre_tokenizers.Sequence([*splits[pre_type], byte_level])


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    chars = printable + [256 + i for i in range(len(extra))]
    return {b: chr(c) for b, c in zip(printable + extra, chars)}


def _byte_level_backend(vocab: dict[str, int], merges: list[tuple[str, str]], pre_type: str) -> Backend:
    backend = Backend(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = _pre_tokenizer(pre_type)
    backend.decoder = decoders.ByteLevel()
    return backend


def _token_content(value: Any) -> str | None:
    """A tokenizer_config.json special token (string or AddedToken dict) as its text."""
    return value.get("content") if isinstance(value, dict) else value


@dataclass(slots=True)
class Tokenizer:
    """A `tokenizers` backend plus the special-token and chat-template facts the engine needs."""

    backend: Backend
    bos_token_id: int | None
    eos_token_ids: set[int]
    add_bos_token: bool = False
    chat_template: str | None = None

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_gguf_metadata(cls, metadata: dict[str, Any]) -> Tokenizer:
        """Byte-level BPE from `tokenizer.ggml.*` keys (model must be gpt2)."""
        kind = metadata.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ValueError(f"GGUF tokenizer model {kind!r} is not supported (only gpt2 byte-level BPE)")
        tokens = list(metadata["tokenizer.ggml.tokens"])
        types = list(metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens))
        merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges", [])]
        backend = _byte_level_backend(_byte_spelled_vocab(tokens), merges, metadata.get("tokenizer.ggml.pre", "gpt2"))
        alphabet = set(bytes_to_unicode().values())
        backend.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                    for t, k in zip(tokens, types) if k == CONTROL and set(t) <= alphabet])
        backend.add_tokens([AddedToken(t, normalized=False) for t, k in zip(tokens, types) if k == USER_DEFINED])
        eos = {metadata[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id") if k in metadata}
        return cls(backend, metadata.get("tokenizer.ggml.bos_token_id"), eos,
                   bool(metadata.get("tokenizer.ggml.add_bos_token", False)), metadata.get("tokenizer.chat_template"))

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """From an HF-style directory: tokenizer.json (+ tokenizer_config.json when present)."""
        directory = Path(directory)
        backend = Backend.from_file(str(directory / "tokenizer.json"))
        config_path = directory / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        template_path = directory / "chat_template.jinja"  # transformers>=5 keeps the template here
        if "chat_template" not in config and template_path.is_file():
            config["chat_template"] = template_path.read_text()
        return cls._from_hf_config(backend, config)

    @classmethod
    def _from_hf_config(cls, backend: Backend, config: dict[str, Any]) -> Tokenizer:
        def token_id(key: str) -> int | None:
            content = _token_content(config.get(key))
            return backend.token_to_id(content) if content else None

        eos = config.get("eos_token_ids") or [token_id("eos_token")]
        return cls(backend, token_id("bos_token"), {i for i in eos if i is not None},
                   bool(config.get("add_bos_token", False)), config.get("chat_template"))

    @classmethod
    def byte_level(cls) -> Tokenizer:
        """A tiny tokenizer for tests: ids 0..255 are the bytes, 256 = <s>, 257 = </s>; no merges."""
        vocab = {char: byte for byte, char in bytes_to_unicode().items()}
        backend = _byte_level_backend(vocab, [], "gpt2")
        backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<s>", "</s>")])
        return cls(backend, 256, {257}, add_bos_token=True,
                   chat_template="{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                                 "{% if add_generation_prompt %}assistant: {% endif %}")

    # ---- text <-> ids -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; special tokens written in the text are recognised; BOS when configured."""
        ids = self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens and self.add_bos_token and self.bos_token_id is not None and ids[:1] != [self.bos_token_id]:
            ids.insert(0, self.bos_token_id)
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ---- chat -------------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render the model's jinja2 chat template in a sandbox (HF semantics: bos/eos_token, raise_exception)."""
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template")
        return _compile_template(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self._text_of(self.bos_token_id), eos_token=self._text_of(min(self.eos_token_ids, default=None)))

    def _text_of(self, token_id: int | None) -> str:
        return "" if token_id is None else self.backend.id_to_token(token_id) or ""

    # ---- persistence ------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write tokenizer.json + tokenizer_config.json (HF layout; `Tokenizer.load` reads it back)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / "tokenizer.json"))
        config = {"bos_token": self._text_of(self.bos_token_id) or None,
                  "eos_token": self._text_of(min(self.eos_token_ids, default=None)) or None,
                  "eos_token_ids": sorted(self.eos_token_ids), "add_bos_token": self.add_bos_token,
                  "chat_template": self.chat_template}
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))


def _byte_spelled_vocab(tokens: list[str]) -> dict[str, int]:
    """Token -> id, respelling any token written outside the byte alphabet into it (as transformers does)."""
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    return {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode()): i for i, t in enumerate(tokens)}


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


@lru_cache(maxsize=8)
def _compile_template(source: str):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(source)


class IncrementalDetokenizer:
    """Turn a stream of token ids into text deltas that never end in half a UTF-8 character.

    Decodes a short window (`prefix_offset:`) and emits only the part beyond what was already emitted,
    holding back while the window's text ends in U+FFFD (an incomplete multibyte sequence).
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.token_ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def push(self, token_id: int) -> str:
        """Add one token; return the newly completed text ("" while a character is still incomplete)."""
        self.token_ids.append(token_id)
        emitted = self._decode(self.prefix_offset, self.read_offset)
        text = self._decode(self.prefix_offset, len(self.token_ids))
        if len(text) <= len(emitted) or text.endswith("\ufffd"):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.token_ids)
        return text[len(emitted):]

    def flush(self) -> str:
        """Whatever is still held back (incomplete bytes come out as U+FFFD)."""
        emitted = self._decode(self.prefix_offset, self.read_offset)
        text = self._decode(self.prefix_offset, len(self.token_ids))
        self.prefix_offset = self.read_offset = len(self.token_ids)
        return text[len(emitted):]

    def _decode(self, start: int, stop: int) -> str:
        return self.tokenizer.decode(self.token_ids[start:stop], self.skip_special_tokens)
