"""Every combination of compose files `invoke` uses is one that docker compose accepts."""

from __future__ import annotations

import os
import subprocess

import pytest

from kcdev.settings import load_settings
from kcdev.stack.compose import compose_files

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("backend", ["none", "llamacpp", "vllm"])
@pytest.mark.parametrize("start_interval", [True, False])
@pytest.mark.parametrize("gpu_layers", ["0", "-1"])
def test_compose_accepts_the_files(backend: str, start_interval: bool, gpu_layers: str) -> None:
    settings = load_settings(environ={**os.environ, "N_GPU_LAYERS": gpu_layers})
    argv = ["docker", "compose"]
    for path in compose_files(settings, backend, start_interval=start_interval):
        argv += ["--file", str(path)]
    env = {**os.environ, **settings.as_environment()}
    result = subprocess.run([*argv, "config", "--quiet"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
