"""vLLM's CPU build in a container, serving a Hugging Face model folder, for tests and benchmarks.

The image is the stack's own (docker/Dockerfile.vllm-cpu), built when missing through the code path
`invoke build --backend vllm` takes with VLLM_VARIANT=cpu, so what is tested is what users run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from testcontainers.core.waiting_utils import WaitStrategy, WaitStrategyTarget

from kcdev.settings import load_settings
from kcdev.stack import images
from kcdev.stack.compose import ComposeProject
from kcdev.stack.docker_cli import Docker
from kcdev.stack.readiness import llm_ready
from tests.support.containers import LoopbackContainer

PORT = 8000
# vLLM's engine talks to its worker through a 160 MB ring buffer in /dev/shm; Docker gives 64 MB.
SHM_SIZE = "1g"


def ensure_vllm_cpu_image() -> str:
    """The vLLM cpu image's tag, built first when missing (IMAGE_SOURCE as the environment says).

    Raises UserError, as `invoke build` would, when it cannot be built.
    """
    settings = load_settings(environ={**os.environ, "VLLM_VARIANT": "cpu"})
    docker = Docker()
    docker.ensure_daemon()
    images.ensure_images(ComposeProject(settings, "vllm", docker))
    return images.image_names(settings, "vllm")["VLLM_IMAGE"]


class ServesModel(WaitStrategy):
    """Ready when the model is listed and a one-token completion answers, as `invoke up` checks.

    vLLM's /health says 200 before an engine that will fail on its first request has failed, so
    an HTTP status wait would call such a server ready. A container that exits ends the wait at
    once, with its last log lines in the error.
    """

    def __init__(self, model: str) -> None:
        super().__init__()
        self._model = model

    def wait_until_ready(self, container: WaitStrategyTarget) -> None:
        deadline = time.monotonic() + self._startup_timeout
        reason = "not polled yet"
        while time.monotonic() < deadline:
            url = f"http://{container.get_container_host_ip()}:{container.get_exposed_port(PORT)}"
            reason = llm_ready(url, self._model, timeout=30) or ""
            if not reason:
                return
            container.reload()
            if container.status in ("exited", "dead"):
                stdout, stderr = container.get_logs()
                tail = "\n".join((stdout + stderr).decode(errors="replace").splitlines()[-30:])
                raise TimeoutError(f"vLLM exited while starting ({reason}):\n{tail}")
            time.sleep(self._poll_interval)
        raise TimeoutError(f"vLLM not ready within {self._startup_timeout:.0f} s: {reason}")


class VllmCpuContainer(LoopbackContainer):
    """vLLM's CPU build serving the model folder `model_dir` under the folder's name."""

    def __init__(
        self, image: str, model_dir: Path, *, max_model_len: int = 512, **kwargs: Any
    ) -> None:
        super().__init__(image, shm_size=SHM_SIZE, **kwargs)
        self.model = model_dir.name
        self.with_volume_mapping(str(model_dir.parent), "/models", "ro")
        self.with_envs(
            MODEL_NAME=f"/models/{model_dir.name}",
            MAX_MODEL_LEN=str(max_model_len),
            VLLM_CPU_KVCACHE_SPACE="1",
            PORT=str(PORT),
        )
        self.publish_on_loopback(PORT)
        # About a minute on 2 shared cores, most of it importing vLLM and torch.
        self.waiting_for(ServesModel(self.model).with_startup_timeout(600).with_poll_interval(0.5))

    @property
    def base_url(self) -> str:
        return self.url(PORT)
