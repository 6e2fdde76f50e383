"""Running `invoke` tasks against a stack of its own: a unique compose project on free ports.

The test stack never touches the user's: its project name, ports and model folder are its own, and
it is taken down (volumes included) whatever happens.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kcdev.paths import ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class StackUnderTest:
    env: dict[str, str]

    @property
    def project(self) -> str:
        return self.env["COMPOSE_PROJECT_NAME"]

    @property
    def llm_url(self) -> str:
        return self.env["LLM_SERVER_URL"]

    @property
    def llm_auth(self) -> dict[str, str]:
        """The header the stack's LLM server requires."""
        return {"Authorization": f"Bearer {self.env['LLM_API_KEY']}"}

    def invoke(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "invoke", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def containers(self) -> list[str]:
        """Names of every container of this stack's project, running or not."""
        result = subprocess.run(
            ["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={self.project}",
             "--format", "{{.Names}}"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return sorted(result.stdout.split())


def stack_settings(model_dir: Path, model_file: str, project_prefix: str) -> dict[str, str]:
    """The settings of a stack of its own: a unique project, free ports, fresh credentials and
    a small context, serving `model_dir/model_file`."""
    port = free_port()
    return {
        "COMPOSE_PROJECT_NAME": f"{project_prefix}-{secrets.token_hex(4)}",
        "REDIS_PORT": str(free_port()),
        "REDIS_PASSWORD": secrets.token_urlsafe(12),
        # Set, so that `up` never generates one into the repository's own .env.
        "LLM_API_KEY": secrets.token_urlsafe(24),
        "PORT": str(port),
        "LLM_SERVER_URL": f"http://127.0.0.1:{port}",
        "GGUF_DIR": str(model_dir),
        "MODEL_PATH": f"/models/{model_file}",
        "N_CTX": "512",
        "N_PARALLEL": "2",
    }


@contextmanager
def isolated_stack(model_dir: Path, model_file: str, **overrides: str) -> Iterator[StackUnderTest]:
    env = {**os.environ, **stack_settings(model_dir, model_file, "kc-test"), **overrides}
    stack = StackUnderTest(env)
    try:
        yield stack
    finally:
        stack.invoke("down", "--volumes", "--yes", timeout=300)
