"""Issue 11, case 1: a `.env` that cannot be used stops every task in one line, and changes nothing.

Each broken `.env` is tried against every task that reads it: the line names the file, the line
(where there is one) and the fix. The tasks that act on a stack run with the settings of the
shared running stack, so a task that fell back to the defaults or skipped the broken line would
act on it: `down --volumes --yes` would delete its data volume, which the fingerprint would show.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.integration.hostile.harness import Case, Context, Result, params

pytestmark = pytest.mark.integration

SECRET_IN_ENV = "kept-out-of-every-message"


@dataclass(frozen=True)
class BrokenEnv:
    id: str
    make: Callable[[Context], None]
    expect: tuple[str, ...]
    as_any_user: bool = False


def write(data: bytes) -> Callable[[Context], None]:
    def make(ctx: Context) -> None:
        ctx.ws.env_file.write_bytes(data)

    return make


def folder(ctx: Context) -> None:
    ctx.ws.env_file.mkdir()
    (ctx.ws.env_file / "settings").write_text("LLM_BACKEND=llamacpp\n")


def fifo(ctx: Context) -> None:
    os.mkfifo(ctx.ws.env_file)  # a reader that waited for a writer would hang forever


def dangling_symlink(ctx: Context) -> None:
    ctx.ws.env_file.symlink_to(ctx.scratch / "moved-away.env")


def unreadable(ctx: Context) -> None:
    ctx.ws.env_file.write_text(f"REDIS_PASSWORD={SECRET_IN_ENV}\n")
    ctx.ws.env_file.chmod(0o000)


BROKEN = [
    BrokenEnv(
        "unparsable-line",
        write(b"# mine\nLLM_BACKEND=llamacpp\nCOMPOSE_PROJECT_NAME kc-adv\n"),
        (
            ".env line 3 is not KEY=value",
            "no '=' after COMPOSE_PROJECT_NAME",
            "write COMPOSE_PROJECT_NAME=value",
        ),
    ),
    BrokenEnv(
        "unterminated-quote",
        write(f'LLM_BACKEND=llamacpp\nREDIS_PASSWORD="{SECRET_IN_ENV}\nREDIS_DB=0\n'.encode()),
        (
            ".env line 2 is not KEY=value",
            "the quote that opens REDIS_PASSWORD's value is never closed: close it",
        ),
    ),
    BrokenEnv(
        "not-utf8",
        write(b"LLM_BACKEND=llamacpp\nSERVED_MODEL_NAME=caf\xe9\n"),
        (".env line 2 is not UTF-8 text", "save the file as UTF-8"),
    ),
    BrokenEnv("a-folder", folder, (".env is a folder, not a file", "move it away")),
    BrokenEnv("a-fifo", fifo, (".env is a FIFO, not a file", "move it away")),
    BrokenEnv(
        "dangling-symlink",
        dangling_symlink,
        (".env is a symlink to", "moved-away.env, which does not exist", "restore that file"),
    ),
    BrokenEnv(
        "unreadable",
        unreadable,
        ("cannot open .env (Permission denied)", "chmod u+r"),
        as_any_user=True,  # root reads any file: run as a user who cannot
    ),
]

# Every task that reads .env; those that act on a stack get the shared stack's settings.
TASKS: list[tuple[str, tuple[str, ...], bool]] = [
    ("up", ("up", "--timeout=60"), True),
    ("down-volumes-yes", ("down", "--volumes", "--yes"), True),
    ("ps", ("ps",), True),
    ("backup-redis", ("backup-redis",), True),
    ("fetch-model-dry-run", ("fetch-model", "--dry-run"), False),
    ("ask", ("ask", "hello"), True),
]


def no_secret(ctx: Context, result: Result) -> None:
    assert SECRET_IN_ENV not in result.output, str(result)


CASES = [
    Case(
        f"env-{broken.id}-{task}",
        args,
        broken.expect,
        arrange=broken.make,
        stack=stack,
        within=30,  # never a hang: a FIFO must not be waited on
        as_any_user=broken.as_any_user,
        verify=no_secret,
    )
    for broken in BROKEN
    for task, args, stack in TASKS
]


@pytest.mark.parametrize("case", params(CASES))
def test_a_broken_env_stops_the_task_in_one_line(
    case: Case, run_case: Callable[[Case], Result]
) -> None:
    run_case(case)
