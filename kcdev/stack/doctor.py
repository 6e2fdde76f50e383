"""`invoke doctor`: every precondition of the stack, one line each, with the fix for a failure."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kcdev import files, paths
from kcdev.console import human_size
from kcdev.errors import UserError
from kcdev.settings import Settings, load_settings
from kcdev.stack import images, preflight
from kcdev.stack.compose import wants_gpu
from kcdev.stack.docker_cli import Docker, last_line

GIB = 1024**3


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    message: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.message}"


def run_checks(
    backend: str | None, docker: Docker, load: Callable[[], Settings] = load_settings
) -> Iterator[Check]:
    """Yield each check as it completes; later checks are skipped when Docker is unreachable."""
    try:
        settings: Settings | None = load()
        yield Check(".env", True, "values valid")
    except UserError as exc:
        settings = None
        yield Check(".env", False, str(exc))

    try:
        docker.ensure_daemon()
    except UserError as exc:
        yield Check("docker daemon", False, str(exc))
        return
    version = docker.run("version", "--format", "{{.Server.Version}}").stdout.strip()
    yield Check("docker daemon", True, f"engine {version} answers")

    try:
        compose = docker.compose()
    except UserError as exc:
        yield Check("compose", False, str(exc))
        return
    compose_version = docker.runner([*compose, "version", "--short"]).stdout.strip()
    if compose == ["docker-compose"]:
        yield Check(
            "compose", False, f"only v1 ({compose_version}): the tasks need compose v2 "
            "(build secrets, `ps --format json`); install the docker compose plugin "
            "(scripts/provision-host.sh)",
        )  # fmt: skip
    else:
        yield Check("compose", True, f"v{compose_version.lstrip('v')}")
    if docker.supports_start_interval():
        yield Check("healthcheck start_interval", True, "supported (Engine 25+)")
    else:
        yield Check(
            "healthcheck start_interval", True,
            "not supported by this engine: using docker/engine-pre25/ (probes every second)",
        )  # fmt: skip

    if settings is None:
        yield Check("remaining checks", False, "skipped: fix .env first")
        return
    chosen = backend or settings.llm_backend
    yield from _image_checks(settings, docker, chosen)
    yield from _stack_checks(settings, docker, chosen)


def _image_checks(settings: Settings, docker: Docker, backend: str) -> Iterator[Check]:
    source, reason = images.resolve_source(settings, docker)  # as `invoke build` decides it
    yield Check("registry", True, f"{source} mode, {reason}")
    if source == "local":
        present = docker.image_exists(images.LOCAL_BASE)
        yield Check(
            "base images",
            present,
            f"{images.LOCAL_BASE} present"
            if present
            else f"{images.LOCAL_BASE} missing: `invoke build` makes it (debootstrap, ~90 s)",
        )
    missing = [
        name
        for name in images.image_names(settings, backend).values()
        if not docker.image_exists(name)
    ]
    yield Check(
        "stack images",
        not missing,
        "built" if not missing else f"missing {', '.join(missing)}: run `invoke build`",
    )
    if images.REDIS_IMAGE not in missing:
        yield _redis_version_check(docker)


def _redis_version_check(docker: Docker) -> Check:
    """The Redis really inside the image: backups restore only into the same RDB format."""
    probe = docker.run(
        "run", "--rm", "--network", "none", "--entrypoint", "redis-server", images.REDIS_IMAGE,
        "--version", timeout=60,
    )  # fmt: skip
    found = re.search(r" v=(\d+\.\d+\.\d+)", probe.stdout)
    if found is None:
        return Check("redis", False, f"cannot run {images.REDIS_IMAGE}: {last_line(probe.stderr)}")
    if not found[1].startswith(f"{images.REDIS_SERIES}."):
        return Check(
            "redis", False,
            f"{images.REDIS_IMAGE} runs Redis {found[1]}, not {images.REDIS_SERIES}: it was built "
            "from an older Dockerfile; rebuild it with `invoke build`",
        )  # fmt: skip
    return Check("redis", True, f"{images.REDIS_IMAGE} runs Redis {found[1]}")


def _stack_checks(settings: Settings, docker: Docker, backend: str) -> Iterator[Check]:
    problem = preflight.model_problem(settings, backend)
    where = preflight.host_model_path(settings, backend)
    yield Check(
        "model", problem is None, problem or (f"{where} present" if where else "none needed")
    )
    exposure = preflight.exposure_problem(settings, backend)
    yield Check("exposure", exposure is None, exposure or f"published on {settings.bind_host} only")
    ports = preflight.port_problems(settings, backend, docker)
    yield Check("ports", not ports, "; ".join(ports) or "free or held by this stack")
    gpu = preflight.gpu_problem(settings, backend, docker, wants_gpu(settings, backend))
    if wants_gpu(settings, backend) or gpu:
        yield Check("nvidia runtime", gpu is None, gpu or "present")
    size = preflight.model_size(settings, backend)
    free = files.free_bytes(paths.ROOT)
    needed = 2 * GIB
    yield Check(
        "disk",
        free >= needed,
        f"{human_size(free)} free"
        + ("" if free >= needed else f": at least {human_size(needed)} needed for images and data"),
    )
    available = preflight.memory_available()
    if available is not None and size:
        wanted = int(size * 1.2) + GIB // 2
        yield Check(
            "memory",
            available >= wanted,
            f"{human_size(available)} available for a {human_size(size)} model"
            + ("" if available >= wanted else ": use a smaller model or quantization"),
        )
