"""What `invoke worker` and `invoke ask` do before any connection: arguments and their errors."""

from __future__ import annotations

import codecs
import sys
from pathlib import Path

import pytest

from kcdev.errors import UserError
from tests.unit.conftest import FakeClock, MakeSettings
from worker import cli
from worker.cli import ask, task_call, worker_argv


def test_the_worker_runs_with_this_python_and_the_configured_concurrency(
    make_settings: MakeSettings,
) -> None:
    argv = worker_argv(make_settings(worker_concurrency="3"), None, "info")
    assert argv[:6] == [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker"]
    assert argv[argv.index("--concurrency") + 1] == "3"
    assert argv[argv.index("--loglevel") + 1] == "INFO"
    assert "--without-gossip" in argv  # its reconnect logs a traceback (Celery 5.7)


def test_concurrency_given_on_the_command_line_wins(make_settings: MakeSettings) -> None:
    argv = worker_argv(make_settings(worker_concurrency="3"), 8, "debug")
    assert argv[argv.index("--concurrency") + 1] == "8"


def test_concurrency_may_come_as_text(make_settings: MakeSettings) -> None:
    argv = worker_argv(make_settings(), "2", "info")
    assert argv[argv.index("--concurrency") + 1] == "2"


@pytest.mark.parametrize(("concurrency", "loglevel", "message"), [
    (0, "info", "--concurrency=0 must be 1 or more"),
    ("many", "info", "--concurrency='many' is not a whole number"),
    (None, "loud", "--loglevel='loud' is not a level"),
])  # fmt: skip
def test_bad_worker_flags_are_one_line_errors(
    make_settings: MakeSettings, concurrency: int | str | None, loglevel: str, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        worker_argv(make_settings(), concurrency, loglevel)


def test_each_task_gets_its_arguments() -> None:
    assert task_call("generate", "Hi", None) == ("worker.tasks.generate", {"prompt": "Hi"})
    assert task_call("chat", "Hi", None) == (
        "worker.tasks.chat", {"messages": [{"role": "user", "content": "Hi"}]},
    )  # fmt: skip
    assert task_call("summarize", "Long text", None) == (
        "worker.tasks.summarize", {"document": "Long text"},
    )  # fmt: skip


def test_a_file_is_the_document_or_follows_the_prompt(tmp_path: Path) -> None:
    file = tmp_path / "doc.md"
    file.write_text("Body of the document.", encoding="utf-8")
    assert task_call("summarize", "", file)[1] == {"document": "Body of the document."}
    assert task_call("generate", "Translate:", file)[1] == {
        "prompt": "Translate:\n\nBody of the document."
    }


@pytest.mark.parametrize(("task", "prompt", "message"), [
    ("translate", "x", "--task='translate' is not a task"),
    ("generate", "   ", "nothing to send"),
])  # fmt: skip
def test_bad_ask_arguments_are_one_line_errors(task: str, prompt: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        task_call(task, prompt, None)


def test_summarize_takes_its_document_from_one_place(tmp_path: Path) -> None:
    file = tmp_path / "doc.md"
    file.write_text("Body.", encoding="utf-8")
    with pytest.raises(UserError, match="PROMPT or --file, not both"):
        task_call("summarize", "Summarize this", file)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"^no file .*absent\.md$"),
        ("folder", r" is a folder: pass a text file$"),
        (b"%PDF-1.7\n\xe2\xe3\xcf\xd3\n", r"is not UTF-8 text \(byte 0xe2 at offset 9\): save it "),
        (b"\xff\xfeA\x00\x00\xd8", r"is not UTF-16 text \(byte 0x00 at offset 4\)"),
        (b"PK\x03\x04\x00\x00", r"holds NUL characters: it is binary, not text$"),
    ],
    ids=["missing", "folder", "pdf", "broken-utf-16", "zip"],
)
def test_a_file_that_is_not_text_is_a_one_line_error(
    tmp_path: Path, content: bytes | str | None, message: str
) -> None:
    file = tmp_path / "absent.md"
    if content == "folder":
        file.mkdir()
    elif isinstance(content, bytes):
        file.write_bytes(content)
    with pytest.raises(UserError, match=message) as caught:
        task_call("summarize", "", file)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "encoded",
    [
        "Caf\u00e9 au lait.".encode(),
        codecs.BOM_UTF8 + "Caf\u00e9 au lait.".encode(),
        "Caf\u00e9 au lait.".encode("utf-16"),  # with its BOM, as Windows editors save it
        codecs.BOM_UTF16_BE + "Caf\u00e9 au lait.".encode("utf-16-be"),
    ],
    ids=["utf-8", "utf-8-bom", "utf-16", "utf-16-be"],
)
def test_text_files_as_people_save_them_are_read(tmp_path: Path, encoded: bytes) -> None:
    file = tmp_path / "doc.txt"
    file.write_bytes(encoded)
    assert task_call("summarize", "", file)[1] == {"document": "Caf\u00e9 au lait."}


def test_a_timeout_must_be_positive() -> None:
    with pytest.raises(UserError, match="--timeout=0 must be greater than 0"):
        ask("generate", "x", None, timeout=0)


class SlowResult:
    """A Celery AsyncResult stand-in that answers after `seconds` of a fake clock."""

    def __init__(self, clock: FakeClock, seconds: float, state: str = "STARTED") -> None:
        self.clock, self.ready_at, self.state, self.id = clock, clock.now + seconds, state, "t-1"
        self.revoked = False
        self.backend = self

    def get(self, timeout: float, propagate: bool) -> object:
        from celery.exceptions import TimeoutError as CeleryTimeout

        if self.clock.now + timeout >= self.ready_at:
            self.clock.now = self.ready_at
            return {"text": "done"}
        self.clock.now += timeout
        raise CeleryTimeout()

    def revoke(self, terminate: bool) -> None:
        self.revoked = True

    def remove_pending_result(self, result: object) -> None:
        pass


@pytest.fixture
def cli_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(cli, "time", fake)
    return fake


def test_a_long_wait_for_an_answer_says_so_every_ten_seconds(cli_clock: FakeClock) -> None:
    said: list[str] = []

    outcome = cli._wait(SlowResult(cli_clock, 25), 600, said.append)

    assert outcome == {"text": "done"}
    assert said == [
        "waiting for task t-1: started (10 s of 600 s)",
        "waiting for task t-1: started (20 s of 600 s)",
    ]


def test_no_answer_by_the_deadline_revokes_the_task(cli_clock: FakeClock) -> None:
    result = SlowResult(cli_clock, 100, state="PENDING")
    said: list[str] = []

    outcome = cli._wait(result, 15, said.append)

    assert isinstance(outcome, cli._TimedOut) and outcome.state == "PENDING"
    assert result.revoked
    assert said == ["waiting for task t-1: pending (10 s of 15 s)"]
