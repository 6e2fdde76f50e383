"""The stack's lifecycle: up (really ready, or cleaned up and explained), down, restart, state.

`up` checks what it can before starting anything (model present, ports, GPU runtime, CPU limits,
credentials for a non-loopback BIND_HOST), generates the LLM server's API key into `.env` when
there is none, builds missing images, starts compose, then waits for real readiness: Redis
answers and is not loading; the LLM server lists the model and completes one token with the key,
and refuses a request without it. It does not wait for Docker's own healthchecks, which probe
once a second and may still say "starting" for up to that long: the stack serves by then, and
waiting would add half a second on average to every `up`. Stopped or exited services are simply
started again; a backend switch that removes the running LLM server says so.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kcdev import envfile, paths
from kcdev.backends import LLM_SERVER, REDIS, SERVICES
from kcdev.console import Say
from kcdev.errors import UserError
from kcdev.stack import images, preflight
from kcdev.stack.compose import ComposeProject, wants_gpu
from kcdev.stack.docker_cli import last_line

LOG_LINES = 20
# A readiness check: the service it waits for, and a probe saying why not yet (None: ready).
Check = tuple[str, Callable[[], str | None]]
# How `invoke logs` starts compose: a module attribute, so tests can stand in for it.
POPEN: Callable[..., subprocess.Popen[str]] = subprocess.Popen


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
            service = entry["Service"]
            # A service's replicas (workers) each get a row: worker, worker-2, ...
            number = str(entry.get("Name", "")).rsplit("-", 1)[-1]
            key = service if number in ("", "1") or not number.isdigit() else f"{service}-{number}"
            states[key] = ServiceState(
                service=service,
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
    """The service's last log lines, secrets masked: they go into error messages."""
    result = project.run("logs", "--no-color", "--no-log-prefix", "--tail", str(lines), service)
    text = project.settings.redact(result.stdout + result.stderr).strip()
    return f"--- last {lines} lines of {service}'s log ---\n{text}" if text else ""


def print_logs(
    project: ComposeProject,
    service: str | None,
    *,
    tail: int,
    follow: bool,
    say: Say = print,
    popen: Callable[..., subprocess.Popen[str]] | None = None,
) -> int:
    """`invoke logs`: compose's log lines as they come, secrets masked; returns compose's status.

    Read line by line rather than handed the terminal, so that no line reaches the user unmasked.
    """
    args = ["logs", "--tail", str(tail), *(["--follow"] if follow else [])]
    argv = project.argv(*args, *([service] if service else []))
    with (popen or POPEN)(
        argv, env=project.environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace",
    ) as process:  # fmt: skip
        assert process.stdout is not None
        for line in process.stdout:
            say(project.settings.redact(line.rstrip("\n")))
    return process.returncode


def preflight_problems(project: ComposeProject) -> list[str]:
    settings, backend, docker = project.settings, project.backend, project.docker
    problems = [
        preflight.exposure_problem(settings, backend),
        preflight.model_problem(settings, backend),
        preflight.gpu_problem(settings, backend, docker, wants_gpu(settings, backend)),
        *preflight.cpu_problems(settings, backend, docker),
        *preflight.port_problems(
            settings, backend, docker, node=project.topology.node,
            monitor=project.topology.monitor,
        ),
    ]  # fmt: skip
    return [p for p in problems if p]


def ensure_api_key(
    project: ComposeProject,
    env_file: Path,
    say: Say = print,
    environ: Mapping[str, str] = os.environ,
) -> ComposeProject:
    """An LLM server always requires a key: when LLM_API_KEY is empty, generate one into `.env`
    (so the worker and every later task read the same); returns the project using it. The key
    is never printed."""
    if not key_to_generate(project, environ):
        return project
    key = secrets.token_urlsafe(32)
    envfile.set_value(env_file, "LLM_API_KEY", key)
    say(
        f"generated LLM_API_KEY into {paths.shown(env_file)}: the LLM server answers only "
        "clients that send it (the worker reads it from there)"
    )
    return dataclasses.replace(
        project, settings=dataclasses.replace(project.settings, llm_api_key=key)
    )


def key_to_generate(project: ComposeProject, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether `up` has to generate LLM_API_KEY; refuses a key the environment empties (a
    generated one in .env would be overridden by it)."""
    if project.backend == "none" or project.settings.llm_api_key:
        return False
    if "LLM_API_KEY" in environ:
        raise UserError(
            "LLM_API_KEY is empty in the environment, which overrides .env: unset it "
            "(`invoke up` then generates one into .env) or set it to a key"
        )
    return True


def _with_key_to_come(project: ComposeProject) -> ComposeProject:
    """The project as `up` runs it once ensure_api_key has generated a missing key; for the
    checks, which only ask whether there is one."""
    if not key_to_generate(project):
        return project
    keyed = dataclasses.replace(project.settings, llm_api_key="(generated by up)")
    return dataclasses.replace(project, settings=keyed)


@dataclass(frozen=True)
class Container:
    """What docker inspect says of one of the project's containers."""

    service: str
    container_id: str
    status: str  # created, running, restarting, exited, dead, ...
    exit_code: int
    restarts: int
    health: str  # healthy, unhealthy, starting, or "" without a healthcheck
    backend: str = ""  # for llm-server: the backend whose compose files created it
    number: int = 1  # compose's replica number: workers run as several

    def crashed_since(self, restarts_before: int) -> bool:
        """Exited, or restarted by its restart policy since we looked (a crash loop can look
        running; Docker keeps counting restarts from before, which are not ours to blame)."""
        return self.status in ("exited", "dead", "restarting") or self.restarts > restarts_before


def containers(project: ComposeProject) -> dict[str, Container]:
    """The project's containers by service (`worker-2` for a service's second replica): two
    docker calls, far cheaper than `compose ps`."""
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
        labels = (entry.get("Config") or {}).get("Labels") or {}
        service = labels.get("com.docker.compose.service")
        if not service:
            continue
        number = int(labels.get("com.docker.compose.container-number") or 1)
        found[service if number == 1 else f"{service}-{number}"] = Container(
            number=number,
            service=service,
            container_id=entry["Id"],
            status=state.get("Status", ""),
            exit_code=int(state.get("ExitCode") or 0),
            restarts=int(entry.get("RestartCount") or 0),
            health=(state.get("Health") or {}).get("Status", ""),
            backend=_backend_of(labels.get(CONFIG_FILES_LABEL, ""))
            if service == LLM_SERVER
            else "",
        )
    return found


CONFIG_FILES_LABEL = "com.docker.compose.project.config_files"


def _backend_of(config_files: str) -> str:
    """The backend an llm-server container belongs to, from the compose files that made it."""
    return "vllm" if "docker-compose.vllm.yml" in config_files else "llamacpp"


def up(
    project: ComposeProject,
    *,
    timeout: float,
    keep_on_failure: bool = False,
    say: Say = print,
    env_file: Path = paths.ENV_FILE,
    extra_checks: Sequence[Check] = (),
) -> float:
    """Bring the backend's stack up and wait until it serves; returns the seconds it took.

    `timeout` bounds the wait for readiness, not a first image build (that can take minutes).
    The wait polls the services themselves rather than `compose up --wait`, whose view is only as
    fresh as the last healthcheck probe, and watches the containers for crashes meanwhile.
    `env_file` receives a generated LLM_API_KEY when there is none. `extra_checks` are waited
    for after the services' own (the workers answering on the broker, say).
    """
    started = time.monotonic()
    # Checked as `up` will run, with a key, but before one is written: a refused `up` (no model,
    # a port taken) leaves .env as it was.
    problems = preflight_problems(_with_key_to_come(project))
    if problems:
        raise UserError(problems[0])
    project = ensure_api_key(project, env_file, say)
    _import_probes_meanwhile()
    images.ensure_images(project, say=say)
    deadline = time.monotonic() + timeout
    found = containers(project)
    before = {c.service: c.container_id for c in found.values()}
    restarts = {c.container_id: c.restarts for c in found.values()}
    services = project.services
    switch = _backend_switch(found.get(LLM_SERVER), project.backend)
    if switch:
        say(switch)
    say(f"starting {', '.join(services)} (backend {project.backend}, project {project.name})")
    try:
        scale = (
            ["--scale", f"worker={project.topology.workers}"] if project.topology.workers else []
        )
        result = project.run("up", "--detach", "--remove-orphans", *scale)
        if result.returncode != 0:
            raise _start_failure(project, result.stderr, restarts)
        _wait_ready(project, deadline, timeout, restarts, say, extra_checks)
    except UserError:
        if not keep_on_failure:
            _remove_started(project, before)
        raise
    return time.monotonic() - started


def _backend_switch(llm: Container | None, backend: str) -> str | None:
    """The line that says an LLM server of another backend is about to go, or None."""
    if llm is None or llm.backend == backend:
        return None
    state = "running" if llm.status == "running" else llm.status or "stopped"
    if backend == "none":
        return (
            f"removing the {state} llm-server ({llm.backend}): --backend=none runs Redis alone; "
            f"`invoke up --backend={llm.backend}` brings it back"
        )
    return f"replacing the {state} llm-server ({llm.backend}) with {backend}"


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
        self.services = project.services
        self.checked = 0.0

    def __call__(self) -> None:
        if time.monotonic() - self.checked < self.INTERVAL:
            return
        self.checked = time.monotonic()
        failure = _container_failure(self.project, self.services, self.restarts)
        if failure is not None:
            raise failure


def _wait_ready(
    project: ComposeProject,
    deadline: float,
    timeout: float,
    restarts: dict[str, int],
    say: Say = print,
    extra_checks: Sequence[Check] = (),
) -> None:
    from kcdev.stack import readiness

    s = project.settings
    checks: list[Check] = []
    if not project.topology.node:
        checks.append(
            (REDIS, lambda: readiness.redis_ready(s.redis_host, s.redis_port, s.redis_password))
        )
    model = s.served_model(project.backend)
    if project.backend != "none":
        checks.append(
            (LLM_SERVER, lambda: readiness.llm_ready(s.llm_server_url, model, s.llm_api_key))
        )
    checks.extend(extra_checks)
    watch = _CrashWatch(project, restarts)
    for service, check in checks:

        def watched(check: Callable[[], str | None] = check) -> str | None:
            reason = check()
            if reason is not None:
                watch()
            return reason

        def progress(reason: str, waited: float, service: str = service) -> None:
            say(f"waiting for {service}: {reason} ({waited:.0f} s of {timeout:.0f} s)")

        try:
            readiness.wait_until(watched, deadline, progress)
        except readiness.NotReady as exc:
            raise UserError(
                f"{service} not ready within {timeout:.0f} s ({exc}): raise --timeout "
                "(large models load for minutes), or see its log below",
                service_log(project, service),
            ) from None
    if project.backend != "none":
        open_to_all = readiness.llm_refuses_anonymous(s.llm_server_url, model)
        if open_to_all is not None:
            raise UserError(
                f"llm-server serves clients without LLM_API_KEY ({open_to_all}): its image "
                "predates the key; rebuild it with `invoke build` and run `invoke up` again"
            )


def _start_failure(project: ComposeProject, stderr: str, restarts: dict[str, int]) -> UserError:
    """Name the cause of a failed `compose up`, with the failing service's log."""
    stderr = project.settings.redact(stderr)
    text = stderr.lower()
    if "port is already allocated" in text or "address already in use" in text:
        return UserError(
            f"a port the stack publishes is taken ({last_line(stderr)}): "
            "stop the other program, or set REDIS_PORT / PORT in .env"
        )
    failure = _container_failure(project, project.services, restarts)
    return failure or UserError(f"docker compose up failed: {last_line(stderr)}")


def _container_failure(
    project: ComposeProject, services: list[str], restarts: dict[str, int]
) -> UserError | None:
    for container in containers(project).values():
        service = container.service
        if service not in services:
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
        return (
            "killed, most likely out of memory: raise LLM_MEMORY / REDIS_MEMORY, or use a "
            "smaller model or lower N_CTX"
        )
    return "check that the model is a valid file that fits in memory"


def _remove_started(project: ComposeProject, before: dict[str, str]) -> None:
    """Remove the containers this `up` created or recreated; volumes (data) are kept."""
    after = containers(project)
    started = [c.service for key, c in after.items() if before.get(key) != c.container_id]
    if started:  # a service with a new replica goes whole: compose removes by service
        project.run("rm", "--stop", "--force", *dict.fromkeys(started))


def down(project: ComposeProject, *, volumes: bool) -> None:
    args = ["down", "--remove-orphans", *(["--volumes"] if volumes else [])]
    result = project.run(*args)
    if result.returncode != 0:
        raise UserError(
            f"docker compose down failed: {last_line(project.settings.redact(result.stderr))}"
        )


def restart(
    project: ComposeProject, service: str | None, *, timeout: float, say: Say = print
) -> float:
    """Restart the stack or one of its services and wait until it serves again; fails at once
    when there is nothing to restart, rather than waiting `timeout` for it."""
    started = time.monotonic()
    found = containers(project)
    if not found:
        raise UserError(f"stack {project.name} is not running: start it with `invoke up`")
    if service is not None and service not in found:
        raise UserError(
            f"{service} is not part of stack {project.name} (services: {', '.join(found)}): "
            "restart another service, or start it with `invoke up --backend=...`"
        )
    restarts = {c.container_id: c.restarts for c in found.values()}
    result = project.run("restart", *([service] if service else []))
    if result.returncode != 0:
        raise UserError(
            f"docker compose restart failed: {last_line(project.settings.redact(result.stderr))}"
        )
    _wait_ready(project, started + timeout, timeout, restarts, say)
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
        "inspect", "--format", f'{{{{index .Config.Labels "{CONFIG_FILES_LABEL}"}}}}',
        llm.container_id,
    ).stdout  # fmt: skip
    return _backend_of(label)
