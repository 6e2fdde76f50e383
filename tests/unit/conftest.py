"""Shared fixtures for the unit tests: a fake command runner and settings without `.env`.

Nothing here talks to Docker or the network: `FakeRunner` stands in for
`kcdev.stack.docker_cli.run_subprocess`, records what would have run, and answers from a table.
`ScriptedRunner`, `FakeClock` and `FakeReadiness` let the stack's lifecycle run the same way.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from kcdev.settings import Settings, load_settings
from kcdev.stack import changing
from kcdev.stack.docker_cli import Docker

Result = tuple[int, str, str]  # (returncode, stdout, stderr)


@pytest.fixture(autouse=True)
def own_stack_locks(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Stack locks (kcdev/stack/changing.py) in a folder of each test's own: tests that run `up`
    side by side (pytest-xdist), or beside the developer's real `invoke up`, never wait for one
    another (they did, and a waiting line broke an exact-output assertion)."""
    folder = tmp_path_factory.mktemp("locks")
    monkeypatch.setattr(changing, "lock_dir", lambda: folder)
    return folder


@dataclass
class Call:
    """One command the code under test ran through the runner."""

    argv: list[str]
    env: dict[str, str] | None
    kwargs: dict[str, object]


@dataclass
class FakeRunner:
    """A `Runner` that records calls and answers by the longest matching argv prefix.

    Unknown commands succeed with empty output unless `default` says otherwise.
    """

    rules: dict[tuple[str, ...], Result] = field(default_factory=dict)
    default: Result = (0, "", "")
    calls: list[Call] = field(default_factory=list)

    def on(self, *prefix: str, returncode: int = 0, stdout: str = "", stderr: str = "") -> None:
        """Answer every command starting with `prefix` with this result."""
        self.rules[prefix] = (returncode, stdout, stderr)

    def result_for(self, argv: Sequence[str]) -> Result:
        matches = [p for p in self.rules if tuple(argv[: len(p)]) == p]
        if not matches:
            return self.default
        return self.rules[max(matches, key=len)]

    def __call__(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        args = list(argv)
        self.calls.append(Call(args, dict(env) if env is not None else None, dict(kwargs)))
        returncode, stdout, stderr = self.result_for(args)
        return subprocess.CompletedProcess(args, returncode, stdout, stderr)

    @property
    def argvs(self) -> list[list[str]]:
        return [call.argv for call in self.calls]

    def calls_starting(self, *prefix: str) -> list[Call]:
        return [call for call in self.calls if tuple(call.argv[: len(prefix)]) == prefix]


class MakeSettings(Protocol):
    def __call__(self, **overrides: str) -> Settings: ...


@pytest.fixture
def runner() -> ScriptedRunner:
    """Docker faked: compose v2 on Engine 27 (start_interval supported); every other command
    succeeds with no output unless a test scripts it."""
    fake = ScriptedRunner()
    fake.on("docker", "version", stdout="1.47\n")
    return fake


@pytest.fixture
def docker(runner: FakeRunner) -> Docker:
    """A Docker whose commands go to the fake runner."""
    return Docker(runner=runner)


@pytest.fixture
def missing_env_file(tmp_path: Path) -> Path:
    """A `.env` path that does not exist, so only defaults, environ and overrides count."""
    return tmp_path / "absent" / ".env"


@pytest.fixture
def make_settings(missing_env_file: Path) -> MakeSettings:
    """Settings from the defaults plus keyword overrides; ignores the real `.env` and environ."""

    names = {f.name for f in Settings.fields()}

    def make(**overrides: str) -> Settings:
        unknown = set(overrides) - names
        assert not unknown, f"no such setting: {unknown}"
        environ = {name.upper(): value for name, value in overrides.items()}
        return load_settings(missing_env_file, environ=environ)

    return make


@dataclass
class ScriptedRunner(FakeRunner):
    """A FakeRunner whose answer to a command can change from one call to the next.

    `on_calls` queues results for a prefix: each matching call takes the next one and the last
    repeats, as `compose ps` does when containers come and go during one `up`. A scripted prefix
    beats a fixed rule of the same or shorter length.
    """

    scripts: dict[tuple[str, ...], list[Result]] = field(default_factory=dict)

    def on_calls(self, *prefix: str, results: Sequence[Result]) -> None:
        if not results:
            raise ValueError("on_calls needs at least one result")
        self.scripts[prefix] = list(results)

    def result_for(self, argv: Sequence[str]) -> Result:
        scripted = [p for p in self.scripts if tuple(argv[: len(p)]) == p]
        fixed = [p for p in self.rules if tuple(argv[: len(p)]) == p]
        if scripted and len(max(scripted, key=len)) >= max((len(p) for p in fixed), default=0):
            queue = self.scripts[max(scripted, key=len)]
            return queue.pop(0) if len(queue) > 1 else queue[0]
        return super().result_for(argv)


class FakeClock:
    """Stands in for the `time` module: `sleep` advances `monotonic` instantly."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """A fake clock for the stack's deadlines and readiness polling: no test waits for real."""
    from kcdev.stack import lifecycle, readiness

    fake = FakeClock()
    monkeypatch.setattr(lifecycle, "time", fake)
    monkeypatch.setattr(readiness, "time", fake)
    return fake


# --- the stack as compose and the readiness checks see it ------------------------------------


def ps_entry(
    service: str,
    container_id: str,
    *,
    state: str = "running",
    health: str = "healthy",
    exit_code: int = 0,
    port: int | None = None,
) -> dict[str, Any]:
    """One container as `docker compose ps --format json` (v2.40) describes it."""
    publishers = [{"URL": "127.0.0.1", "TargetPort": port, "PublishedPort": port}] if port else []
    return {
        "ID": container_id,
        "Name": f"kc-devenv-{service}-1",
        "Project": "kc-devenv",
        "Service": service,
        "State": state,
        "Health": health,
        "ExitCode": exit_code,
        "Status": "Up 3 seconds" if state == "running" else f"Exited ({exit_code})",
        "Publishers": publishers,
    }


def ps_lines(*entries: dict[str, Any]) -> str:
    return "".join(json.dumps(entry) + "\n" for entry in entries)


def compose_subcommands(runner: FakeRunner) -> list[list[str]]:
    """The compose commands run, without `docker compose --project-name N --file F...`."""
    found = []
    for argv in runner.argvs:
        if argv[:3] != ["docker", "compose", "--project-name"]:
            continue
        rest = argv[4:]
        while rest[:1] == ["--file"]:
            rest = rest[2:]
        found.append(rest)
    return found


@dataclass
class FakeReadiness:
    """Stand-ins for readiness.redis_ready, llm_ready and llm_refuses_anonymous: each call takes
    the next reason. `install` puts them in place of the real probes."""

    redis: list[str | None] = field(default_factory=lambda: [None])
    llm: list[str | None] = field(default_factory=lambda: [None])
    anonymous: list[str | None] = field(default_factory=lambda: [None])
    redis_calls: list[tuple[str, int, str]] = field(default_factory=list)
    llm_calls: list[tuple[str, str]] = field(default_factory=list)
    llm_keys: list[str] = field(default_factory=list)
    anonymous_calls: list[tuple[str, str]] = field(default_factory=list)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeReadiness:
        from kcdev.stack import readiness

        monkeypatch.setattr(readiness, "redis_ready", self.redis_ready)
        monkeypatch.setattr(readiness, "llm_ready", self.llm_ready)
        monkeypatch.setattr(readiness, "llm_refuses_anonymous", self.llm_refuses_anonymous)
        return self

    def redis_ready(self, host: str, port: int, password: str, db: int = 0) -> str | None:
        self.redis_calls.append((host, port, password))
        return self.redis.pop(0) if len(self.redis) > 1 else self.redis[0]

    def llm_ready(
        self, base_url: str, model: str, api_key: str = "", timeout: float = 30
    ) -> str | None:
        self.llm_calls.append((base_url, model))
        self.llm_keys.append(api_key)
        return self.llm.pop(0) if len(self.llm) > 1 else self.llm[0]

    def llm_refuses_anonymous(self, base_url: str, model: str, timeout: float = 10) -> str | None:
        self.anonymous_calls.append((base_url, model))
        return self.anonymous.pop(0) if len(self.anonymous) > 1 else self.anonymous[0]


# --- the project's containers as `docker ps` and `docker inspect` see them ----------------------


def inspect_entry(
    service: str | None,
    container_id: str,
    *,
    status: str = "running",
    exit_code: int = 0,
    restarts: int = 0,
    health: str | None = "healthy",
    project: str = "kc-devenv",
    backend: str = "llamacpp",
) -> dict[str, Any]:
    """One container as `docker inspect` (Engine 20.10) describes it, trimmed to what matters.

    `health=None` is a container without a healthcheck (no State.Health at all); `service=None`
    one that carries the project label but no service label. An llm-server carries the compose
    files of `backend` in its labels.
    """
    state: dict[str, Any] = {
        "Status": status,
        "Running": status == "running",
        "Restarting": status == "restarting",
        "Dead": status == "dead",
        "ExitCode": exit_code,
    }
    if health is not None:
        state["Health"] = {"Status": health, "FailingStreak": 0, "Log": []}
    labels = {"com.docker.compose.project": project}
    if service is not None:
        labels["com.docker.compose.service"] = service
    if service == "llm-server":
        labels["com.docker.compose.project.config_files"] = (
            f"/repo/docker/docker-compose.yml,/repo/docker/docker-compose.{backend}.yml"
        )
    return {
        "Id": container_id,
        "Name": f"/{project}-{service}-1",
        "RestartCount": restarts,
        "State": state,
        "Config": {"Labels": labels},
    }


def script_containers(
    runner: ScriptedRunner, *snapshots: Sequence[dict[str, Any]], project: str = "kc-devenv"
) -> None:
    """Each look at the project's containers sees the next snapshot; the last one from then on.

    `docker ps -aq` lists a snapshot's short ids and `docker inspect` of exactly those ids answers
    with the snapshot's JSON array. Inspect answers queue per id list: a look always inspects the
    ids its own `ps` listed, so snapshots sharing ids still come in order.
    """
    short = [tuple(entry["Id"][:12] for entry in snapshot) for snapshot in snapshots]
    runner.on_calls(
        "docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}",
        results=[(0, "".join(f"{i}\n" for i in ids), "") for ids in short],
    )  # fmt: skip
    answers: dict[tuple[str, ...], list[Result]] = {}
    for ids, snapshot in zip(short, snapshots, strict=True):
        if ids:
            answers.setdefault(ids, []).append((0, json.dumps(list(snapshot), indent=4) + "\n", ""))
    for ids, results in answers.items():
        runner.on_calls("docker", "inspect", *ids, results=results)


@pytest.fixture
def ready(monkeypatch: pytest.MonkeyPatch) -> FakeReadiness:
    """Redis and the LLM server answer the readiness probes as `FakeReadiness` says."""
    return FakeReadiness().install(monkeypatch)
