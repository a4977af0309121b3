"""What Django changed, told to the room core of this process and of every other one.

``django_signals`` calls these (on the reactor thread) when an admin deletes a message or
edits a room, or a browser logs out. With one process, each notice is a direct call.
With Redis, it is also published on one channel that every process listens to, so a
logout in one worker ends that session's connections in all of them. While Redis is
down, other processes miss notices; when it is back, each process reads again every room
it serves and who every session belongs to (see ``reconnected``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from twisted.python.failure import Failure

from .hub import RoomHub
from .storage.interfaces import RoomDirectory
from .storage.redis_connection import RedisConnection

log = logging.getLogger(__name__)


class Notices:
    def __init__(
        self,
        hub: RoomHub,
        directory: RoomDirectory,
        redis: RedisConnection | None = None,
        process_id: str = "",
    ):
        self._hub = hub
        self._directory = directory
        self._redis = redis
        self._process_id = process_id
        self._kinds: dict[str, Callable[..., None]] = {
            "message_deleted": hub.message_deleted,
            "room_changed": directory.room_changed,
            "session_ended": hub.session_ended,
            "user_changed": hub.user_changed,
        }
        if redis is not None:
            self._channel = f"{redis.prefix}notices"
            redis.listen(self._channel, self._arrived)
            redis.on_reconnected(self.reconnected)

    def message_deleted(self, room_id: int, message_id: int) -> None:
        self._tell("message_deleted", room_id, message_id)

    def room_changed(self, room_id: int) -> None:
        self._tell("room_changed", room_id)

    def session_ended(self, session_key: str | None, browser_key: str | None) -> None:
        self._tell("session_ended", session_key, browser_key)

    def user_changed(self, user_id: int) -> None:
        self._tell("user_changed", user_id)

    def _tell(self, kind: str, *args: Any) -> None:
        self._kinds[kind](*args)
        if self._redis is not None:
            payload = json.dumps({"from": self._process_id, "kind": kind, "args": args})
            d = self._redis.run(self._redis.commands.publish, self._channel, payload)
            d.addErrback(
                lambda f: log.warning("a %s notice reached no other process: %s", kind, f.getErrorMessage())
            )

    def _not_published(self, failure: Failure, kind: str) -> None:
        log.warning("a %s notice reached no other process: %s", kind, failure.getErrorMessage())

    def _arrived(self, payload: str) -> None:
        data = json.loads(payload)
        handler = self._kinds.get(data.get("kind"))
        if data.get("from") != self._process_id and handler is not None:
            handler(*data.get("args", ()))

    def reconnected(self) -> None:
        """Notices may have been missed: trust nothing cached about rooms or sessions."""
        self._hub.sessions.clear()
        for room_id in self._hub.room_ids():
            self._directory.room_changed(room_id)
        self._hub.recheck_sessions()
