"""Issue 11, case 3: one line, never a traceback, never a silent hang, nothing half done.

Model folders that are files or cannot be written, a `.env` that cannot take the new MODEL_PATH
after a good download, malformed URLs and numbers, a download server that goes silent, unknown
backends, services, tasks and log levels, restores of files that must not be restored, backups
into folders that cannot take them, and Docker or compose missing (simulated through PATH and
DOCKER_HOST: the host's daemon is never touched). Cases that act on Redis use the shared running
stack, so the fingerprint shows that its data and containers stayed as they were.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from kcdev.backup.save import backup
from kcdev.models.digest import Digest
from kcdev.models.installed import file_is_verified
from tests.integration.hostile.downloads import (
    MODEL,
    MODEL_SHA256,
    fetch,
    serve,
    server,
    used_and_stored_nowhere,
)
from tests.integration.hostile.harness import Case, Context, Result, params, setting
from tests.support.http_server import Reply, Request, Resource
from tests.support.redis_data import write_keys
from tests.support.redis_target import FixedPortRedis
from tests.support.unwritable import unwritable

pytestmark = pytest.mark.integration


def both(*steps: Callable[[Context], object]) -> Callable[[Context], None]:
    def arrange(ctx: Context) -> None:
        for step in steps:
            step(ctx)

    return arrange


def env_file(text: str) -> Callable[[Context], None]:
    def arrange(ctx: Context) -> None:
        ctx.ws.env_file.write_text(text)

    return arrange


def no_request(ctx: Context, result: Result) -> None:
    """Refused before any traffic: the server never heard of it."""
    assert server(ctx).log == [], server(ctx).log


# --- models folders ----------------------------------------------------------------------------


def gguf_dir_is_a_file(ctx: Context) -> None:
    path = ctx.scratch / "models-file"
    path.write_text("not a folder\n")
    ctx.watch(ctx.scratch)
    ctx.ws.env["GGUF_DIR"] = str(path)
    server(ctx).add("/model.gguf", MODEL)


def gguf_dir_under_a_file(ctx: Context) -> None:
    gguf_dir_is_a_file(ctx)
    ctx.ws.env["GGUF_DIR"] = str(ctx.scratch / "models-file" / "gguf")


def read_only(folder: Callable[[Context], Path]) -> Callable[[Context], None]:
    """The folder exists and cannot be written, even by root (tests/support/unwritable.py)."""

    def arrange(ctx: Context) -> None:
        ctx.enter(unwritable(folder(ctx)))

    return arrange


def model_in_place(ctx: Context, result: Result) -> None:
    """The download itself went through: the verified model stays, usable by hand."""
    model = ctx.ws.gguf_dir / "model.gguf"
    assert hashlib.sha256(model.read_bytes()).hexdigest() == MODEL_SHA256
    assert file_is_verified(ctx.ws.gguf_dir, "model.gguf", Digest.sha256(MODEL_SHA256))
    used_and_stored_nowhere(ctx, result)


INSTALLED = [r"/model\.gguf: absent -> file ", r"/\.kc-verified\.json: absent -> file "]


def stalls_then_gone(ctx: Context) -> None:
    """The first GET sends 64 KiB, then nothing (the connection left open); the next, sent once
    the stall is noticed, finds the file gone, which ends the fetch in one line."""
    asked: list[float] = []
    ctx.values["asked"] = asked

    def answer(request: Request) -> Reply:
        asked.append(time.monotonic())
        if len(asked) == 1:
            return Reply(resource=Resource(MODEL, stalls=[(64 << 10, 600)]))
        return Reply(404, b"gone")

    server(ctx).route(r"/slow\.gguf", answer)


def stall_noticed(ctx: Context, result: Result) -> None:
    asked: list[float] = ctx.values["asked"]
    assert len(asked) == 2, asked
    assert 29 <= asked[1] - asked[0] <= 40, f"the stall was noticed after {asked[1] - asked[0]} s"
    # Said every 10 s while it waits, then the stall itself: never a silent wait.
    notices = re.findall(r"slow\.gguf: nothing from 127\.0\.0\.1:\d+ for (\d+(?:\.\d)?) s "
                         r"\(64\.0 KiB so far\)", result.stdout)  # fmt: skip
    assert [round(float(n) / 10) for n in notices] == [1, 2], str(result)
    assert re.search(r"slow\.gguf: stalled: nothing from 127\.0\.0\.1:\d+ for 30 s; resuming from "
                     r"64\.0 KiB \(attempt 2 of 5\)", result.stdout), str(result)  # fmt: skip


FETCH = ("fetch-model", f"--sha256={MODEL_SHA256}")


def url(path: str) -> Callable[[Context], list[str]]:
    return lambda ctx: ["fetch-model", f"--url={server(ctx).url(path)}", f"--sha256={MODEL_SHA256}"]


# --- Docker and compose missing, simulated without touching the daemon ------------------------


def no_docker(ctx: Context) -> None:
    """A PATH without docker (the tasks run Python by its full path)."""
    empty = ctx.scratch / "bin"
    empty.mkdir()
    ctx.ws.env["PATH"] = str(empty)


def no_compose(ctx: Context) -> None:
    """A docker CLI without the compose plugin: every other command reaches the real one."""
    real = shutil.which("docker")
    assert real is not None
    folder = ctx.scratch / "bin"
    folder.mkdir()
    fake = folder / "docker"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = compose ]; then\n'
        "  echo \"docker: 'compose' is not a docker command.\" >&2; exit 1\n"
        "fi\n"
        f'exec {real} "$@"\n'
    )
    fake.chmod(0o755)
    ctx.ws.env["PATH"] = str(folder)


def daemon_unreachable(ctx: Context) -> None:
    ctx.ws.env["DOCKER_HOST"] = f"unix://{ctx.scratch}/no-daemon.sock"


# --- up --------------------------------------------------------------------------------------


def a_model(ctx: Context) -> None:
    (ctx.ws.gguf_dir / "model.gguf").write_bytes(MODEL)


def redis_port_taken(ctx: Context) -> None:
    holder = ctx.enter(socket.socket())
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    ctx.ws.env["REDIS_PORT"] = str(holder.getsockname()[1])
    ctx.values["taken"] = holder.getsockname()[1]


def user_env(ctx: Context) -> None:
    ctx.ws.env_file.write_text("# mine\nLLM_BACKEND=llamacpp\n")


CASES = [
    # --- models folders -------------------------------------------------------------------------
    Case(
        "gguf-dir-is-a-file",
        url("/model.gguf"),
        ["models-file is a file, not a folder: point GGUF_DIR at a folder"],
        arrange=gguf_dir_is_a_file,
        verify=no_request,
    ),
    Case(
        "gguf-dir-is-a-file-dry-run",
        lambda ctx: [*url("/model.gguf")(ctx), "--dry-run"],
        ["models-file is a file, not a folder: point GGUF_DIR at a folder"],
        arrange=gguf_dir_is_a_file,
        verify=no_request,
    ),
    Case(
        "gguf-dir-under-a-file",
        url("/model.gguf"),
        ["models-file is a file, not a folder"],
        arrange=gguf_dir_under_a_file,
        verify=no_request,
    ),
    Case(
        "download-destination-read-only",
        url("/model.gguf"),
        ["cannot write to models/gguf (GGUF_DIR)", "make it writable for this user"],
        arrange=both(serve("/model.gguf"), read_only(lambda ctx: ctx.ws.gguf_dir)),
        verify=no_request,
    ),
    Case(
        "snapshot-destination-read-only",
        ("fetch-model", "--backend=vllm", "--repo=hostile/tiny"),
        ["cannot write to models/hf (HF_DIR)", "point HF_DIR at another folder"],
        arrange=read_only(lambda ctx: ctx.ws.hf_dir),
    ),
    Case(
        "env-read-only-after-a-good-download",
        fetch("/model.gguf"),
        [
            "models/gguf/model.gguf is in place, but .env cannot be written (Operation not "
            "permitted): set MODEL_PATH=/models/model.gguf in it by hand"
        ],
        arrange=both(serve("/model.gguf"), user_env, read_only(lambda ctx: ctx.ws.env_file)),
        verify=model_in_place,
        allowed=INSTALLED,  # the download succeeded: the model is installed and verified
    ),
    Case(
        "env-folder-read-only-after-a-good-download",
        fetch("/model.gguf"),
        [
            "models/gguf/model.gguf is in place, but .env cannot be written",
            "set MODEL_PATH=/models/model.gguf in it by hand",
        ],
        arrange=both(serve("/model.gguf"), user_env, read_only(lambda ctx: ctx.ws.root)),
        verify=model_in_place,
        allowed=INSTALLED,
    ),
    Case(
        "download-server-stalls",
        url("/slow.gguf"),
        ["could not fetch slow.gguf from http://127.0.0.1:", "HTTP 404"],
        arrange=stalls_then_gone,
        within=60,
        timeout=120,
        verify=stall_noticed,
        # What arrived before the stall is kept to resume from.
        allowed=[r"/slow\.gguf\.part(\.json)?: absent -> file "],
    ),
    Case(
        "url-malformed-ipv6",
        (*FETCH, "--url=http://[::1/x.gguf"),
        ["--url='http://[::1/x.gguf' is not a valid URL (Invalid IPv6 URL)"],
    ),
    Case(
        "url-malformed-port",
        (*FETCH, "--url=http://127.0.0.1:99999/x.gguf"),
        ["--url='http://127.0.0.1:99999/x.gguf' is not a valid URL"],
    ),
    Case("url-not-http", (*FETCH, "--url=ftp://127.0.0.1/x.gguf"), ["is not an http(s) URL"]),
    Case(
        "url-without-sha256",
        ("fetch-model", "--url=http://127.0.0.1:9/x.gguf"),
        ["--url needs --sha256 HEX"],
    ),
    Case(
        "sha256-malformed",
        ("fetch-model", "--url=http://127.0.0.1:9/x.gguf", "--sha256=abc"),
        ["--sha256='abc' is not a sha256: expected 64 hexadecimal digits"],
    ),
    Case(
        "name-outside-the-models-folder",
        (*FETCH, "--url=http://127.0.0.1:9/x.gguf", "--name=../evil.gguf"),
        ["--name='../evil.gguf' must be a plain file or folder name"],
    ),
    Case(
        "fetch-backend-unknown",
        ("fetch-model", "--backend=tgi", "--dry-run"),
        ["--backend='tgi': use one of llamacpp, vllm"],
    ),
    # --- numbers ----------------------------------------------------------------------------
    *[
        Case(
            f"up-timeout-{name}",
            ("up", "--timeout", value),
            [f"--timeout={value} {problem}"],
            within=30,
        )
        for name, value, problem in [
            ("nan", "nan", "is not a finite number"),
            ("inf", "inf", "is not a finite number"),
            ("negative", "-1", "must be at least 1"),
            ("not-a-number", "abc", "is not a number"),
        ]
    ],
    Case("restart-timeout-nan", ("restart", "--timeout=nan"), ["--timeout=nan is not a finite"]),
    Case("ask-timeout-zero", ("ask", "hello", "--timeout=0"), ["--timeout=0 must be at least 1"]),
    Case(
        "backup-keep-zero",
        ("backup-redis", "--keep", "0"),
        ["--keep=0 must be at least 1"],
        stack=True,
    ),
    Case(
        "backup-keep-not-a-number",
        ("backup-redis", "--keep", "x"),
        ["--keep=x is not a whole number"],
        stack=True,
    ),
    Case("logs-tail-negative", ("logs", "--tail", "-1"), ["--tail=-1 must be at least 0"]),
    Case("logs-tail-not-a-number", ("logs", "--tail=ten"), ["--tail=ten is not a whole number"]),
    Case("worker-concurrency-zero", ("worker", "--concurrency=0"), ["--concurrency=0 must be 1"]),
    Case(
        "worker-concurrency-not-a-number",
        ("worker", "--concurrency=many"),
        ["--concurrency='many' is not a whole number"],
    ),
    # --- names ------------------------------------------------------------------------------
    Case(
        "up-backend-unknown",
        ("up", "--backend=tgi"),
        ["unknown backend 'tgi': use one of llamacpp, vllm, none"],
    ),
    Case("build-backend-unknown", ("build", "--backend=tgi"), ["unknown backend 'tgi'"]),
    Case("doctor-backend-unknown", ("doctor", "--backend=tgi"), ["unknown backend 'tgi'"]),
    Case(
        "logs-service-unknown",
        ("logs", "--service=postgres"),
        ["unknown service 'postgres': use one of redis, llm-server"],
    ),
    Case(
        "restart-service-unknown",
        ("restart", "--service=postgres"),
        ["unknown service 'postgres'"],
    ),
    Case(
        "ask-task-unknown",
        ("ask", "hello", "--task=translate"),
        ["--task='translate' is not a task: use one of generate, chat, summarize"],
    ),
    Case(
        "worker-loglevel-unknown",
        ("worker", "--loglevel=loud"),
        ["--loglevel='loud' is not a level: use one of debug, info, warning, error, critical"],
    ),
    # --- no stack, no worker -----------------------------------------------------------------
    Case(
        "restart-without-a-stack",
        ("restart", "--timeout=600"),
        ["is not running: start it with `invoke up`"],
        within=15,  # at once, not after --timeout
    ),
    Case(
        "restart-a-service-without-a-stack",
        ("restart", "--service=llm-server", "--timeout=600"),
        ["is not running: start it with `invoke up`"],
        within=15,
    ),
    Case(
        "backup-without-a-stack",
        ("backup-redis",),
        ["Redis is not running: start it with `invoke up`"],
        within=15,
    ),
    Case(
        "ask-without-a-stack",
        ("ask", "hello", "--timeout=600"),
        ["is not answering: start the stack with `invoke up`"],
        within=15,
    ),
    Case(
        "ask-without-a-worker",
        ("ask", "hello", "--timeout=600"),
        ["no worker is consuming tasks: start one with `invoke worker`"],
        stack=True,
        # At once, not after --timeout. Asking the workers leaves kombu's routing table for the
        # reply queue in Redis, which the fingerprint leaves out: it is not the user's data.
        within=15,
    ),
    Case(
        "ask-a-file-that-is-missing",
        lambda ctx: ["ask", "", "--file", str(ctx.scratch / "absent.md")],
        ["no file", "absent.md"],
    ),
    Case(
        "ask-a-file-that-is-not-text",
        lambda ctx: ["ask", "", "--task=summarize", "--file", str(ctx.scratch / "doc.md")],
        ["doc.md is not UTF-16 text (byte 0x79 at offset 8)", "save it as UTF-8 text"],
        arrange=lambda ctx: (ctx.scratch / "doc.md").write_bytes(b"\xff\xfe\x00binary"),
    ),
    Case(
        "ask-a-pdf",
        lambda ctx: ["ask", "", "--task=summarize", "--file", str(ctx.scratch / "doc.pdf")],
        ["doc.pdf is not UTF-8 text", "a PDF or office file needs its text extracted first"],
        arrange=lambda ctx: (ctx.scratch / "doc.pdf").write_bytes(b"%PDF-1.7\n\xe2\xe3\xcf\xd3\n"),
    ),
    # --- up refused before anything starts -----------------------------------------------------
    Case(
        "up-without-a-model",  # and .env as it was: no key generated by a refused `up`
        ("up", "--timeout=60"),
        [
            "model file models/gguf/model.gguf (MODEL_PATH=/models/model.gguf) not found: run "
            "`invoke fetch-model`"
        ],
        arrange=both(user_env, setting(LLM_API_KEY=None)),
        within=30,
    ),
    Case(
        "up-on-a-port-another-program-holds",
        ("up", "--timeout=60"),
        ["on 127.0.0.1 is taken by another program: stop it, or set REDIS_PORT to a free port"],
        arrange=both(a_model, redis_port_taken),
        within=30,
    ),
    Case(
        "up-with-more-cpus-than-docker-has",
        ("up", "--timeout=60"),
        ["LLM_CPUS=512 but Docker has", "set LLM_CPUS to"],
        arrange=both(a_model, setting(LLM_CPUS="512")),
        within=30,
    ),
    Case(
        "up-with-gpu-layers-and-no-gpu",
        ("up", "--timeout=60"),
        ["N_GPU_LAYERS=-1 needs an NVIDIA GPU", "set N_GPU_LAYERS=0"],
        arrange=both(a_model, setting(N_GPU_LAYERS="-1")),
        within=30,
    ),
    Case(
        "env-value-out-of-range",
        ("up", "--timeout=60"),
        ["REDIS_PORT='70000' (from .env line 2) is invalid: outside 1..65535", "fix it in .env"],
        arrange=both(
            env_file("LLM_BACKEND=llamacpp\nREDIS_PORT=70000\n"), setting(REDIS_PORT=None)
        ),
    ),
    Case(
        "env-visibility-timeout-below-the-task-time-limit",
        ("ask", "hello"),
        ["VISIBILITY_TIMEOUT=900 must exceed TASK_TIME_LIMIT=900"],
        arrange=env_file("TASK_TIME_LIMIT=900\nVISIBILITY_TIMEOUT=900\n"),
    ),
    Case(
        "down-volumes-without-a-terminal",  # the shared stack's volume survives
        ("down", "--volumes"),
        ["refusing without a terminal: pass --yes"],
        stack=True,
    ),
    # --- Docker or compose missing ----------------------------------------------------------------
    *[
        Case(
            f"no-docker-binary-{task}",
            args,
            ["docker is not installed: install Docker"],
            arrange=no_docker,
            within=15,
        )
        for task, args in [("ps", ("ps",)), ("up", ("up",)), ("backup-redis", ("backup-redis",))]
    ],
    Case(
        "docker-daemon-unreachable",
        ("ps",),
        ["Docker is not running: start the daemon"],
        arrange=daemon_unreachable,
        within=45,
    ),
    Case(
        "compose-plugin-missing",
        ("ps",),
        ["docker compose is not installed: install the compose v2 plugin"],
        arrange=no_compose,
        within=30,
    ),
]


@pytest.mark.parametrize("case", params(CASES))
def test_a_failure_is_one_line_and_changes_nothing(
    case: Case, run_case: Callable[..., Result]
) -> None:
    run_case(case)


# --- Redis backups and restores, on the shared stack ----------------------------------------


@pytest.fixture(scope="module")
def other_data_backup(
    stack_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A sound backup of other data than the shared stack holds: a restore would show."""
    with FixedPortRedis(stack_images["REDIS_IMAGE"]) as other:
        write_keys(other.client(), 40, prefix="restored")
        return backup(other.target(), tmp_path_factory.mktemp("other"), say=lambda _: None)


def restore_file(
    name: str, change: Callable[[bytes], bytes] = bytes, manifest: str = "none"
) -> Callable[[Context], None]:
    """The backup of other data, changed by `change`, as `name` in the case's folder; its
    manifest copied as it was ("stale"), rewritten to match ("matching"), or left out."""

    def arrange(ctx: Context) -> None:
        good: Path = ctx.values["backup"]
        path = ctx.scratch / name
        data = change(good.read_bytes())
        path.write_bytes(data)
        if manifest != "none":
            described = json.loads(good.with_suffix(".json").read_text())
            if manifest == "matching":
                described.update(file=name, size=len(data),
                                 sha256=hashlib.sha256(data).hexdigest())  # fmt: skip
            path.with_suffix(".json").write_text(json.dumps(described))
        ctx.watch(ctx.scratch)

    return arrange


def restore(name: str, *more: str) -> Callable[[Context], list[str]]:
    return lambda ctx: ["restore-redis", f"--file={ctx.scratch / name}", *more]


def truncated(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


def newer_format(data: bytes) -> bytes:
    return b"REDIS0012" + data[9:]


RESTORES = [
    Case("restore-no-file-given", ("restore-redis", "--yes"), ["pass exactly one of --file"]),
    Case(
        "restore-file-and-latest",
        ("restore-redis", "--latest", "--file=dump.rdb", "--yes"),
        ["pass exactly one of --file=PATH or --latest"],
    ),
    Case(
        "restore-file-missing",
        restore("absent.rdb", "--yes"),
        ["absent.rdb: see `invoke backups`"],
    ),
    Case(
        "restore-file-is-a-folder",
        lambda ctx: ["restore-redis", f"--file={ctx.scratch}", "--yes"],
        ["is a folder: pass a backup file in it", "(`invoke backups --folder="],
    ),
    Case(
        "restore-latest-without-backups",
        ("restore-redis", "--latest", "--yes"),
        ["no backups in", "make one with `invoke backup-redis`"],
    ),
    Case(
        "restore-empty-file",
        restore("empty.rdb", "--yes"),
        ["empty.rdb is empty: it is not a Redis backup"],
        arrange=restore_file("empty.rdb", lambda data: b""),
    ),
    Case(
        "restore-not-an-rdb",
        restore("notes.rdb", "--yes"),
        ["notes.rdb is not a Redis RDB file (it does not start with REDIS00NN)"],
        arrange=restore_file("notes.rdb", lambda data: b"# my notes\n" * 100),
    ),
    Case(
        "restore-truncated-rdb",
        restore("dump.rdb", "--yes"),
        ["dump.rdb fails redis-check-rdb", "the file is damaged"],
        arrange=restore_file("dump.rdb", truncated),
    ),
    Case(
        "restore-truncated-rdb-with-a-matching-manifest",
        restore("redis-cut.rdb", "--yes"),
        ["redis-cut.rdb fails redis-check-rdb"],
        arrange=restore_file("redis-cut.rdb", truncated, manifest="matching"),
    ),
    Case(
        "restore-manifest-does-not-match",
        restore("redis-changed.rdb", "--yes"),
        ["redis-changed.rdb does not match its manifest (size", "pick another backup"],
        arrange=restore_file("redis-changed.rdb", lambda data: data + b"\0", manifest="stale"),
    ),
    Case(
        "restore-manifest-unreadable",
        restore("redis-garbled.rdb", "--yes"),
        ["redis-garbled.json is unreadable", "pick another backup"],
        arrange=both(
            restore_file("redis-garbled.rdb", manifest="stale"),
            lambda ctx: (ctx.scratch / "redis-garbled.json").write_text("{not json"),
        ),
    ),
    Case(
        "restore-rdb-newer-than-the-server-reads",
        restore("dump-7.4.rdb", "--yes"),
        ["dump-7.4.rdb is RDB version 12, which Redis 7.0", "cannot read (it reads up to 10)"],
        arrange=restore_file("dump-7.4.rdb", newer_format),
    ),
    Case(
        "restore-without-yes-and-no-terminal",
        restore("good.rdb"),
        ["refusing without a terminal: pass --yes"],
        arrange=restore_file("good.rdb", manifest="stale"),
    ),
]


def output_dir(ctx: Context, name: str) -> Path:
    return ctx.scratch / name


def saves(ctx: Context) -> int:
    client = redis.Redis(
        host="127.0.0.1", port=int(ctx.ws.env["REDIS_PORT"]), password=ctx.ws.env["REDIS_PASSWORD"]
    )
    with client:
        return int(client.info("persistence")["rdb_saves"])


def folder(name: str, mode: int = 0o755, immutable: bool = False) -> Callable[[Context], None]:
    """`name` in the case's folder (made with `mode`, made unwritable even for root if
    `immutable`), watched by the fingerprint; and Redis' count of snapshots so far."""

    def arrange(ctx: Context) -> None:
        path = ctx.scratch / name
        path.mkdir(mode=mode)
        if immutable:
            ctx.enter(unwritable(path))
        ctx.watch(ctx.scratch)
        ctx.values["saves"] = saves(ctx)

    return arrange


def no_snapshot(ctx: Context, result: Result) -> None:
    """Refused before Redis was asked for a snapshot."""
    assert saves(ctx) == ctx.values["saves"], "a snapshot was taken for nothing"


def into(path: str) -> Callable[[Context], list[str]]:
    return lambda ctx: ["backup-redis", f"--output-dir={ctx.scratch / path}"]


BACKUPS = [
    Case(
        "backup-into-a-read-only-folder",
        into("out"),
        [
            "cannot write to the backup folder",
            "out (Operation not permitted): make it writable "
            "for this user, or choose another --output-dir",
        ],
        arrange=folder("out", immutable=True),
        verify=no_snapshot,
    ),
    Case(
        # Held to the permission bits, as any user but root is.
        "backup-into-a-folder-the-user-cannot-write",
        into("out"),
        ["cannot write to the backup folder", "out (Permission denied)"],
        arrange=folder("out", mode=0o555),
        as_any_user=True,
        verify=no_snapshot,
    ),
    Case(
        "backup-into-a-folder-that-cannot-be-made",
        into("locked/out"),
        [
            "cannot create the backup folder",
            "locked/out (Operation not permitted): choose another --output-dir",
        ],
        arrange=folder("locked", immutable=True),
        verify=no_snapshot,
    ),
    Case(
        "backup-into-a-file",
        into("a-file"),
        ["a-file is a file, not a folder: choose another --output-dir"],
        arrange=both(folder("spare"), lambda ctx: (ctx.scratch / "a-file").write_text("mine\n")),
        verify=no_snapshot,
    ),
]
RESTORES.append(
    Case(
        "restore-with-a-read-only-backups-folder",  # the safety backup cannot be taken
        lambda ctx: [*restore("good.rdb", "--yes")(ctx), f"--backups-dir={ctx.scratch / 'safe'}"],
        [
            "cannot write to the backup folder",
            "safe (Operation not permitted): make it writable "
            "for this user, or choose another --backups-dir",
        ],
        arrange=both(restore_file("good.rdb", manifest="stale"), folder("safe", immutable=True)),
    )
)
for case in [*RESTORES, *BACKUPS]:
    case.stack = True


@pytest.mark.parametrize("case", params(RESTORES))
def test_a_restore_refused_leaves_redis_as_it_was(
    case: Case, run_case: Callable[..., Result], other_data_backup: Path
) -> None:
    run_case(case, backup=other_data_backup)


@pytest.mark.parametrize("case", params(BACKUPS))
def test_a_backup_that_cannot_be_written_says_why(
    case: Case, run_case: Callable[..., Result]
) -> None:
    run_case(case)
