"""Who is in each room: users, not connections, over every process.

A user is present in a room while any of their connections is subscribed to it, on any
transport, in any process, and for ``linger`` seconds after the last one leaves: a
long-poll is subscribed only while a poll is parked, so it lingers for the grace period
between polls; a stream lingers over its reconnects. A user's tabs and transports are
one entry: they join once, and leave when the last one goes.

Each process counts its own users per room and writes them as one entry of the shared
``Presence`` store (Redis, or this process's memory), which expires unless refreshed: a
process that dies takes its users with it within ``ttl``. After a change a process writes
its entry and tells the others (``tell_others``, over Redis) to read the room again, once
per ``settle`` seconds at most, so that a crowd arriving together costs one write and one
notice; each also reads the rooms it serves every ``ttl/3``, which is how a crashed
process's users are seen to leave.

Every change of who is present is announced once per process as ``(joined, left)``
usernames; the room core hands it to that process's clients. A room's changes are
announced at once, then at most once per ``settle``: those that come within it go out
together at its end, so that a crowd arriving together (every client after a restart) is a
few events to each client rather than one per arrival. ``users`` gives what was last
announced; an arrival fires once it is part of that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from .events import Author
from .storage.interfaces import Presence

log = logging.getLogger(__name__)

Announce = Callable[[int, tuple[str, ...], tuple[str, ...]], None]


class _Here:
    """One user's connections to a room in this process."""

    __slots__ = ("connections", "name", "until")

    def __init__(self, name: str):
        self.name = name
        self.connections = 0
        # While no connection is open: present until this time (reactor seconds).
        self.until = 0.0


class _RoomUsers:
    __slots__ = ("arrivals", "followed", "held", "here", "listed", "others", "present", "read")

    def __init__(self) -> None:
        # This process's users, by id.
        self.here: dict[int, _Here] = {}
        # The other processes' users, as last read from the store.
        self.others: dict[int, str] = {}
        # Who was last announced as present, and as the sorted names ``users`` gives.
        self.present: dict[int, str] = {}
        self.listed: tuple[str, ...] = ()
        # Whether this process has clients in the room (and so wants its changes).
        self.followed = 0
        self.read: Deferred[Any] | None = None
        # While set, changes are held until it fires (``settle`` after the last announcement),
        # with the arrivals waiting to be part of what was announced.
        self.held: Any = None
        self.arrivals: list[Deferred[None]] = []


class PresenceTracker:
    def __init__(
        self,
        reactor: Any,
        store: Presence,
        process_id: str,
        ttl: float = 15.0,
        settle: float = 0.1,
    ):
        self._reactor = reactor
        self._store = store
        self._key = process_id
        self._ttl = ttl
        self._settle = settle
        # Rooms whose entry is to be written (or removed) and told about, and when.
        self._unwritten: set[int] = set()
        self._flush: Any = None
        # Set by the room core, which hands changes to its clients.
        self.announce: Announce = lambda room_id, joined, left: None
        # Set by ``notices`` when there are other processes to tell.
        self.tell_others: Callable[[int], None] = lambda room_id: None
        self._rooms: dict[int, _RoomUsers] = {}
        self._ticks = LoopingCall(self.tick)
        self._ticks.clock = reactor

    def start(self) -> None:
        """Refresh and re-read often enough that an entry never lapses while its process
        lives, and a dead process's users leave within ``ttl`` and one interval."""
        self._ticks.start(max(self._ttl / 3, 0.2), now=False)

    def stop(self) -> None:
        if self._ticks.running:
            self._ticks.stop()
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        for room in self._rooms.values():
            if room.held is not None:
                room.held.cancel()
                room.held = None
            self._let_arrivals_in(room)
        written = {room_id for room_id, room in self._rooms.items() if room.here}
        for room_id in written | self._unwritten:
            self._store.remove(room_id, self._key)
        self._unwritten.clear()

    # --- the room core's side --------------------------------------------------------------

    def follow(self, room_id: int) -> Deferred[None]:
        """This process has clients in the room: fires once who is present is known."""
        room = self._room(room_id)
        room.followed += 1
        if room.read is None:
            room.read = self._read(room_id, room)
        if room.read.called:
            return succeed(None)
        ready: Deferred[None] = Deferred()

        def done(result: object) -> object:
            ready.callback(None)
            return result

        room.read.addBoth(done)
        return ready

    def unfollow(self, room_id: int) -> None:
        room = self._rooms.get(room_id)
        if room is not None:
            room.followed -= 1
            if not room.followed:
                room.read = None  # read afresh when followed again
            self._drop_if_unused(room_id, room)

    def users(self, room_id: int) -> tuple[str, ...]:
        room = self._rooms.get(room_id)
        return room.listed if room is not None else ()

    def arrive(self, room_id: int, author: Author) -> Deferred[None]:
        """Fires once the user is in what ``users`` gives: at once, or when the changes
        held with this one are announced."""
        room = self._room(room_id)
        here = room.here.get(author.id)
        if here is None:
            here = room.here[author.id] = _Here(author.username)
        here.connections += 1
        self._changed(room_id, room, local=True)
        if room.held is None or author.id in room.present:
            return succeed(None)
        arrived: Deferred[None] = Deferred()
        room.arrivals.append(arrived)
        return arrived

    def depart(self, room_id: int, author: Author, linger: float = 0.0) -> None:
        room = self._rooms.get(room_id)
        here = room.here.get(author.id) if room is not None else None
        if room is None or here is None:
            return
        here.connections -= 1
        if linger > 0:
            here.until = max(here.until, self._reactor.seconds() + linger)
        self._changed(room_id, room, local=True)

    def others_changed(self, room_id: int) -> None:
        """Another process's users in the room changed: read them again."""
        room = self._rooms.get(room_id)
        if room is not None and room.followed:
            self._read(room_id, room)

    def tick(self) -> None:
        """Let lingerers go, refresh this process's entries, re-read the others'."""
        for room_id, room in list(self._rooms.items()):
            self._changed(room_id, room, local=self._expire_lingerers(room))
            if room.here:
                self._write(room_id, room)
            if room.followed:
                self._read(room_id, room)

    # --- internals ------------------------------------------------------------------------

    def _room(self, room_id: int) -> _RoomUsers:
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = _RoomUsers()
        return room

    def _expire_lingerers(self, room: _RoomUsers) -> bool:
        now = self._reactor.seconds()
        gone = [uid for uid, here in room.here.items() if here.connections <= 0 and here.until <= now]
        for uid in gone:
            del room.here[uid]
        return bool(gone)

    def _changed(self, room_id: int, room: _RoomUsers, local: bool) -> None:
        if local:
            self._expire_lingerers(room)
        if room.held is not None:
            # Announced when the hold is over; written (if it changed anything) as usual.
            if local:
                self._write_soon(room_id)
            return
        now_present = dict(room.others)
        now_present.update((uid, here.name) for uid, here in room.here.items())
        if now_present.keys() != room.present.keys():
            if local:
                self._write_soon(room_id)
            self._announce(room_id, room, now_present)
        elif now_present != room.present:
            room.present = now_present
            room.listed = tuple(sorted(set(now_present.values())))
        self._drop_if_unused(room_id, room)

    def _announce(self, room_id: int, room: _RoomUsers, now_present: dict[int, str]) -> None:
        joined = tuple(sorted({name for uid, name in now_present.items() if uid not in room.present}))
        left = tuple(sorted({name for uid, name in room.present.items() if uid not in now_present}))
        room.present = now_present
        room.listed = tuple(sorted(set(now_present.values())))
        if room.followed and (joined or left):
            self.announce(room_id, joined, left)
            room.held = self._reactor.callLater(self._settle, self._held_over, room_id, room)

    def _held_over(self, room_id: int, room: _RoomUsers) -> None:
        room.held = None
        if self._rooms.get(room_id) is room:
            self._changed(room_id, room, local=False)
        self._let_arrivals_in(room)

    def _let_arrivals_in(self, room: _RoomUsers) -> None:
        """The changes held with these arrivals are announced (or never will be)."""
        arrivals, room.arrivals = room.arrivals, []
        for arrived in arrivals:
            arrived.callback(None)

    def _write_soon(self, room_id: int) -> None:
        self._unwritten.add(room_id)
        if self._flush is None:
            self._flush = self._reactor.callLater(self._settle, self._write_unwritten)

    def _write_unwritten(self) -> None:
        self._flush = None
        rooms, self._unwritten = self._unwritten, set()
        for room_id in sorted(rooms):
            room = self._rooms.get(room_id)
            if room is None:
                self._store.remove(room_id, self._key)  # nobody left here: the room was dropped
            else:
                self._write(room_id, room)
            self.tell_others(room_id)

    def _write(self, room_id: int, room: _RoomUsers) -> None:
        if room.here:
            users = {str(uid): here.name for uid, here in room.here.items()}
            self._store.set(room_id, self._key, users, self._ttl)
        else:
            self._store.remove(room_id, self._key)

    def _read(self, room_id: int, room: _RoomUsers) -> Deferred[Any]:
        d = self._store.entries(room_id)
        d.addCallbacks(
            self._was_read, self._read_failed, callbackArgs=(room_id, room), errbackArgs=(room_id,)
        )
        return d

    def _was_read(self, entries: dict[str, Any], room_id: int, room: _RoomUsers) -> None:
        others: dict[int, str] = {}
        for key, users in entries.items():
            if key != self._key and isinstance(users, dict):
                others.update((int(uid), str(name)) for uid, name in users.items())
        room.others = others
        if self._rooms.get(room_id) is room:
            self._changed(room_id, room, local=False)

    def _read_failed(self, failure: Failure, room_id: int) -> None:
        log.warning("reading who is in room %s failed: %s", room_id, failure.getErrorMessage())

    def _drop_if_unused(self, room_id: int, room: _RoomUsers) -> None:
        if not room.followed and not room.here and self._rooms.get(room_id) is room:
            del self._rooms[room_id]

    def who(self, room_ids: list[int]) -> Deferred[dict[int, tuple[str, ...]]]:
        """Who is in each room, for rooms this process may not serve (the room list)."""
        reads = [self._store.entries(room_id) for room_id in room_ids]

        def names(results: list[tuple[bool, Any]]) -> dict[int, tuple[str, ...]]:
            found: dict[int, tuple[str, ...]] = {}
            for room_id, (ok, entries) in zip(room_ids, results, strict=True):
                users = entries.values() if ok else ()
                found[room_id] = tuple(
                    sorted({str(n) for u in users if isinstance(u, dict) for n in u.values()})
                )
            return found

        return DeferredList(reads, consumeErrors=True).addCallback(names)
