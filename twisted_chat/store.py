"""The message store interface that every transport talks to.

A store keeps, per room, an ordered sequence of messages with integer ids that grow
strictly in order of acceptance. Transports (WebSocket, long-poll) append to it, read
after a cursor, and subscribe a listener per room; they never see a backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred

from .messages import Author, ChatMessage


class UnknownRoom(Exception):
    """The room does not exist (or no longer does)."""


class StoreUnavailable(Exception):
    """The store could not make a message durable; the message was not accepted."""


@dataclass(frozen=True, slots=True)
class RoomInfo:
    id: int
    name: str
    is_private: bool = False
    member_ids: frozenset[int] = frozenset()

    def readable_by(self, author: Author | None) -> bool:
        return not self.is_private or (author is not None and author.id in self.member_ids)


class RoomListener(Protocol):
    """Told of every message a room publishes, in id order, once durable."""

    def messages_published(self, room_id: int, messages: Sequence[ChatMessage]) -> None: ...

    def message_removed(self, room_id: int, message_id: int) -> None: ...


class MessageStore(Protocol):
    def open_room(self, room_id: int) -> Deferred[RoomInfo]:
        """Load the room (once); fails with UnknownRoom. Other calls need it opened."""

    def last_id(self, room_id: int) -> int:
        """The newest published id in an opened room (0 when empty)."""

    def append(self, room_id: int, author: Author, text: str, nonce: str = "") -> Deferred[int]:
        """Accept a message; fires with its id once it is durable and published.

        A repeated (author, nonce) in a room fires with the first message's id and adds
        nothing.
        """

    def read_after(self, room_id: int, since: int, limit: int) -> Deferred[list[ChatMessage]]:
        """Published messages with id > since, oldest first, at most limit."""

    def read_latest(self, room_id: int, limit: int) -> Deferred[list[ChatMessage]]:
        """The newest published messages, oldest first."""

    def subscribe(self, room_id: int, listener: RoomListener) -> None: ...

    def unsubscribe(self, room_id: int, listener: RoomListener) -> None: ...

    def remove(self, room_id: int, message_id: int) -> None:
        """A message was deleted from the database: forget it and tell listeners."""

    def room_changed(self, room_id: int) -> None:
        """A room was edited or deleted: reload what the store knows of it."""

    def close(self) -> Deferred[None]:
        """Finish writing everything accepted; append no more."""
