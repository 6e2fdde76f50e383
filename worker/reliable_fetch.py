"""Reliable fetch for kombu's Redis transport: a kill -9 can no longer lose a message being fetched.

kombu takes a message with BRPOP and records it as unacknowledged only once it has read the reply,
with a second command. A worker killed in between has the message in its socket buffer and nowhere
else: it is lost (celery/kombu#305; it happened in this project's CI, one task in twenty). Here
the blocking command only waits: BLMOVE of a queue onto itself, popping and pushing at the same
end, returns once that queue holds a message and leaves it as it was. A Lua script then pops the
message and records it as unacknowledged in one atomic step, so at every instant the message is
either queued or recorded, and the visibility timeout brings recorded ones back.

BLMOVE waits on one list, while a worker consumes several queues (its model's queue and the shared
default one). The script therefore tries every queue, in kombu's fair order, at each wake; the
wait is on the queue that last had work, for at most MULTI_QUEUE_WAIT seconds when there are
others, so a task on another queue waits that long at worst on an idle worker and not at all on
a busy one.

The script also moves aside what is not a kombu message (not JSON, or without the properties
kombu needs): kombu would raise on it in the middle of its event loop, which Celery treats as
unrecoverable, and the worker stopped consuming for good. Such messages go to
`kc.dead-letter.<queue>`, byte for byte, where `invoke ps` counts them.

Only queues consumed with acknowledgements are fetched this way. Control replies (`inspect`,
`ping`) are consumed without acknowledgement by every process that imports the app; recording
them would leave phantom entries in the unacknowledged set forever. Channels with several
priority steps or a key prefix also keep kombu's own BRPOP (worker/config.py sets one step).
"""

from __future__ import annotations

import logging
import time
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from kcdev.queues import DEAD_LETTER_PREFIX, dead_letter_key

# Seconds an idle worker with several queues waits on one of them before looking at the others.
MULTI_QUEUE_WAIT = 0.1

log = logging.getLogger(__name__)

# KEYS: unacked index, unacked hash, then (queue, its dead-letter list) pairs in the order to
# try; ARGV: now. Returns {queue or false, message or false, messages moved aside}. The stored
# entry is kombu's own shape, [message, exchange, routing key], built around the raw message so
# that it is kept byte for byte.
FETCH_AND_RECORD = """
local moved = 0
for i = 3, #KEYS, 2 do
  local raw = redis.call('RPOP', KEYS[i])
  while raw do
    local ok, message = pcall(cjson.decode, raw)
    local properties = ok and type(message) == 'table' and message['properties']
    local info = type(properties) == 'table' and properties['delivery_info']
    local tag = type(properties) == 'table' and properties['delivery_tag']
    if type(info) == 'table' and type(tag) == 'string' then
      redis.call('ZADD', KEYS[1], ARGV[1], tag)
      redis.call('HSET', KEYS[2], tag,
                 '[' .. raw .. ',' .. cjson.encode(info['exchange'] or '') .. ','
                 .. cjson.encode(info['routing_key'] or '') .. ']')
      return {KEYS[i], raw, moved}
    end
    redis.call('LPUSH', KEYS[i + 1], raw)
    moved = moved + 1
    raw = redis.call('RPOP', KEYS[i])
  end
end
return {false, false, moved}
"""


def reliable_queues(channel: Any) -> list[str] | None:
    """The lists the channel consumes, in kombu's fair order, or None where kombu's BRPOP serves."""
    active = list(channel.active_queues)
    if not active or list(channel.priority_steps) != [0] or channel.global_keyprefix:
        return None
    if set(active) & getattr(channel, "_kc_no_ack_queues", set()):
        return None
    order = channel._queue_cycle.consume(len(active))
    return [str(channel._q_for_pri(queue, 0)) for queue in order]


def _fetch_script(client: Any) -> Any:
    """FETCH_AND_RECORD as a redis-py Script (EVALSHA, loaded on first use), one per client."""
    script = getattr(client, "_kc_fetch_and_record", None)
    if script is None:
        script = client._kc_fetch_and_record = client.register_script(FETCH_AND_RECORD)
    return script


def fetch_keys(channel: Any, queues: list[str]) -> list[str]:
    keys = [channel.unacked_index_key, channel.unacked_key]
    for queue in queues:
        keys += [queue, dead_letter_key(queue)]
    return keys


def install() -> None:
    """Patch kombu's Redis channel (kombu 5.x: `basic_consume`, `_brpop_start`, `_brpop_read`)."""
    channel_class: Any = kombu_redis.Channel
    if getattr(channel_class, "_kc_reliable_fetch", False):
        return
    kombu_consume = channel_class.basic_consume
    kombu_start, kombu_read = channel_class._brpop_start, channel_class._brpop_read

    def basic_consume(self: Any, queue: str, *args: Any, **kwargs: Any) -> Any:
        # virtual.Channel.basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)
        no_ack = bool(args[0] if args else kwargs.get("no_ack", False))
        no_ack_queues: set[str] = self.__dict__.setdefault("_kc_no_ack_queues", set())
        if no_ack:
            no_ack_queues.add(queue)
        else:
            no_ack_queues.discard(queue)
        return kombu_consume(self, queue, *args, **kwargs)

    def _brpop_start(self: Any, timeout: float | None = None) -> None:
        queues = reliable_queues(self)
        self._kc_waiting_on = queues
        if queues is None:
            kombu_start(self, timeout)
            return
        if timeout is None:
            timeout = self.brpop_timeout
        if len(queues) > 1:
            timeout = min(timeout or MULTI_QUEUE_WAIT, MULTI_QUEUE_WAIT)
        last = getattr(self, "_kc_last_queue", None)
        watched = last if last in queues else queues[0]
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        self.client.connection.send_command(
            "BLMOVE", watched, watched, "RIGHT", "RIGHT", timeout or 0
        )

    def _brpop_read(self: Any, **options: Any) -> bool:
        queues = getattr(self, "_kc_waiting_on", None)
        if queues is None:
            return bool(kombu_read(self, **options))
        try:
            try:
                woke = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if woke is None and len(queues) == 1:
                raise Empty()
            script = _fetch_script(self.client)
            keys = fetch_keys(self, queues)
            queue, raw, moved = script(keys=keys, args=[time.time()], client=self.client)
            if moved:
                log.warning(
                    "moved %d malformed message(s) aside from the queues %s to %s<queue>: "
                    "they are not kombu messages; the worker goes on consuming",
                    moved, ", ".join(queues), DEAD_LETTER_PREFIX,
                )  # fmt: skip
            if not queue:  # nothing there, or another worker took it first
                raise Empty()
            queue = bytes_to_str(queue)
            self._kc_last_queue = queue
            self._queue_cycle.rotate(queue)
            self.connection._deliver(loads(bytes_to_str(raw)), queue)
            return True
        finally:
            self._in_poll = None
            self._kc_waiting_on = None
            self._flush_brpop_reauth()

    channel_class.basic_consume = basic_consume
    channel_class._brpop_start = _brpop_start
    channel_class._brpop_read = _brpop_read
    channel_class._kc_reliable_fetch = True
