"""The stack's lifecycle: up (really ready, or cleaned up and explained), down, restart, state.

`up` checks what it can before starting anything (model present, ports, GPU runtime), builds
missing images, starts compose, then waits for real readiness: Redis answers and is not loading;
the LLM server lists the model and completes one token. It does not wait for Docker's own
healthchecks, which probe once a second and may still say "starting" for up to that long: the
stack serves by then, and waiting would add half a second on average to every `up`.
"""

from __future__ import annotations

import importlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kcdev.backends import LLM_SERVER, REDIS, SERVICES, services_for
from kcdev.console import Say
from kcdev.errors import UserError
from kcdev.stack import images, preflight
from kcdev.stack.compose import ComposeProject, wants_gpu
from kcdev.stack.docker_cli import last_line

LOG_LINES = 20


@dataclass(frozen=True)
class ServiceState:
    service: str
    container_id: str
    state: str  # running, exited, ...
    health: str  # healthy, unhealthy, starting, or "" without a healthcheck
    exit_code: int
    ports: str


def service_states(project: ComposeProject) -> dict[str, ServiceState]:
    """The project's containers by service, running or not."""
    result = project.run("ps", "--all", "--format", "json")
    states: dict[str, ServiceState] = {}
    for line in result.stdout.splitlines():
        line = line.strip()
        if not line:
            continue
        entries = json.loads(line)
        for entry in entries if isinstance(entries, list) else [entries]:
            ports = sorted(
                {
                    f"{p['URL']}:{p['PublishedPort']}->{p['TargetPort']}"
                    for p in entry.get("Publishers") or []
                    if p.get("PublishedPort")
                }
            )
            states[entry["Service"]] = ServiceState(
                service=entry["Service"],
                container_id=entry["ID"],
                state=entry.get("State", ""),
                health=entry.get("Health", ""),
                exit_code=int(entry.get("ExitCode") or 0),
                ports=", ".join(ports),
            )
    return states


def check_service(service: str | None) -> str | None:
    if service is not None and service not in SERVICES:
        raise UserError(f"unknown service {service!r}: use one of {', '.join(SERVICES)}")
    return service


def service_log(project: ComposeProject, service: str, lines: int = LOG_LINES) -> str:
    result = project.run("logs", "--no-color", "--no-log-prefix", "--tail", str(lines), service)
    text = (result.stdout + result.stderr).strip()
    return f"--- last {lines} lines of {service}'s log ---\n{text}" if text else ""


def preflight_problems(project: ComposeProject) -> list[str]:
    settings, backend, docker = project.settings, project.backend, project.docker
    problems = [
        preflight.model_problem(settings, backend),
        preflight.gpu_problem(settings, backend, docker, wants_gpu(settings, backend)),
        *preflight.port_problems(settings, backend, docker),
    ]
    return [p for p in problems if p]


@dataclass(frozen=True)
class Container:
    """What docker inspect says of one of the project's containers."""

    service: str
    container_id: str
    status: str  # created, running, restarting, exited, dead, ...
    exit_code: int
    restarts: int
    health: str  # healthy, unhealthy, starting, or "" without a healthcheck

    def crashed_since(self, restarts_before: int) -> bool:
        """Exited, or restarted by its restart policy since we looked (a crash loop can look
        running; Docker keeps counting restarts from before, which are not ours to blame)."""
        return self.status in ("exited", "dead", "restarting") or self.restarts > restarts_before


def containers(project: ComposeProject) -> dict[str, Container]:
    """The project's containers by service: two docker calls, far cheaper than `compose ps`."""
    label = f"label=com.docker.compose.project={project.name}"
    # Not one-off containers (`compose run`): they share the labels but are not the stack.
    oneoff = "label=com.docker.compose.oneoff=False"
    ids = project.docker.run("ps", "-aq", "--filter", label, "--filter", oneoff).stdout.split()
    if not ids:
        return {}
    inspect = project.docker.run("inspect", *ids)
    found: dict[str, Container] = {}
    for entry in json.loads(inspect.stdout or "[]"):
        state = entry.get("State") or {}
        service = (entry.get("Config") or {}).get("Labels", {}).get("com.docker.compose.service")
        if not service:
            continue
        found[service] = Container(
            service=service,
            container_id=entry["Id"],
            status=state.get("Status", ""),
            exit_code=int(state.get("ExitCode") or 0),
            restarts=int(entry.get("RestartCount") or 0),
            health=(state.get("Health") or {}).get("Status", ""),
        )
    return found


def up(
    project: ComposeProject, *, timeout: float, keep_on_failure: bool = False, say: Say = print
) -> float:
    """Bring the backend's stack up and wait until it serves; returns the seconds it took.

    `timeout` bounds the wait for readiness, not a first image build (that can take minutes).
    The wait polls the services themselves rather than `compose up --wait`, whose view is only as
    fresh as the last healthcheck probe, and watches the containers for crashes meanwhile.
    """
    started = time.monotonic()
    problems = preflight_problems(project)
    if problems:
        raise UserError(problems[0])
    _import_probes_meanwhile()
    images.ensure_images(project, say=say)
    deadline = time.monotonic() + timeout
    found = containers(project)
    before = {c.service: c.container_id for c in found.values()}
    restarts = {c.container_id: c.restarts for c in found.values()}
    services = services_for(project.backend)
    say(f"starting {', '.join(services)} (backend {project.backend}, project {project.name})")
    try:
        result = project.run("up", "--detach", "--remove-orphans")
        if result.returncode != 0:
            raise _start_failure(project, result.stderr, restarts)
        _wait_ready(project, deadline, timeout, restarts)
    except UserError:
        if not keep_on_failure:
            _remove_started(project, before)
        raise
    return time.monotonic() - started


def _import_probes_meanwhile() -> None:
    """Import the readiness probes (redis-py and httpx: about 0.2 s) in the background while
    compose starts the containers, rather than after, when the wait for them begins."""
    threading.Thread(
        target=importlib.import_module, args=("kcdev.stack.readiness",), daemon=True
    ).start()


class _CrashWatch:
    """Checks the containers for crashes at most once a second while readiness is polled."""

    INTERVAL = 1.0

    def __init__(self, project: ComposeProject, restarts: dict[str, int]) -> None:
        self.project = project
        self.restarts = restarts
        self.services = services_for(project.backend)
        self.checked = 0.0

    def __call__(self) -> None:
        if time.monotonic() - self.checked < self.INTERVAL:
            return
        self.checked = time.monotonic()
        failure = _container_failure(self.project, self.services, self.restarts)
        if failure is not None:
            raise failure


def _wait_ready(
    project: ComposeProject, deadline: float, timeout: float, restarts: dict[str, int]
) -> None:
    from kcdev.stack import readiness

    s = project.settings
    checks: list[tuple[str, Callable[[], str | None]]] = [
        (REDIS, lambda: readiness.redis_ready(s.redis_host, s.redis_port, s.redis_password)),
    ]
    if project.backend != "none":
        model = s.served_model(project.backend)
        checks.append((LLM_SERVER, lambda: readiness.llm_ready(s.llm_server_url, model)))
    watch = _CrashWatch(project, restarts)
    for service, check in checks:

        def watched(check: Callable[[], str | None] = check) -> str | None:
            reason = check()
            if reason is not None:
                watch()
            return reason

        try:
            readiness.wait_until(watched, deadline)
        except readiness.NotReady as exc:
            raise UserError(
                f"{service} not ready within {timeout:.0f} s ({exc}): raise --timeout "
                "(large models load for minutes), or see its log below",
                service_log(project, service),
            ) from None


def _start_failure(project: ComposeProject, stderr: str, restarts: dict[str, int]) -> UserError:
    """Name the cause of a failed `compose up`, with the failing service's log."""
    text = stderr.lower()
    if "port is already allocated" in text or "address already in use" in text:
        return UserError(
            f"a port the stack publishes is taken ({last_line(stderr)}): "
            "stop the other program, or set REDIS_PORT / PORT in .env"
        )
    failure = _container_failure(project, services_for(project.backend), restarts)
    return failure or UserError(f"docker compose up failed: {last_line(stderr)}")


def _container_failure(
    project: ComposeProject, services: list[str], restarts: dict[str, int]
) -> UserError | None:
    found = containers(project)
    for service in services:
        container = found.get(service)
        if container is None:
            continue
        if container.crashed_since(restarts.get(container.container_id, 0)):
            log = service_log(project, service)
            code = container.exit_code
            # Docker resets the exit code once its restart policy has the container running.
            what = f"exited while starting (exit code {code})"
            if code == 0:
                what = "crashed while starting and was restarted"
            return UserError(f"{service} {what}: {_exit_hint(code, log)}", log)
        if container.health == "unhealthy":
            return UserError(
                f"{service} is unhealthy: see its log below", service_log(project, service)
            )
    return None


def _exit_hint(code: int, log: str) -> str:
    if code == 64 and last_line(log):  # the image's start scripts say what is wrong, last
        return last_line(log)
    if code == 132:
        return (
            "illegal instruction: the image was built for another CPU; "
            "rebuild with `invoke build --no-cache` on this machine"
        )
    if code == 137:
        return "killed, most likely out of memory: use a smaller model or lower N_CTX"
    return "check that the model is a valid file that fits in memory"


def _remove_started(project: ComposeProject, before: dict[str, str]) -> None:
    """Remove the containers this `up` created or recreated; volumes (data) are kept."""
    after = containers(project)
    started = [s for s, c in after.items() if before.get(s) != c.container_id]
    if started:
        project.run("rm", "--stop", "--force", *started)


def down(project: ComposeProject, *, volumes: bool) -> None:
    args = ["down", "--remove-orphans", *(["--volumes"] if volumes else [])]
    result = project.run(*args)
    if result.returncode != 0:
        raise UserError(f"docker compose down failed: {last_line(result.stderr)}")


def restart(
    project: ComposeProject, service: str | None, *, timeout: float, say: Say = print
) -> float:
    started = time.monotonic()
    restarts = {c.container_id: c.restarts for c in containers(project).values()}
    result = project.run("restart", *([service] if service else []))
    if result.returncode != 0:
        raise UserError(f"docker compose restart failed: {last_line(result.stderr)}")
    _wait_ready(project, started + timeout, timeout, restarts)
    return time.monotonic() - started


def running_backend(project: ComposeProject) -> str | None:
    """The backend the running stack was started with, from its llm-server's compose files."""
    states = service_states(project)
    if not states:
        return None
    llm = states.get(LLM_SERVER)
    if llm is None:
        return "none"
    label = project.docker.run(
        "inspect", "--format",
        '{{index .Config.Labels "com.docker.compose.project.config_files"}}', llm.container_id,
    ).stdout  # fmt: skip
    return "vllm" if "docker-compose.vllm.yml" in label else "llamacpp"
