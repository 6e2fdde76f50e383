"""Session-wide real containers: Redis, both llama.cpp server flavors and vLLM's CPU build, from
the stack's images.

The images are the ones `invoke build` makes from docker/ (built here when missing). Containers are
removed by the fixtures themselves; Ryuk, testcontainers' reaper, is used only where its image can
be had, since without a registry it cannot be pulled.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from kcdev.errors import UserError
from kcdev.settings import Settings, load_settings
from kcdev.stack import images
from kcdev.stack.compose import ComposeProject
from kcdev.stack.docker_cli import Docker
from tests.support.containers import LlamaCppContainer, RedisContainer
from tests.support.stack import free_port
from tests.support.tiny_gguf import write_tiny_llama
from tests.support.tiny_hf import write_tiny_hf_llama
from tests.support.vllm_server import VllmCpuContainer, ensure_vllm_cpu_image
from tests.support.worker_process import WorkerProcess, client_app

LLAMA_FLAVORS = ("llama-server", "llama-cpp-python")
TINY_HF_NAME = "tiny-llama"


def _ryuk_can_run(settings: Settings) -> bool:
    from testcontainers.core.config import testcontainers_config

    if settings.image_source == "registry":
        return True
    return Docker().image_exists(testcontainers_config.ryuk_image)


def pytest_configure(config: pytest.Config) -> None:
    """Decide Ryuk before any container starts; an explicit TESTCONTAINERS_RYUK_DISABLED wins."""
    if "TESTCONTAINERS_RYUK_DISABLED" not in os.environ:
        try:
            can_run = _ryuk_can_run(load_settings())
        except UserError:
            can_run = False
        os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "false" if can_run else "true"


# Under pytest-xdist (`nox -s integration` runs 4 processes), these files' tests run in one
# process each: the vLLM ones share one vLLM server (each process would start its own, a minute
# and a GB each), and the two-machine module's tests build on one another.
WHOLE = {
    "tests/integration/stack/test_vllm.py": "vllm",
    "tests/integration/worker/test_vllm_tasks.py": "vllm",
    "tests/integration/models/test_vllm_fetch.py": "vllm",
    "tests/integration/cluster/test_two_machines.py": "cluster",
}


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """xdist's own grouping (`--dist loadgroup` with `xdist_group` marks) rewrites node ids,
    which pytest 9.2 no longer lets it do: the grouping is said here, by file, to the scheduler.
    Every other test goes to whichever process is free."""
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return WHOLE.get(nodeid.split("::", 1)[0], nodeid)

    return Scheduling(config, log)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Last line of cleanup: remove any container this test process created and left behind.

    testcontainers labels each container with a session id unique to this process, so this can
    only ever touch containers these tests started.
    """
    from testcontainers.core.labels import LABEL_SESSION_ID, SESSION_ID

    found = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={LABEL_SESSION_ID}={SESSION_ID}"],
        capture_output=True,
        text=True,
        check=False,
    )
    ids = found.stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-fv", *ids], capture_output=True, check=False)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def stack_images(settings: Settings) -> dict[str, str]:
    """The stack's image tags, built from docker/ when missing (a no-op when `invoke build` ran)."""
    docker = Docker()
    try:
        docker.ensure_daemon()
        images.ensure_images(ComposeProject(settings, "llamacpp", docker))
    except UserError as exc:
        pytest.fail(f"cannot prepare the stack's images: {exc}", pytrace=False)
    return images.image_names(settings, "llamacpp")


@pytest.fixture(scope="session")
def redis_server(stack_images: dict[str, str]) -> Iterator[RedisContainer]:
    """A real Redis from the stack's image, with a password, as the stack runs it (AOF on)."""
    container = RedisContainer(stack_images["REDIS_IMAGE"], password=secrets.token_urlsafe(16))
    with container:
        yield container


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer llama GGUF written by the tests: loads in well under a second, generates tokens."""
    folder = tmp_path_factory.mktemp("gguf")
    model = write_tiny_llama(folder / "tiny-llama.gguf")
    # The servers run as an unprivileged user: the mounted folder must be readable to others.
    folder.chmod(0o755)
    model.chmod(0o644)
    return model


@pytest.fixture(scope="session", params=LLAMA_FLAVORS)
def llama_server(
    request: pytest.FixtureRequest, stack_images: dict[str, str], tiny_model: Path
) -> Iterator[LlamaCppContainer]:
    """A real llama.cpp server of each flavor, serving the tiny model."""
    container = LlamaCppContainer(
        stack_images["LLAMACPP_IMAGE"], request.param, tiny_model.parent, tiny_model.name
    )
    with container:
        yield container


@pytest.fixture(scope="session")
def vllm_cpu_image() -> str:
    """The vLLM cpu image, built when missing (about 4 minutes from a local wheelhouse)."""
    try:
        return ensure_vllm_cpu_image()
    except UserError as exc:
        pytest.fail(f"cannot prepare the vLLM cpu image: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def tiny_hf_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder (as HF_DIR) holding the tiny Hugging Face Llama in tiny-llama/."""
    hf_dir = tmp_path_factory.mktemp("hf")
    hf_dir.chmod(0o755)  # the server runs as an unprivileged user
    return write_tiny_hf_llama(hf_dir / TINY_HF_NAME)


@pytest.fixture(scope="session")
def vllm_server(vllm_cpu_image: str, tiny_hf_model: Path) -> Iterator[VllmCpuContainer]:
    """vLLM's CPU build serving the tiny model: started once, as it takes about a minute."""
    with VllmCpuContainer(vllm_cpu_image, tiny_hf_model) as container:
        yield container


# --- a worker process per module, for modules that define `worker_env` -----------------------


@pytest.fixture(scope="module")
def app(worker_env: dict[str, str]) -> Celery:
    """A Celery client configured like the module's worker (`worker_env`, defined by the module)."""
    return client_app(worker_env)


@pytest.fixture(scope="module")
def worker(
    worker_env: dict[str, str],
    app: Celery,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[WorkerProcess]:
    """A real worker process with the module's `worker_env`, consuming before the tests run."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    log = tmp_path_factory.mktemp(module) / "worker.log"
    with WorkerProcess(worker_env, log, name=f"{module}-{free_port()}").start(app) as process:
        yield process
