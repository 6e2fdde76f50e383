"""Benchmark: tasks per second with 1, 2 and 4 worker containers, and how they scale.

    python -m benchmarks.scale_bench [--tasks 400] [--latency 0.25] [--concurrency 4]
                                     [--rounds 3] [--skip real]

Part 1 runs the worker image's containers against a stand-in LLM server that answers every
completion after a fixed delay and computes nothing (tests/support/standin_llm.py), so what is
measured is the workers and Redis, not this 2-core machine's arithmetic: with WORKER_CONCURRENCY
tasks in flight per worker, tasks per second should grow with the workers. It prints the median
rate for each count, side by side, and the ratios 2 workers / 1 (goal >= 1.8) and 4 / 1 (goal
>= 3.2). Part 2 does the same against the real llama-server on the test model (or
models/gguf/gemma-3-270m-q4_k_m.gguf if present), where the CPU is the limit: reported as
measured.

Everything runs in containers of its own on a network of its own (Redis, the server, the workers
reached by name there); the host talks only to Redis on a 127.0.0.1 port, and removes what it
started by id.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery

from kcdev.paths import GGUF_DIR, ROOT
from kcdev.settings import load_settings
from kcdev.stack import images
from kcdev.stack.compose import ComposeProject, Topology
from kcdev.stack.docker_cli import Docker
from tests.support.stack import free_port
from tests.support.tiny_gguf import model_or_tiny
from tests.support.worker_process import client_app

COUNTS = (1, 2, 4)
STANDIN = ROOT / "tests" / "support" / "standin_llm.py"
RESULT_TIMEOUT = 600


def docker(*args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"docker {' '.join(args[:3])} failed: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


@dataclass
class Bench:
    """The benchmark's own network and containers, removed by id at the end."""

    name: str = field(default_factory=lambda: f"kc-scale-{secrets.token_hex(3)}")
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    key: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    started: list[str] = field(default_factory=list)

    def run(self, *args: str) -> str:
        container = docker("run", "-d", "--network", self.name, *args)
        self.started.append(container)
        return container

    def stop(self, containers: list[str]) -> None:
        if containers:
            subprocess.run(["docker", "rm", "-f", *containers], capture_output=True, check=False)
            self.started = [c for c in self.started if c not in containers]


@contextmanager
def bench_network() -> Iterator[Bench]:
    bench = Bench()
    docker("network", "create", bench.name)
    try:
        yield bench
    finally:
        bench.stop(list(bench.started))
        subprocess.run(["docker", "network", "rm", bench.name], capture_output=True, check=False)


def start_redis(bench: Bench) -> int:
    port = free_port()
    bench.run(
        "--network-alias", "redis", "-p", f"127.0.0.1:{port}:6379",
        "-e", f"REDIS_PASSWORD={bench.password}", images.REDIS_IMAGE,
    )  # fmt: skip
    wait_for(lambda: _redis_answers(port, bench.password), "Redis")
    return port


def _redis_answers(port: int, password: str) -> bool:
    import redis

    try:
        return bool(redis.Redis(port=port, password=password, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def start_standin(bench: Bench, latency: float) -> str:
    """The stand-in, in the worker image (it has Python), reached as llm-server."""
    return bench.run(
        "--network-alias", "llm-server", "-v", f"{STANDIN}:/standin.py:ro",
        "--entrypoint", "python", images.worker_image(),
        "/standin.py", "--port", "8000", "--latency", str(latency), "--model", "standin",
    )  # fmt: skip


def start_llama(bench: Bench, model: Path) -> str:
    """llama-server on `model`, reached as llm-server on the bench's network only (no published
    port, and without LLM_API_KEY_FILE a bare `docker run` of the image asks for no key)."""
    name = images.image_names(load_settings(), "llamacpp")["LLAMACPP_IMAGE"]
    return bench.run(
        "--network-alias", "llm-server", "-v", f"{model.parent}:/models:ro",
        "-e", f"MODEL_PATH=/models/{model.name}", "-e", "SERVED_MODEL_NAME=real",
        "-e", "N_CTX=512", "-e", "N_PARALLEL=4", "-e", "PORT=8000", name,
    )  # fmt: skip


def start_workers(bench: Bench, count: int, concurrency: int, model: str) -> list[str]:
    env = {
        "REDIS_HOST": "redis", "REDIS_PORT": "6379", "REDIS_PASSWORD": bench.password,
        "LLM_SERVER_URL": "http://llm-server:8000", "SERVED_MODEL_NAME": model,
        "WORKER_CONCURRENCY": str(concurrency), "N_CTX": "512", "KC_MACHINE": "bench",
    }  # fmt: skip
    flags = [item for name, value in env.items() for item in ("-e", f"{name}={value}")]
    return [bench.run(*flags, images.worker_image()) for _ in range(count)]


def wait_for(condition: Any, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} not ready within {timeout:.0f} s")
        time.sleep(0.2)


def workers_answering(app: Celery, count: int) -> bool:
    return len(app.control.ping(timeout=1.0) or []) >= count


def rate(app: Celery, tasks: int) -> float:
    """Tasks per second for `tasks` generate tasks sent at once, first send to last result."""
    kwargs = {"prompt": "Hello", "max_tokens": 8, "temperature": 0}
    start = time.monotonic()
    sent = [app.send_task("worker.tasks.generate", kwargs=kwargs) for _ in range(tasks)]
    for result in sent:
        result.get(timeout=RESULT_TIMEOUT)
    return tasks / (time.monotonic() - start)


def scale(bench: Bench, app: Celery, args: argparse.Namespace, model: str) -> dict[int, float]:
    rates: dict[int, list[float]] = {n: [] for n in COUNTS}
    for count in COUNTS:
        workers = start_workers(bench, count, args.concurrency, model)
        try:
            wait_for(lambda count=count: workers_answering(app, count), f"{count} worker(s)")
            rate(app, args.concurrency * count)  # warm: connections, the first task's imports
            for _ in range(args.rounds):
                rates[count].append(rate(app, args.tasks))
        finally:
            bench.stop(workers)
        print(f"  {count} worker(s): " + ", ".join(f"{r:.1f}" for r in rates[count]) + " tasks/s")
    return {n: statistics.median(r) for n, r in rates.items()}


def report(title: str, medians: dict[int, float], goals: bool) -> None:
    print(f"\n{title}")
    print(f"{'workers':>8} {'tasks/s':>9} {'ratio to 1':>11}")
    for count, value in medians.items():
        print(f"{count:>8} {value:>9.1f} {value / medians[1]:>11.2f}")
    if goals:
        two, four = medians[2] / medians[1], medians[4] / medians[1]
        print(f"2 / 1 = {two:.2f} (goal >= 1.8): {'met' if two >= 1.8 else 'NOT met'}")
        print(f"4 / 1 = {four:.2f} (goal >= 3.2): {'met' if four >= 3.2 else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=400, help="tasks per measured run")
    parser.add_argument("--latency", type=float, default=0.25, help="stand-in seconds/answer")
    parser.add_argument("--concurrency", type=int, default=4, help="tasks per worker at once")
    parser.add_argument("--rounds", type=int, default=3, help="runs per worker count")
    parser.add_argument("--skip", choices=["real"], action="append", default=[])
    args = parser.parse_args()

    docker_cli = Docker()
    docker_cli.ensure_daemon()
    settings = load_settings()
    from kcdev.stack.images import ensure_images

    # The worker image (and Redis' and llama.cpp's), built when missing.
    ensure_images(ComposeProject(settings, "llamacpp", docker_cli, Topology(workers=1)))
    with bench_network() as bench:
        port = start_redis(bench)
        env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port), "REDIS_PASSWORD": bench.password}
        app = client_app(env)
        ideal = args.concurrency / args.latency
        print(
            f"stand-in LLM server, {args.latency} s per answer; {args.concurrency} tasks per "
            f"worker at once (ideal {ideal:.0f} tasks/s per worker); {args.tasks} tasks per run"
        )
        standin = start_standin(bench, args.latency)
        report("stand-in (fixed latency)", scale(bench, app, args, "standin"), goals=True)
        bench.stop([standin])
        if "real" not in args.skip:
            with tempfile.TemporaryDirectory() as tmp:
                model = model_or_tiny(GGUF_DIR / "gemma-3-270m-q4_k_m.gguf", Path(tmp))
                Path(tmp).chmod(0o755)
                start_llama(bench, model)
                print(f"\nllama-server, {model.name}, N_PARALLEL=4")
                args.tasks = max(args.tasks // 4, 40)
                report("llama-server (as measured)", scale(bench, app, args, "real"), goals=False)


if __name__ == "__main__":
    main()
