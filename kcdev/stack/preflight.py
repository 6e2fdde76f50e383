"""Checks made before anything starts, shared by `invoke up` and `invoke doctor`.

Each returns None when fine, or the one-line problem and its fix, so `up` can stop on the first
and `doctor` can list them all.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
from pathlib import Path

from kcdev import files, paths
from kcdev.settings import Settings
from kcdev.stack.docker_cli import Docker


def host_model_path(settings: Settings, backend: str) -> Path | None:
    """Where the backend's model lives on this machine (the container sees models/* at /models)."""
    if backend == "llamacpp":
        return Path(settings.gguf_dir) / settings.model_path.removeprefix("/models/")
    if backend == "vllm":
        return Path(settings.hf_dir) / settings.model_name.removeprefix("/models/")
    return None


def model_problem(settings: Settings, backend: str) -> str | None:
    path = host_model_path(settings, backend)
    if path is None:
        return None
    shown = paths.shown(path)
    if backend == "llamacpp" and not path.is_file():
        return (
            f"model file {shown} (MODEL_PATH={settings.model_path}) not found: "
            "run `invoke fetch-model`, or put a GGUF file there and set MODEL_PATH"
        )
    if backend == "vllm" and not (path / "config.json").is_file():
        return (
            f"model folder {shown} (MODEL_NAME={settings.model_name}) has no config.json: "
            "run `invoke fetch-model --backend vllm`, or set MODEL_NAME"
        )
    return None


def model_size(settings: Settings, backend: str) -> int:
    path = host_model_path(settings, backend)
    return 0 if path is None else files.tree_size(path)


def ports_held_by_stack(docker: Docker, project: str) -> set[int]:
    """Host ports the project's running containers publish: taken, but by us.

    Only compose's own service containers count (oneoff=False): containers run elsewhere from
    the images compose built inherit the project label without being the stack.
    """
    ids = docker.run(
        "ps", "-q", "--filter", f"label=com.docker.compose.project={project}",
        "--filter", "label=com.docker.compose.oneoff=False",
    ).stdout  # fmt: skip
    if not ids.split():
        return set()
    inspect = docker.run("inspect", "--format", "{{json .NetworkSettings.Ports}}", *ids.split())
    held: set[int] = set()
    for line in inspect.stdout.splitlines():
        for bindings in (json.loads(line) or {}).values():
            held.update(int(binding["HostPort"]) for binding in bindings or [])
    return held


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now.

    SO_REUSEADDR, as Docker's own proxy binds: after a server container is killed, its clients'
    dead connections keep the port in TIME_WAIT or FIN_WAIT for about a minute, which a plain
    bind() takes for "in use"; a program listening there still makes this bind fail.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def redis_tls(settings: Settings) -> bool:
    """Redis is published beyond loopback, which it may be over TLS only."""
    return not ipaddress.ip_address(settings.bind_host).is_loopback


def wanted_ports(
    settings: Settings, backend: str, *, node: bool = False, monitor: bool = False
) -> dict[str, tuple[str, int]]:
    """The host ports the stack publishes, by setting: (address, port). Redis' plain-text port
    and Flower stay on loopback; the LLM server and Redis' TLS port go on BIND_HOST."""
    wanted: dict[str, tuple[str, int]] = {}
    if not node:
        wanted["REDIS_PORT"] = ("127.0.0.1", settings.redis_port)
        if redis_tls(settings):
            wanted["REDIS_TLS_PORT"] = (settings.bind_host, settings.redis_tls_port)
    if backend != "none":
        wanted["PORT"] = (settings.bind_host, settings.port)
    if monitor:
        wanted["FLOWER_PORT"] = ("127.0.0.1", settings.flower_port)
    return wanted


def port_problems(
    settings: Settings, backend: str, docker: Docker, *, node: bool = False, monitor: bool = False
) -> list[str]:
    wanted = wanted_ports(settings, backend, node=node, monitor=monitor)
    held = ports_held_by_stack(docker, settings.compose_project_name)
    problems = []
    for name, (host, port) in wanted.items():
        if port in held:
            continue
        try:
            free = port_is_free(host, port)
        except OSError as exc:
            problems.append(
                f"cannot bind {host}:{port} ({exc.strerror}): set BIND_HOST to an "
                "address of this machine (127.0.0.1, or 0.0.0.0 for every interface)"
            )
            continue
        if not free:
            problems.append(
                f"port {port} on {host} is taken by another program: "
                f"stop it, or set {name} to a free port in .env"
            )
    return problems


def exposure_problem(settings: Settings, backend: str) -> str | None:
    """Services published beyond this machine need their credentials: Redis' password, and the
    LLM server's key (a web page in any browser that reaches the port could use the model)."""
    if ipaddress.ip_address(settings.bind_host).is_loopback:
        return None
    missing = [] if settings.redis_password else ["REDIS_PASSWORD"]
    if backend != "none" and not settings.llm_api_key:
        missing.append("LLM_API_KEY")
    if not missing:
        return None
    return (
        f"BIND_HOST={settings.bind_host} publishes the stack beyond this machine, but "
        f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} empty: set "
        f"{'them' if len(missing) > 1 else 'it'} in .env, or set BIND_HOST=127.0.0.1"
    )


def cpu_problems(settings: Settings, backend: str, docker: Docker) -> list[str]:
    """CPU limits above the cores Docker has: it would refuse to start the container."""
    limits = {"REDIS_CPUS": settings.redis_cpus}
    if backend != "none":
        limits["LLM_CPUS"] = settings.llm_cpus
    wanted = {name: cpus for name, cpus in limits.items() if cpus is not None}
    if not wanted:
        return []
    try:
        cores = int(docker.run("info", "--format", "{{.NCPU}}").stdout.strip())
    except ValueError:
        return []  # the daemon did not say: Docker checks it itself at start
    return [
        f"{name}={cpus:g} but Docker has {cores} CPU{'s' if cores != 1 else ''}: "
        f"set {name} to {cores} or less, or empty for no limit"
        for name, cpus in wanted.items()
        if cpus > cores
    ]


def gpu_problem(settings: Settings, backend: str, docker: Docker, wants_gpu: bool) -> str | None:
    if not wants_gpu:
        return None
    runtimes = docker.run("info", "--format", "{{json .Runtimes}}").stdout
    if "nvidia" in runtimes:
        return None
    if backend == "vllm":
        cause = "the vLLM backend's cuda variant (VLLM_VARIANT=cuda)"
        fix = (
            "install the NVIDIA Container Toolkit, or set VLLM_VARIANT=cpu for vLLM's CPU build "
            "(slow, no GPU needed)"
        )
    else:
        cause = f"N_GPU_LAYERS={settings.n_gpu_layers}"
        fix = "install the NVIDIA Container Toolkit, or set N_GPU_LAYERS=0"
    return f"{cause} needs an NVIDIA GPU, but Docker has no nvidia runtime: {fix}"


def memory_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
