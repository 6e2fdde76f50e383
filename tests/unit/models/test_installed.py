"""`invoke models`: what is on disk, whether it was verified, and which one the settings use."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from kcdev.models.digest import Digest
from kcdev.models.installed import (
    file_is_verified,
    folder_is_verified,
    gguf_models,
    hf_models,
    record_file,
    record_folder,
    report,
)
from kcdev.models.partial import Partial
from tests.unit.conftest import MakeSettings

DATA = b"GGUF" + b"\0" * 2044


def digest_of(data: bytes) -> Digest:
    return Digest.sha256(hashlib.sha256(data).hexdigest())


def dirs(tmp_path: Path) -> tuple[Path, Path]:
    gguf, hf = tmp_path / "gguf", tmp_path / "hf"
    gguf.mkdir()
    hf.mkdir()
    return gguf, hf


def test_a_recorded_file_is_verified_until_it_changes(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(DATA)
    record_file(tmp_path, "m.gguf", digest_of(DATA), "http://127.0.0.1/m.gguf")
    assert file_is_verified(tmp_path, "m.gguf", digest_of(DATA))
    assert not file_is_verified(tmp_path, "m.gguf", Digest.sha256("0" * 64))
    (tmp_path / "m.gguf").write_bytes(DATA + b"x")
    assert not file_is_verified(tmp_path, "m.gguf", digest_of(DATA))


def test_a_recorded_folder_is_verified_until_a_file_changes(tmp_path: Path) -> None:
    folder = tmp_path / "qwen"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    record_folder(tmp_path, "qwen", "Qwen/Q", "abc", [("config.json", digest_of(b"{}"))])
    assert folder_is_verified(tmp_path, "qwen", "Qwen/Q", "abc")
    assert not folder_is_verified(tmp_path, "qwen", "Qwen/Q", "other")
    assert not folder_is_verified(tmp_path, "qwen", "Other/Q")
    (folder / "config.json").write_text("{ }")
    assert not folder_is_verified(tmp_path, "qwen", "Qwen/Q")


def test_the_report_lists_sizes_states_and_the_model_in_use(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    gguf, hf = dirs(tmp_path)
    (gguf / "used.gguf").write_bytes(DATA)
    record_file(gguf, "used.gguf", digest_of(DATA), "test")
    (gguf / "mine.gguf").write_bytes(DATA)
    (gguf / "touched.gguf").write_bytes(DATA)
    record_file(gguf, "touched.gguf", digest_of(DATA), "test")
    os.utime(gguf / "touched.gguf", ns=(1, 1))
    (gguf / ".hidden.gguf.lock").write_text("")
    settings = make_settings(
        gguf_dir=str(gguf), hf_dir=str(hf), model_path="/models/used.gguf",
        model_name="/models/absent",
    )  # fmt: skip
    models = {m.name: m for m in gguf_models(settings)}
    assert sorted(models) == ["mine.gguf", "touched.gguf", "used.gguf"]
    assert models["used.gguf"].in_use and models["used.gguf"].state == "verified"
    assert models["mine.gguf"].state == "not verified"
    assert models["touched.gguf"].state == "changed since verification"

    text = report(settings)
    assert "* used.gguf" in text
    assert "2.0 KiB" in text
    assert "MODEL_NAME=/models/absent is not here" in text
    assert "invoke fetch-model --backend vllm" in text
    assert ".lock" not in text


def test_partial_downloads_are_shown_with_their_expected_size(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    gguf, hf = dirs(tmp_path)
    partial = Partial(gguf / "big.gguf")
    partial.path.write_bytes(DATA)
    partial.save_meta("http://127.0.0.1/big.gguf", digest_of(DATA), 4 << 20, None)
    (hf / ".qwen.partial").mkdir()
    (hf / ".qwen.partial" / "config.json").write_text("{}")
    settings = make_settings(gguf_dir=str(gguf), hf_dir=str(hf))
    (model,) = gguf_models(settings)
    assert (model.name, model.state, model.detail) == (
        "big.gguf", "partial download", "of 4.0 MiB; fetch again",
    )  # fmt: skip
    (snapshot,) = hf_models(settings)
    assert (snapshot.name, snapshot.state) == ("qwen", "partial download")


def test_hf_folders_are_listed_with_their_total_size(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    gguf, hf = dirs(tmp_path)
    (hf / "qwen").mkdir()
    (hf / "qwen" / "config.json").write_bytes(b"x" * 100)
    (hf / "qwen" / "model.safetensors").write_bytes(b"x" * 900)
    settings = make_settings(gguf_dir=str(gguf), hf_dir=str(hf), model_name="/models/qwen")
    (model,) = hf_models(settings)
    assert (model.size, model.in_use, model.state) == (1000, True, "not verified")
    assert "(none)" in report(settings)  # no GGUF models


def test_models_says_which_ones_have_a_chat_template(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    from tests.support.tiny_gguf import write_tiny_llama

    gguf, hf = dirs(tmp_path)
    write_tiny_llama(gguf / "chat.gguf")
    write_tiny_llama(gguf / "base.gguf", chat_template=False)
    (hf / "qwen").mkdir()
    (hf / "qwen" / "tokenizer_config.json").write_text('{"chat_template": "{{ m }}"}')
    settings = make_settings(gguf_dir=str(gguf), hf_dir=str(hf))
    assert {m.name: m.chat for m in gguf_models(settings)} == {
        "base.gguf": False,
        "chat.gguf": True,
    }
    assert [m.chat for m in hf_models(settings)] == [True]
    text = report(settings)
    assert "base.gguf" in text and "no chat template (completions only)" in text
    assert "chat.gguf" in text and "; chat template" in text
