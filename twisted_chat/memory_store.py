"""The in-memory message store, made durable by the database.

All state lives on the reactor thread, so ids need no locks: a room's next id is a plain
counter, bumped when a message is accepted. A message is published (kept in the room's
window, handed to listeners, acknowledged) only after the group commit has written it.
Each room keeps a bounded window of recent messages; older history is read from the
database.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from . import archive
from .group_commit import GroupCommitWriter
from .messages import Author, ChatMessage
from .store import RoomInfo, RoomListener, StoreUnavailable, UnknownRoom

log = logging.getLogger(__name__)

RunInThread = Callable[..., Deferred[Any]]


def _message_id(message: ChatMessage) -> int:
    return message.id


class _Room:
    """One room's in-memory state: counters, the window, and nonces seen recently."""

    __slots__ = (
        "capacity",
        "complete_from",
        "inflight",
        "info",
        "last_id",
        "next_id",
        "nonces",
        "pending",
        "stale",
        "window",
    )

    def __init__(self, snapshot: archive.RoomSnapshot, capacity: int):
        self.info: RoomInfo = snapshot.info
        self.next_id = snapshot.last_id
        self.last_id = snapshot.last_id
        self.window: list[ChatMessage] = list(snapshot.recent)
        self.capacity = capacity
        # Every published message with an id >= complete_from is in the window.
        self.complete_from = self.window[0].id if len(self.window) >= capacity else 0
        self.nonces: OrderedDict[tuple[int | None, str], int] = OrderedDict(
            ((m.user_id, m.nonce), m.id) for m in self.window if m.nonce
        )
        self.inflight: dict[tuple[int | None, str], list[Deferred[int]]] = {}
        self.pending = 0
        self.stale = False

    def publish(self, message: ChatMessage) -> None:
        self.window.append(message)
        self.last_id = message.id
        if message.nonce:
            self.remember_nonce((message.user_id, message.nonce), message.id)
        if len(self.window) >= 2 * self.capacity:
            # Trim in chunks, so a busy room does not shift the list on every message.
            del self.window[: len(self.window) - self.capacity]
            self.complete_from = max(self.complete_from, self.window[0].id)

    def remember_nonce(self, key: tuple[int | None, str], message_id: int) -> None:
        self.nonces[key] = message_id
        if len(self.nonces) > 2 * self.capacity:
            self.nonces.popitem(last=False)

    def covers(self, since: int) -> bool:
        return since + 1 >= self.complete_from

    def after(self, since: int, limit: int) -> list[ChatMessage]:
        start = bisect.bisect_right(self.window, since, key=_message_id)
        return self.window[start : start + limit]

    def remove(self, message_id: int) -> None:
        index = bisect.bisect_left(self.window, message_id, key=_message_id)
        if index < len(self.window) and self.window[index].id == message_id:
            del self.window[index]


class InMemoryMessageStore:
    """The MessageStore of a single server process.

    ``run_query`` and ``run_write`` run a blocking archive function in a thread and return
    a Deferred; tests pass synchronous ones.
    """

    def __init__(
        self,
        reactor: Any,
        run_query: RunInThread,
        run_write: RunInThread,
        window: int = 1000,
        max_idle_rooms: int = 1000,
        max_batch: int = 500,
        clock: Callable[[], float] = time.time,
        on_batch: Callable[[int, float, float], None] | None = None,
    ):
        self._run_query = run_query
        self._window = window
        self._max_idle_rooms = max_idle_rooms
        self._clock = clock
        self._rooms: OrderedDict[int, _Room] = OrderedDict()
        self._loading: dict[int, list[Deferred[RoomInfo]]] = {}
        self._listeners: dict[int, set[RoomListener]] = {}
        self._acks: dict[tuple[int, int], tuple[_Room, list[Deferred[int]]]] = {}
        self._closed = False
        self._on_batch = on_batch
        self.writer = GroupCommitWriter(
            reactor, lambda batch: run_write(archive.write_batch, batch), self._written, max_batch
        )
        self.accepted = 0
        self.published = 0

    # --- rooms --------------------------------------------------------------------------

    def open_room(self, room_id: int) -> Deferred[RoomInfo]:
        room = self._rooms.get(room_id)
        if room is not None and not room.stale:
            self._rooms.move_to_end(room_id)
            return succeed(room.info)
        waiter: Deferred[RoomInfo] = Deferred()
        if room_id in self._loading:
            self._loading[room_id].append(waiter)
            return waiter
        self._loading[room_id] = [waiter]
        if room is None:
            query = self._run_query(archive.load_room, room_id, self._window)
        else:
            query = self._run_query(archive.load_room_info, room_id)
        query.addBoth(self._loaded, room_id)
        return waiter

    def _loaded(self, result: archive.RoomSnapshot | RoomInfo | Failure, room_id: int) -> None:
        waiters = self._loading.pop(room_id)
        if isinstance(result, Failure):
            if result.check(UnknownRoom):
                self._rooms.pop(room_id, None)
            else:
                log.error("loading room %s failed: %s", room_id, result.getErrorMessage())
                result = Failure(StoreUnavailable("the database did not answer"))
            for waiter in waiters:
                waiter.errback(result)
            return
        if isinstance(result, archive.RoomSnapshot):
            room = _Room(result, self._window)
            self._rooms[room_id] = room
            self._evict_idle_rooms()
        else:
            room = self._rooms[room_id]
            room.info, room.stale = result, False
        for waiter in waiters:
            waiter.callback(room.info)

    def _evict_idle_rooms(self) -> None:
        excess = len(self._rooms) - self._max_idle_rooms
        if excess <= 0:
            return
        idle = [
            room_id
            for room_id, room in self._rooms.items()
            if not room.pending and room_id not in self._listeners
        ]
        for room_id in idle[:excess]:
            del self._rooms[room_id]

    def room_changed(self, room_id: int) -> None:
        room = self._rooms.get(room_id)
        if room is not None:
            room.stale = True

    def last_id(self, room_id: int) -> int:
        room = self._rooms.get(room_id)
        return room.last_id if room is not None else 0

    # --- writing ------------------------------------------------------------------------

    def append(self, room_id: int, author: Author, text: str, nonce: str = "") -> Deferred[int]:
        if self._closed:
            return fail(StoreUnavailable("the server is shutting down"))
        return self.open_room(room_id).addCallback(
            lambda _: self._accept(self._rooms[room_id], author, text, nonce)
        )

    def _accept(self, room: _Room, author: Author, text: str, nonce: str) -> Deferred[int] | int:
        key = (author.id, nonce)
        if nonce:
            known = room.nonces.get(key)
            if known is not None:
                return known
            if key in room.inflight:
                waiter: Deferred[int] = Deferred()
                room.inflight[key].append(waiter)
                return waiter
        room.next_id += 1
        message = ChatMessage(
            room=room.info.id,
            id=room.next_id,
            ts=int(self._clock() * 1000),
            user=author.username,
            text=text,
            user_id=author.id,
            nonce=nonce,
        )
        ack: Deferred[int] = Deferred()
        waiters = [ack]
        if nonce:
            room.inflight[key] = waiters
        self._acks[(message.room, message.id)] = (room, waiters)
        room.pending += 1
        self.accepted += 1
        self.writer.submit(message)
        return ack

    def _written(self, batch: list[ChatMessage], outcomes: list[Any] | Failure) -> None:
        if isinstance(outcomes, Failure):
            outcomes = [StoreUnavailable("the message could not be stored")] * len(batch)
        published: dict[int, list[ChatMessage]] = {}
        replies: list[tuple[list[Deferred[int]], int | Exception]] = []
        for message, outcome in zip(batch, outcomes, strict=True):
            room, waiters = self._acks.pop((message.room, message.id))
            room.pending -= 1
            key = (message.user_id, message.nonce)
            if message.nonce:
                room.inflight.pop(key, None)
            if outcome is archive.STORED:
                room.publish(message)
                published.setdefault(message.room, []).append(message)
                replies.append((waiters, message.id))
            elif isinstance(outcome, archive.Duplicate):
                room.remember_nonce(key, outcome.message_id)
                replies.append((waiters, outcome.message_id))
            else:
                replies.append((waiters, outcome))
        for room_id, messages in published.items():
            self.published += len(messages)
            self._notify(room_id, "messages_published", messages)
        if self._on_batch is not None:
            oldest = batch[0].ts / 1000
            self._on_batch(len(batch), self.writer.last_commit_seconds, self._clock() - oldest)
        for waiters, reply in replies:
            for waiter in waiters:
                if isinstance(reply, Exception):
                    waiter.errback(Failure(reply))
                else:
                    waiter.callback(reply)

    def _notify(self, room_id: int, method: str, arg: Sequence[ChatMessage] | int) -> None:
        for listener in list(self._listeners.get(room_id, ())):
            try:
                getattr(listener, method)(room_id, arg)
            except Exception:
                log.exception("listener %r failed on room %s", listener, room_id)

    def remove(self, room_id: int, message_id: int) -> None:
        room = self._rooms.get(room_id)
        if room is not None:
            room.remove(message_id)
        self._notify(room_id, "message_removed", message_id)

    def close(self) -> Deferred[None]:
        self._closed = True
        return self.writer.drained()

    # --- reading ------------------------------------------------------------------------

    def read_after(self, room_id: int, since: int, limit: int) -> Deferred[list[ChatMessage]]:
        return self.open_room(room_id).addCallback(lambda _: self._read_after(room_id, since, limit))

    def _read_after(self, room_id: int, since: int, limit: int):
        room = self._rooms[room_id]
        if room.covers(since):
            return room.after(since, limit)
        return self._query_published(room, archive.read_after, room_id, since, limit)

    def read_latest(self, room_id: int, limit: int) -> Deferred[list[ChatMessage]]:
        return self.open_room(room_id).addCallback(lambda _: self._read_latest(room_id, limit))

    def _read_latest(self, room_id: int, limit: int):
        room = self._rooms[room_id]
        if len(room.window) >= limit or room.complete_from == 0:
            return room.window[-limit:]
        return self._query_published(room, archive.read_latest, room_id, limit)

    def _query_published(self, room: _Room, fn: Callable[..., list[ChatMessage]], *args: Any):
        # The database may already hold a batch the reactor has not published yet; readers
        # must not see it before the listeners do.
        def published_only(messages: list[ChatMessage]) -> list[ChatMessage]:
            return [m for m in messages if m.id <= room.last_id]

        return self._run_query(fn, *args).addCallback(published_only)

    # --- listeners ----------------------------------------------------------------------

    def subscribe(self, room_id: int, listener: RoomListener) -> None:
        self._listeners.setdefault(room_id, set()).add(listener)

    def unsubscribe(self, room_id: int, listener: RoomListener) -> None:
        listeners = self._listeners.get(room_id)
        if listeners is not None:
            listeners.discard(listener)
            if not listeners:
                del self._listeners[room_id]
