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

from kcdev.queues import dead_letter_key
from tests.support.containers import RedisContainer
from worker.reliable_fetch import FETCH_AND_RECORD

pytestmark = pytest.mark.integration

DB = 15  # of the shared Redis: other modules use 0 and 11 to 14
QUEUE = "kc-reliable-fetch"
OTHER = "kc-reliable-fetch-other"


def fetch(client: Any, *queues: str) -> list[Any]:
    """Run the script as the patched channel does: {queue, message, moved aside}."""
    keys = ["unacked_index", "unacked"]
    for queue in queues:
        keys += [queue, dead_letter_key(queue)]
    return list(client.eval(FETCH_AND_RECORD, len(keys), *keys, time.time()))


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

    fetched = fetch(client, QUEUE)

    assert fetched == [QUEUE.encode(), queued, 0]
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


def test_empty_queues_fetch_nothing(redis_server: RedisContainer) -> None:
    client = redis_server.client(db=DB)
    client.delete(QUEUE, OTHER, "unacked")
    assert fetch(client, QUEUE, OTHER) == [None, None, 0]
    assert client.hlen("unacked") == 0


def test_every_queue_is_tried_in_the_order_given(
    broker: Connection, redis_server: RedisContainer
) -> None:
    client = redis_server.client(db=DB)
    client.delete(QUEUE, OTHER, "unacked")
    producer = broker.Producer()
    producer.publish({"n": 1}, routing_key=OTHER, declare=[Queue(OTHER)], serializer="json")

    queue, raw, moved = fetch(client, QUEUE, OTHER)  # nothing in the first: the second's

    assert (queue, moved) == (OTHER.encode(), 0)
    assert json.loads(raw)["properties"]["delivery_info"]["routing_key"] == OTHER
    assert client.hlen("unacked") == 1


@pytest.mark.parametrize(
    "junk",
    [
        b"not json at all \xff\xfe",
        b'{"body": "no properties"}',
        b'{"properties": {"delivery_tag": 7, "delivery_info": {}}}',  # tag not a string
        b"[1, 2, 3]",
        b"",
    ],
)
def test_what_is_not_a_kombu_message_is_moved_aside_byte_for_byte(
    junk: bytes, broker: Connection, redis_server: RedisContainer
) -> None:
    client = redis_server.client(db=DB)
    client.delete(QUEUE, dead_letter_key(QUEUE), "unacked")
    client.lpush(QUEUE, junk)  # kombu pushes left and pops right: the junk comes out first
    broker.Producer().publish(
        {"n": 2}, routing_key=QUEUE, declare=[Queue(QUEUE)], serializer="json"
    )

    queue, raw, moved = fetch(client, QUEUE)

    assert (queue, moved) == (QUEUE.encode(), 1)
    assert json.loads(raw)["properties"]["delivery_info"]["routing_key"] == QUEUE
    assert client.lrange(dead_letter_key(QUEUE), 0, -1) == [junk]
    assert client.hlen("unacked") == 1
