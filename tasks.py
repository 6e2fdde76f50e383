"""kc-devenv's command surface: `invoke --list` shows the tasks, `invoke --help TASK` their flags.

Each task reads the settings, calls one helper from the kcdev package, and reports.
"""

from __future__ import annotations

import os
from pathlib import Path

from invoke.context import Context
from invoke.tasks import task

from kcdev.backends import LLM_SERVER
from kcdev.console import confirm, number, one_line_errors, say, table
from kcdev.errors import UserError
from kcdev.settings import load_settings
from kcdev.stack import images, lifecycle
from kcdev.stack.compose import ComposeProject, check_backend
from kcdev.stack.docker_cli import Docker

# Modules that need redis-py, httpx or urllib3 are imported inside the tasks that use them:
# importing them all here took 0.25 s of every command, `invoke up`'s time to ready included.

BACKEND_HELP = "llamacpp, vllm or none (Redis alone); default: LLM_BACKEND from .env"


def _project(backend: str | None = None, *, running: bool = False) -> ComposeProject:
    """Validate the input first, then check Docker: bad flags fail fast even without a daemon.

    With `running`, the backend is the one the running stack was started with, if any.
    """
    settings = load_settings()
    chosen = check_backend(backend or settings.llm_backend)
    docker = Docker()
    docker.ensure_daemon()
    project = ComposeProject(settings, chosen, docker)
    if running and backend is None:
        project.backend = lifecycle.running_backend(project) or chosen
    return project


@task(help={"backend": BACKEND_HELP, "no_cache": "rebuild every layer from scratch"})
@one_line_errors
def build(c: Context, backend: str | None = None, no_cache: bool = False) -> None:
    """Build the stack's images, from local Debian base images where no registry is reachable."""
    project = _project(backend)
    images.ensure_images(project, rebuild=True, no_cache=no_cache, say=say)
    say(
        f"images ready: {', '.join(images.image_names(project.settings, project.backend).values())}"
    )


@task(
    help={
        "backend": BACKEND_HELP,
        "timeout": "seconds to wait for the stack to be ready (default 600)",
        "keep_on_failure": "leave failed containers in place for inspection",
    }
)
@one_line_errors
def up(
    c: Context, backend: str | None = None, timeout: str = "600", keep_on_failure: bool = False
) -> None:
    """Start Redis and the LLM server and wait until they really serve (builds images if needed)."""
    wait = number("timeout", timeout, minimum=1)
    project = _project(backend)
    took = lifecycle.up(project, timeout=wait, keep_on_failure=keep_on_failure, say=say)
    s = project.settings
    say(f"redis      redis://{s.redis_host}:{s.redis_port}/{s.redis_db}")
    if project.backend != "none":
        say(f"llm-server {s.llm_server_url}/v1 (model {s.served_model(project.backend)})")
    say(f"ready in {took:.1f} s; stop with `invoke down`")


@task(help={"volumes": "also delete Redis' data volume (asks first)", "yes": "do not ask"})
@one_line_errors
def down(c: Context, volumes: bool = False, yes: bool = False) -> None:
    """Stop and remove the stack's containers; data stays unless --volumes."""
    if volumes and not yes:
        name = load_settings().compose_project_name
        confirm(f"Delete the Redis data volume of project {name!r}? This cannot be undone.")
    project = _project("none")
    lifecycle.down(project, volumes=volumes)
    say(f"stack {project.name} is down" + (" and its volumes deleted" if volumes else ""))


@task
@one_line_errors
def ps(c: Context) -> None:
    """Show the services (state, health, ports), Redis, the Celery queue and LLM server metrics."""
    from kcdev.stack import status

    project = _project(running=True)
    states = lifecycle.service_states(project)
    if not states:
        say(f"stack {project.name} is not running: start it with `invoke up`")
        return
    say(status.services_table(states))
    say(status.redis_summary(project.settings))
    if LLM_SERVER in states:
        say(status.llm_summary(project.settings))
        say(status.model_summary(project.settings, project.backend))


@task(
    help={
        "service": "redis or llm-server (default: all)",
        "follow": "keep printing new lines",
        "tail": "lines from the end of each log (default 100)",
    }
)
@one_line_errors
def logs(c: Context, service: str | None = None, follow: bool = False, tail: str = "100") -> None:
    """Show the services' logs."""
    lifecycle.check_service(service)
    lines = int(number("tail", tail, minimum=0, integer=True))
    project = _project(running=True)
    args = ["logs", "--tail", str(lines), *(["--follow"] if follow else [])]
    project.run(*args, *([service] if service else []), capture=False)


@task(
    help={
        "service": "redis or llm-server (default: all)",
        "timeout": "seconds to wait for readiness (default 600)",
    }
)
@one_line_errors
def restart(c: Context, service: str | None = None, timeout: str = "600") -> None:
    """Restart the stack or one service and wait until it serves again."""
    lifecycle.check_service(service)
    wait = number("timeout", timeout, minimum=1)
    project = _project(running=True)
    took = lifecycle.restart(project, service, timeout=wait, say=say)
    say(f"{service or 'stack'} ready again in {took:.1f} s")


@task(help={"backend": BACKEND_HELP})
@one_line_errors
def doctor(c: Context, backend: str | None = None) -> None:
    """Check everything the stack needs, one line each; exits non-zero when any check fails."""
    from kcdev.stack.doctor import run_checks

    if backend is not None:
        check_backend(backend)
    failed = 0
    for check in run_checks(backend, Docker()):
        say(check.line())
        failed += not check.ok
    if failed:
        raise UserError(f"{failed} check(s) failed: see the FAIL lines above")


@task(
    help={
        "preset": "model from kcdev/models/presets.toml (default: gemma-3-270m; "
        "qwen2.5-0.5b-instruct for vllm)",
        "repo": "Hugging Face Hub repo OWNER/NAME: one --file for llamacpp, a snapshot for vllm",
        "file": "the GGUF file inside --repo",
        "revision": "branch, tag or commit of --repo (default: main)",
        "url": "any http(s) URL of a GGUF file; needs --sha256",
        "sha256": "the file's sha256 (64 hex digits): required with --url, a pin with --repo",
        "backend": "llamacpp (a GGUF file into GGUF_DIR) or vllm (a Hub snapshot into HF_DIR); "
        "default: LLM_BACKEND",
        "name": "file or folder name to save as (default: the file's or the repo's name)",
        "allow_pickle": "vllm: accept a repo whose only weights are pickled .bin files",
        "dry_run": "say what would be fetched, from where, into where; change nothing",
        "no_env": "leave .env alone (default: point MODEL_PATH/MODEL_NAME at the model)",
    }
)
@one_line_errors
def fetch_model(
    c: Context,
    preset: str | None = None,
    repo: str | None = None,
    file: str | None = None,
    revision: str | None = None,
    url: str | None = None,
    sha256: str | None = None,
    backend: str | None = None,
    name: str | None = None,
    allow_pickle: bool = False,
    dry_run: bool = False,
    no_env: bool = False,
) -> None:
    """Download a model (resumable, sha256-verified) and point .env at it; default: Gemma 3 270M."""
    # Imported here: huggingface_hub adds ~0.25 s to every `invoke` command otherwise.
    from kcdev.models.fetch import FetchRequest, ModelFetcher

    request = FetchRequest(preset, repo, file, revision, url, sha256, backend, name, allow_pickle)
    ModelFetcher(load_settings(), say=say).run(request, dry_run=dry_run, no_env=no_env)


@task
@one_line_errors
def models(c: Context) -> None:
    """List the local models: size, verified or not, and which one the settings use."""
    from kcdev.models import installed

    say(installed.report(load_settings()))


@task(
    help={
        "output_dir": "folder for the backup (default: backups/ in the repository)",
        "keep": "afterwards keep only the newest N backups there (default: keep all)",
    }
)
@one_line_errors
def backup_redis(c: Context, output_dir: str | None = None, keep: str | None = None) -> None:
    """Back up the stack's Redis: a verified snapshot plus manifest; prints the file's path last."""
    from kcdev.backup import save, store
    from kcdev.backup.redis_target import target_from_project

    newest = None if keep is None else int(number("keep", keep, minimum=1, integer=True))
    target = target_from_project(_project("none"))
    folder = Path(output_dir) if output_dir else store.DEFAULT_DIR
    say(str(save.backup(target, folder, newest, say=say)))


@task(
    help={
        "file": "backup to restore (its .json manifest must be beside it)",
        "latest": "restore the newest backup in backups/ (not the safety copies)",
        "yes": "replace the data without asking",
    }
)
@one_line_errors
def restore_redis(
    c: Context, file: str | None = None, latest: bool = False, yes: bool = False
) -> None:
    """Replace Redis' data with a verified backup; takes a safety backup first, keeps AOF on."""
    from kcdev.backup import restore, store
    from kcdev.backup.redis_target import target_from_project

    if bool(file) == latest:
        raise UserError("pass exactly one of --file=PATH or --latest")
    path = Path(file) if file else store.latest(store.DEFAULT_DIR)
    target = target_from_project(_project("none"))
    found = restore.restore(target, path, yes, say=say)
    counts = ", ".join(f"db{n} {db.keys} keys" for n, db in sorted(found.items()))
    say(f"restored {path.name}: {counts or 'no keys'}")


@task(help={"folder": "folder to list (default: backups/ in the repository)"})
@one_line_errors
def backups(c: Context, folder: str | None = None) -> None:
    """List Redis backups: time, size, keys, and whether each file still matches its manifest."""
    from kcdev.backup import store

    where = Path(folder) if folder else store.DEFAULT_DIR
    listed = store.list_backups(where)
    if not listed:
        say(f"no backups in {where}: make one with `invoke backup-redis`")
        return
    say(table(store.listing_rows(listed)))


@task(
    help={
        "concurrency": "tasks run at once (default: WORKER_CONCURRENCY)",
        "loglevel": "debug, info, warning, error or critical (default: info)",
    }
)
@one_line_errors
def worker(c: Context, concurrency: str | None = None, loglevel: str = "info") -> None:
    """Run a Celery worker in the foreground with the settings loaded (Ctrl-C stops it)."""
    from worker.cli import worker_argv

    argv = worker_argv(load_settings(), concurrency, loglevel)
    # Replace this process: Ctrl-C and SIGTERM then reach Celery itself, for a warm shutdown.
    os.execv(argv[0], argv)


@task(
    help={
        "prompt": 'the prompt (summarize: the document); "" with --file',
        "task": "generate, chat or summarize (default: generate)",
        "file": "read the text from this file (summarize: the document)",
        "timeout": "seconds to wait for the answer (default 600)",
    }
)
@one_line_errors
def ask(
    c: Context,
    prompt: str,
    task: str = "generate",
    file: str | None = None,
    timeout: str = "600",
) -> None:
    """Send one task to the worker, wait for the answer, print it and the time it took."""
    from worker.cli import ask as send

    wait = number("timeout", timeout, minimum=1)
    load_settings()  # a malformed .env fails here in one line, before Celery reads it
    answer = send(task, prompt, Path(file) if file else None, wait, say=say)
    say(answer.text.strip())
    say(f"({task} answered in {answer.seconds:.1f} s)")


@task(help={"timeout": "seconds to wait for the stack and for the summary (default 900)"})
@one_line_errors
def demo(c: Context, timeout: str = "900") -> None:
    """Newcomer's tour: model, stack, a worker, and a summary of the sample document."""
    from kcdev import demo as tour

    tour.run(say, number("timeout", timeout, minimum=1))
