"""The chat server as Django code sees it: one small bridge, safe from any thread.

A view, an admin action, a management command or a task calls these to act on open
chats at once: post a system message into a room, end a user's connections, ask who is
online. Whatever changes the database does so here, in the caller's thread (and
transaction); the servers are told once it commits. In the chat server's own process
that is a ``callFromThread`` to its ``Notices``; from any other process it is a message on
the notices channel in Redis (``CHAT_REDIS_URL``), which every server process listens to.
Without either, the servers find what was written with the room's next message.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from urllib.parse import urlparse

import redis
from django.conf import settings
from django.db import transaction
from twisted.internet.threads import blockingCallFromThread
from twisted.python.threadable import isInIOThread

from . import notices, wire
from .events import DELETED, SYSTEM, Author, ChatMessage
from .storage import archive
from .storage.interfaces import UnknownRoom
from .storage.redis_connection import key_prefix

log = logging.getLogger(__name__)

_lock = threading.Lock()
# The chat server running in this process: (reactor, Notices, PresenceTracker | None).
_server: tuple[Any, notices.Notices, Any] | None = None


def serve(reactor: Any, notices_: notices.Notices, presence: Any) -> None:
    """Called by the chat server as it starts: notices from this process go to it."""
    global _server
    with _lock:
        _server = (reactor, notices_, presence)


def post_system_message(room_id: int, text: str) -> int:
    """Store a message from the site itself in a room and show it to everyone there now.

    Returns its id; raises ``UnknownRoom``, or ``wire``'s ProtocolError for a text that is
    empty or too long."""
    text = wire.clean_text(text, settings.CHAT_MAX_TEXT_LENGTH)
    return _write(ChatMessage(room=room_id, ts=_now(), text=text, kind=SYSTEM))


def record_deletion(room_id: int, message_id: int, by: Author | None = None) -> int:
    """A message was deleted in the database (by an admin, or any Django code): log the
    deletion, so that every open chat and every client that resumes later removes it."""
    entry = ChatMessage(
        room=room_id,
        ts=_now(),
        user=by.username if by is not None else "",
        user_id=by.id if by is not None else None,
        kind=DELETED,
        target=message_id,
    )
    return _write(entry)


def disconnect_user(user_id: int, reason: str, room_id: int | None = None) -> None:
    """End a user's open connections (or only their subscription to ``room_id``), telling
    them ``reason``. To keep them out, also ban or deactivate them."""
    _tell("disconnect_user", user_id, reason, room_id)


def online(room_ids: list[int], timeout: float = 1.0) -> dict[int, list[str]]:
    """Who is in each room now (usernames, sorted); empty when no server in this process
    can be asked in time (a management command, or a server still starting)."""
    with _lock:
        server = _server
    if server is None or server[2] is None or not room_ids or isInIOThread():
        return {}
    reactor, _, presence = server
    try:
        found = blockingCallFromThread(
            reactor, lambda: presence.who(list(room_ids)).addTimeout(timeout, reactor)
        )
    except Exception as error:
        log.warning("asking who is online failed: %s", error)
        return {}
    return {room_id: list(users) for room_id, users in found.items()}


def _now() -> int:
    return int(time.time() * 1000)


def _write(entry: ChatMessage) -> int:
    outcome = archive.write_batch([entry])[0]
    if isinstance(outcome, Exception):
        raise outcome
    if not isinstance(outcome, archive.Stored):
        raise UnknownRoom(entry.room)
    _tell("room_written", entry.room, outcome.message_id)
    return outcome.message_id


def _tell(kind: str, *args: Any) -> None:
    transaction.on_commit(lambda: _deliver(kind, *args))


def _deliver(kind: str, *args: Any) -> None:
    with _lock:
        server = _server
    if server is not None:
        reactor, notices_, _ = server
        reactor.callFromThread(notices_.tell, kind, *args)
    elif settings.CHAT_REDIS_URL:
        _publish_to_redis(kind, *args)
    else:
        log.info("no chat server in this process and no Redis: %s reaches open chats later", kind)


def _publish_to_redis(kind: str, *args: Any) -> None:
    db = int(urlparse(settings.CHAT_REDIS_URL).path.strip("/") or 0)
    client = redis.Redis.from_url(settings.CHAT_REDIS_URL, socket_timeout=settings.CHAT_REDIS_TIMEOUT)
    try:
        client.publish(notices.channel(key_prefix(db)), notices.payload("", kind, *args))
    finally:
        client.close()
