"""Editing one key of `.env`: the rest of the user's file stays as it was."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from dotenv import dotenv_values

from kcdev.envfile import NEW_FILE_HEADER, EnvChange, set_value

ENV = """# my settings
LLM_BACKEND=llamacpp

# the model
MODEL_PATH=/models/old.gguf   # keep a note
REDIS_PASSWORD="s3cret"
"""


def test_a_replaced_value_is_reported_and_everything_else_kept(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(ENV)
    change = set_value(env, "MODEL_PATH", "/models/new.gguf")
    assert change == EnvChange("MODEL_PATH", "/models/old.gguf", "/models/new.gguf")
    assert change.replaced
    assert env.read_text() == ENV.replace(
        "MODEL_PATH=/models/old.gguf   # keep a note", "MODEL_PATH=/models/new.gguf"
    )
    assert "(was /models/old.gguf)" in change.describe(env)


def test_a_missing_key_is_appended(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("LLM_BACKEND=vllm")  # no final newline
    change = set_value(env, "MODEL_NAME", "/models/qwen")
    assert not change.replaced and change.changed
    assert env.read_text() == "LLM_BACKEND=vllm\nMODEL_NAME=/models/qwen\n"
    assert change.describe(env).endswith("(added)")


def test_the_same_value_leaves_the_file_untouched(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("MODEL_PATH=/models/m.gguf  # mine\n")
    before = env.stat().st_mtime_ns
    change = set_value(env, "MODEL_PATH", "/models/m.gguf")
    assert not change.changed
    assert env.stat().st_mtime_ns == before
    assert env.read_text() == "MODEL_PATH=/models/m.gguf  # mine\n"


def test_a_missing_env_file_is_created_private(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    set_value(env, "MODEL_PATH", "/models/m.gguf")
    assert env.read_text() == NEW_FILE_HEADER + "MODEL_PATH=/models/m.gguf\n"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600


def test_the_file_mode_and_export_prefix_are_kept(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("export MODEL_PATH=/models/a.gguf\nMODEL_PATH=/models/b.gguf\n")
    env.chmod(0o640)
    set_value(env, "MODEL_PATH", "/models/c.gguf")
    assert env.read_text() == "export MODEL_PATH=/models/c.gguf\nMODEL_PATH=/models/c.gguf\n"
    assert stat.S_IMODE(env.stat().st_mode) == 0o640


@pytest.mark.parametrize("value", ["/models/with space.gguf", 'a"b', "x#y", ""])
def test_values_read_back_exactly(tmp_path: Path, value: str) -> None:
    env = tmp_path / ".env"
    env.write_text("A=1\n")
    set_value(env, "MODEL_PATH", value)
    assert dotenv_values(env)["MODEL_PATH"] == value
    assert dotenv_values(env)["A"] == "1"


def test_a_symlinked_env_file_is_edited_through_the_link(tmp_path: Path) -> None:
    real = tmp_path / "real.env"
    real.write_text("MODEL_PATH=/models/a.gguf\n")
    link = tmp_path / ".env"
    link.symlink_to(real)
    set_value(link, "MODEL_PATH", "/models/b.gguf")
    assert link.is_symlink()
    assert real.read_text() == "MODEL_PATH=/models/b.gguf\n"


def test_no_temporary_file_is_left_behind(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(ENV)
    set_value(env, "MODEL_PATH", "/models/x.gguf")
    assert [p.name for p in tmp_path.iterdir()] == [".env"]
