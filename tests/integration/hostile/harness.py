"""The user's view of a failure, and proof that it changed nothing.

Each hostile case runs the real `invoke` in a copy of the repository of its own (a `Workspace`):
the tasks read `.env` from the repository they are in (kcdev.paths.ROOT), so a copy gives each
case its own `.env`, `models/` and `backups/` and never touches the real ones. Before and after,
a `Fingerprint` records what the failure must leave as it was: `.env`, every file under the
folders the case uses, Redis key by key (type, value, expiry) and the stack's containers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from kcdev.settings import Settings
from tests.support.redis_data import Contents, contents, difference
from tests.support.stack import free_port

# What a copy of the repository needs to run every task: the rest (tests, benchmarks) is not read.
# models/ is made empty: the real one may hold gigabytes of models.
COPIED = ("tasks.py", "pyproject.toml", ".env.sample", "kcdev", "worker", "docker")
# Machine-local leftovers that are no part of the code (the vLLM build's torch wheel).
NOT_COPIED = shutil.ignore_patterns("__pycache__", "wheelhouse")
# Settings the machine decides, not the case: kept from the test process's environment.
MACHINE_SETTINGS = {"IMAGE_SOURCE", "BUILD_CA_BUNDLE", "DEBIAN_MIRROR"}
SETTINGS = {f.name.upper() for f in Settings.fields()} | {"LLM_API_KEY_ID"}
# What no hint may suggest: each tears down a running service or deletes data.
TEARDOWN_HINTS = ("invoke down", "--backend=none", "--backend none", "--volumes", "docker rm",
                  "compose down", "docker kill", "docker stop")  # fmt: skip
# Root reads every file whatever its mode; without these two capabilities it is held to the mode
# bits like any user (and keeps its own files, its home and the Docker socket).
AS_ANY_USER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
T = TypeVar("T")


def copy_repository(source: Path, dest: Path) -> Path:
    """The parts of the repository the tasks use, byte for byte, compiled once so that each
    copy of it starts as fast as the repository itself."""
    dest.mkdir(parents=True)
    for name in COPIED:
        path = source / name
        if path.is_dir():
            shutil.copytree(path, dest / name, symlinks=True, ignore=NOT_COPIED)
        else:
            shutil.copy2(path, dest / name)
    for folder in ("models/gguf", "models/hf"):
        (dest / folder).mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "kcdev", "worker", "tasks.py"],
        cwd=dest, check=True, capture_output=True,
    )  # fmt: skip
    return dest


def clean_environment(**settings: str | None) -> dict[str, str]:
    """The test process's environment without any setting of its own (they would override the
    case's `.env`), nor the Hub's variables; then `settings` (None: left unset).

    Every case gets free ports and a project name of its own, so that a task that ignored its
    `.env` could only ever reach a stack the case made, never one on the default ports.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if (k not in SETTINGS or k in MACHINE_SETTINGS) and not k.startswith("HF_")
    }
    port = free_port()
    env.update(
        COMPOSE_PROJECT_NAME=f"kc-hostile-{secrets.token_hex(4)}",
        REDIS_PORT=str(free_port()),
        PORT=str(port),
        LLM_SERVER_URL=f"http://127.0.0.1:{port}",
        HF_HUB_OFFLINE="1",  # nothing reaches the Hub, whatever a case asks
        PYTHONDONTWRITEBYTECODE="1",
    )
    for key, value in settings.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return (
            f"`invoke {' '.join(self.argv)}` exited {self.returncode} after {self.seconds:.1f} s\n"
            f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"
        )


@dataclass
class Workspace:
    """A copy of the repository and the environment its tasks run with."""

    root: Path
    env: dict[str, str]

    @property
    def env_file(self) -> Path:
        return self.root / ".env"

    @property
    def gguf_dir(self) -> Path:
        return Path(self.env.get("GGUF_DIR") or self.root / "models" / "gguf")

    @property
    def hf_dir(self) -> Path:
        return Path(self.env.get("HF_DIR") or self.root / "models" / "hf")

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    def invoke(self, *args: str, timeout: float = 180, as_any_user: bool = False) -> Result:
        """`invoke ARGS` as the user types it, from the copy's folder; `as_any_user` holds root
        to the permission bits, as any other user is."""
        argv = [*(AS_ANY_USER if as_any_user else []), sys.executable, "-m", "invoke", *args]
        began = time.monotonic()
        done = subprocess.run(
            argv, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip
        return Result(list(args), done.returncode, done.stdout, done.stderr,
                      time.monotonic() - began)  # fmt: skip


# --- what a failure must leave as it was ------------------------------------------------------


def entry(path: Path) -> str:
    """One path as a comparable string: its kind, and a regular file's mode and sha256. Never
    opens anything but a regular file (a FIFO would block)."""
    try:
        st = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return "absent"
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return f"symlink -> {os.readlink(path)}"
    if stat.S_ISDIR(st.st_mode):
        return f"folder {mode:o}"
    if not stat.S_ISREG(st.st_mode):
        return f"special {stat.S_IFMT(st.st_mode):o}"
    with path.open("rb") as f:
        return f"file {mode:o} sha256:{hashlib.file_digest(f, 'sha256').hexdigest()}"


def is_lock(path: Path) -> bool:
    """An empty lock file: fetch-model's locks outlive the fetch by design (kcdev/models/lock.py:
    removing one would race), and hold nothing."""
    return path.name.endswith(".lock") and path.is_file() and path.stat().st_size == 0


def tree(folder: Path) -> dict[str, str]:
    """Every path under `folder` (itself as "."), without following symlinks."""
    found = {".": entry(folder)}
    if not found["."].startswith("folder"):
        return found
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            if not is_lock(path):
                found[str(path.relative_to(folder))] = entry(path)
    return found


class StackRedis:
    """A stack's Redis as the tasks reach it, in the shape `contents()` reads."""

    def __init__(self, port: int, password: str) -> None:
        self.port, self.password = port, password

    def client(self, db: int = 0, **kwargs: Any) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password or None, db=db,
            socket_timeout=30, **kwargs,
        )  # fmt: skip


def docker(*args: str, check: bool = True) -> str:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=check, timeout=120
    ).stdout


def project_state(project: str) -> tuple[list[str], list[str]]:
    """The project's containers (service, id, state, start time, restarts) and volumes."""
    label = f"label=com.docker.compose.project={project}"
    ids = docker("ps", "-aq", "--filter", label).split()
    shown = (
        docker(
            "inspect", "--format",
            '{{index .Config.Labels "com.docker.compose.service"}} {{.Id}} {{.State.Status}} '
            "{{.State.StartedAt}} {{.RestartCount}}",
            *ids,
        ).splitlines()
        if ids
        else []
    )  # fmt: skip
    volumes = docker("volume", "ls", "-q", "--filter", label).split()
    return sorted(shown), sorted(volumes)


@dataclass(frozen=True)
class Fingerprint:
    env_file: str
    folders: dict[str, dict[str, str]]
    redis: Contents | None
    stack: tuple[list[str], list[str]]

    @classmethod
    def take(
        cls, ws: Workspace, folders: Iterable[Path], redis_at: StackRedis | None
    ) -> Fingerprint:
        return cls(
            entry(ws.env_file),
            {str(f): tree(f) for f in folders},
            contents(redis_at, dbs=(0, 1)) if redis_at else None,
            project_state(ws.env["COMPOSE_PROJECT_NAME"]),
        )

    def differences(self, after: Fingerprint) -> list[str]:
        found = []
        if self.env_file != after.env_file:
            found.append(f".env: {self.env_file} -> {after.env_file}")
        for folder, before in self.folders.items():
            now = after.folders.get(folder, {})
            for path in sorted(set(before) | set(now)):
                was, is_ = before.get(path, "absent"), now.get(path, "absent")
                if was != is_:
                    found.append(f"{folder}/{path}: {was} -> {is_}")
        if self.redis != after.redis:
            found.append(f"redis: {difference(self.redis or {}, after.redis or {})}")
        if self.stack != after.stack:
            found.append(f"stack: {self.stack} -> {after.stack}")
        return found


@dataclass
class SharedStack:
    """The package's running stack: the settings that find it, its workspace, its Redis."""

    ws: Workspace
    settings: dict[str, str]
    redis: StackRedis

    @property
    def project(self) -> str:
        return self.settings["COMPOSE_PROJECT_NAME"]

    def container(self, service: str) -> str:
        return docker(
            "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}",
            "--filter", f"label=com.docker.compose.service={service}",
        ).strip()  # fmt: skip

    def volume(self) -> str:
        (volume,) = project_state(self.project)[1]
        return volume


# --- the user's view of a failure -------------------------------------------------------------


def error_line(result: Result, secrets_: Sequence[str] = ()) -> str:
    """The one `error:` line of a failed task, after checking everything around it: exit 1, no
    traceback, nothing else on stderr before it but warnings, and after it at most a log tail
    that opens with its own header line; no secret anywhere."""
    assert result.returncode == 1, str(result)
    assert "Traceback" not in result.output, str(result)
    lines = result.stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(errors) == 1, str(result)
    (at,) = errors
    assert all(line.startswith("warning: ") for line in lines[:at]), str(result)
    tail = lines[at + 1 :]
    if tail:
        assert tail[0].startswith("--- ") and tail[0].endswith(" ---"), str(result)
    assert "error:" not in result.stdout, str(result)
    for secret in secrets_:
        assert secret not in result.output, f"a secret was printed\n{result}"
    line = lines[at]
    for hint in TEARDOWN_HINTS:
        assert hint not in line, f"the hint tears a service down: {line}"
    return line


@dataclass
class Case:
    """One hostile input: what the user runs, what is set up first, and what the one line says.

    `args` and `expect` may depend on the case's workspace (paths, ports); `expect` items are
    substrings of the error line. `allowed` are patterns (re.search) of the fingerprint's
    differences that the case expects, each with its reason in the case; any other fails it.
    """

    id: str
    args: Sequence[str] | Callable[[Context], Sequence[str]]
    expect: Sequence[str] | Callable[[Context], Sequence[str]] = ()
    arrange: Callable[[Context], object] | None = None
    stack: bool = False  # needs the shared running stack (its project, ports and data)
    within: float | None = None  # must fail within this many seconds
    timeout: float = 180
    as_any_user: bool = False  # held to permission bits (root reads any file otherwise)
    verify: Callable[[Context, Result], None] | None = None
    allowed: Sequence[str] = ()
    marks: Sequence[Any] = field(default_factory=tuple)


@dataclass
class Context:
    """What a case's functions get: its workspace, its scratch folder, the shared stack (if the
    case uses it), and the folders its fingerprint covers."""

    ws: Workspace
    scratch: Path
    stack: Mapping[str, str] | None
    watched: list[Path]
    values: dict[str, Any] = field(default_factory=dict)
    cleanups: list[Callable[[], object]] = field(default_factory=list)

    def watch(self, *folders: Path) -> None:
        self.watched.extend(folders)

    def later(self, cleanup: Callable[[], object]) -> None:
        self.cleanups.append(cleanup)

    def enter(self, manager: contextlib.AbstractContextManager[T]) -> T:
        """Enter `manager` for the rest of the case (left after the second fingerprint)."""
        value = manager.__enter__()
        self.later(lambda: manager.__exit__(None, None, None))
        return value


def setting(**values: str | None) -> Callable[[Context], None]:
    """Settings of the case's own, through its environment (None: unset)."""

    def arrange(ctx: Context) -> None:
        for key, value in values.items():
            if value is None:
                ctx.ws.env.pop(key, None)
            else:
                ctx.ws.env[key] = value

    return arrange


def params(cases: Sequence[Case]) -> list[Any]:
    """The cases as pytest parameters, each with its id and marks."""
    ids = [case.id for case in cases]
    duplicated = {i for i in ids if ids.count(i) > 1}
    assert not duplicated, duplicated
    return [pytest.param(case, id=case.id, marks=case.marks) for case in cases]
