"""The compose project: which files make up the stack for a backend, and the commands to drive it.

The project name is fixed by COMPOSE_PROJECT_NAME, so every task finds the same containers and
volumes again, whatever folder it runs from. A project is a value: another backend, or a build's
extra variables, make a new one or go with one call, so no caller sees it change under its feet.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kcdev import paths
from kcdev.backends import BACKENDS, LLM_SERVER, REDIS
from kcdev.errors import UserError
from kcdev.settings import Settings
from kcdev.stack import images
from kcdev.stack.docker_cli import Docker
from kcdev.tls import ca_bundle

BASE_FILE = paths.DOCKER_DIR / "docker-compose.yml"
GPU_FILE = paths.DOCKER_DIR / "docker-compose.gpu.yml"
PRE25_DIR = paths.DOCKER_DIR / "engine-pre25"


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    return backend


def wants_gpu(settings: Settings, backend: str) -> bool:
    """vLLM's cuda variant always needs the GPU; llama.cpp only when layers are offloaded."""
    if backend == "vllm":
        return settings.vllm_variant == "cuda"
    return backend == "llamacpp" and settings.n_gpu_layers != 0


def compose_files(settings: Settings, backend: str, *, start_interval: bool = True) -> list[Path]:
    """The base file, the backend's override, the GPU file when needed, and on engines older than
    25 (no healthcheck start_interval) the files that probe every second instead."""
    services = [REDIS]
    files = [BASE_FILE]
    if check_backend(backend) != "none":
        services.append(LLM_SERVER)
        files.append(paths.DOCKER_DIR / f"docker-compose.{backend}.yml")
        if wants_gpu(settings, backend):
            files.append(GPU_FILE)
    if not start_interval:
        files += [PRE25_DIR / f"{service}.yml" for service in services]
    return files


@dataclass(frozen=True)
class ComposeProject:
    """One backend's view of the stack: the files, the environment and the compose command."""

    settings: Settings
    backend: str
    docker: Docker = field(default_factory=Docker)

    @property
    def name(self) -> str:
        return self.settings.compose_project_name

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
            **(extra or {}),
        }

    def argv(self, *args: str) -> list[str]:
        argv = [*self.docker.compose(), "--project-name", self.name]
        files = compose_files(
            self.settings, self.backend, start_interval=self.docker.supports_start_interval()
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
