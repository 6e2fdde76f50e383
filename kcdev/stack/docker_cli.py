"""Running the docker CLI: the daemon check, compose detection, and error text users can act on.

Commands go through one injectable runner so unit tests can check what would run without Docker.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from kcdev.errors import UserError

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def run_subprocess(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    capture: bool = True,
    timeout: float | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command without raising on a non-zero exit: callers decide what a failure means."""
    try:
        return subprocess.run(
            list(argv),
            env=dict(env) if env is not None else None,
            capture_output=capture,
            text=True,
            timeout=timeout,
            input=input,
            check=False,
        )
    except FileNotFoundError:
        raise UserError(f"{argv[0]} is not installed: install it (see README, Set-up)") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"`{' '.join(argv[:3])}` did not finish within {timeout:.0f} s") from None


def last_line(text: str) -> str:
    """The last non-empty line of a command's output: usually the one that says what failed."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


@dataclass
class Docker:
    """The docker CLI and its compose plugin, as this machine has them."""

    runner: Runner = run_subprocess
    _compose: list[str] | None = field(default=None, init=False, repr=False)
    _api: tuple[int, ...] | None = field(default=None, init=False, repr=False)

    def run(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.runner(["docker", *args], **kwargs)

    def ensure_daemon(self) -> None:
        """Fail in one line when the CLI is missing or the daemon does not answer."""
        if self.runner is run_subprocess and shutil.which("docker") is None:
            raise UserError(
                "docker is not installed: install Docker "
                "(on Debian: sudo bash scripts/provision-host.sh)"
            )
        result = self.run("info", "--format", "{{.ServerVersion}}", timeout=30)
        if result.returncode != 0:
            detail = last_line(result.stderr)
            if "permission denied" in detail.lower():
                raise UserError(
                    "cannot talk to the Docker daemon (permission denied): "
                    "add yourself to the docker group or run as root"
                )
            raise UserError(
                "Docker is not running: start the daemon "
                "(on Debian without systemd: sudo bash scripts/provision-host.sh)"
            )

    def compose(self) -> list[str]:
        """The compose command: v2 (`docker compose`) where present, v1 (`docker-compose`) else."""
        if self._compose is None:
            if self.run("compose", "version", "--short").returncode == 0:
                self._compose = ["docker", "compose"]
            elif self._v1_compose_answers():
                self._compose = ["docker-compose"]
            else:
                raise UserError(
                    "docker compose is not installed: install the compose v2 plugin "
                    "(on Debian: sudo bash scripts/provision-host.sh)"
                )
        return self._compose

    def _v1_compose_answers(self) -> bool:
        try:
            return self.runner(["docker-compose", "version", "--short"]).returncode == 0
        except UserError:  # not installed
            return False

    def api_version(self) -> tuple[int, ...]:
        """The daemon's API version, e.g. (1, 41) for Engine 20.10, (1, 44) for Engine 25."""
        if self._api is None:
            result = self.run("version", "--format", "{{.Server.APIVersion}}")
            try:
                self._api = tuple(int(part) for part in result.stdout.strip().split("."))
            except ValueError:
                self._api = (0,)
        return self._api

    def supports_start_interval(self) -> bool:
        """Healthcheck start_interval needs Engine 25 (API 1.44); compose refuses it before."""
        return self.api_version() >= (1, 44)

    def image_exists(self, name: str) -> bool:
        return self.run("image", "inspect", "--format", "{{.Id}}", name).returncode == 0
