"""`invoke fetch-model --backend vllm` installs a Hub snapshot that vLLM then serves.

The Hub cannot be reached here, so a stand-in on 127.0.0.1 (reached through HF_ENDPOINT, as a
mirror would be) serves the tiny model's files with the Hub's own API shapes and LFS redirects.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from kcdev.paths import ROOT
from tests.support.http_server import LocalServer
from tests.support.hub_standin import HubStandin
from tests.support.tiny_hf import write_tiny_hf_llama
from tests.support.vllm_server import VllmCpuContainer

pytestmark = pytest.mark.integration

REPO = "kc-test/tiny-llama"


def fetch_model(hub: HubStandin, hf_dir: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_DIR": str(hf_dir),
        "HF_HOME": str(home),  # no token a developer stored: the stand-in repo is public
        "HF_HUB_DISABLE_TELEMETRY": "1",  # else huggingface_hub may call huggingface.co
        "NO_PROXY": "127.0.0.1,localhost",
    }
    env.pop("HF_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "invoke", "fetch-model", "--backend=vllm", f"--repo={REPO}",
         "--no-env"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_fetched_snapshot_is_served_by_vllm(
    vllm_cpu_image: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    source = write_tiny_hf_llama(tmp_path_factory.mktemp("hub") / "tiny-llama")
    files = {path.name: path.read_bytes() for path in source.iterdir()}
    hf_dir = tmp_path_factory.mktemp("fetched-hf")
    hf_dir.chmod(0o755)  # the server runs as an unprivileged user

    with LocalServer() as server:
        hub = HubStandin(server)
        hub.add_repo(REPO, files)
        fetched = fetch_model(hub, hf_dir, tmp_path_factory.mktemp("hf-home"))
        served = [entry.path for entry in server.log]

    assert fetched.returncode == 0, fetched.stderr
    model_dir = hf_dir / "tiny-llama"
    assert {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()} == files
    assert any(path.startswith("/cdn/") for path in served)  # the weights came through LFS

    with VllmCpuContainer(vllm_cpu_image, model_dir) as container:
        completion = httpx.post(
            f"{container.base_url}/v1/completions",
            json={"model": "tiny-llama", "prompt": "Hello", "max_tokens": 4, "ignore_eos": True},
            timeout=60,
        )
    completion.raise_for_status()
    assert completion.json()["usage"]["completion_tokens"] == 4
