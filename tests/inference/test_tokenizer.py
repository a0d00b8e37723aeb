"""Tokenizer: byte-level test tokenizer, save/load, chat templates in a sandbox, streaming detokenization."""

from __future__ import annotations

import pytest
from jinja2 import TemplateError
from jinja2.exceptions import SecurityError

from inference.tokenizer import IncrementalDetokenizer, Tokenizer

TEXT = "héllo 👩‍💻 世界 — ok"


@pytest.fixture(scope="module")
def byte_tokenizer() -> Tokenizer:
    return Tokenizer.byte_level()


def test_byte_level_ids_are_the_utf8_bytes(byte_tokenizer):
    assert byte_tokenizer.encode(TEXT, add_special_tokens=False) == list(TEXT.encode())
    assert byte_tokenizer.encode("a") == [256, ord("a")]
    assert (byte_tokenizer.vocab_size, byte_tokenizer.bos_token_id, byte_tokenizer.eos_token_ids) == (258, 256, {257})


def test_special_tokens_in_text_are_single_ids_and_skipped_on_decode(byte_tokenizer):
    ids = byte_tokenizer.encode("a</s>", add_special_tokens=False)
    assert ids == [ord("a"), 257]
    assert byte_tokenizer.decode(ids) == "a"
    assert byte_tokenizer.decode(ids, skip_special_tokens=False) == "a</s>"


def test_save_and_load_round_trip(tmp_path, byte_tokenizer):
    byte_tokenizer.save(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    assert loaded.encode(TEXT) == byte_tokenizer.encode(TEXT)
    assert (loaded.bos_token_id, loaded.eos_token_ids, loaded.add_bos_token) == (256, {257}, True)
    assert loaded.chat_template == byte_tokenizer.chat_template


def test_chat_template_renders_messages_and_generation_prompt(byte_tokenizer):
    messages = [{"role": "user", "content": "hi"}]
    assert byte_tokenizer.apply_chat_template(messages) == "user: hi\nassistant: "
    assert byte_tokenizer.apply_chat_template(messages, add_generation_prompt=False) == "user: hi\n"


def _with_template(tokenizer: Tokenizer, template: str) -> Tokenizer:
    return Tokenizer(tokenizer.backend, tokenizer.bos_token_id, tokenizer.eos_token_ids, chat_template=template)


def test_chat_template_gets_bos_eos_and_raise_exception(byte_tokenizer):
    template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'tool' %}"
                "{{ raise_exception('no tools') }}{% endif %}{{ m['content'] }}{{ eos_token }}{% endfor %}")
    tokenizer = _with_template(byte_tokenizer, template)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "x"}]) == "<s>x</s>"
    with pytest.raises(TemplateError, match="no tools"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}])


def test_chat_template_runs_sandboxed(byte_tokenizer):
    tokenizer = _with_template(byte_tokenizer, "{{ messages.__class__.__mro__ }}")
    with pytest.raises(SecurityError):
        tokenizer.apply_chat_template([])


def test_no_chat_template_is_a_clear_error(byte_tokenizer):
    with pytest.raises(ValueError, match="no chat template"):
        _with_template(byte_tokenizer, None).apply_chat_template([])


def stream(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer)
    return [detokenizer.push(i) for i in ids] + [detokenizer.flush()]


def test_incremental_detokenizer_never_splits_a_character(byte_tokenizer):
    """Each byte is its own token, so emoji and CJK arrive in 3-4 pieces; no piece may hold half of one."""
    pieces = stream(byte_tokenizer, byte_tokenizer.encode(TEXT, add_special_tokens=False))
    assert "".join(pieces) == TEXT
    assert not any("\ufffd" in piece for piece in pieces)
    assert pieces[list(TEXT.encode()).index(0xF0)] == ""  # the first byte of 👩 alone emits nothing


def test_incremental_detokenizer_flushes_an_incomplete_tail(byte_tokenizer):
    assert "".join(stream(byte_tokenizer, [ord("a"), 0xE4, 0xB8])) == "a\ufffd"


@pytest.mark.model
def test_incremental_detokenizer_on_smollm2(smollm2_checkpoint):
    tokenizer = smollm2_checkpoint.tokenizer
    text = "Grüße aus 東京 🗼, ça va? 👍🏽"
    pieces = stream(tokenizer, tokenizer.encode(text))
    assert "".join(pieces) == text and not any("\ufffd" in piece for piece in pieces)


@pytest.mark.model
def test_smollm2_chat_template_matches_transformers(smollm2_checkpoint, hf_smollm2_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 👋"}]
    expected = hf_smollm2_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert smollm2_checkpoint.tokenizer.apply_chat_template(messages) == expected
    assert smollm2_checkpoint.tokenizer.eos_token_ids == {2}
