"""The process-local message log: ids assigned on the reactor thread, made durable by SQL.

A room's next id is a plain counter on the reactor thread, bumped when a message is
accepted; the group commit writes it; only then is it committed: kept in the room's
window, handed to the committed listener and acknowledged, in id order. Each room keeps a
bounded window of recent messages; older history is read from the database.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from ..events import Author, ChatMessage
from . import archive
from .group_commit import GroupCommitWriter
from .interfaces import CommittedListener, RunInThread, StoreUnavailable
from .room_loads import RoomLoads

log = logging.getLogger(__name__)


def _message_id(message: ChatMessage) -> int:
    return message.id


class _RoomLog:
    """One room's in-memory state: counters, the window, and nonces seen recently."""

    __slots__ = ("capacity", "complete_from", "inflight", "last_id", "next_id", "nonces", "pending", "window")

    def __init__(self, snapshot: archive.RoomSnapshot, capacity: int):
        self.next_id = snapshot.last_id
        self.last_id = snapshot.last_id
        self.window: list[ChatMessage] = list(snapshot.recent)
        self.capacity = capacity
        # Every committed message with an id >= complete_from is in the window.
        self.complete_from = self.window[0].id if len(self.window) >= capacity else 0
        self.nonces: OrderedDict[tuple[int | None, str], int] = OrderedDict(
            ((m.user_id, m.nonce), m.id) for m in self.window if m.nonce
        )
        self.inflight: dict[tuple[int | None, str], list[Deferred[int]]] = {}
        self.pending = 0

    def commit(self, message: ChatMessage) -> None:
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

    def forget(self, message_id: int) -> None:
        index = bisect.bisect_left(self.window, message_id, key=_message_id)
        if index < len(self.window) and self.window[index].id == message_id:
            del self.window[index]


class SqlMessageLog:
    """The MessageLog of a single server process.

    ``run_query`` and ``run_write`` run a blocking archive function in a thread and return
    a Deferred; tests pass synchronous ones.
    """

    def __init__(
        self,
        reactor: Any,
        run_query: RunInThread,
        run_write: RunInThread,
        on_committed: CommittedListener,
        window: int = 1000,
        max_idle_rooms: int = 1000,
        max_batch: int = 500,
        clock: Callable[[], float] = time.time,
        on_batch: Callable[[int, float, float], None] | None = None,
    ):
        self._run_query = run_query
        self._on_committed = on_committed
        self._window = window
        self._max_idle_rooms = max_idle_rooms
        self._clock = clock
        self._rooms: OrderedDict[int, _RoomLog] = OrderedDict()
        self._loads: RoomLoads[_RoomLog] = RoomLoads(self._load)
        self._acks: dict[tuple[int, int], tuple[_RoomLog, list[Deferred[int]]]] = {}
        self._closed = False
        self._on_batch = on_batch
        self.writer = GroupCommitWriter(
            reactor, lambda batch: run_write(archive.write_batch, batch), self._written, max_batch
        )
        self.accepted = 0
        self.committed = 0

    # --- rooms --------------------------------------------------------------------------

    def _open(self, room_id: int) -> Deferred[_RoomLog]:
        room = self._rooms.get(room_id)
        if room is not None:
            self._rooms.move_to_end(room_id)
            return succeed(room)
        return self._loads.get(room_id)

    def _load(self, room_id: int) -> Deferred[_RoomLog]:
        return self._run_query(archive.load_room, room_id, self._window).addCallback(self._loaded, room_id)

    def _loaded(self, snapshot: archive.RoomSnapshot, room_id: int) -> _RoomLog:
        room = self._rooms[room_id] = _RoomLog(snapshot, self._window)
        self._evict_idle_rooms()
        return room

    def _evict_idle_rooms(self) -> None:
        excess = len(self._rooms) - self._max_idle_rooms
        if excess <= 0:
            return
        idle = [room_id for room_id, room in self._rooms.items() if not room.pending]
        for room_id in idle[:excess]:
            del self._rooms[room_id]

    def last_id(self, room_id: int) -> Deferred[int]:
        room = self._rooms.get(room_id)
        if room is not None:  # every poll asks: answer a loaded room without a callback
            return succeed(room.last_id)
        return self._open(room_id).addCallback(lambda room: room.last_id)

    # --- writing ------------------------------------------------------------------------

    def append(self, room_id: int, author: Author, text: str, nonce: str = "") -> Deferred[int]:
        if self._closed:
            return fail(StoreUnavailable("the server is shutting down"))
        return self._open(room_id).addCallback(self._accept, room_id, author, text, nonce)

    def _accept(
        self, room: _RoomLog, room_id: int, author: Author, text: str, nonce: str
    ) -> Deferred[int] | int:
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
            room=room_id,
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
        self._acks[(room_id, message.id)] = (room, waiters)
        room.pending += 1
        self.accepted += 1
        self.writer.submit(message)
        return ack

    def _written(self, batch: list[ChatMessage], outcomes: list[Any] | Failure) -> None:
        if isinstance(outcomes, Failure):
            outcomes = [StoreUnavailable("the message could not be stored")] * len(batch)
        committed: dict[int, list[ChatMessage]] = {}
        replies: list[tuple[list[Deferred[int]], int | Exception]] = []
        for message, outcome in zip(batch, outcomes, strict=True):
            room, waiters = self._acks.pop((message.room, message.id))
            room.pending -= 1
            key = (message.user_id, message.nonce)
            if message.nonce:
                room.inflight.pop(key, None)
            if outcome is archive.STORED:
                room.commit(message)
                committed.setdefault(message.room, []).append(message)
                replies.append((waiters, message.id))
            elif isinstance(outcome, archive.Duplicate):
                room.remember_nonce(key, outcome.message_id)
                replies.append((waiters, outcome.message_id))
            else:
                replies.append((waiters, outcome))
        for room_id, messages in committed.items():
            self.committed += len(messages)
            try:
                self._on_committed(room_id, messages)
            except Exception:
                log.exception("handing on the messages of room %s failed", room_id)
        if self._on_batch is not None:
            oldest = batch[0].ts / 1000
            self._on_batch(len(batch), self.writer.last_commit_seconds, self._clock() - oldest)
        for waiters, reply in replies:
            for waiter in waiters:
                if isinstance(reply, Exception):
                    waiter.errback(Failure(reply))
                else:
                    waiter.callback(reply)

    def forget(self, room_id: int, message_id: int) -> None:
        room = self._rooms.get(room_id)
        if room is not None:
            room.forget(message_id)

    def close(self) -> Deferred[None]:
        self._closed = True
        return self.writer.drained()

    # --- reading ------------------------------------------------------------------------

    def read_after(self, room_id: int, since: int, limit: int) -> Deferred[list[ChatMessage]]:
        room = self._rooms.get(room_id)
        if room is not None and room.covers(since):
            return succeed(room.after(since, limit))
        return self._open(room_id).addCallback(self._read_after, room_id, since, limit)

    def _read_after(self, room: _RoomLog, room_id: int, since: int, limit: int) -> Any:
        if room.covers(since):
            return room.after(since, limit)
        return self._query_committed(room, archive.read_after, room_id, since, limit)

    def read_latest(self, room_id: int, limit: int) -> Deferred[list[ChatMessage]]:
        return self._open(room_id).addCallback(self._read_latest, room_id, limit)

    def _read_latest(self, room: _RoomLog, room_id: int, limit: int) -> Any:
        if len(room.window) >= limit or room.complete_from == 0:
            return room.window[-limit:]
        return self._query_committed(room, archive.read_latest, room_id, limit)

    def _query_committed(self, room: _RoomLog, fn: Callable[..., list[ChatMessage]], *args: Any) -> Any:
        # The database may already hold a batch the reactor has not handed on yet; readers
        # must not see it before the broker's subscribers do.
        def committed_only(messages: list[ChatMessage]) -> list[ChatMessage]:
            return [m for m in messages if m.id <= room.last_id]

        return self._run_query(fn, *args).addCallback(committed_only)
