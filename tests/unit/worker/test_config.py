"""Celery's configuration, as the app really loads it, and as it follows the settings."""

from __future__ import annotations

import os
import runpy
from typing import Any
from unittest import mock

import pytest
from kombu import Connection

from kcdev.settings import load_settings
from tests.unit.conftest import MakeSettings
from worker import config
from worker.celery_app import app


def config_with(**environ: str) -> dict[str, Any]:
    """worker/config.py's names when run with these variables (the real `.env` still applies)."""
    with mock.patch.dict(os.environ, environ):
        return runpy.run_path(config.__file__)


def test_visibility_timeout_exceeds_the_task_time_limit() -> None:
    """Otherwise Redis hands a task that is still running to a second worker."""
    conf = app.conf
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.task_soft_time_limit < conf.task_time_limit


def test_a_retry_wait_plus_a_run_ends_before_redelivery() -> None:
    from worker.tasks import generate

    visibility = app.conf.broker_transport_options["visibility_timeout"]
    assert generate.retry_backoff_max + app.conf.task_time_limit < visibility


def test_delivery_is_at_least_once() -> None:
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    # Kept alive through a lost connection: cancelling marked them REVOKED (see config.py).
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is False
    assert conf.worker_deduplicate_successful_tasks is True
    assert conf.result_backend_always_retry is True


def test_only_json_is_spoken() -> None:
    conf = app.conf
    assert conf.task_serializer == conf.result_serializer == "json"
    assert list(conf.accept_content) == ["json"]
    assert list(conf.result_accept_content) == ["json"]


def test_the_worker_waits_for_redis_for_as_long_as_it_takes() -> None:
    conf = app.conf
    assert conf.broker_connection_retry_on_startup is True
    assert conf.broker_connection_retry is True
    assert conf.broker_connection_max_retries is None


def test_broker_connections_can_notice_a_dead_redis() -> None:
    options = app.conf.broker_transport_options
    assert options["socket_timeout"] > 0
    assert options["health_check_interval"] > 0
    # Abandoned messages are looked for every interval, not every tenth one.
    assert options["unacked_restore_throttle"] == 1


def test_values_follow_the_settings() -> None:
    settings = load_settings()
    conf = app.conf
    assert conf.result_expires == settings.result_expires
    assert conf.task_time_limit == settings.task_time_limit
    assert conf.worker_concurrency == settings.worker_concurrency
    assert conf.broker_url == conf.result_backend == config.redis_url(settings)


def test_the_environment_changes_the_config() -> None:
    names = config_with(
        VISIBILITY_TIMEOUT="120", TASK_TIME_LIMIT="100", RESULT_EXPIRES="600", REDIS_DB="3"
    )
    assert names["broker_transport_options"]["visibility_timeout"] == 120
    assert names["task_time_limit"] == 100
    assert names["result_expires"] == 600
    assert names["broker_url"].endswith("/3")


def test_a_visibility_timeout_not_above_the_time_limit_is_refused() -> None:
    """The worker stops with the one line (kcdev.settings.load_settings_or_exit)."""
    with pytest.raises(SystemExit, match="VISIBILITY_TIMEOUT=100 must exceed TASK_TIME_LIMIT=100"):
        config_with(VISIBILITY_TIMEOUT="100", TASK_TIME_LIMIT="100")


def test_the_redis_password_is_url_encoded(make_settings: MakeSettings) -> None:
    settings = make_settings(redis_password="p@ss/w:rd#?", redis_port="6390", redis_db="2")
    url = config.redis_url(settings)
    assert url == "redis://:p%40ss%2Fw%3Ard%23%3F@127.0.0.1:6390/2"
    assert Connection(url).password == "p@ss/w:rd#?"


def test_no_password_means_no_credentials(make_settings: MakeSettings) -> None:
    assert config.redis_url(make_settings()) == "redis://127.0.0.1:6379/0"


def test_the_password_is_masked_where_celery_shows_the_url(make_settings: MakeSettings) -> None:
    """The worker's banner and its connection errors print the URL through as_uri()."""
    url = config.redis_url(make_settings(redis_password="s3cret-value"))
    shown = Connection(url).as_uri()
    assert "s3cret-value" not in shown
    assert "**" in shown


def test_a_closed_broker_channel_fails_like_a_lost_connection() -> None:
    """celery_app.py's fix: Celery handles connection errors, but not the AttributeError kombu
    raised when a channel of a connection the worker closed tries to reach Redis again."""
    import redis
    from kombu.transport import redis as kombu_redis

    class DetachedTransport:
        client = None

    class Channel:
        connection = DetachedTransport()

    connparams = kombu_redis.Channel._connparams  # type: ignore[attr-defined]
    with pytest.raises(redis.exceptions.ConnectionError):
        connparams(Channel())
    assert redis.exceptions.ConnectionError in kombu_redis.Transport.connection_errors
