"""The Celery app: `celery -A worker.celery_app worker` runs it.

Configuration is worker/config.py; the task modules import `app` from here.
"""

from __future__ import annotations

import warnings
from typing import Any

import redis
from celery import Celery
from celery.exceptions import CPendingDeprecationWarning
from kombu.transport import redis as kombu_redis

from worker import reliable_fetch

# config.py keeps running tasks alive through a lost broker connection on purpose (see
# worker_cancel_long_running_tasks_on_connection_loss there); Celery would warn at each reconnect.
warnings.filterwarnings(
    "ignore",
    message=r"\s*In Celery 5.1 we introduced an optional breaking change",
    category=CPendingDeprecationWarning,
)


def _closed_channels_fail_like_lost_connections() -> None:
    """Make a Redis channel whose connection the worker already closed raise a connection error.

    When Redis restarts, Celery closes the broken connection (kombu's Transport loses its
    `client`) while channels of that connection are still in use: closing the default channel
    tries to put its unacknowledged messages back, and a task that finishes afterwards
    acknowledges on its old channel. Both then build a new Redis pool from the missing `client`
    and raise AttributeError, which Celery (5.7, kombu 5.7) treats as unrecoverable: the worker
    logs "Unrecoverable error: AttributeError(... 'hostname')", stops consuming and hangs in its
    shutdown (about one Redis restart in ten under load, in
    tests/integration/worker/test_reliability.py and a stress run). As a connection error
    instead, both are handled: the messages stay in Redis' unacknowledged set and are
    redelivered after the visibility timeout, where a task that already succeeded is skipped
    (config.py).
    """
    connparams = kombu_redis.Channel._connparams  # type: ignore[attr-defined]  # private

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError("this broker connection was closed")
        return connparams(self, asynchronous=asynchronous)

    kombu_redis.Channel._connparams = _connparams  # type: ignore[attr-defined]


_closed_channels_fail_like_lost_connections()
reliable_fetch.install()

app = Celery("worker", include=["worker.tasks"])
app.config_from_object("worker.config")
