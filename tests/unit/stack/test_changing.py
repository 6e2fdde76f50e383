"""One task at a time changes a stack: the lock per project, waited for out loud, never stuck."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcdev.errors import UserError
from kcdev.stack import changing

REAL_LOCK_DIR = changing.lock_dir  # tests/unit/conftest.py points every other test elsewhere


@pytest.fixture(autouse=True)
def own_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own_stack_locks: Path
) -> Iterator[Path]:
    monkeypatch.setattr(changing, "lock_dir", REAL_LOCK_DIR)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    yield tmp_path


def hold_in_thread(project: str) -> tuple[threading.Event, threading.Event]:
    """Another task holding `project` until `release` is set."""
    held, release = threading.Event(), threading.Event()

    def run() -> None:
        with changing.changing(project, say=lambda line: None):
            held.set()
            release.wait(10)

    threading.Thread(target=run, daemon=True).start()
    assert held.wait(10)
    return held, release


def test_a_second_task_waits_out_loud_then_runs(own_tmp: Path) -> None:
    said: list[str] = []
    _, release = hold_in_thread("kc-a")
    threading.Timer(0.3, release.set).start()

    with changing.changing("kc-a", say=said.append, timeout=10):
        pass

    assert said == ["another up, down, restart or restore of stack kc-a is running: waiting up "
                    "to 10 s for it"]  # fmt: skip
    assert (own_tmp / f"kc-devenv-{os.getuid()}").stat().st_mode & 0o777 == 0o700


def test_a_holder_that_never_finishes_is_one_line(own_tmp: Path) -> None:
    _, release = hold_in_thread("kc-a")
    try:
        with pytest.raises(UserError) as caught, changing.changing("kc-a", say=print, timeout=0.2):
            pass
    finally:
        release.set()
    assert str(caught.value).startswith(
        "another up, down, restart or restore of stack kc-a still holds "
    )
    assert str(caught.value).endswith("after 0.2 s: let it finish, then run this again")


def test_other_stacks_never_wait() -> None:
    said: list[str] = []
    _, release = hold_in_thread("kc-a")
    try:
        with changing.changing("kc-b", say=said.append, timeout=0.2):
            pass
    finally:
        release.set()
    assert said == []


def test_an_unusable_temporary_folder_is_one_line(own_tmp: Path) -> None:
    (own_tmp / f"kc-devenv-{os.getuid()}").write_text("not a folder")
    with pytest.raises(UserError, match=r"^cannot make .* for the stack's lock .*: set TMPDIR"):
        changing.lock_dir()
