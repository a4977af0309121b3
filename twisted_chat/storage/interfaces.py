"""The storage a room core needs, as four small interfaces.

Every method is called on the reactor thread, and every callback and listener runs there.
Each interface has a process-local implementation here; a shared backend (Redis) gives
the same contracts, which ``tests/test_storage_contract.py`` checks for every backend.

- ``RoomDirectory``: which rooms exist and who may read them.
- ``MessageLog``: durable, ordered messages per room; it assigns ids.
- ``Broker``: hands committed events to every subscriber of a room, in order.
- ``Presence``: who is in a room, as entries that expire unless refreshed.

A log shared by several processes also takes a ``MessageFeed``: how it hears what the
other processes committed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from chat.models import room_readable

from ..events import Author, ChatMessage, RoomEvent

RunInThread = Callable[..., Deferred[Any]]
"""Runs a blocking function in a thread pool; fires on the reactor thread with its result."""


class UnknownRoom(Exception):
    """The room does not exist (or no longer does)."""


class NoSuchMessage(Exception):
    """An edit or deletion names a message the room does not have (or no longer has)."""


class StoreUnavailable(Exception):
    """The storage could not do what was asked; nothing was accepted."""


@dataclass(frozen=True, slots=True)
class RoomInfo:
    id: int
    name: str
    is_private: bool = False
    member_ids: frozenset[int] = frozenset()
    is_closed: bool = False
    # Users banned from this room, or from every room.
    banned_ids: frozenset[int] = frozenset()

    def readable_by(self, author: Author | None) -> bool:
        """The rule the Django pages use too (``ChatRoom.is_visible_to``)."""
        return room_readable(self.is_private, author is not None and author.id in self.member_ids)

    def refusal(self, author: Author | None) -> str | None:
        """Why ``author`` may not be in the room now (an error code), or None."""
        if not self.readable_by(author):
            return "unknown_room"
        if self.is_closed:
            return "room_closed"
        if author is not None and author.id in self.banned_ids:
            return "banned"
        return None


@dataclass(frozen=True, slots=True)
class CachedWindow:
    """A room's recent entries as a shared cache holds them: every id from ``first_id`` on
    (a message deleted since is still there, followed by its deletion)."""

    first_id: int
    messages: list[ChatMessage]


class RoomDirectory(Protocol):
    def get(self, room_id: int) -> Deferred[RoomInfo]:
        """The room as it is now; fails with UnknownRoom, or StoreUnavailable."""

    def room_changed(self, room_id: int) -> None:
        """The room was edited, deleted or had its members changed: forget what is known of
        it, then tell every watcher (who reads it again with ``get``)."""

    def watch(self, watcher: Callable[[int], None]) -> None:
        """Call ``watcher(room_id)`` after every change of a room, in this and (for a shared
        backend) every other process."""


CommittedListener = Callable[[int, Sequence[ChatMessage]], None]


class MessageLog(Protocol):
    """Messages in a room have ids that grow strictly in the order they are committed.

    The log is given a ``CommittedListener`` when it is built. It calls it once per room
    per commit, with that room's new messages in id order, after they are durable and
    before any of their ``append`` Deferreds fire; the room core hands them to the broker.
    """

    def last_id(self, room_id: int) -> Deferred[int]:
        """The newest committed id (0 when empty); fails with UnknownRoom."""

    def append(
        self,
        room_id: int,
        author: Author | None,
        text: str,
        nonce: str = "",
        kind: str = "message",
        target: int | None = None,
    ) -> Deferred[int]:
        """Fires with the entry's id once it is committed and handed on.

        ``kind`` is a message, a system message (no author), or an edit or deletion of
        message ``target`` (fails with NoSuchMessage if the room has no such message).
        A repeated (author, nonce) in a room fires with the first entry's id and adds
        nothing. Fails with StoreUnavailable when the entry could not be made durable.
        """

    def find(self, room_id: int, message_id: int) -> Deferred[ChatMessage | None]:
        """A message as it is now (edited text), or None: no such message, or deleted."""

    def read_after(self, room_id: int, since: int, limit: int) -> Deferred[list[ChatMessage]]:
        """Committed entries (changes too) with id > since, oldest first, at most limit."""

    def read_latest(self, room_id: int, limit: int) -> Deferred[list[ChatMessage]]:
        """The newest committed messages as they are now, oldest first; no changes."""

    def fill(self, room_id: int, until: int) -> None:
        """Entries up to ``until`` were committed straight to the database (by Django code):
        hand them on like any other."""

    def close(self) -> Deferred[None]:
        """Finish writing everything accepted; accept no more."""


class MessageFeed(Protocol):
    """Committed messages, carried between the processes that share a database.

    A feed may lose messages (a process dies between its commit and its publish, the feed
    is down for a while): the log that uses it finds the holes in its dense ids and reads
    them from the database, so a feed only makes delivery fast, never correct.
    """

    def start(self, received: CommittedListener, reconnected: Callable[[], None]) -> None:
        """Hand other processes' messages to ``received``; call ``reconnected`` after the
        feed was down (anything may have been missed meanwhile)."""

    @property
    def available(self) -> bool: ...

    def follow(self, room_id: int) -> Deferred[None]:
        """Fires once messages published from now on reach ``received`` (at once if the
        feed is down)."""

    def unfollow(self, room_id: int) -> None: ...

    def publish(self, room_id: int, messages: Sequence[ChatMessage]) -> Deferred[None]:
        """Fires once other processes can have the messages, or the feed gave up."""

    def recent(self, room_id: int, limit: int) -> Deferred[CachedWindow | None]:
        """What the feed keeps of the room's newest entries (None: nothing it can vouch for)."""


RoomHandler = Callable[[int, Sequence[RoomEvent]], None]


class Broker(Protocol):
    """Fan-out of committed events. A handler gets each room's events in the order they
    were published, each exactly once, from the moment its ``subscribe`` has fired."""

    def subscribe(self, room_id: int, handler: RoomHandler) -> Deferred[None]:
        """Fires once events published from now on will reach ``handler``."""

    def unsubscribe(self, room_id: int, handler: RoomHandler) -> None: ...

    def publish(self, room_id: int, events: Sequence[RoomEvent]) -> None:
        """Hand events, in order, to the room's handlers."""


class Presence(Protocol):
    """Entries per room that vanish ``ttl`` seconds after they were last set."""

    def set(self, room_id: int, key: str, value: Any, ttl: float) -> None: ...

    def remove(self, room_id: int, key: str) -> None: ...

    def entries(self, room_id: int) -> Deferred[dict[str, Any]]:
        """The room's live entries by key."""
