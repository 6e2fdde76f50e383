"""The compose files as `invoke` uses them, and as the README tells people to use them by hand."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcdev.paths import ROOT
from kcdev.settings import load_settings
from kcdev.stack.compose import ComposeProject, compose_files
from kcdev.stack.docker_cli import Docker
from kcdev.stack.images import BY_HAND, LLAMA_CPP_PYTHON_VERSION, LLAMACPP_IMAGE
from tests.support.stack import free_port
from tests.support.tiny_gguf import write_tiny_llama

pytestmark = pytest.mark.integration

SAMPLE = ROOT / ".env.sample"
# The README's command (Set-up, Settings), with the files it says to add on Engine < 25.
BY_HAND_FILES = ["docker/docker-compose.yml", "docker/docker-compose.llamacpp.yml"]
PRE25_FILES = ["docker/engine-pre25/redis.yml", "docker/engine-pre25/llm-server.yml"]


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


@pytest.mark.parametrize(
    ("backend", "setting", "relative"),
    [("llamacpp", "gguf_dir", "models/gguf"), ("vllm", "hf_dir", "models/hf")],
)
def test_invoke_mounts_the_model_folder_whether_relative_or_absolute(
    tmp_path: Path, backend: str, setting: str, relative: str
) -> None:
    """What `invoke up` runs: relative means the repo's folder, absolute means itself."""
    for value, expected in ((relative, ROOT / relative), (str(tmp_path), tmp_path)):
        settings = load_settings(tmp_path / "absent.env", environ={setting.upper(): value})
        project = ComposeProject(settings, backend, Docker())
        result = subprocess.run(
            project.argv("config", "--format", "json"), env=project.environment(),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        (mount,) = json.loads(result.stdout)["services"]["llm-server"]["volumes"]
        assert Path(mount["source"]).resolve() == expected.resolve()
        assert (mount["target"], mount["read_only"]) == ("/models", True)


# --- by hand ---------------------------------------------------------------------------------


def by_hand_env() -> dict[str, str]:
    """The shell of someone following the README: none of the stack's variables exported (they
    would override .env, and CI exports some)."""
    keep = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "TMPDIR")
    return {name: os.environ[name] for name in keep if name in os.environ}


def compose_by_hand(project: str, env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    files = BY_HAND_FILES + ([] if Docker().supports_start_interval() else PRE25_FILES)
    argv = ["docker", "compose", "-p", project, "--env-file", str(env_file)]
    for name in files:
        argv += ["-f", name]
    return subprocess.run(
        [*argv, *args], cwd=ROOT, env=by_hand_env(), capture_output=True, text=True, timeout=300
    )


def test_the_by_hand_config_with_the_sample_settings_mounts_the_repos_models(
    tmp_path: Path,
) -> None:
    """`.env` copied from `.env.sample` (GGUF_DIR=models/gguf, relative to the repo)."""
    env_file = tmp_path / ".env"
    env_file.write_text(SAMPLE.read_text())

    result = compose_by_hand("kc-devenv", env_file, "config", "--format", "json")

    assert result.returncode == 0, result.stderr
    service = json.loads(result.stdout)["services"]["llm-server"]
    (mount,) = service["volumes"]
    assert (mount["type"], mount["target"], mount["read_only"]) == ("bind", "/models", True)
    assert Path(mount["source"]).resolve() == (ROOT / "models" / "gguf").resolve()
    assert service["image"] == BY_HAND["LLAMACPP_IMAGE"]  # invoke adds the inputs' digest
    assert service["build"]["args"]["LLAMA_CPP_PYTHON_VERSION"] == LLAMA_CPP_PYTHON_VERSION


KEY = secrets.token_urlsafe(24)


@pytest.fixture
def sample_model() -> Iterator[str]:
    """A tiny model in the repo's models/gguf/, where the sample settings look; removed after."""
    folder = ROOT / "models" / "gguf"
    name = f"kc-byhand-{secrets.token_hex(4)}.gguf"
    model = write_tiny_llama(folder / name)
    model.chmod(0o644)  # the server runs as an unprivileged user
    try:
        yield name
    finally:
        model.unlink(missing_ok=True)


def test_the_by_hand_up_with_the_sample_settings_serves_the_model(
    tmp_path: Path, sample_model: str
) -> None:
    """The README's `up -d --wait`, on the sample settings but for a project name and ports of
    its own (another stack may run here), then down with its volumes, whatever happens."""
    project = f"kc-byhand-{secrets.token_hex(4)}"
    port = free_port()
    env_file = tmp_path / ".env"
    env_file.write_text(
        SAMPLE.read_text()
        + f"\nREDIS_PORT={free_port()}\nPORT={port}\nMODEL_PATH=/models/{sample_model}\n"
        + "N_CTX=512\nN_PARALLEL=1\n"
        # As the README says: by hand, the key `invoke up` would generate is set first.
        + f"LLM_API_KEY={KEY}\n"
    )
    try:
        up = compose_by_hand(project, env_file, "up", "-d", "--wait", "--wait-timeout", "180")
        assert up.returncode == 0, up.stderr
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {KEY}"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            served = [m["id"] for m in json.load(answer)["data"]]
        assert served == [sample_model.removesuffix(".gguf")]
    finally:
        down = compose_by_hand(project, env_file, "down", "--volumes", "--remove-orphans")
        assert down.returncode == 0, down.stderr


def test_the_llamacpp_image_installs_the_version_its_tag_names() -> None:
    """The tag and the installed version come from one constant (kcdev/stack/images.py)."""
    if not Docker().image_exists(LLAMACPP_IMAGE):
        pytest.skip(f"{LLAMACPP_IMAGE} is not built (`invoke build` makes it)")
    script = "import importlib.metadata as m; print(m.version('llama_cpp_python'))"
    result = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "python", LLAMACPP_IMAGE, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == LLAMA_CPP_PYTHON_VERSION
    assert f":{LLAMA_CPP_PYTHON_VERSION}-" in LLAMACPP_IMAGE
