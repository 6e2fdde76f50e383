"""Reliable fetch for kombu's Redis transport: a kill -9 can no longer lose a message being fetched.

kombu takes a message with BRPOP and records it as unacknowledged only once it has read the reply,
with a second command. A worker killed in between has the message in its socket buffer and nowhere
else: it is lost (celery/kombu#305; it happened in this project's CI, one task in twenty). Here
the blocking command only waits: BLMOVE of the queue onto itself, popping and pushing at the same
end, returns once the queue holds a message and leaves the queue as it was. A Lua script then pops
the message and records it as unacknowledged in one atomic step, so at every instant the message
is either queued or recorded, and the visibility timeout brings recorded ones back.

This applies to a channel consuming a single queue with one priority step (worker/config.py sets
`priority_steps` to [0]); any other channel keeps kombu's own BRPOP. kombu's QoS records the
message again when it is delivered: the same entry, written twice.
"""

from __future__ import annotations

import time
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

# KEYS: queue, unacked index, unacked hash; ARGV: now. The stored entry is kombu's own shape,
# [message, exchange, routing key], built around the raw message so that it is kept byte for byte.
FETCH_AND_RECORD = """
local raw = redis.call('RPOP', KEYS[1])
if not raw then return false end
local ok, message = pcall(cjson.decode, raw)
if not ok or type(message) ~= 'table' or type(message['properties']) ~= 'table' then
  return raw  -- not kombu's: the worker rejects it as kombu's own fetch would
end
local properties = message['properties']
local info = properties['delivery_info']
local tag = properties['delivery_tag']
redis.call('ZADD', KEYS[2], ARGV[1], tag)
redis.call('HSET', KEYS[3], tag,
           '[' .. raw .. ',' .. cjson.encode(info['exchange']) .. ','
           .. cjson.encode(info['routing_key']) .. ']')
return raw
"""


def _single_queue(channel: Any) -> str | None:
    """The one list the channel would BRPOP, or None where kombu's own BRPOP must serve."""
    queues = channel.active_queues
    if len(queues) != 1 or list(channel.priority_steps) != [0] or channel.global_keyprefix:
        return None
    return str(channel._q_for_pri(queues[0], 0))


def _fetch_script(client: Any) -> Any:
    """FETCH_AND_RECORD as a redis-py Script (EVALSHA, loaded on first use), one per client."""
    script = getattr(client, "_kc_fetch_and_record", None)
    if script is None:
        script = client._kc_fetch_and_record = client.register_script(FETCH_AND_RECORD)
    return script


def install() -> None:
    """Patch kombu's Redis channel (kombu 5.x: `_brpop_start` / `_brpop_read`)."""
    channel_class: Any = kombu_redis.Channel
    if getattr(channel_class, "_kc_reliable_fetch", False):
        return
    kombu_start, kombu_read = channel_class._brpop_start, channel_class._brpop_read

    def _brpop_start(self: Any, timeout: float | None = None) -> None:
        self._kc_waiting_on = _single_queue(self)
        if self._kc_waiting_on is None:
            kombu_start(self, timeout)
            return
        if timeout is None:
            timeout = self.brpop_timeout
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        queue = self._kc_waiting_on
        self.client.connection.send_command("BLMOVE", queue, queue, "RIGHT", "RIGHT", timeout or 0)

    def _brpop_read(self: Any, **options: Any) -> bool:
        queue = getattr(self, "_kc_waiting_on", None)
        if queue is None:
            return bool(kombu_read(self, **options))
        try:
            try:
                woke = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if woke is None:
                raise Empty()
            keys = [queue, self.unacked_index_key, self.unacked_key]
            raw = _fetch_script(self.client)(keys=keys, args=[time.time()], client=self.client)
            if raw is None:  # another worker took it first
                raise Empty()
            self._queue_cycle.rotate(queue)
            self.connection._deliver(loads(bytes_to_str(raw)), queue)
            return True
        finally:
            self._in_poll = None
            self._kc_waiting_on = None
            self._flush_brpop_reauth()

    channel_class._brpop_start = _brpop_start
    channel_class._brpop_read = _brpop_read
    channel_class._kc_reliable_fetch = True
