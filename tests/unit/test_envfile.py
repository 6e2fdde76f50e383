"""`.env`: read strictly (every unusable file is one line), and one key edited keeping the rest."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from dotenv import dotenv_values

from kcdev import envfile
from kcdev.envfile import NEW_FILE_HEADER, EnvChange, read, set_value
from kcdev.errors import UserError

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
    env.write_text("# sourced by my shell\nexport MODEL_PATH=/models/a.gguf\nA=1\n")
    env.chmod(0o640)
    set_value(env, "MODEL_PATH", "/models/c.gguf")
    assert env.read_text() == "# sourced by my shell\nexport MODEL_PATH=/models/c.gguf\nA=1\n"
    assert stat.S_IMODE(env.stat().st_mode) == 0o640


def test_every_assignment_of_the_key_is_rewritten(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("MODEL_PATH=/models/a.gguf\nA=1\nMODEL_PATH=/models/b.gguf\n")
    set_value(env, "MODEL_PATH", "/models/c.gguf")
    assert env.read_text() == "MODEL_PATH=/models/c.gguf\nA=1\nMODEL_PATH=/models/c.gguf\n"


@pytest.mark.parametrize(
    "value", ["/models/with space.gguf", 'a"b', "x#y", "", "it's", "back\\slash", "tail\\"]
)
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


def test_a_file_it_cannot_parse_is_refused_before_any_edit(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("A=1\nCOMPOSE_PROJECT_NAME kc-adv\n")
    with pytest.raises(UserError, match="line 2 is not KEY=value"):
        set_value(env, "MODEL_PATH", "/models/x.gguf")
    assert env.read_text() == "A=1\nCOMPOSE_PROJECT_NAME kc-adv\n"


def test_a_write_it_cannot_make_is_one_line_and_keeps_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk, faked: there is no way to fill one safely in a test."""
    env = tmp_path / ".env"
    env.write_text("A=1\n")

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(envfile, "set_key", disk_full)
    with pytest.raises(UserError) as caught:
        set_value(env, "A", "2")
    assert str(caught.value) == (
        f"cannot write {env} (No space left on device): make it writable, or set A there yourself"
    )
    assert env.read_text() == "A=1\n"


# --- reading ------------------------------------------------------------------------------------


def test_reading_gives_values_and_the_line_of_each_key(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("# settings\n\n\nA=1\nexport B='two words'  # note\nBARE\nA=3\n")
    found = read(env)
    assert found.values == {"A": "3", "B": "two words", "BARE": None}
    assert found.lines == {"A": 7, "B": 5, "BARE": 6}
    assert found.exists


def test_a_missing_file_reads_as_empty(tmp_path: Path) -> None:
    found = read(tmp_path / ".env")
    assert found.values == {} and not found.exists


UNPARSABLE = [
    pytest.param(
        "COMPOSE_PROJECT_NAME kc-adv\n",
        "no '=' after COMPOSE_PROJECT_NAME: write COMPOSE_PROJECT_NAME=value",
        id="space-instead-of-equals",
    ),
    pytest.param(
        'REDIS_PASSWORD="s3cret-Pa55\n',
        "the quote that opens REDIS_PASSWORD's value is never closed",
        id="unterminated-double-quote",
    ),
    pytest.param(
        "REDIS_PASSWORD='s3cret-Pa55\n",
        "the quote that opens REDIS_PASSWORD's value is never closed",
        id="unterminated-single-quote",
    ),
    pytest.param(
        'MODEL_PATH="/models/a.gguf" s3cret-Pa55\n',
        "MODEL_PATH's value holds spaces, quotes or text after its closing quote",
        id="text-after-quote",
    ),
]


@pytest.mark.parametrize(("line", "problem"), UNPARSABLE)
def test_a_line_dotenv_cannot_parse_names_file_line_and_fix(
    tmp_path: Path, line: str, problem: str
) -> None:
    env = tmp_path / ".env"
    env.write_text(f"# mine\n\nA=1\n{line}B=2\n")
    with pytest.raises(UserError) as caught:
        read(env)
    message = str(caught.value)
    assert message.startswith(f"{env} line 4 is not KEY=value: {problem}")
    assert "s3cret" not in message and "\n" not in message


def test_a_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_bytes("A=1\n# café\n".encode() + "B=caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"line 3 is not UTF-8 text: save the file as UTF-8$"):
        read(env)


def test_a_folder_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / ".env").mkdir()
    with pytest.raises(UserError, match=r"\.env is a folder, not a file: move it away"):
        read(tmp_path / ".env")


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / ".env")
    with pytest.raises(UserError, match=r"\.env is a FIFO, not a file"):
        read(tmp_path / ".env")


def test_a_dangling_symlink_is_not_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / ".env").symlink_to(tmp_path / "gone.env")
    with pytest.raises(UserError, match=r"is a symlink to .*gone\.env, which does not exist"):
        read(tmp_path / ".env")


def test_a_symlink_loop_is_one_line(tmp_path: Path) -> None:
    (tmp_path / ".env").symlink_to(tmp_path / ".env")
    with pytest.raises(UserError, match=r"^cannot open .*\.env \(Too many levels"):
        read(tmp_path / ".env")


def test_an_unreadable_file_is_one_line(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    if os.geteuid() == 0:
        # Root reads any file of its own; /proc/sys has files no one may read, root included.
        env.symlink_to("/proc/sys/vm/compact_memory")
    else:
        env.write_text("A=1\n")
        env.chmod(0o000)
    with pytest.raises(UserError) as caught:
        read(env)
    assert str(caught.value) == (
        f"cannot open {env} (Permission denied): make it a file you can read (chmod u+r), "
        "or remove it to use the defaults"
    )
