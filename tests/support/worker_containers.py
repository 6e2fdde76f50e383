"""Redis and llama.cpp containers that can be stopped and restarted on the same loopback port.

The worker's reliability tests restart the services under a running worker. A port Docker picks
may change across a restart, and the worker only knows the address it was started with, so these
publish a fixed free port chosen by the test, on 127.0.0.1 only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from testcontainers.core.wait_strategies import HttpWaitStrategy

from tests.support.containers import LOOPBACK, LlamaCppContainer, RedisContainer, RedisReady
from tests.support.stack import free_port

STARTUP_TIMEOUT = 120


class RestartableRedis(RedisContainer):
    def __init__(self, image: str, password: str = "", **kwargs: Any) -> None:
        super().__init__(image, password=password, **kwargs)
        self.host_port = free_port()
        # docker-py reads (address, port) as "this address, this port".
        self.ports["6379/tcp"] = (LOOPBACK, self.host_port)  # type: ignore[assignment]

    def restart(self, down_for: float = 0) -> None:
        """Stop, stay down `down_for` seconds (an upgrade, a host reboot), start, and wait until
        Redis serves again (AOF loaded)."""
        container = self.get_wrapped_container()
        container.stop(timeout=10)
        time.sleep(down_for)
        container.start()
        self.wait_ready()

    def wait_ready(self) -> None:
        RedisReady(self.password).with_startup_timeout(STARTUP_TIMEOUT).with_poll_interval(
            0.1
        ).wait_until_ready(self)


class RestartableLlama(LlamaCppContainer):
    def __init__(
        self, image: str, flavor: str, model_dir: Path, model_file: str, **kwargs: Any
    ) -> None:
        super().__init__(image, flavor, model_dir, model_file, **kwargs)
        self.host_port = free_port()
        self.ports["8000/tcp"] = (LOOPBACK, self.host_port)  # type: ignore[assignment]

    def stop_server(self) -> None:
        """`docker stop`: the container and its port go away, its configuration stays."""
        self.get_wrapped_container().stop(timeout=10)

    def start_server(self) -> None:
        """`docker start` on the same port, then wait until the model answers."""
        self.get_wrapped_container().start()
        HttpWaitStrategy(8000, "/v1/models").for_status_code(200).with_startup_timeout(
            STARTUP_TIMEOUT
        ).with_poll_interval(0.2).wait_until_ready(self)
