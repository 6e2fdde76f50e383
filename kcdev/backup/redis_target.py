"""The Redis that backup and restore work on: a container, its published address, its password.

Commands go to Redis through the published port (redis-py); files and restarts go through the
docker CLI by container id. The compose stack's Redis and a test's container both become a
`RedisTarget`, so backup and restore never need to know which one they have.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from kcdev import redis_client
from kcdev.errors import UserError
from kcdev.stack.compose import ComposeProject
from kcdev.stack.docker_cli import Docker
from kcdev.stack.lifecycle import service_states
from kcdev.stack.readiness import client_ready

# `invoke up` keeps a running LLM server: `--backend=none` here would remove it without a word.
START_HINT = "start it with `invoke up`"
NOT_RUNNING = f"Redis is not running: {START_HINT}"


@dataclass(frozen=True)
class RedisTarget:
    container_id: str
    host: str
    port: int
    password: str
    # The image *id* the container runs: throwaway containers (redis-check-rdb, the restore's
    # temporary server) must run the very same Redis build, even if the tag was rebuilt since.
    image: str
    source: str  # what the manifest records, e.g. "project kc-devenv, container 1a2b3c4d5e6f"
    # The docker volume holding /data: the restore journal's containers mount it by name, so they
    # work on it even after the container is gone (`invoke down` keeps volumes).
    volume: str = ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def client(self, timeout: float = 30) -> redis.Redis:
        return redis_client.client(self.host, self.port, self.password, timeout=timeout)


DATA_DIR = "/data"  # where the stack's image keeps Redis' files (kc-redis-start)
INSPECT = '{{.Image}} {{range .Mounts}}{{if eq .Destination "/data"}}{{.Name}}{{end}}{{end}}'


def target_for_container(
    docker: Docker, container_id: str, host: str, port: int, password: str, source: str
) -> RedisTarget:
    result = docker.run("inspect", "--format", INSPECT, container_id, timeout=30)
    image, _, volume = result.stdout.strip().partition(" ")
    if result.returncode != 0 or not image:
        raise UserError(f"cannot inspect the Redis container {container_id[:12]}: {NOT_RUNNING}")
    if not volume:
        raise UserError(
            f"the Redis container {container_id[:12]} keeps {DATA_DIR} outside a docker volume: "
            "backups and restores need the stack's volume (docker/docker-compose.yml)"
        )
    return RedisTarget(container_id, host, port, password, image, source, volume)


def target_from_project(project: ComposeProject) -> RedisTarget:
    """The compose stack's Redis, reached as the worker reaches it (the settings' host and port)."""
    state = service_states(project).get("redis")
    if state is None or state.state != "running":
        raise UserError(NOT_RUNNING)
    s = project.settings
    return target_for_container(
        project.docker, state.container_id, s.redis_host, s.redis_port, s.redis_password,
        f"project {project.name}, container {state.container_id[:12]}",
    )  # fmt: skip


def connect(target: RedisTarget) -> redis.Redis:
    """A client that has answered once, or one line saying why Redis cannot be reached."""
    client = target.client()
    try:
        client.ping()
    except redis.AuthenticationError:
        client.close()
        raise UserError("Redis refused the password: check REDIS_PASSWORD") from None
    except redis.RedisError as exc:
        client.close()
        raise UserError(
            f"Redis does not answer at {target.address} ({exc}): {START_HINT}"
        ) from None
    return client


def ready_reason(target: RedisTarget) -> str | None:
    """None once Redis answers with the password and has loaded its data, else why not."""
    return client_ready(target.client(timeout=5))


def config_value(client: redis.Redis, name: str) -> str:
    """One CONFIG GET value as text: where Redis keeps its dump and its AOF."""
    try:
        found = client.config_get(name)
    except redis.RedisError as exc:
        raise UserError(f"Redis refused CONFIG GET {name} ({exc}): is CONFIG disabled?") from None
    value = found.get(name) if isinstance(found, dict) else None  # redis-py decodes CONFIG GET
    if value is None:
        raise UserError(f"Redis does not report its {name} setting (CONFIG GET {name}): needs 7.0+")
    return str(value)
