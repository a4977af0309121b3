"""What a room publishes, as one typed union, and each event's one JSON form on the wire.

A room's log holds messages and changes to them (edits, deletions), each with its own
place (``id``) in the room's sequence: a client that resumes after a place learns of the
changes made since as well as the new messages. Presence and typing are not logged.

Events are built once per process and shared by every client of the room; so are their
encodings (a WebSocket frame, later an SSE event), which transports cache on the event with
``encoded``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Author:
    """Who sent a message: always the session's user, never a name the client sends."""

    id: int
    username: str
    is_staff: bool = False


def _dumps(obj: dict[str, object]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


@dataclass(slots=True, eq=False)
class _Encoded:
    _json: str | None = field(default=None, init=False, repr=False, compare=False)
    _encodings: dict[str, bytes] | None = field(default=None, init=False, repr=False, compare=False)

    def wire(self) -> dict[str, object]:
        """The event as the one JSON object every transport sends (docs/protocol.md)."""
        raise NotImplementedError

    @property
    def json(self) -> str:
        """The wire form, encoded once however many clients receive it."""
        if self._json is None:
            self._json = _dumps(self.wire())
        return self._json

    def encoded(self, kind: str, build: Callable[[str], bytes]) -> bytes:
        """A transport's framing of ``json`` (``kind`` names it), built on first use only."""
        encodings = self._encodings
        if encodings is None:
            encodings = self._encodings = {}
        frame = encodings.get(kind)
        if frame is None:
            frame = encodings[kind] = build(self.json)
        return frame


MESSAGE, SYSTEM, EDITED, DELETED = "message", "system", "edited", "deleted"


@dataclass(slots=True)
class ChatMessage(_Encoded):
    """An entry of a room's log; ``id`` is its place in the room.

    ``kind`` is a message (``user`` wrote ``text``), a system message (no author), or an
    edit or deletion of the earlier message ``target``, made by ``user``.
    """

    room: int = 0
    id: int = 0
    ts: int = 0
    user: str = ""
    text: str = ""
    user_id: int | None = field(default=None, compare=False)
    nonce: str = field(default="", compare=False)
    kind: str = MESSAGE
    target: int | None = None
    edited: int | None = None

    def stored(self) -> tuple[object, ...]:
        """What the database and Redis keep of an entry besides its room and id, in the
        order both write it."""
        return (self.ts, self.user, self.text, self.user_id, self.nonce, self.kind, self.target)

    @property
    def is_change(self) -> bool:
        """An edit or deletion: it changes another entry rather than showing itself."""
        return self.kind == EDITED or self.kind == DELETED

    def wire(self) -> dict[str, object]:
        if self.kind == EDITED:
            return {
                "type": "edited",
                "room": self.room,
                "id": self.target,
                "text": self.text,
                "edited": self.ts,
                "seq": self.id,
            }
        if self.kind == DELETED:
            return {"type": "deleted", "room": self.room, "id": self.target, "seq": self.id}
        wire: dict[str, object] = {
            "type": "message",
            "room": self.room,
            "id": self.id,
            "ts": self.ts,
            "user": "" if self.kind == SYSTEM else self.user,
            "text": self.text,
        }
        if self.edited is not None:
            wire["edited"] = self.edited
        if self.kind == SYSTEM:
            wire["system"] = True
        return wire


@dataclass(slots=True)
class PresenceUpdate(_Encoded):
    """Who is in a room: everyone (``users``, on subscribing), or who came and went."""

    room: int = 0
    users: tuple[str, ...] | None = None
    joined: tuple[str, ...] = ()
    left: tuple[str, ...] = ()

    def wire(self) -> dict[str, object]:
        if self.users is not None:
            return {"type": "presence", "room": self.room, "users": list(self.users)}
        return {"type": "presence", "room": self.room, "joined": list(self.joined), "left": list(self.left)}


@dataclass(slots=True)
class Typing(_Encoded):
    """Someone is typing in a room; it lapses by itself after a few seconds."""

    room: int = 0
    user: str = ""
    user_id: int = field(default=0, compare=False)

    def wire(self) -> dict[str, object]:
        return {"type": "typing", "room": self.room, "user": self.user}


RoomEvent = ChatMessage | PresenceUpdate | Typing
