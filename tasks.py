"""kc-devenv's command surface: `invoke --list` shows the tasks, `invoke --help TASK` their flags.

Each task reads the settings, calls one helper from the kcdev package, and reports.
"""

from __future__ import annotations

import os
from pathlib import Path

from invoke.context import Context
from invoke.tasks import task

from kcdev.backends import LLM_SERVER, REDIS
from kcdev.console import confirm, number, one_line_errors, say, table
from kcdev.errors import UserError
from kcdev.settings import load_settings
from kcdev.stack import images, lifecycle
from kcdev.stack.changing import changing
from kcdev.stack.compose import ComposeProject, check_backend
from kcdev.stack.docker_cli import Docker

# Modules that need redis-py, httpx or urllib3 are imported inside the tasks that use them:
# importing them all here took 0.25 s of every command, `invoke up`'s time to ready included.

BACKEND_HELP = "llamacpp, vllm or none (Redis alone); default: LLM_BACKEND from .env"


def _project(
    backend: str | None = None,
    *,
    running: bool = False,
    workers: int | None = None,
    monitor: bool = False,
) -> ComposeProject:
    """Validate the input first, then check Docker: bad flags fail fast even without a daemon.

    With `running`, the backend is the one the running stack was started with, if any. The
    topology (workers, Flower, Redis over TLS, a worker node's stack) is the flags', else what
    runs, else the settings' (kcdev/cluster/topology.py).
    """
    from kcdev.cluster import topology

    settings = load_settings()
    chosen = check_backend(backend or settings.llm_backend)
    docker = Docker()
    docker.ensure_daemon()
    project = ComposeProject(settings, chosen, docker)
    if running and backend is None:
        project = project.with_backend(lifecycle.running_backend(project) or chosen)
    project = topology.for_project(project, workers=workers, monitor=monitor, look=running)
    topology.point_clients_at_central(project.settings)
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
        "workers": "Celery workers to run as containers beside the stack (default: those "
        "running, else WORKERS); 0 stops them",
        "monitor": "also run Flower, Celery's monitor, on 127.0.0.1:FLOWER_PORT (user admin)",
        "join": "make this machine a worker node of the central Redis in this join file "
        "(`invoke cluster-export` makes it there): an LLM server and workers, no Redis",
    }
)
@one_line_errors
def up(
    c: Context,
    backend: str | None = None,
    timeout: str = "600",
    keep_on_failure: bool = False,
    workers: str | None = None,
    monitor: bool = False,
    join: str | None = None,
) -> None:
    """Start Redis and the LLM server and wait until they really serve (builds images if needed)."""
    from kcdev.backup.recovery import settle
    from kcdev.cluster import node, topology

    wait = number("timeout", timeout, minimum=1)
    count = None if workers is None else int(number("workers", workers, minimum=0, integer=True))
    # Without --backend, a stack that exists keeps its backend: `invoke up` brings a stopped or
    # exited service back and never removes a running LLM server unasked.
    if join:
        topology.join(Path(join), load_settings(), say)
    if backend:
        check_backend(backend)  # a typo fails at once, not after waiting for another task
    with changing(load_settings().compose_project_name, say):
        # What runs is looked at only now: the `up` waited for may have changed it.
        project = _project(backend, running=True, workers=count, monitor=monitor)
        if project.topology.node and not join:  # the central may have moved or changed since
            topology.check_central(node.joined(Path(project.settings.cluster_dir)))
        project = topology.ensure_flower_password(project, say=say)
        configured = project.settings.llm_backend
        if backend is None and project.backend != configured:
            effect = "remove" if configured == "none" else "replace"
            say(
                f"keeping backend {project.backend} of the existing stack "
                f"(LLM_BACKEND={configured}): `invoke up --backend={configured}` would {effect} "
                "its LLM server"
            )
        if not project.topology.node:  # a restore cut short is finished or rolled back first
            settle(project, say)
        checks = [c for c in (topology.workers_check(project), topology.flower_check(project)) if c]
        took = lifecycle.up(
            project, timeout=wait, keep_on_failure=keep_on_failure, say=say, extra_checks=checks
        )
    for line in topology.endpoints(project):
        say(line)
    say(f"ready in {took:.1f} s; stop with `invoke down`")


@task(help={"volumes": "also delete Redis' data volume (asks first)", "yes": "do not ask"})
@one_line_errors
def down(c: Context, volumes: bool = False, yes: bool = False) -> None:
    """Stop and remove the stack's containers; data stays unless --volumes."""
    if volumes and not yes:
        name = load_settings().compose_project_name
        confirm(f"Delete the Redis data volume of project {name!r}? This cannot be undone.")
    project = _project("none")
    with changing(project.name, say):
        lifecycle.down(project, volumes=volumes)
    say(f"stack {project.name} is down" + (" and its volumes deleted" if volumes else ""))


@task
@one_line_errors
def ps(c: Context) -> None:
    """Show the services (state, health, ports, CPU and memory), Redis, Celery and LLM metrics."""
    from concurrent.futures import ThreadPoolExecutor

    from kcdev.backup.recovery import settle
    from kcdev.stack import status

    project = _project(running=True)
    settle(project, say)  # a restore cut short is finished or rolled back first, and said so
    states = lifecycle.service_states(project)
    if not states:
        say(f"stack {project.name} is not running: start it with `invoke up`")
        return
    redis_up = REDIS in states and states[REDIS].state == "running"
    # The two slow questions are asked side by side: `docker stats` samples for about 1.5 s and
    # the workers get 1 s to answer (3.4 s in a row). The quick summaries come first: Redis'
    # key count must not include the reply queue the workers' broadcast creates.
    with ThreadPoolExecutor(max_workers=2) as pool:
        used = pool.submit(status.usage, project, states)
        summaries = [status.redis_summary(project.settings)] if redis_up else []
        if LLM_SERVER in states and states[LLM_SERVER].state == "running":
            summaries.append(status.llm_summary(project.settings))
            summaries.append(status.model_summary(project.settings, project.backend))
        workers = None
        if project.topology.node or redis_up:
            from worker.cli import workers_report

            workers = pool.submit(workers_report)
        say(status.services_table(states, used.result()))
        for line in [*status.way_back(states), *summaries]:
            say(line)
        if workers is not None:
            say(workers.result())


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
    lifecycle.print_logs(project, service, tail=lines, follow=follow, say=say)


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
    with changing(load_settings().compose_project_name, say):
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
        "preset": "model from kcdev/models/presets.toml (default: smollm2-135m-instruct; "
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
    """Download a model (resumable, sha256-verified), point .env at it; default: SmolLM2 135M."""
    # Imported here: huggingface_hub adds ~0.25 s to every `invoke` command otherwise.
    from kcdev.models.fetch import ModelFetcher
    from kcdev.models.plan import FetchRequest

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
        "file": "RDB file to restore: a backup (its .json manifest is checked) or any dump.rdb",
        "latest": "restore the newest backup in the backups folder (not the safety copies)",
        "yes": "replace the data without asking",
        "backups_dir": "folder of --latest and of the safety backup (default: backups/)",
    }
)
@one_line_errors
def restore_redis(
    c: Context,
    file: str | None = None,
    latest: bool = False,
    yes: bool = False,
    backups_dir: str | None = None,
) -> None:
    """Replace Redis' data with a verified RDB file; takes a safety backup first, keeps AOF on."""
    from kcdev.backup import restore, store
    from kcdev.backup.incoming import verify_file
    from kcdev.backup.recovery import settle
    from kcdev.backup.redis_target import target_from_project

    if bool(file) == latest:
        raise UserError("pass exactly one of --file=PATH or --latest")
    folder = Path(backups_dir) if backups_dir else store.DEFAULT_DIR
    path = Path(file) if file else store.latest(folder)
    incoming = verify_file(path.expanduser().absolute())  # a mistyped path is told before Redis
    project = _project("none")
    with changing(project.name, say):
        settle(project, say)  # an earlier restore cut short is finished or rolled back first
        target = target_from_project(project)
        found = restore.restore(target, incoming, yes, backups_dir=folder, say=say)
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
    from kcdev.cluster.topology import point_clients_at_central
    from worker.cli import worker_argv

    settings = load_settings()
    point_clients_at_central(settings)  # a worker node's local worker joins the central Redis
    argv = worker_argv(settings, concurrency, loglevel)
    # Replace this process: Ctrl-C and SIGTERM then reach Celery itself, for a warm shutdown.
    os.execv(argv[0], argv)


@task(
    help={
        "prompt": 'the prompt (summarize: the document); "" with --file',
        "task": "generate, chat or summarize (default: generate)",
        "file": "read the text from this file (summarize: the document)",
        "timeout": "seconds to wait for the answer (default 600)",
        "model": "run it on a worker whose LLM server serves this model (`invoke ps` lists them)",
    }
)
@one_line_errors
def ask(
    c: Context,
    prompt: str,
    task: str = "generate",
    file: str | None = None,
    timeout: str = "600",
    model: str | None = None,
) -> None:
    """Send one task to the worker, wait for the answer, print it and the time it took."""
    from worker.cli import ask as send

    wait = number("timeout", timeout, minimum=1)
    from kcdev.cluster.topology import point_clients_at_central

    # A malformed .env fails here in one line, before Celery reads it; on a worker node, tasks
    # go to the central Redis.
    point_clients_at_central(load_settings())
    answer = send(task, prompt, Path(file) if file else None, wait, say=say, model=model)
    say(answer.text.strip())
    say(f"({task} answered in {answer.seconds:.1f} s)")


@task(help={"timeout": "seconds to wait for the stack and for the summary (default 900)"})
@one_line_errors
def demo(c: Context, timeout: str = "900") -> None:
    """Newcomer's tour: model, stack, a worker, and a summary of the sample document."""
    from kcdev import demo as tour

    tour.run(say, number("timeout", timeout, minimum=1))


@task(
    help={
        "node": "name of the machine that will join (its client certificate is issued to it)",
        "address": "name or IP address the node reaches this machine at (default: BIND_HOST)",
        "out": "file to write (default: <node>.join here); it holds the Redis password: 0600",
    }
)
@one_line_errors
def cluster_export(
    c: Context, node: str, address: str | None = None, out: str | None = None
) -> None:
    """Write the join file a worker node needs: `invoke up --join FILE` there (keep it private)."""
    from kcdev.cluster import central

    settings = load_settings()
    path, reissued = central.export(
        settings, node=node, address=address, out=Path(out or f"{node}.join")
    )
    say(f"wrote {path} for node {node}: copy it to that machine privately, then run there")
    say(f"  invoke up --join {path.name} --workers N")
    if reissued:
        say("Redis' certificate now names that address: run `invoke up` here to present it")


@task
@one_line_errors
def cluster_leave(c: Context) -> None:
    """Forget the central Redis this worker node joined (after `invoke down`)."""
    from kcdev.cluster import node

    project = _project("none")
    if not project.topology.node:
        raise UserError("this machine is not a worker node: nothing to leave")
    if lifecycle.containers(project):
        raise UserError("the node's stack still runs: stop it with `invoke down` first")
    node.leave(Path(project.settings.cluster_dir))
    say("left the cluster: `invoke up` runs a stack of this machine's own again")
