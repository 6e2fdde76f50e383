"""Finishing or rolling back a restore that was cut short, before `invoke up`, `ps` or
`restore-redis` use Redis, and saying in one line which it was (kcdev/backup/journal.py).

The image's start script already refuses to serve half-replaced data; what is left for these
tasks is what only the host can do: start a Redis the restore had stopped, check the key counts
of a switched restore before its old data is deleted, and tell the user.
"""

from __future__ import annotations

import time

from kcdev.backends import REDIS
from kcdev.backup.journal import Journal, JournalError, Status, restore_running
from kcdev.backup.redis_target import target_from_project
from kcdev.backup.restore import RestoreFailed, Restorer
from kcdev.console import Say
from kcdev.errors import UserError
from kcdev.stack import images
from kcdev.stack.compose import ComposeProject
from kcdev.stack.lifecycle import containers
from kcdev.stack.readiness import NotReady, redis_ready, wait_until

VOLUME = "redis-data"  # the Redis service's volume in docker/docker-compose.yml
START_TIMEOUT = 600


def data_volume(project: ComposeProject) -> str | None:
    """The stack's Redis volume, by compose's labels: it outlives the container (`down`)."""
    result = project.docker.run(
        "volume", "ls", "--quiet",
        "--filter", f"label=com.docker.compose.project={project.name}",
        "--filter", f"label=com.docker.compose.volume={VOLUME}",
        timeout=60,
    )  # fmt: skip
    names = result.stdout.split()
    return names[0] if result.returncode == 0 and names else None


def settle(project: ComposeProject, say: Say) -> None:
    """Finish or roll back an unfinished restore of the stack's Redis, and report it; costs a
    `docker exec` or two when there is none.

    Without a Redis container (after `invoke down`) there is nothing to start: the next one's
    start script recovers the volume, and the task after that reports it.
    """
    volume = data_volume(project)
    container = containers(project).get(REDIS) if volume else None
    if container is None or volume is None:
        return
    if restore_running(volume):
        say("a restore of Redis is running in another process: leaving it alone")
        return
    running = container.status == "running"
    journal = Journal(project.docker, volume, "", container.container_id if running else None)
    if not running:
        journal.image = _image_of(project, container.container_id)
    try:
        status = journal.status()
    except JournalError:
        return  # an image from before the journal: no restore of it can be unfinished
    try:
        if not (status.active or status.outcome):
            return
        journal.image = journal.image or _image_of(project, container.container_id)
        journal.remove_leftovers()
        if status.active:
            status = _resolve(project, journal, status, running)
        if status.outcome:
            say(status.outcome.line())
            journal.seen()
    except (JournalError, RestoreFailed) as exc:
        raise UserError(
            f"cannot finish or roll back the unfinished restore of Redis ({exc}): see "
            "`invoke logs --service=redis`; the data from before is kept in the volume's "
            "kc-restore/ folder"
        ) from None


def _image_of(project: ComposeProject, container_id: str) -> str:
    """The image the container runs, by id: its scripts are the ones that wrote the journal."""
    found = project.docker.run("inspect", "--format", "{{.Image}}", container_id, timeout=60)
    return found.stdout.strip() or images.REDIS_IMAGE


def _resolve(project: ComposeProject, journal: Journal, status: Status, running: bool) -> Status:
    if running and status.phase in ("", "preparing", "building"):
        journal.abandon()  # the restore never touched the data Redis is serving
        return journal.status()
    if running and status.phase != "switched":  # only a Redis started by other means gets here
        project.run("stop", "redis", timeout=START_TIMEOUT)
        journal.container_id = None
        running = False
    if not running:
        journal.recover()  # rolls back, or switches the new data in
        _start(project)
    target = target_from_project(project)
    journal.container_id = target.container_id
    status = journal.status()
    if status.phase == "switched" and status.expect is not None:
        restorer = Restorer(project.docker, target, journal, START_TIMEOUT, stopped=True)
        try:
            restorer.check(status.expect)
        except RestoreFailed:
            restorer.roll_back()  # never seen: the temporary Redis checked the same counts
            return journal.status()
        journal.commit()
    return journal.status()


def _start(project: ComposeProject) -> None:
    """Start the Redis container the restore stopped; its start script finishes the recovery."""
    result = project.run("start", "redis", timeout=START_TIMEOUT)
    if result.returncode != 0:
        raise RestoreFailed(f"docker compose start redis failed: {result.stderr.strip()}")
    s = project.settings
    try:
        wait_until(
            lambda: redis_ready(s.redis_host, s.redis_port, s.redis_password),
            time.monotonic() + START_TIMEOUT,
        )
    except NotReady as exc:
        raise RestoreFailed(f"Redis did not come back ({exc})") from None
