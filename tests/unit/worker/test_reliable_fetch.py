"""Which channels worker/reliable_fetch.py takes over; the fetch itself runs against a real Redis
in tests/integration/worker/test_reliable_fetch.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from kombu.transport import redis as kombu_redis
from kombu.utils.scheduling import cycle_by_name

from worker import config as worker_config
from worker import reliable_fetch


@dataclass
class FakeChannel:
    active_queues: list[str] = field(default_factory=lambda: ["celery"])
    priority_steps: list[int] = field(default_factory=lambda: [0])
    global_keyprefix: str = ""
    _kc_no_ack_queues: set[str] = field(default_factory=set)
    unacked_index_key: str = "unacked_index"
    unacked_key: str = "unacked"

    def __post_init__(self) -> None:
        self._queue_cycle = cycle_by_name("round_robin")()
        self._queue_cycle.update(self.active_queues)

    def _q_for_pri(self, queue: str, pri: int) -> str:
        return f"{queue}\x06\x16{pri}" if pri else queue


def test_acknowledged_queues_with_one_priority_step_are_fetched_reliably() -> None:
    assert reliable_fetch.reliable_queues(FakeChannel()) == ["celery"]
    assert reliable_fetch.reliable_queues(FakeChannel(["model.x", "celery"])) == [
        "model.x",
        "celery",
    ]


def test_the_order_is_kombus_fair_cycle() -> None:
    channel = FakeChannel(["a", "b", "c"])
    channel._queue_cycle.rotate("a")
    assert reliable_fetch.reliable_queues(channel) == ["b", "c", "a"]


@pytest.mark.parametrize(
    "channel",
    [
        FakeChannel(active_queues=[]),
        FakeChannel(priority_steps=[0, 3, 6, 9]),  # messages would sit in lists never watched
        FakeChannel(global_keyprefix="app:"),
        # control replies: nobody acknowledges them, so they must never be recorded
        FakeChannel(["x.reply.celery.pidbox"], _kc_no_ack_queues={"x.reply.celery.pidbox"}),
    ],
)
def test_other_channels_keep_kombus_own_brpop(channel: FakeChannel) -> None:
    assert reliable_fetch.reliable_queues(channel) is None


def test_the_script_gets_each_queue_with_its_dead_letter_list() -> None:
    keys = reliable_fetch.fetch_keys(FakeChannel(), ["model.x", "celery"])
    assert keys == [
        "unacked_index",
        "unacked",
        "model.x",
        "kc.dead-letter.model.x",
        "celery",
        "kc.dead-letter.celery",
    ]


def test_the_worker_app_installs_it_once_and_configures_one_priority_step() -> None:
    import worker.celery_app  # noqa: F401  (installs the patch)

    channel_class: Any = kombu_redis.Channel
    patched = channel_class._brpop_read
    reliable_fetch.install()

    assert getattr(channel_class, "_kc_reliable_fetch", False)
    assert channel_class._brpop_read is patched
    assert worker_config.broker_transport_options["priority_steps"] == [0]
