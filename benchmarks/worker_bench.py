"""Benchmark: tokens per second through the Celery worker against direct HTTP, and task latency.

    python -m benchmarks.worker_bench [--model FILE] [--requests 8] [--rounds 5] [--pings 300]

Part 1 serves one model with llama-server (N_PARALLEL=4) and, at 1 and 4 concurrent requests,
sends the same completions (same prompt, 64 new tokens, temperature 0) directly over HTTP and as
`generate` tasks through Redis and a real worker process of that concurrency, in alternating
pairs, and prints the median tokens per second of each and the median of the pairs' ratios
(goal: worker/direct >= 0.95).
Part 2 sends `ping` tasks one after another and prints the round trip's median and p99.
Starts its own Redis and llama-server containers on free 127.0.0.1 ports; talks only to them.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
from celery import Celery

from kcdev.paths import GGUF_DIR
from kcdev.settings import load_settings
from kcdev.stack import images
from kcdev.stack.compose import ComposeProject
from kcdev.stack.docker_cli import Docker
from tests.support.containers import LlamaCppContainer, RedisContainer
from tests.support.tiny_gguf import model_or_tiny
from tests.support.worker_process import WorkerProcess, client_app

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
NEW_TOKENS = 64
LEVELS = (1, 4)
RESULT_TIMEOUT = 900


def direct(client: httpx.Client, requests: int, concurrency: int) -> tuple[int, float]:
    """(completion tokens, seconds) for `requests` completions sent `concurrency` at a time."""

    def one(_: int) -> int:
        response = client.post(
            "/v1/completions",
            json={"prompt": PROMPT, "max_tokens": NEW_TOKENS, "temperature": 0},
        )
        response.raise_for_status()
        return int(response.json()["usage"]["completion_tokens"])

    start = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(one, range(requests)))
    return tokens, time.monotonic() - start


def through_worker(app: Celery, requests: int) -> tuple[int, float]:
    """The same completions as `generate` tasks: the worker's concurrency sets the parallelism."""
    kwargs = {"prompt": PROMPT, "max_tokens": NEW_TOKENS, "temperature": 0}
    start = time.monotonic()
    sent = [app.send_task("worker.tasks.generate", kwargs=kwargs) for _ in range(requests)]
    tokens = sum(int(r.get(timeout=RESULT_TIMEOUT)["completion_tokens"]) for r in sent)
    return tokens, time.monotonic() - start


# llama-server's counters of the time its slots spent on prompts and on generating, summed over
# slots: the work the server did, whatever the machine's load made it cost.
BUSY_COUNTERS = ("llamacpp:prompt_seconds_total", "llamacpp:tokens_predicted_seconds_total")


@dataclass(frozen=True)
class Run:
    tokens: int
    seconds: float
    busy: float  # slot-seconds the server spent on this run's requests

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds

    def use(self, slots: int) -> float:
        """Share of the slots' time spent on the requests: what the client side costs."""
        return self.busy / (self.seconds * slots)


def busy_seconds(client: httpx.Client) -> float:
    response = client.get("/metrics")
    response.raise_for_status()
    total = 0.0
    for line in response.text.splitlines():
        name, _, value = line.partition(" ")
        if name in BUSY_COUNTERS:
            total += float(value)
    return total


def measured(client: httpx.Client, run: Callable[[], tuple[int, float]]) -> Run:
    before = busy_seconds(client)
    tokens, seconds = run()
    return Run(tokens, seconds, busy_seconds(client) - before)


@contextmanager
def started_worker(env: dict[str, str], app: Celery, concurrency: int, log: Path) -> Iterator[None]:
    worker = WorkerProcess(
        env, log, name=f"bench-{concurrency}", concurrency=concurrency, probe=False
    )
    with worker.start(app):
        yield


def throughput(
    env: dict[str, str], app: Celery, base_url: str, requests: int, rounds: int, logs: Path
) -> None:
    """Direct and worker runs alternate in pairs, each pair giving ratios.

    On a machine shared with other work the server's speed drifts from run to run, so besides
    the plain ratio of tokens per second the table shows it normalised by the server's own busy
    time (its /metrics): the share of the slots' time each side kept them busy, which the
    machine's load changes far less.
    """
    print(f"throughput ({NEW_TOKENS} new tokens/request, temperature 0, {requests} requests per "
          f"run, {rounds} alternating pairs; medians):")  # fmt: skip
    print("  concurrent  direct HTTP   through worker  ratio  ratio normalised by server time")
    with httpx.Client(base_url=base_url, timeout=RESULT_TIMEOUT) as client:
        for level in LEVELS:
            with started_worker(env, app, level, logs / f"worker-{level}.log"):
                direct(client, level, level)  # warm-up: connections, the server's caches
                through_worker(app, level)
                pairs = [
                    (
                        measured(client, partial(direct, client, requests, level)),
                        measured(client, partial(through_worker, app, requests)),
                    )
                    for _ in range(rounds)
                ]
            fast = statistics.median(d.rate for d, _ in pairs)
            ours = statistics.median(w.rate for _, w in pairs)
            ratio = statistics.median(w.rate / d.rate for d, w in pairs)
            normalised = statistics.median(w.use(level) / d.use(level) for d, w in pairs)
            print(f"  {level:>10}  {fast:7.1f} t/s  {ours:10.1f} t/s  {ratio:5.3f}  "
                  f"{normalised:5.3f}")  # fmt: skip
    print("  goal: ratio >= 0.95")


def latency(env: dict[str, str], app: Celery, pings: int, logs: Path) -> None:
    with started_worker(env, app, 1, logs / "worker-ping.log"):
        for _ in range(10):  # warm-up
            app.send_task("worker.tasks.ping").get(timeout=60)
        seconds = []
        for _ in range(pings):
            start = time.monotonic()
            app.send_task("worker.tasks.ping").get(timeout=60)
            seconds.append(time.monotonic() - start)
    seconds.sort()
    p99 = seconds[min(len(seconds) - 1, round(0.99 * len(seconds)) - 1)]
    print(f"round trip of a trivial task (ping, {pings} in a row, concurrency 1):")
    print(f"  median {statistics.median(seconds) * 1000:6.1f} ms   p99 {p99 * 1000:6.1f} ms   "
          f"max {seconds[-1] * 1000:6.1f} ms")  # fmt: skip


def run(model: Path, requests: int, rounds: int, pings: int, say: Callable[[str], None]) -> None:
    settings = load_settings()
    docker = Docker()
    docker.ensure_daemon()
    images.ensure_images(ComposeProject(settings, "llamacpp", docker))
    names = images.image_names(settings, "llamacpp")
    password = secrets.token_urlsafe(16)
    llm = LlamaCppContainer(names["LLAMACPP_IMAGE"], "llama-server", model.parent, model.name)
    llm.with_envs(N_CTX="1024", N_PARALLEL=str(max(LEVELS)))
    with RedisContainer(names["REDIS_IMAGE"], password=password) as redis, llm:
        env = {
            **os.environ,
            "REDIS_HOST": "127.0.0.1",
            "REDIS_PORT": str(redis.get_exposed_port(6379)),
            "REDIS_PASSWORD": password,
            "REDIS_DB": "0",
            "LLM_SERVER_URL": llm.base_url,
            "SERVED_MODEL_NAME": "",
        }
        app = client_app(env)
        say(f"serving {model.name} with llama-server on {llm.base_url}; Redis on port "
            f"{env['REDIS_PORT']}")  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="worker-bench-") as logs:
            throughput(env, app, llm.base_url, requests, rounds, Path(logs))
            latency(env, app, pings, Path(logs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=GGUF_DIR / "gemma-3-270m-q4_k_m.gguf",
        help="GGUF file to serve (default: the default preset; the tiny test model if missing)",
    )  # fmt: skip
    parser.add_argument("--requests", type=int, default=8, help="requests per run and level")
    parser.add_argument("--rounds", type=int, default=5, help="direct/worker pairs per level")
    parser.add_argument("--pings", type=int, default=300, help="trivial tasks for the latency")
    args = parser.parse_args()
    # Ryuk, testcontainers' reaper, must be pulled from a registry; these containers are removed
    # by their context managers instead.
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    with tempfile.TemporaryDirectory() as tmp:
        model = model_or_tiny(args.model, Path(tmp))
        run(model.resolve(), args.requests, args.rounds, args.pings, say=print)


if __name__ == "__main__":
    main()
