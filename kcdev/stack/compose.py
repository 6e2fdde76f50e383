"""The compose project: which files make up the stack for a backend, and the commands to drive it.

The project name is fixed by COMPOSE_PROJECT_NAME, so every task finds the same containers and
volumes again, whatever folder it runs from. A project is a value: another backend, or a build's
extra variables, make a new one or go with one call, so no caller sees it change under its feet.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kcdev import paths
from kcdev.backends import BACKENDS, FLOWER, LLM_SERVER, REDIS, WORKER
from kcdev.errors import UserError
from kcdev.settings import Settings
from kcdev.stack import images
from kcdev.stack.docker_cli import Docker
from kcdev.tls import ca_bundle

BASE_FILE = paths.DOCKER_DIR / "docker-compose.yml"
GPU_FILE = paths.DOCKER_DIR / "docker-compose.gpu.yml"
PRE25_DIR = paths.DOCKER_DIR / "engine-pre25"
# Past one machine: Redis over TLS beyond loopback, workers and Flower as services, and a worker
# node's stack (no Redis of its own; its workers reach the central one).
REDIS_TLS_FILE = paths.DOCKER_DIR / "docker-compose.redis-tls.yml"
WORKERS_FILE = paths.DOCKER_DIR / "docker-compose.workers.yml"
MONITOR_FILE = paths.DOCKER_DIR / "docker-compose.monitor.yml"
NODE_FILE = paths.DOCKER_DIR / "docker-compose.node.yml"
NODE_WORKERS_FILE = paths.DOCKER_DIR / "docker-compose.node-workers.yml"


@dataclass(frozen=True)
class Topology:
    """What runs beside Redis and the LLM server, and where Redis is.

    `node`: this machine is a worker node of another machine's Redis, and runs none itself.
    `redis_tls`: Redis is published beyond loopback, over TLS only. `environment` carries what
    the compose files substitute for them (the certificates' and the central's secrets, as
    values for environment-sourced compose secrets: never in a container's environment).
    """

    workers: int = 0
    monitor: bool = False
    node: bool = False
    redis_tls: bool = False
    environment: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # `environment` holds secrets
        return (
            f"Topology(workers={self.workers}, monitor={self.monitor}, node={self.node}, "
            f"redis_tls={self.redis_tls})"
        )

    def services(self, backend: str) -> list[str]:
        """The compose services this topology runs for `backend`."""
        found = [] if self.node else [REDIS]
        if backend != "none":
            found.append(LLM_SERVER)
        if self.workers:
            found.append(WORKER)
        if self.monitor:
            found.append(FLOWER)
        return found


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    return backend


def wants_gpu(settings: Settings, backend: str) -> bool:
    """vLLM's cuda variant always needs the GPU; llama.cpp only when layers are offloaded."""
    if backend == "vllm":
        return settings.vllm_variant == "cuda"
    return backend == "llamacpp" and settings.n_gpu_layers != 0


def compose_files(
    settings: Settings,
    backend: str,
    *,
    start_interval: bool = True,
    topology: Topology | None = None,
) -> list[Path]:
    """The base file (or a node's, without Redis), Redis' TLS file, the backend's override, the
    GPU file when needed, the workers' and Flower's files, and on engines older than 25 (no
    healthcheck start_interval) the files that probe every second instead."""
    topology = topology or Topology()
    services = [] if topology.node else [REDIS]
    files = [NODE_FILE if topology.node else BASE_FILE]
    if topology.redis_tls and not topology.node:
        files.append(REDIS_TLS_FILE)
    if check_backend(backend) != "none":
        services.append(LLM_SERVER)
        files.append(paths.DOCKER_DIR / f"docker-compose.{backend}.yml")
        if wants_gpu(settings, backend):
            files.append(GPU_FILE)
    if topology.workers:
        files.append(WORKERS_FILE)
        if topology.node:
            files.append(NODE_WORKERS_FILE)
    if topology.monitor:
        files.append(MONITOR_FILE)
    if not start_interval:
        files += [PRE25_DIR / f"{service}.yml" for service in services]
    return files


@dataclass(frozen=True)
class ComposeProject:
    """One backend's view of the stack: the files, the environment and the compose command."""

    settings: Settings
    backend: str
    docker: Docker = field(default_factory=Docker)
    topology: Topology = field(default_factory=Topology)

    @property
    def name(self) -> str:
        return self.settings.compose_project_name

    @property
    def services(self) -> list[str]:
        return self.topology.services(self.backend)

    def with_topology(self, topology: Topology) -> ComposeProject:
        return dataclasses.replace(self, topology=topology)

    def with_backend(self, backend: str) -> ComposeProject:
        """The same stack seen through another backend's files (the one it runs, say)."""
        return dataclasses.replace(self, backend=check_backend(backend))

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """What compose substitutes into the files: the process environment, the settings, the
        images' tags and versions (kcdev.stack.images, their one source), then `extra`."""
        return {
            **os.environ,
            **self.settings.as_environment(),
            **images.compose_variables(self.settings, self.backend),
            "CA_BUNDLE_FILE": str(ca_bundle(self.settings)),
            # Compose 2.40 prefers Bake, which needs buildx; the daemon's BuildKit does the job.
            "COMPOSE_BAKE": "false",
            # Workers are named <container>@<machine>: `invoke ps` says where each one runs.
            "KC_MACHINE": socket.gethostname(),
            **self.topology.environment,
            **(extra or {}),
        }

    def argv(self, *args: str) -> list[str]:
        argv = [*self.docker.compose(), "--project-name", self.name]
        files = compose_files(
            self.settings,
            self.backend,
            start_interval=self.docker.supports_start_interval(),
            topology=self.topology,
        )
        for path in files:
            argv += ["--file", str(path)]
        return [*argv, *args]

    def run(
        self,
        *args: str,
        capture: bool = True,
        timeout: float | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return self.docker.runner(
            self.argv(*args), env=self.environment(extra_env), capture=capture, timeout=timeout
        )

    def build(
        self,
        services: Sequence[str],
        *,
        no_cache: bool = False,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        """Build the services' images; `extra_env` carries the build's base images and flags."""
        args = ["build", *(["--no-cache"] if no_cache else []), *services]
        result = self.run(*args, capture=False, extra_env=extra_env)
        if result.returncode != 0:
            raise UserError(
                f"image build failed (exit {result.returncode}): see the build output above; "
                "`invoke doctor` checks the usual causes"
            )
