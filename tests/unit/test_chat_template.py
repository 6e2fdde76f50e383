"""Reading a model's chat template from its GGUF header or its Hugging Face folder."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

from kcdev.chat_template import (
    describe_configured,
    folder_has_template,
    gguf_has_template,
    has_template,
)
from kcdev.gguf_meta import GGUFError, read_string_value
from tests.support.tiny_gguf import CHAT_TEMPLATE, write_tiny_llama
from tests.unit.conftest import MakeSettings


def test_the_template_and_other_strings_are_read_from_the_header(tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "m.gguf")
    assert read_string_value(model, "tokenizer.chat_template") == CHAT_TEMPLATE
    assert read_string_value(model, "general.name") == "kc-devenv tiny llama"
    assert read_string_value(model, "no.such.key") is None
    assert read_string_value(model, "llama.block_count") is None  # not a string


def test_a_model_with_and_without_a_template(tmp_path: Path) -> None:
    assert gguf_has_template(write_tiny_llama(tmp_path / "chat.gguf")) is True
    assert gguf_has_template(write_tiny_llama(tmp_path / "base.gguf", chat_template=False)) is False


def test_the_vocabulary_is_skipped_not_parsed(tmp_path: Path) -> None:
    """A 262,144-token vocabulary (Gemma's) is walked in well under a second."""
    path = tmp_path / "big-vocab.gguf"
    with path.open("wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, 0, 2))
        key = b"tokenizer.ggml.tokens"
        f.write(struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 8, 262_144))
        token = struct.pack("<Q", 6) + b"token!"
        f.write(token * 262_144)
        key = b"tokenizer.chat_template"
        f.write(struct.pack("<Q", len(key)) + key + struct.pack("<IQ", 8, 2) + b"{}")
    start = time.monotonic()
    assert read_string_value(path, "tokenizer.chat_template") == "{}"
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize(
    ("data", "problem"),
    [(b"NOPE" + b"\0" * 20, "not a GGUF file"), (b"GGUF" + struct.pack("<I", 3), "ends early"),
     (b"GGUF" + struct.pack("<IQQ", 1, 0, 0), "too old"),
     # Damaged lengths (found by mutating a real header: OSError and OverflowError before)
     (b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + struct.pack("<Q", 1) + b"k"
      + struct.pack("<IQ", 8, 2**64 - 1), "ends early"),
     (b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + struct.pack("<Q", 1) + b"k"
      + struct.pack("<IIQ", 9, 10, 2**62), "ends early")],
)  # fmt: skip
def test_what_is_not_a_gguf_file_is_one_error(tmp_path: Path, data: bytes, problem: str) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError, match=problem):
        read_string_value(path, "tokenizer.chat_template")
    assert gguf_has_template(path) is None


def test_hugging_face_folders(tmp_path: Path) -> None:
    config = tmp_path / "config-template"
    config.mkdir()
    (config / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ x }}"}))
    jinja = tmp_path / "jinja"
    jinja.mkdir()
    (jinja / "chat_template.jinja").write_text("{{ x }}")
    base = tmp_path / "base"
    base.mkdir()
    (base / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert [folder_has_template(p) for p in (config, jinja, base, empty)] == [
        True, True, False, None,
    ]  # fmt: skip
    assert has_template(config) is True


def test_ps_line_for_the_configured_model(make_settings: MakeSettings, tmp_path: Path) -> None:
    write_tiny_llama(tmp_path / "base.gguf", chat_template=False)
    write_tiny_llama(tmp_path / "chat.gguf")
    s = make_settings(gguf_dir=str(tmp_path), model_path="/models/base.gguf")
    assert describe_configured(s, "llamacpp") == (
        "model: base.gguf (no chat template (completions only); the chat task refuses it)"
    )
    s = make_settings(gguf_dir=str(tmp_path), model_path="/models/chat.gguf")
    assert describe_configured(s, "llamacpp") == "model: chat.gguf (chat template)"
    s = make_settings(gguf_dir=str(tmp_path), model_path="/models/gone.gguf")
    assert describe_configured(s, "llamacpp") == "model: gone.gguf (not on this machine)"
