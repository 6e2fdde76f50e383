"""A real `celery -A worker.celery_app worker` process for tests, and a client app to talk to it.

The worker runs as a subprocess in its own session with the environment the test gives it, so it
reads its settings exactly as `invoke worker` would. It is stopped (or killed) by its own pid
and process group, never by name.

With `probe=True` the worker also imports this module (`--include`), whose signal handlers count
in Redis how often each task started, succeeded and was retried: that is how tests see
duplicate executions after a kill, and retries during an outage, from the outside.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import redis
from celery import Celery
from celery.result import AsyncResult
from celery.signals import task_prerun, task_retry, task_success
from kombu.exceptions import OperationalError

from kcdev.paths import ROOT

PROBE_ENV = "KC_TEST_WORKER_PROBE"
PROBE_PREFIX = "kc-test-probe"
COUNTERS = ("started", "succeeded", "retried")


# --- the worker process ----------------------------------------------------------------------


class WorkerProcess:
    """One worker subprocess; `start()` returns once it answers a ping."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        *,
        name: str,
        concurrency: int = 2,
        probe: bool = True,
    ) -> None:
        self.env = {**env, PROBE_ENV: "1" if probe else ""}
        self.log_path = log_path
        self.name = name
        self.concurrency = concurrency
        self.probe = probe
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def nodename(self) -> str:
        return f"{self.name}@kc-test"

    @property
    def pid(self) -> int:
        assert self.process is not None, "worker not started"
        return self.process.pid

    def argv(self) -> list[str]:
        argv = [
            sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
            "--loglevel", "INFO", "--concurrency", str(self.concurrency), "-n", self.nodename,
            "--without-gossip",  # as worker/cli.py's worker_argv
        ]  # fmt: skip
        if self.probe:
            argv += ["--include", __name__]
        return argv

    def start(self, app: Celery, timeout: float = 60) -> WorkerProcess:
        """Launch the worker and wait until it answers a ping through `app`'s broker."""
        self.launch()
        return self.wait_ready(app, timeout)

    def launch(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv(), cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                # Its own session: pytest's Ctrl-C does not reach it, and the whole process group
                # (the main process and its pool) can be stopped by this pid.
                start_new_session=True,
            )  # fmt: skip

    def wait_ready(self, app: Celery, timeout: float = 60) -> WorkerProcess:
        assert self.process is not None, "worker not launched"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"worker exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                if app.control.ping(destination=[self.nodename], timeout=1):
                    return self
            except (OSError, redis.RedisError, OperationalError):
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"worker not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        """SIGKILL the main process only, as the OOM killer would; its pool dies with it."""
        os.kill(self.pid, signal.SIGKILL)
        assert self.process is not None
        self.process.wait(timeout=30)

    def dump_stacks(self) -> str:
        """Every thread's stack, as Celery logs it on SIGUSR1: what a stuck worker is doing."""
        before = len(self.log_text())
        os.kill(self.pid, signal.SIGUSR1)
        time.sleep(1)
        return self.log_text()[before:]

    def stop(self, timeout: float = 30) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL of the process group if it does not end."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        # Pool processes outliving their parent would keep consuming: end the group we started.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(timeout=timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the client side -------------------------------------------------------------------------


def client_app(env: Mapping[str, str]) -> Celery:
    """A Celery app configured exactly as a worker started with `env` is.

    worker/config.py reads its settings from the environment when it runs; running it again with
    `env` (not importing it: the test process's own import keeps the user's settings) gives the
    same broker, result store and serialisation as the worker under test.
    """
    with mock.patch.dict(os.environ, env, clear=True):
        namespace = runpy.run_path(str(ROOT / "worker" / "config.py"))
    settings = {k: v for k, v in namespace.items() if k.islower() and not k.startswith("_")}
    app = Celery("kc-test-client", set_as_current=False)
    app.config_from_object(settings)
    return app


def run_task(app: Celery, task: str, timeout: float, **kwargs: Any) -> Any:
    """Send worker.tasks.<task> with `kwargs` and wait for its result (raises what it raised)."""
    return app.send_task(f"worker.tasks.{task}", kwargs=kwargs).get(timeout=timeout)


def wait_all(results: Iterable[AsyncResult[Any]], timeout: float) -> dict[str, str]:
    """Each task's final state, once all are final or `timeout` passed (then PENDING, STARTED...).

    Polls rather than blocking in `get()`, so a Redis restart during the wait only delays it.
    """
    pending = {r.id: r for r in results}
    states: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for task_id, result in list(pending.items()):
            try:
                state = result.state
            except (OSError, redis.RedisError):
                continue
            states[task_id] = state
            if state in ("SUCCESS", "FAILURE", "REVOKED"):
                del pending[task_id]
        time.sleep(0.2)
    return states


# --- the probe, inside the worker ------------------------------------------------------------

_probe_clients: dict[int, redis.Redis] = {}


def _probe_redis(app: Celery) -> redis.Redis:
    pid = os.getpid()
    if pid not in _probe_clients:
        _probe_clients.clear()
        _probe_clients[pid] = redis.Redis.from_url(app.conf.broker_url, socket_timeout=5)
    return _probe_clients[pid]


def _count(counter: str, task: Any, task_id: str | None) -> None:
    if os.environ.get(PROBE_ENV) != "1" or task_id is None:
        return
    # A probe must never fail a task; a Redis restart test tolerates a missed count.
    with contextlib.suppress(redis.RedisError):
        _probe_redis(task.app).hincrby(f"{PROBE_PREFIX}:{counter}", task_id, 1)


@task_prerun.connect
def _on_prerun(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
    _count("started", sender, task_id)


@task_success.connect
def _on_success(sender: Any = None, **_: Any) -> None:
    _count("succeeded", sender, sender.request.id if sender is not None else None)


@task_retry.connect
def _on_retry(sender: Any = None, request: Any = None, **_: Any) -> None:
    _count("retried", sender, getattr(request, "id", None))


def probe_counts(client: redis.Redis) -> dict[str, dict[str, int]]:
    """{counter: {task_id: count}} as the probe recorded them."""
    return {
        counter: {_text(k): int(v) for k, v in client.hgetall(f"{PROBE_PREFIX}:{counter}").items()}
        for counter in COUNTERS
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def worker_environment(redis: Any, db: int, llm_url: str, **settings: str) -> dict[str, str]:
    """A worker's environment on a test Redis container (database `db`, emptied first) and an
    LLM server at `llm_url`; `settings` add to or override it."""
    redis.client(db=db).flushdb()
    return {
        **os.environ,
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(redis.get_exposed_port(6379)),
        "REDIS_PASSWORD": redis.password,
        "REDIS_DB": str(db),
        "LLM_SERVER_URL": llm_url,
        "N_PARALLEL": "2",
        "SERVED_MODEL_NAME": "",
        **settings,
    }
