"""Redis containers that backup and restore tests can stop, restart and restore into.

A restore stops and starts the container; with a port Docker picks, a restarted container may come
back on another one. These containers are published on a host port the test chose (free when
chosen), so the `RedisTarget` stays valid across restarts.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from typing import Any

from kcdev.backup.redis_target import RedisTarget, ready_reason, target_for_container
from kcdev.stack import readiness
from kcdev.stack.docker_cli import Docker
from tests.support.containers import LOOPBACK, RedisContainer
from tests.support.stack import free_port


class FixedPortRedis(RedisContainer):
    """The stack's Redis image (AOF on, a password) on a fixed 127.0.0.1 port."""

    def __init__(self, image: str, password: str | None = None, **kwargs: Any) -> None:
        super().__init__(image, password=password or secrets.token_urlsafe(12), **kwargs)
        self.host_port = free_port()
        # docker-py reads (address, port) as "publish on this address and this port".
        self.ports["6379/tcp"] = (LOOPBACK, self.host_port)  # type: ignore[assignment]

    @property
    def container_id(self) -> str:
        return str(self.get_wrapped_container().id)

    def target(self) -> RedisTarget:
        return target_for_container(
            Docker(), self.container_id, LOOPBACK, self.host_port, self.password,
            f"test container {self.container_id[:12]}",
        )  # fmt: skip

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a docker CLI command on this container's behalf (restart, exec, cp)."""
        return subprocess.run(
            ["docker", *args], capture_output=True, text=True, check=check, timeout=300
        )

    def wait_ready(self, timeout: float = 60) -> None:
        """Until Redis answers with the password and has loaded its data (not just PING)."""
        target = self.target()
        readiness.wait_until(lambda: ready_reason(target), time.monotonic() + timeout)

    def restart_and_wait(self) -> None:
        self.docker("restart", self.container_id)
        self.wait_ready()
