"""Testcontainers classes for the stack's own images, published on 127.0.0.1 only.

Tests talk to containers solely through loopback ports: testcontainers would publish on 0.0.0.0
by default, and `localhost` may resolve to ::1 where nothing listens.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis
from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import HttpWaitStrategy
from testcontainers.core.waiting_utils import WaitStrategy, WaitStrategyTarget

LOOPBACK = "127.0.0.1"


class LoopbackContainer(DockerContainer):
    """A container whose ports are published on 127.0.0.1, each on a free port Docker picks."""

    def publish_on_loopback(self, *ports: int) -> LoopbackContainer:
        for port in ports:
            # docker-py reads a one-element (address,) tuple as "this address, any free port".
            self.ports[f"{port}/tcp"] = (LOOPBACK,)  # type: ignore[assignment]
        return self

    def get_container_host_ip(self) -> str:
        return LOOPBACK

    def url(self, port: int) -> str:
        return f"http://{LOOPBACK}:{self.get_exposed_port(port)}"

    def logs_text(self, tail: int = 40) -> str:
        stdout, stderr = self.get_logs()
        lines = (stdout + stderr).decode(errors="replace").splitlines()
        return "\n".join(lines[-tail:])


class RedisReady(WaitStrategy):
    """Ready when Redis answers with the password *and* is not loading a dataset.

    PING alone would pass while Redis is still loading (it answers LOADING), which is exactly the
    window in which a test's first command fails. Giving up, it says why in the container's own
    words: the last lines of its log (a start script's refusal, a crash) end the error.
    """

    LOG_LINES = 20

    def __init__(self, password: str) -> None:
        super().__init__()
        self._password = password

    def wait_until_ready(self, container: WaitStrategyTarget) -> None:
        deadline = time.monotonic() + self._startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if self._loaded(container):
                    return
            # ConnectionError: no port yet; TimeoutError: testcontainers' own wait for the
            # container to run, given up on a container that died at once (its log says why).
            except (redis.RedisError, ConnectionError, TimeoutError) as exc:
                last_error = exc
            container.reload()
            if container.status in ("exited", "dead"):
                raise TimeoutError(
                    f"Redis container {container.status} before it was ready "
                    f"({last_error}){self._log_tail(container)}"
                )
            time.sleep(self._poll_interval)
        raise TimeoutError(
            f"Redis not ready within {self._startup_timeout:.0f} s ({last_error})"
            f"{self._log_tail(container)}"
        )

    def _loaded(self, container: WaitStrategyTarget) -> bool:
        client = redis.Redis(
            host=container.get_container_host_ip(),
            port=container.get_exposed_port(6379),  # raises once the container is gone
            password=self._password or None,
            socket_timeout=2,
        )
        try:
            return bool(client.info("persistence").get("loading") == 0)
        finally:
            client.close()

    def _log_tail(self, container: WaitStrategyTarget) -> str:
        try:
            stdout, stderr = container.get_logs()
        except Exception as exc:  # the log is a courtesy: never hide the real error behind it
            return f"; no log ({exc})"
        lines = (stdout + stderr).decode(errors="replace").splitlines()[-self.LOG_LINES :]
        return "; its log ends:\n" + "\n".join(lines) if lines else "; its log is empty"


class RedisContainer(LoopbackContainer):
    def __init__(self, image: str, password: str = "", **kwargs: Any) -> None:
        super().__init__(image, **kwargs)
        self.password = password
        self.with_env("REDIS_PASSWORD", password)
        self.publish_on_loopback(6379)
        self.waiting_for(RedisReady(password).with_startup_timeout(60).with_poll_interval(0.1))

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(
            host=LOOPBACK,
            port=int(self.get_exposed_port(6379)),
            password=self.password or None,
            **kwargs,
        )


class LlamaCppContainer(LoopbackContainer):
    """One llama.cpp server flavor serving a model file from `model_dir`.

    Readiness is the model listing answering 200: llama-server answers it only once loaded, and
    llama-cpp-python (no /health) opens its port only after loading.
    """

    def __init__(
        self,
        image: str,
        flavor: str,
        model_dir: Path,
        model_file: str,
        key_file: Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(image, **kwargs)
        self.flavor = flavor
        self.key = key_file.read_text() if key_file is not None else ""
        self.with_volume_mapping(str(model_dir), "/models", "ro")
        self.with_envs(
            LLAMA_SERVER=flavor,
            MODEL_PATH=f"/models/{model_file}",
            N_CTX="512",
            N_PARALLEL="2",
            PORT="8000",
        )
        wait = HttpWaitStrategy(8000, "/v1/models").for_status_code(200)
        if key_file is not None:
            # As compose hands the stack's key over: a file, named by LLM_API_KEY_FILE.
            self.with_volume_mapping(str(key_file), "/run/secrets/llm_api_key", "ro")
            self.with_env("LLM_API_KEY_FILE", "/run/secrets/llm_api_key")
            wait = wait.with_header("Authorization", f"Bearer {self.key}")
        self.publish_on_loopback(8000)
        self.waiting_for(wait.with_startup_timeout(120).with_poll_interval(0.2))

    @property
    def base_url(self) -> str:
        return self.url(8000)
