"""What changed outside a room's own traffic, told to the room core of this process and of
every other one.

Django code (``django_signals``, ``live``) tells these on the reactor thread when an admin
edits a room or bans a user, a browser logs out, or a message is written straight to the
database. With one process, each notice is a direct call. With Redis, it is also
published on one channel that every process listens to, so a logout in one worker ends
that session's connections in all of them; ``live`` publishes there too when it runs in a
process with no chat server. Presence and typing changes go only to the other processes:
this one has already acted on them. While Redis is down, other processes miss notices;
when it is back, each process reads again every room it serves and who every session
belongs to (see ``reconnected``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from .hub import RoomHub
from .storage.interfaces import MessageLog, RoomDirectory
from .storage.redis_connection import RedisConnection

log = logging.getLogger(__name__)


def channel(prefix: str) -> str:
    """The Redis channel of notices, for the servers sharing ``prefix``."""
    return f"{prefix}notices"


def payload(sender: str, kind: str, *args: Any) -> str:
    return json.dumps({"from": sender, "kind": kind, "args": args})


class Notices:
    def __init__(
        self,
        hub: RoomHub,
        directory: RoomDirectory,
        message_log: MessageLog,
        redis: RedisConnection | None = None,
        process_id: str = "",
    ):
        self._hub = hub
        self._directory = directory
        self._redis = redis
        self._process_id = process_id
        self._kinds: dict[str, Callable[..., None]] = {
            "room_changed": directory.room_changed,
            "bans_changed": self._bans_changed,
            "room_written": message_log.fill,
            "session_ended": hub.session_ended,
            "user_changed": hub.user_changed,
            "disconnect_user": hub.disconnect_user,
            "typing": hub.typing_elsewhere,
        }
        hub.share_typing = lambda *args: self._tell_others("typing", *args)
        if hub.presence is not None:
            self._kinds["presence_changed"] = hub.presence.others_changed
            hub.presence.tell_others = lambda room_id: self._tell_others("presence_changed", room_id)
        if redis is not None:
            self._channel = channel(redis.prefix)
            redis.listen(self._channel, self._arrived)
            redis.on_reconnected(self.reconnected)

    def tell(self, kind: str, *args: Any) -> None:
        """Act on a notice here, and have every other process act on it."""
        self._kinds[kind](*args)
        self._tell_others(kind, *args)

    def room_changed(self, room_id: int) -> None:
        self.tell("room_changed", room_id)

    def session_ended(self, session_key: str | None, browser_key: str | None) -> None:
        self.tell("session_ended", session_key, browser_key)

    def user_changed(self, user_id: int) -> None:
        self.tell("user_changed", user_id)

    def _bans_changed(self, room_id: int | None) -> None:
        """A ban was made or lifted in one room, or (None) in all of them."""
        for changed in [room_id] if room_id is not None else self._hub.room_ids():
            self._directory.room_changed(changed)

    def _tell_others(self, kind: str, *args: Any) -> None:
        if self._redis is None:
            return
        d = self._redis.run(
            self._redis.commands.publish, self._channel, payload(self._process_id, kind, *args)
        )
        d.addErrback(
            lambda f: log.warning("a %s notice reached no other process: %s", kind, f.getErrorMessage())
        )

    def _arrived(self, message: str) -> None:
        data = json.loads(message)
        handler = self._kinds.get(data.get("kind"))
        if data.get("from") != self._process_id and handler is not None:
            handler(*data.get("args", ()))

    def reconnected(self) -> None:
        """Notices may have been missed: trust nothing cached about rooms or sessions."""
        self._hub.sessions.clear()
        for room_id in self._hub.room_ids():
            self._directory.room_changed(room_id)
        self._hub.recheck_sessions()
