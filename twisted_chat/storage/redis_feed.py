"""The MessageFeed over Redis: committed messages published per room, and a shared window.

Each room has a channel and a sorted set of its newest log entries scored by id. A
commit's entries are added to the set and published in one Lua script, so the set never
lacks an entry that was published. A deletion is an entry too, and the deleted message's
member becomes a tombstone, so the set stays dense and holds no deleted text: a process
that starts later reads a room's recent history from here, and can tell a hole (a
publisher that died before its script ran) from a deletion.

The feed only makes delivery fast. The database stays the truth: the log reads from it
whatever the feed failed to bring, so losing Redis (or its data) loses nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from ..events import DELETED, ChatMessage
from .interfaces import CachedWindow, CommittedListener
from .redis_connection import RedisConnection

log = logging.getLogger(__name__)

# KEYS[1] the room's window; ARGV: channel, window size, payload, the number of deleted
# ids, those ids, then id, member pairs. A deleted id becomes a tombstone ([id]).
_PUBLISH = """
local deleted = tonumber(ARGV[4])
for i = 5, 4 + deleted do
  if redis.call('ZCOUNT', KEYS[1], ARGV[i], ARGV[i]) > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[i], ARGV[i])
    redis.call('ZADD', KEYS[1], ARGV[i], '[' .. ARGV[i] .. ']')
  end
end
for i = 5 + deleted, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -1 - tonumber(ARGV[2]))
redis.call('PUBLISH', ARGV[1], ARGV[3])
return 1
"""


def _member(message: ChatMessage) -> str:
    return json.dumps(
        [message.id, *message.stored(), message.edited],
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _message(room_id: int, fields: list[Any]) -> ChatMessage | None:
    if len(fields) < 9:
        return None  # a tombstone
    message_id, ts, user, text, user_id, nonce, kind, target, edited = fields[:9]
    return ChatMessage(room_id, message_id, ts, user, text, user_id, nonce, kind, target, edited)


class RedisMessageFeed:
    def __init__(self, redis: RedisConnection, process_id: str, window: int = 1000):
        self._redis = redis
        self._process_id = process_id
        self._window = window
        self._received: CommittedListener | None = None
        self.publish_failures = 0

    def start(self, received: CommittedListener, reconnected: Callable[[], None]) -> None:
        self._received = received
        self._redis.on_reconnected(reconnected)

    @property
    def available(self) -> bool:
        return self._redis.available

    def _channel(self, room_id: int) -> str:
        return f"{self._redis.prefix}room:{room_id}"

    def _key(self, room_id: int) -> str:
        return f"{self._redis.prefix}room:{room_id}:recent"

    def follow(self, room_id: int) -> Deferred[None]:
        return self._redis.listen(self._channel(room_id), lambda payload: self._arrived(room_id, payload))

    def unfollow(self, room_id: int) -> None:
        self._redis.unlisten(self._channel(room_id))

    def publish(self, room_id: int, messages: Sequence[ChatMessage]) -> Deferred[None]:
        # The publisher's id first, so that a process skips its own messages unparsed.
        payload = f"{self._process_id}\n[{','.join(_member(m) for m in messages)}]"
        deleted = [m.target for m in messages if m.kind == DELETED]
        args: list[Any] = [self._channel(room_id), self._window, payload, len(deleted), *deleted]
        for message in messages:
            args += [message.id, _member(message)]
        d = self._redis.run(self._redis.commands.eval, _PUBLISH, [self._key(room_id)], args)
        return d.addCallbacks(lambda _: None, self._publish_failed)

    def _publish_failed(self, failure: Failure) -> None:
        # The other processes find these messages in the database (see message_log).
        self.publish_failures += 1

    def _arrived(self, room_id: int, payload: str) -> None:
        sender, _, body = payload.partition("\n")
        if sender == self._process_id or self._received is None:
            return
        messages = [m for m in (_message(room_id, fields) for fields in json.loads(body)) if m is not None]
        if messages:
            self._received(room_id, messages)

    def recent(self, room_id: int, limit: int) -> Deferred[CachedWindow | None]:
        if not self._redis.available:
            return succeed(None)
        d = self._redis.run(self._redis.commands.zrange, self._key(room_id), -limit, -1, withscores=True)
        return d.addCallbacks(self._window_from, lambda _: None, callbackArgs=(room_id,))

    def _window_from(self, entries: list[tuple[str, float]], room_id: int) -> CachedWindow | None:
        if not entries:
            return None
        first, last = int(entries[0][1]), int(entries[-1][1])
        if last - first + 1 != len(entries):
            return None  # a hole: some publisher died before its script ran
        messages = (_message(room_id, json.loads(member)) for member, _ in entries)
        return CachedWindow(first, [m for m in messages if m is not None])
