"""The message log: SQL makes messages durable and gives them ids; this hands them on in order.

Accepted messages wait on the reactor thread for the group commit, which gives each its id
under the room's row lock: a room's ids are dense and grow in commit order, whichever
process commits. Each room's committed messages are then handed on strictly in id order:
kept in the room's window, given to the committed listener, and only then acknowledged.

With one process that order is simply the order of its own commits. With several sharing
a database, a ``MessageFeed`` (Redis) brings the other processes' messages, and they may
arrive late or not at all; a room holds any message whose predecessor it has not seen,
and reads the hole from the database if it is not filled within ``gap_wait`` seconds.
Every id below a committed one was committed, so an id the database no longer has was
deleted, and the room moves past it. A periodic check of the rooms' newest ids catches a
message whose publisher died before publishing and which no later message reveals.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from ..events import EDITED, MESSAGE, Author, ChatMessage
from . import archive
from .group_commit import GroupCommitWriter
from .interfaces import CommittedListener, MessageFeed, RunInThread, StoreUnavailable
from .room_loads import RoomLoads

log = logging.getLogger(__name__)

# Rows read per query when a room fills a hole or catches up after the feed was down.
FILL_PAGE = 1000


def _message_id(message: ChatMessage) -> int:
    return message.id


class _RoomLog:
    """One room's in-memory state: the window, what is held back, nonces seen recently.

    The window holds the room's newest entries, changes included, with every message as it
    is now: an edit replaces its message there, a deletion removes it."""

    __slots__ = (
        "capacity",
        "complete_from",
        "filling",
        "held",
        "inflight",
        "last_id",
        "nonces",
        "pending",
        "waiters",
        "window",
    )

    def __init__(self, snapshot: archive.RoomSnapshot, capacity: int):
        self.last_id = snapshot.last_id
        self.window: list[ChatMessage] = []
        for entry in snapshot.recent:
            self._keep(entry)
        self.capacity = capacity
        # Every committed message with an id >= complete_from is in the window.
        self.complete_from = snapshot.complete_from
        self.nonces: OrderedDict[tuple[int | None, str], int] = OrderedDict(
            ((m.user_id, m.nonce), m.id) for m in self.window if m.nonce
        )
        self.inflight: dict[tuple[int | None, str], list[Deferred[int]]] = {}
        self.pending = 0
        # Committed messages that arrived before their predecessors, by id.
        self.held: dict[int, ChatMessage] = {}
        # Acknowledgements waiting for their id to be handed on.
        self.waiters: list[tuple[int, list[Deferred[int]]]] = []
        self.filling = False

    @property
    def busy(self) -> bool:
        return bool(self.pending or self.held or self.waiters or self.filling)

    def offer(self, messages: Iterable[ChatMessage]) -> list[ChatMessage]:
        """Take committed messages in any order; return those now next in line, in order."""
        ready: list[ChatMessage] = []
        for message in messages:
            if message.id == self.last_id + 1 and not self.held:
                self._commit(message)
                ready.append(message)
            elif message.id > self.last_id:
                self.held.setdefault(message.id, message)
        if self.held:
            self.skip_to(self.last_id, ready)
        return ready

    def skip_to(self, until: int, ready: list[ChatMessage]) -> None:
        """Move past every id up to ``until`` that is not held (it was deleted), then on
        through whatever is held next in line."""
        for message_id in sorted(i for i in self.held if i <= until):
            self.last_id = message_id - 1
            self._take(message_id, ready)
        self.last_id = max(self.last_id, until)
        while self.last_id + 1 in self.held:
            self._take(self.last_id + 1, ready)

    def _take(self, message_id: int, ready: list[ChatMessage]) -> None:
        message = self.held.pop(message_id)
        self._commit(message)
        ready.append(message)

    def _commit(self, message: ChatMessage) -> None:
        self._keep(message)
        self.last_id = message.id
        if message.nonce:
            self.remember_nonce((message.user_id, message.nonce), message.id)
        if len(self.window) >= 2 * self.capacity:
            # Trim in chunks, so a busy room does not shift the list on every message.
            del self.window[: len(self.window) - self.capacity]
            self.complete_from = max(self.complete_from, self.window[0].id)

    def handed_on(self) -> list[tuple[int, list[Deferred[int]]]]:
        """The acknowledgements whose ids are now handed on."""
        if not self.waiters:
            return []
        done = [(i, waiters) for i, waiters in self.waiters if i <= self.last_id]
        if done:
            self.waiters = [(i, w) for i, w in self.waiters if i > self.last_id]
        return done

    def remember_nonce(self, key: tuple[int | None, str], message_id: int) -> None:
        self.nonces[key] = message_id
        if len(self.nonces) > 2 * self.capacity:
            self.nonces.popitem(last=False)

    def _keep(self, entry: ChatMessage) -> None:
        """Add an entry to the window, and apply it to its message if it is a change."""
        self.window.append(entry)
        if not entry.is_change or entry.target is None:
            return
        index = self._index(entry.target)
        if index is None:
            return
        if entry.kind == EDITED:
            self.window[index] = dataclasses.replace(self.window[index], text=entry.text, edited=entry.ts)
        else:
            del self.window[index]

    def _index(self, message_id: int) -> int | None:
        index = bisect.bisect_left(self.window, message_id, key=_message_id)
        if index < len(self.window) and self.window[index].id == message_id:
            return index
        return None

    def covers(self, since: int) -> bool:
        return since + 1 >= self.complete_from

    def after(self, since: int, limit: int) -> list[ChatMessage]:
        start = bisect.bisect_right(self.window, since, key=_message_id)
        return self.window[start : start + limit]

    def latest(self, limit: int) -> list[ChatMessage] | None:
        """The newest ``limit`` messages, or None if the window may not hold them all."""
        found: list[ChatMessage] = []
        for entry in reversed(self.window):
            if not entry.is_change:
                found.append(entry)
                if len(found) == limit:
                    break
        if len(found) < limit and self.complete_from != 0:
            return None
        found.reverse()
        return found

    def find(self, message_id: int) -> ChatMessage | bool | None:
        """The message under an id as the window knows it; False if the window cannot say."""
        if message_id > self.last_id:
            return None
        if not self.covers(message_id - 1):
            return False
        index = self._index(message_id)
        if index is None or self.window[index].is_change:
            return None
        return self.window[index]


class SqlMessageLog:
    """The MessageLog: SQL for durability and ids, an optional ``MessageFeed`` to share rooms.

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
        feed: MessageFeed | None = None,
        gap_wait: float = 0.1,
        check_interval: float = 10.0,
    ):
        self._reactor = reactor
        self._run_query = run_query
        self._on_committed = on_committed
        self._window = window
        self._max_idle_rooms = max_idle_rooms
        self._clock = clock
        self._rooms: OrderedDict[int, _RoomLog] = OrderedDict()
        self._loads: RoomLoads[_RoomLog] = RoomLoads(self._load)
        # Messages other processes published while their room was being loaded.
        self._early: dict[int, list[ChatMessage]] = {}
        self._acks: dict[int, tuple[_RoomLog, list[Deferred[int]]]] = {}
        self._closed = False
        self._on_batch = on_batch
        self._feed = feed
        self._gap_wait = gap_wait
        self.writer = GroupCommitWriter(
            reactor, lambda batch: run_write(archive.write_batch, batch), self._written, max_batch
        )
        self.accepted = 0
        self.committed = 0
        # Messages read from the database because the feed did not bring them.
        self.filled = 0
        self._check: LoopingCall | None = None
        self._check_interval = check_interval
        self._last_check = 0.0
        if feed is not None:
            feed.start(self._received, self._feed_reconnected)
            # Ticks every second; checks every ``check_interval`` while the feed is up, and
            # at every tick while it is down, when the database is how messages get between
            # processes.
            self._check = LoopingCall(self._tick)
            self._check.clock = reactor
            self._check.start(min(1.0, check_interval), now=False)

    # --- rooms --------------------------------------------------------------------------

    def _open(self, room_id: int) -> Deferred[_RoomLog]:
        room = self._rooms.get(room_id)
        if room is not None:
            self._rooms.move_to_end(room_id)
            return succeed(room)
        return self._loads.get(room_id)

    def _load(self, room_id: int) -> Deferred[_RoomLog]:
        feed = self._feed
        if feed is None:
            d = self._run_query(archive.load_room, room_id, self._window)
            return d.addCallback(self._loaded, room_id)
        # Follow first, then read: whatever is committed after the read arrives by the feed.
        self._early[room_id] = []
        d = feed.follow(room_id).addCallback(lambda _: feed.recent(room_id, self._window))
        d.addErrback(lambda _: None)
        d.addCallback(lambda cached: self._run_query(archive.load_room, room_id, self._window, cached))
        d.addCallbacks(self._loaded, self._load_failed, callbackArgs=(room_id,), errbackArgs=(room_id,))
        return d

    def _load_failed(self, failure: Failure, room_id: int) -> Failure:
        self._early.pop(room_id, None)
        if self._feed is not None and room_id not in self._rooms:
            self._feed.unfollow(room_id)
        return failure

    def _loaded(self, snapshot: archive.RoomSnapshot, room_id: int) -> _RoomLog:
        room = self._rooms[room_id] = _RoomLog(snapshot, self._window)
        early = self._early.pop(room_id, None)
        if early:
            self._hand_on(room_id, room, room.offer(early))
            self._await_gap(room_id, room)
        self._evict_idle_rooms()
        return room

    def _evict_idle_rooms(self) -> None:
        excess = len(self._rooms) - self._max_idle_rooms
        if excess <= 0:
            return
        idle = [room_id for room_id, room in self._rooms.items() if not room.busy]
        for room_id in idle[:excess]:
            del self._rooms[room_id]
            if self._feed is not None:
                self._feed.unfollow(room_id)

    @property
    def idle(self) -> bool:
        """Nothing is loading, being written, held back or waiting for an acknowledgement."""
        return (
            not self._loads.count
            and self.writer.idle
            and not self._acks
            and not any(room.busy for room in self._rooms.values())
        )

    def last_id(self, room_id: int) -> Deferred[int]:
        room = self._rooms.get(room_id)
        if room is not None:  # every poll asks: answer a loaded room without a callback
            return succeed(room.last_id)
        return self._open(room_id).addCallback(lambda room: room.last_id)

    # --- writing ------------------------------------------------------------------------

    def append(
        self,
        room_id: int,
        author: Author | None,
        text: str,
        nonce: str = "",
        kind: str = MESSAGE,
        target: int | None = None,
    ) -> Deferred[int]:
        if self._closed:
            return fail(StoreUnavailable("the server is shutting down"))
        entry = ChatMessage(
            room=room_id,
            ts=int(self._clock() * 1000),
            user=author.username if author is not None else "",
            text=text,
            user_id=author.id if author is not None else None,
            nonce=nonce,
            kind=kind,
            target=target,
        )
        return self._open(room_id).addCallback(self._accept, entry)

    def find(self, room_id: int, message_id: int) -> Deferred[ChatMessage | None]:
        room = self._rooms.get(room_id)
        if room is not None:
            found = room.find(message_id)
            if found is not False:
                return succeed(found if isinstance(found, ChatMessage) else None)
        return self._run_query(archive.read_message, room_id, message_id)

    def _accept(self, room: _RoomLog, message: ChatMessage) -> Deferred[int] | int:
        nonce = message.nonce
        key = (message.user_id, nonce)
        if nonce:
            known = room.nonces.get(key)
            if known is not None and known <= room.last_id:
                return known
            if key in room.inflight:
                waiter: Deferred[int] = Deferred()
                room.inflight[key].append(waiter)
                return waiter
        ack: Deferred[int] = Deferred()
        waiters = [ack]
        if nonce:
            room.inflight[key] = waiters
        self._acks[id(message)] = (room, waiters)
        room.pending += 1
        self.accepted += 1
        self.writer.submit(message)
        return ack

    def _written(self, batch: list[ChatMessage], outcomes: list[archive.Outcome] | Failure) -> None:
        if isinstance(outcomes, Failure):
            outcomes = [StoreUnavailable("the message could not be stored")] * len(batch)  # type: ignore[list-item]
        stored: dict[int, tuple[_RoomLog, list[ChatMessage]]] = {}
        waiting: list[tuple[int, _RoomLog, int, list[Deferred[int]]]] = []
        for message, outcome in zip(batch, outcomes, strict=True):
            room, waiters = self._acks.pop(id(message))
            room.pending -= 1
            if message.nonce:
                room.inflight.pop((message.user_id, message.nonce), None)
            if isinstance(outcome, archive.Stored):
                message.id = outcome.message_id
                stored.setdefault(message.room, (room, []))[1].append(message)
                waiting.append((message.room, room, message.id, waiters))
            elif isinstance(outcome, archive.Duplicate):
                room.remember_nonce((message.user_id, message.nonce), outcome.message_id)
                waiting.append((message.room, room, outcome.message_id, waiters))
            else:
                error = outcome if isinstance(outcome, Exception) else StoreUnavailable(str(outcome))
                for waiter in waiters:
                    waiter.errback(Failure(error))
        published: list[Deferred[None]] = []
        for room_id, (room, messages) in stored.items():
            if self._feed is not None:
                published.append(self._feed.publish(room_id, messages))
            self.committed += len(messages)
            self._hand_on(room_id, room, room.offer(messages))
        if self._on_batch is not None:
            oldest = batch[0].ts / 1000
            self._on_batch(len(batch), self.writer.last_commit_seconds, self._clock() - oldest)
        if not published:
            self._acknowledge(waiting)
            return
        # Acknowledged once the other processes can have it too: a process killed right
        # after an acknowledgement has already published what it acknowledged.
        for d in published:
            d.addErrback(lambda _: None)
        gate = published[0] if len(published) == 1 else gatherResults(published)
        gate.addCallback(lambda _: self._acknowledge(waiting))

    def _acknowledge(self, waiting: list[tuple[int, _RoomLog, int, list[Deferred[int]]]]) -> None:
        for room_id, room, message_id, waiters in waiting:
            if message_id <= room.last_id:
                for waiter in waiters:
                    waiter.callback(message_id)
            else:
                room.waiters.append((message_id, waiters))
                self._await_gap(room_id, room)

    def _hand_on(self, room_id: int, room: _RoomLog, messages: Sequence[ChatMessage]) -> None:
        if messages:
            try:
                self._on_committed(room_id, messages)
            except Exception:
                log.exception("handing on the messages of room %s failed", room_id)
        for message_id, waiters in room.handed_on():
            for waiter in waiters:
                waiter.callback(message_id)

    def fill(self, room_id: int, until: int) -> None:
        """Entries up to ``until`` were committed by someone else (Django code writing
        straight to the database): read them, if this process serves the room."""
        room = self._rooms.get(room_id)
        if room is not None and until > room.last_id and not room.filling:
            self._fill(room_id, room, until)

    def close(self) -> Deferred[None]:
        self._closed = True
        if self._check is not None and self._check.running:
            self._check.stop()
        return self.writer.drained()

    # --- other processes' messages, and holes ---------------------------------------------

    def _received(self, room_id: int, messages: Sequence[ChatMessage]) -> None:
        room = self._rooms.get(room_id)
        if room is None:
            early = self._early.get(room_id)
            if early is not None:
                early.extend(messages)
            return
        self._hand_on(room_id, room, room.offer(messages))
        self._await_gap(room_id, room)

    def _await_gap(self, room_id: int, room: _RoomLog) -> None:
        if (room.held or room.waiters) and not room.filling:
            room.filling = True
            self._reactor.callLater(self._gap_wait, self._fill, room_id, room, 0)

    def _fill(self, room_id: int, room: _RoomLog, until: int) -> None:
        """Read from the database what the feed has not brought, up to the newest id known
        to be committed (held, waited for, or ``until``)."""
        if self._rooms.get(room_id) is not room:
            room.filling = False
            return
        known = [until, *room.held, *(i for i, _ in room.waiters)]
        target = min(max(known), room.last_id + FILL_PAGE)
        if target <= room.last_id:
            room.filling = False
            return
        room.filling = True
        after = room.last_id
        d = self._run_query(archive.read_between, room_id, after, target)
        d.addCallbacks(
            self._filled, self._fill_failed, callbackArgs=(room_id, room, target), errbackArgs=(room_id, room)
        )

    def _filled(self, messages: list[ChatMessage], room_id: int, room: _RoomLog, target: int) -> None:
        room.filling = False
        self.filled += sum(1 for m in messages if m.id > room.last_id and m.id not in room.held)
        ready = room.offer(messages)
        room.skip_to(target, ready)
        self._hand_on(room_id, room, ready)
        if room.held or room.waiters:
            self._fill(room_id, room, 0)

    def _fill_failed(self, failure: Failure, room_id: int, room: _RoomLog) -> None:
        log.warning("reading missing messages of room %s failed: %s", room_id, failure.getErrorMessage())
        room.filling = False
        self._await_gap(room_id, room)

    def _feed_reconnected(self) -> None:
        self._check_rooms()

    def _tick(self) -> None:
        now = self._reactor.seconds()
        feed_up = self._feed is not None and self._feed.available
        if not feed_up or now - self._last_check >= self._check_interval:
            self._check_rooms()

    def _check_rooms(self) -> Deferred[None] | None:
        """Compare each loaded room with the database's newest id, and fill what is behind."""
        self._last_check = self._reactor.seconds()
        if not self._rooms:
            return None
        room_ids = list(self._rooms)
        d = self._run_query(archive.high_waters, room_ids)
        d.addCallbacks(self._checked, lambda f: log.warning("checking rooms failed: %s", f.getErrorMessage()))
        return d

    def _checked(self, high_waters: dict[int, int]) -> None:
        for room_id, newest in high_waters.items():
            room = self._rooms.get(room_id)
            if room is not None and newest > room.last_id and not room.filling:
                self._fill(room_id, room, newest)

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
        latest = room.latest(limit)
        if latest is not None:
            return latest
        return self._query_committed(room, archive.read_latest, room_id, limit)

    def _query_committed(self, room: _RoomLog, fn: Callable[..., list[ChatMessage]], *args: Any) -> Any:
        # The database may already hold messages this process has not handed on yet;
        # readers must not see them before the broker's subscribers do.
        def handed_on_only(messages: list[ChatMessage]) -> list[ChatMessage]:
            return [m for m in messages if m.id <= room.last_id]

        return self._run_query(fn, *args).addCallback(handed_on_only)
