"""What `invoke worker` and `invoke ask` call: the worker's command line, and one task's round trip.

Failures the user can fix become `UserError`s of one line: Redis down, no worker consuming, a
task that failed or did not answer in time. The Celery app is imported only here, when needed,
so a malformed `.env` cannot break `invoke --list`.
"""

from __future__ import annotations

import codecs
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kcdev.errors import UserError
from kcdev.queues import DEFAULT_QUEUE, model_of, model_queue
from kcdev.settings import Settings
from worker import roster

TASKS = ("generate", "chat", "summarize")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# Seconds to wait for Redis and for workers to answer before calling them absent.
PROBE_TIMEOUT = 1.0
# Seconds between two "still waiting" lines while a task runs.
PROGRESS_EVERY = 10.0


def worker_argv(settings: Settings, concurrency: int | str | None, loglevel: str) -> list[str]:
    """The command that runs the worker in the foreground, with this environment's Python.

    `concurrency` may come from the command line as text; None means WORKER_CONCURRENCY.
    """
    if loglevel.lower() not in LOG_LEVELS:
        levels = ", ".join(LOG_LEVELS)
        raise UserError(f"--loglevel={loglevel!r} is not a level: use one of {levels}")
    processes = settings.worker_concurrency
    if concurrency is not None:
        try:
            processes = int(concurrency)
        except ValueError:
            raise UserError(f"--concurrency={concurrency!r} is not a whole number") from None
        if processes < 1:
            raise UserError(f"--concurrency={concurrency} must be 1 or more")
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "--loglevel", loglevel.upper(), "--concurrency", str(processes),
        # Gossip (workers electing and syncing clocks among themselves) serves nothing here, and
        # Celery 5.7's gossip step logs an AttributeError traceback at every broker reconnect
        # (its cleanup calls ignore_errors() on a connection already reset to None).
        "--without-gossip",
    ]  # fmt: skip


@dataclass(frozen=True)
class Answer:
    text: str
    seconds: float
    task_id: str


def task_call(task: str, prompt: str, file: Path | None) -> tuple[str, dict[str, Any]]:
    """The task's name and keyword arguments for `invoke ask`'s arguments.

    A file's text follows the prompt; for summarize it is the document, which PROMPT may be
    instead but not as well (summarize has its own instruction).
    """
    if task not in TASKS:
        raise UserError(f"--task={task!r} is not a task: use one of {', '.join(TASKS)}")
    text = prompt
    if file is not None:
        if task == "summarize" and prompt.strip():
            raise UserError(
                'summarize reads its document from PROMPT or --file, not both: give "" as PROMPT'
            )
        text = read_document(file)
        if prompt.strip():
            text = f"{prompt}\n\n{text}"
    if not text.strip():
        raise UserError("nothing to send: give a PROMPT, or --file PATH")
    if task == "generate":
        return "worker.tasks.generate", {"prompt": text}
    if task == "chat":
        return "worker.tasks.chat", {"messages": [{"role": "user", "content": text}]}
    return "worker.tasks.summarize", {"document": text}


def read_document(file: Path) -> str:
    """A text file as people have them: UTF-8 with or without a BOM, or UTF-16 with its BOM (what
    Windows editors save as "Unicode"); anything else is refused in one line, not guessed at."""
    try:
        data = file.read_bytes()
    except IsADirectoryError:
        raise UserError(f"{file} is a folder: pass a text file") from None
    except FileNotFoundError:
        raise UserError(f"no file {file}") from None
    except OSError as exc:
        raise UserError(f"cannot read {file}: {exc.strerror or exc}") from None
    utf16 = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    try:
        text = data.decode("utf-16" if utf16 else "utf-8-sig")
    except UnicodeDecodeError as exc:
        kind = "UTF-16" if utf16 else "UTF-8"
        raise UserError(
            f"{file} is not {kind} text (byte 0x{data[exc.start]:02x} at offset {exc.start}): "
            "save it as UTF-8 text; a PDF or office file needs its text extracted first"
        ) from None
    if "\0" in text:
        raise UserError(f"{file} holds NUL characters: it is binary, not text")
    return text


def ask(
    task: str,
    prompt: str,
    file: Path | None,
    timeout: float,
    say: Callable[[str], None] = print,
    model: str | None = None,
) -> Answer:
    """Send one task, wait for its answer at most `timeout` seconds, and return the answer text.

    With `model`, the task goes to that model's queue, where only workers whose server serves it
    take it; without, to the shared queue every worker consumes.
    """
    if timeout <= 0:
        raise UserError(f"--timeout={timeout} must be greater than 0")
    if model is not None and not model.strip():
        raise UserError("--model is empty: give a model name (`invoke ps` lists those served)")
    name, kwargs = task_call(task, prompt, file)
    from worker.celery_app import app  # reads the settings: only now, not at `invoke --list`

    queue = DEFAULT_QUEUE if model is None else model_queue(model)
    ensure_consumers(app, queue)
    start = time.monotonic()
    result = app.send_task(name, kwargs=kwargs, queue=queue)
    task_id = result.id
    say(f"sent {task} task {task_id}; waiting up to {timeout:g} s")
    outcome = _wait(result, timeout, say)
    seconds = time.monotonic() - start
    # Drop the result before raising: its finalizer unsubscribes from Redis, which fails noisily
    # if the exception keeps it alive until the interpreter shuts down.
    del result
    if isinstance(outcome, _TimedOut):
        raise UserError(
            f"no answer within {timeout:g} s (task {task_id} was {outcome.state}): cancelled; "
            "raise --timeout, or see the worker's log"
        )
    if isinstance(outcome, BaseException):
        raise UserError(f"{task} task failed: {type(outcome).__name__}: {outcome}")
    text = outcome.get("text", "") if isinstance(outcome, dict) else str(outcome)
    return Answer(text, seconds, task_id)


@dataclass(frozen=True)
class _TimedOut:
    state: str


def _wait(result: Any, timeout: float, say: Callable[[str], None] = print) -> Any:
    """The task's return value, its exception, or _TimedOut (the task then revoked).

    Waits in slices of PROGRESS_EVERY seconds, saying after each what the task is doing, so a
    long wait is never silent.
    """
    from celery.exceptions import TimeoutError as CeleryTimeout

    started = time.monotonic()
    deadline = started + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            return result.get(timeout=max(min(PROGRESS_EVERY, remaining), 0.01), propagate=False)
        except CeleryTimeout:
            if time.monotonic() >= deadline:
                break
            waited = time.monotonic() - started
            say(
                f"waiting for task {result.id}: {result.state.lower()} "
                f"({waited:.0f} s of {timeout:g} s)"
            )
    state = result.state
    # A task already running is stopped too: nobody waits for its answer any more.
    result.revoke(terminate=True)
    # Stop listening for the result now: the backend keeps it pending, and would unsubscribe
    # only while the interpreter shuts down, where that fails with a traceback.
    result.backend.remove_pending_result(result)
    return _TimedOut(state)


def ensure_consumers(app: Any, queue: str = DEFAULT_QUEUE) -> None:
    """Fail in one line, within seconds, when Redis is down or no worker would take the task
    from `queue`: a task nobody consumes would wait forever."""
    import redis

    from kcdev.redis_client import client_from_url

    url = app.conf.broker_url
    where = f"{urlsplit(url).hostname}:{urlsplit(url).port or 6379}"
    client = client_from_url(url, timeout=PROBE_TIMEOUT, tls=app.conf.broker_use_ssl or None)
    try:
        client.ping()
    except redis.AuthenticationError:
        raise UserError(f"Redis at {where} refused the password: check REDIS_PASSWORD") from None
    except redis.ResponseError as exc:  # e.g. a password sent to a Redis that has none
        raise UserError(
            f"Redis at {where} refused the connection ({exc}): check REDIS_PASSWORD"
        ) from None
    except redis.RedisError:
        raise UserError(
            f"Redis at {where} is not answering: start the stack with `invoke up`"
        ) from None
    finally:
        client.close()
    found = roster.workers(app, timeout=PROBE_TIMEOUT)
    if not found:
        raise UserError("no worker is consuming tasks: start one with `invoke worker`")
    if not roster.consumers_of(found, queue):
        served = sorted({m for w in found for m in w.models})
        raise UserError(
            f"no worker serves model {model_of(queue)!r} (workers serve "
            f"{', '.join(served) or 'no model queue'}): start a worker beside a server of it, "
            "or leave out --model"
        )


def workers_report() -> str:
    """`invoke ps`'s worker section: every worker on the broker, wherever it runs."""
    from kcdev.console import table
    from worker.celery_app import app

    try:
        found = roster.workers(app, timeout=PROBE_TIMEOUT)
    except Exception as exc:  # kombu/redis-py raise many types for a broker that is not there
        return f"workers: cannot ask the broker ({type(exc).__name__})"
    if not found:
        return "workers: none on the broker: start one with `invoke worker`"
    return table(roster.rows(found))
