"""Task plumbing: user errors become one `error:` line and exit 1, in process and via `invoke`."""

from __future__ import annotations

import importlib
import io
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from invoke.context import Context
from invoke.exceptions import Exit

from kcdev.console import confirm, one_line_errors, say
from kcdev.errors import UserError
from kcdev.stack.docker_cli import Docker
from kcdev.stack.images import LLAMACPP_IMAGE, REDIS_IMAGE
from tests.unit.conftest import FakeRunner, MakeSettings

REPO_ROOT = Path(__file__).resolve().parents[2]


# --- one_line_errors -------------------------------------------------------------------------


def test_user_error_becomes_exit_1_and_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    @one_line_errors
    def fails() -> None:
        raise UserError("REDIS_PORT='abc' (from environment) is invalid")

    with pytest.raises(Exit) as caught:
        fails()

    assert caught.value.code == 1
    out, err = capsys.readouterr()
    assert err == "error: REDIS_PORT='abc' (from environment) is invalid\n"
    assert out == ""


def test_user_error_details_follow_the_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    @one_line_errors
    def fails() -> None:
        raise UserError("llm-server did not become ready", details="log line 1\nlog line 2\n")

    with pytest.raises(Exit) as caught:
        fails()

    assert caught.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: llm-server did not become ready",
        "log line 1",
        "log line 2",
    ]


def test_keyboard_interrupt_becomes_exit_130(capsys: pytest.CaptureFixture[str]) -> None:
    @one_line_errors
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(Exit) as caught:
        interrupted()

    assert caught.value.code == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_other_exceptions_keep_their_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    @one_line_errors
    def buggy() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        buggy()
    assert capsys.readouterr().err == ""


def test_wrapped_function_keeps_result_and_name() -> None:
    @one_line_errors
    def add(a: int, b: int = 2) -> int:
        return a + b

    assert add(1, b=5) == 6
    assert add.__name__ == "add"


def test_say_prints_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    say("images ready")

    assert capsys.readouterr().out == "images ready\n"


class FakeTerminal(io.StringIO):
    """Standard input that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


def test_confirm_refuses_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))

    with pytest.raises(UserError) as caught:
        confirm("Delete the Redis data volume? This cannot be undone.")

    assert str(caught.value) == (
        "Delete the Redis data volume? refusing without a terminal: pass --yes"
    )


@pytest.mark.parametrize("answer", ["y", "YES", " yes "])
def test_confirm_accepts_yes_on_a_terminal(monkeypatch: pytest.MonkeyPatch, answer: str) -> None:
    monkeypatch.setattr(sys, "stdin", FakeTerminal(f"{answer}\n"))

    confirm("Delete it?")  # returns: no exception means go ahead


@pytest.mark.parametrize("answer", ["", "n", "no", "maybe"])
def test_confirm_cancels_on_anything_else(monkeypatch: pytest.MonkeyPatch, answer: str) -> None:
    monkeypatch.setattr(sys, "stdin", FakeTerminal(f"{answer}\n"))

    with pytest.raises(UserError, match=r"^cancelled: nothing was changed$"):
        confirm("Delete it?")


# --- tasks.py in process (Docker faked) ------------------------------------------------------


@pytest.fixture
def tasks_module(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    return importlib.import_module("tasks")


@pytest.fixture
def faked_tasks(
    tasks_module: ModuleType,
    runner: FakeRunner,
    make_settings: MakeSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> ModuleType:
    """tasks.py with defaults-only settings (registry mode, no CA) and Docker on the fake runner."""
    settings = make_settings(image_source="registry", build_ca_bundle="none")
    runner.on("docker", "version", stdout="1.47\n")
    monkeypatch.setattr(tasks_module, "load_settings", lambda: settings)
    monkeypatch.setattr(tasks_module, "Docker", lambda: Docker(runner=runner))
    return tasks_module


def test_build_task_with_bogus_backend_fails_before_docker(
    faked_tasks: ModuleType, runner: FakeRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(Exit) as caught:
        faked_tasks.build(Context(), backend="bogus")

    assert caught.value.code == 1
    assert capsys.readouterr().err == (
        "error: unknown backend 'bogus': use one of llamacpp, vllm, none\n"
    )
    assert runner.calls == []


def test_build_task_reports_a_stopped_daemon(
    faked_tasks: ModuleType, runner: FakeRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    runner.on("docker", "info", returncode=1, stderr="Cannot connect to the Docker daemon\n")

    with pytest.raises(Exit) as caught:
        faked_tasks.build(Context())

    assert caught.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Docker is not running")
    assert err.count("\n") == 1


def test_build_task_builds_the_backend_images(
    faked_tasks: ModuleType, runner: FakeRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    faked_tasks.build(Context(), backend="llamacpp", no_cache=True)

    build = runner.calls_starting("docker", "compose", "--project-name")
    assert len(build) == 1
    assert build[0].argv[-4:] == ["build", "--no-cache", "redis", "llm-server"]
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "images: registry mode (IMAGE_SOURCE=registry)",
        f"images ready: {REDIS_IMAGE}, {LLAMACPP_IMAGE}",
    ]


# --- `invoke` as a subprocess: input is validated before Docker is touched --------------------


def run_invoke(tmp_path: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """`python -m invoke ARGS` in the repository, with a scrubbed environment and no Docker."""
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "DOCKER_HOST": "unix:///nonexistent.sock",
        **extra_env,
    }
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_invoke_build_with_bogus_backend_prints_one_line(tmp_path: Path) -> None:
    result = run_invoke(tmp_path, "build", "--backend=bogus")

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "error: unknown backend 'bogus': use one of llamacpp, vllm, none"
    ]


def test_invoke_build_with_bad_redis_port_prints_one_line(tmp_path: Path) -> None:
    result = run_invoke(tmp_path, "build", REDIS_PORT="abc")

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: REDIS_PORT='abc' (from environment) is invalid: ")
    assert "Docker" not in lines[0]
