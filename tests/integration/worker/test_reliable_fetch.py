"""worker/reliable_fetch.py's Lua fetch against a real Redis, with kombu's own restore after it.

A worker killed right after the fetch has recorded the message but never acknowledged it: kombu's
visibility-timeout sweep must then find it, in kombu's own format, and put it back in the queue.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from kombu import Connection, Queue

from tests.support.containers import RedisContainer
from worker.reliable_fetch import FETCH_AND_RECORD

pytestmark = pytest.mark.integration

DB = 15  # of the shared Redis: other modules use 0 and 11 to 14
QUEUE = "kc-reliable-fetch"
PAYLOAD = {"text": "héllo", "empty_list": [], "empty_map": {}, "nested": [None, [1, 2.5]]}


@pytest.fixture
def broker(redis_server: RedisContainer) -> Iterator[Connection]:
    redis_server.client(db=DB).flushdb()
    port = redis_server.get_exposed_port(6379)
    url = f"redis://:{quote(redis_server.password, safe='')}@127.0.0.1:{port}/{DB}"
    options = {"priority_steps": [0], "visibility_timeout": 1}
    with Connection(url, transport_options=options) as connection:
        yield connection


def test_a_fetched_but_unacknowledged_message_comes_back_unchanged(
    broker: Connection, redis_server: RedisContainer
) -> None:
    broker.Producer().publish(PAYLOAD, routing_key=QUEUE, declare=[Queue(QUEUE)], serializer="json")
    client = redis_server.client(db=DB)
    [queued] = client.lrange(QUEUE, 0, -1)
    assert isinstance(queued, bytes)

    fetched = client.eval(FETCH_AND_RECORD, 3, QUEUE, "unacked_index", "unacked", time.time())

    assert fetched == queued
    assert client.llen(QUEUE) == 0
    tag = json.loads(queued)["properties"]["delivery_tag"]
    recorded = client.hget("unacked", tag)
    assert recorded == b"[" + queued + b',"","' + QUEUE.encode() + b'"]'  # raw, byte for byte
    assert client.zscore("unacked_index", tag) is not None

    time.sleep(1.1)  # past the visibility timeout: the killed worker never acknowledged it
    channel: Any = broker.default_channel
    channel.qos.restore_visible(num=10)

    message = broker.SimpleQueue(QUEUE).get(timeout=5)
    assert message.payload == PAYLOAD
    assert message.delivery_info.get("redelivered") or message.headers.get("redelivered")
    message.ack()
    assert client.hget("unacked", tag) is None


def test_an_empty_queue_fetches_nothing(redis_server: RedisContainer) -> None:
    client = redis_server.client(db=DB)
    client.delete(QUEUE)
    assert client.eval(FETCH_AND_RECORD, 3, QUEUE, "unacked_index", "unacked", time.time()) is None
    assert client.hlen("unacked") == 0
