"""Every worker on the broker — in a container, in a local venv or on another machine — as
Celery's own inspect API reports them: host, concurrency, tasks running, queues consumed.

One broadcast (`stats`) finds the workers, waiting its whole timeout since nobody knows how many
will answer; the two that follow (`active`, `active_queues`) name those workers and stop as soon
as all have answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kcdev.queues import model_of

# Seconds to wait for workers to answer: replies on a working broker take milliseconds.
INSPECT_TIMEOUT = 1.0


@dataclass(frozen=True)
class WorkerInfo:
    name: str  # celery@host
    concurrency: int
    active: int
    queues: tuple[str, ...]

    @property
    def host(self) -> str:
        return self.name.split("@", 1)[-1]

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(m for m in map(model_of, self.queues) if m)


def workers(app: Any, timeout: float = INSPECT_TIMEOUT) -> list[WorkerInfo]:
    """The workers answering within `timeout`, sorted by name."""
    stats = app.control.inspect(timeout=timeout).stats() or {}
    if not stats:
        return []
    names = sorted(stats)
    asked = app.control.inspect(destination=names, timeout=timeout, limit=len(names))
    active = asked.active() or {}
    queues = asked.active_queues() or {}
    found = []
    for name in names:
        pool = stats[name].get("pool") or {}
        concurrency = pool.get("max-concurrency")
        found.append(
            WorkerInfo(
                name=name,
                concurrency=int(concurrency) if isinstance(concurrency, int) else 0,
                active=len(active.get(name) or []),
                queues=tuple(q.get("name", "") for q in queues.get(name) or []),
            )
        )
    return found


def consumers_of(found: list[WorkerInfo], queue: str) -> list[WorkerInfo]:
    return [w for w in found if queue in w.queues]


def rows(found: list[WorkerInfo]) -> list[list[str]]:
    """`invoke ps`'s worker table."""
    table = [["WORKER", "HOST", "CONCURRENCY", "ACTIVE", "QUEUES"]]
    for w in found:
        name = w.name.split("@", 1)[0]
        table.append([name, w.host, str(w.concurrency), str(w.active), ", ".join(w.queues)])
    return table
