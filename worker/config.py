"""Celery's settings: a plain module of lowercase names, read by `app.config_from_object`.

Values come from kcdev.settings (defaults, `.env`, the environment), where every variable is
declared, documented and validated once. The choices below are what makes delivery
at-least-once: a task is lost neither when its worker is killed mid-run nor when Redis restarts
under it, nor in the instant between taking a message from Redis and recording it
(worker/reliable_fetch.py closes kombu's gap there).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kombu import Queue

from kcdev.queues import DEFAULT_QUEUE, queues_for
from kcdev.settings import Settings, load_settings_or_exit

# Seconds a command on a Redis connection may take. Without a timeout, a command on a connection
# Redis dropped silently (a restart behind NAT or a proxy, a failover) waits forever and the
# worker stops consuming for good. BRPOP is unaffected: it polls with its own 1 s timeout.
SOCKET_TIMEOUT = 30
SOCKET_CONNECT_TIMEOUT = 5
# Seconds between pings of idle connections; kombu also drops a BRPOP connection whose reply is
# this much overdue and reconnects, so a consumer on a half-open connection recovers.
HEALTH_CHECK_INTERVAL = 10
# How often the worker looks for messages whose worker died before acknowledging them.
# kombu's default sweeps only every 10th tick of 10 s (100 s); one sweep is a ZRANGE on Redis.
UNACKED_RESTORE_INTERVAL = 10


def redis_url(settings: Settings) -> str:
    """redis[s]://[:password@]host:port/db, the password URL-encoded: it may hold `@`, `/`, `:`.

    rediss (TLS) when REDIS_TLS_DIR holds the credentials of a worker node: the central Redis
    takes nothing else beyond loopback.
    """
    scheme = "rediss" if settings.redis_tls_dir else "redis"
    auth = f":{quote(settings.redis_password, safe='')}@" if settings.redis_password else ""
    return f"{scheme}://{auth}{settings.redis_host}:{settings.redis_port}/{settings.redis_db}"


def redis_tls(settings: Settings) -> dict[str, Any] | None:
    """The TLS options of broker and result store: verify the server against the cluster's CA,
    and present this node's client certificate (Redis asks for one)."""
    if not settings.redis_tls_dir:
        return None
    folder = Path(settings.redis_tls_dir)
    return {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": str(folder / "ca.pem"),
        "ssl_certfile": str(folder / "client.pem"),
        "ssl_keyfile": str(folder / "client-key.pem"),
    }


_settings = load_settings_or_exit()  # a bad .env stops the worker in one line

# --- where messages and results live ---------------------------------------------------------
broker_url = redis_url(_settings)
result_backend = broker_url
broker_use_ssl = redis_tls(_settings)
redis_backend_use_ssl = broker_use_ssl
broker_transport_options = {
    # Redis has no acknowledgements: a delivered, unacknowledged message is redelivered after
    # this many seconds. It must exceed the task time limit, or a task still running is handed
    # to a second worker (settings.py refuses a smaller value; a unit test checks it here too).
    "visibility_timeout": _settings.visibility_timeout,
    # One list per queue (no task priorities): worker/reliable_fetch.py fetches from one list.
    "priority_steps": [0],
    "unacked_restore_interval": UNACKED_RESTORE_INTERVAL,
    "unacked_restore_throttle": 1,
    "socket_timeout": SOCKET_TIMEOUT,
    "socket_connect_timeout": SOCKET_CONNECT_TIMEOUT,
    "socket_keepalive": True,
    "health_check_interval": HEALTH_CHECK_INTERVAL,
}
# A task that has done its work but cannot store the result while Redis restarts retries the
# store (backing off exponentially up to 10 s, for a few minutes) instead of failing with a
# connection error: without this, such tasks ended FAILED in the Redis restart test.
result_backend_always_retry = True
result_backend_max_retries = 30
redis_socket_timeout = SOCKET_TIMEOUT
redis_socket_connect_timeout = SOCKET_CONNECT_TIMEOUT
redis_socket_keepalive = True
redis_backend_health_check_interval = HEALTH_CHECK_INTERVAL

# --- queues ----------------------------------------------------------------------------------
# A worker consumes its LLM server's model queue and the shared default queue (worker/queues.py):
# `invoke ask --model NAME` sends to the former, everything else to the latter.
task_default_queue = DEFAULT_QUEUE
task_queues = [Queue(name, routing_key=name) for name in queues_for(_settings)]

# --- at-least-once delivery ------------------------------------------------------------------
# Acknowledge a message only after its task has run: a worker killed mid-task (kill -9, OOM,
# power loss) leaves the message unacknowledged, and Redis gives it to another worker after the
# visibility timeout.
task_acks_late = True
# A child process that dies mid-task (killed, segfault) sends its message back to the queue
# rather than failing the task. The price: a task that always kills its process runs again and
# again, which these HTTP-calling tasks cannot do.
task_reject_on_worker_lost = True
# A task that failed or hit its time limit is acknowledged all the same (Celery's default, left
# alone; its setting's name changes in Celery 5.7): retrying is the task's own declared choice.
# Reserve one message per process, not four: a killed worker then holds back only the tasks
# it was running, and long tasks are not stuck behind each other in one worker's buffer.
worker_prefetch_multiplier = 1
# When the connection to Redis drops, tasks already running finish and store their results
# (the result store retries until Redis is back), so their clients get an answer at once.
# Their acknowledgement then fails on the closed connection (see celery_app.py): Redis
# redelivers them after the visibility timeout, and deduplication (below) skips them. True
# (Celery 6's future default) terminates them instead; tried with Redis restarted under a busy
# worker, it marked some REVOKED for good, and at best their clients would wait for the
# visibility timeout.
# celery_app.py silences the deprecation warning that False brings at each reconnect.
worker_cancel_long_running_tasks_on_connection_loss = False
# A redelivered message whose task already succeeded (its result is in Redis) is acknowledged
# without running the task again: at-least-once without paying twice for the same answer.
worker_deduplicate_successful_tasks = True

# --- connection to Redis ---------------------------------------------------------------------
# A worker started before Redis, or outliving a Redis restart, waits for it and reconnects,
# for as long as it takes: exiting would need something else to restart the worker.
broker_connection_retry_on_startup = True
broker_connection_retry = True
broker_connection_max_retries = None
# Publishing (clients, and retries scheduled by the worker) retries through a short outage.
task_publish_retry = True
task_publish_retry_policy = {
    "max_retries": 10,
    "interval_start": 0,
    "interval_step": 1,
    "interval_max": 2,
}

# --- serialisation ---------------------------------------------------------------------------
# JSON only: pickle would let anyone who can write to Redis run code in the worker.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# --- limits and results ----------------------------------------------------------------------
# The hard limit kills a stuck task's process; the soft limit a little earlier fails the task
# with SoftTimeLimitExceeded inside it, which spares the process in most cases.
task_time_limit = _settings.task_time_limit
task_soft_time_limit = int(_settings.task_time_limit * 0.95)
result_expires = _settings.result_expires
# Results say STARTED while running, so a waiting client can tell "queued" from "running".
task_track_started = True
# Task events, for Flower (`invoke up --monitor`) to show tasks live: a few small messages per
# task on Redis' pub/sub, which nobody stores when no monitor listens.
worker_send_task_events = True
task_send_sent_event = True
worker_concurrency = _settings.worker_concurrency
