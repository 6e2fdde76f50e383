"""Which channels worker/reliable_fetch.py takes over; the fetch itself runs against a real Redis
in tests/integration/worker/test_reliable_fetch.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from kombu.transport import redis as kombu_redis

from worker import config as worker_config
from worker import reliable_fetch


@dataclass
class FakeChannel:
    active_queues: list[str] = field(default_factory=lambda: ["celery"])
    priority_steps: list[int] = field(default_factory=lambda: [0])
    global_keyprefix: str = ""

    def _q_for_pri(self, queue: str, pri: int) -> str:
        return f"{queue}\x06\x16{pri}" if pri else queue


def test_a_single_queue_with_one_priority_step_is_fetched_reliably() -> None:
    assert reliable_fetch._single_queue(FakeChannel()) == "celery"


@pytest.mark.parametrize(
    "channel",
    [
        FakeChannel(active_queues=["a", "b"]),  # BLMOVE waits on one list only
        FakeChannel(active_queues=[]),
        FakeChannel(priority_steps=[0, 3, 6, 9]),  # messages would sit in lists never watched
        FakeChannel(global_keyprefix="app:"),
    ],
)
def test_other_channels_keep_kombus_own_brpop(channel: FakeChannel) -> None:
    assert reliable_fetch._single_queue(channel) is None


def test_the_worker_app_installs_it_once_and_configures_one_priority_step() -> None:
    import worker.celery_app  # noqa: F401  (installs the patch)

    channel_class: Any = kombu_redis.Channel
    patched = channel_class._brpop_read
    reliable_fetch.install()

    assert getattr(channel_class, "_kc_reliable_fetch", False)
    assert channel_class._brpop_read is patched
    assert worker_config.broker_transport_options["priority_steps"] == [0]
