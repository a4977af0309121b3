"""What a room publishes, as one typed union, and each event's one JSON form on the wire.

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


def _dumps(obj: dict[str, object]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


@dataclass(slots=True, eq=False)
class _Encoded:
    _json: str | None = field(default=None, init=False, repr=False, compare=False)
    _encodings: dict[str, bytes] | None = field(default=None, init=False, repr=False, compare=False)

    def _wire(self) -> dict[str, object]:
        raise NotImplementedError

    @property
    def json(self) -> str:
        """The wire form, encoded once however many clients receive it."""
        if self._json is None:
            self._json = _dumps(self._wire())
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


@dataclass(slots=True)
class ChatMessage(_Encoded):
    """A committed message; ``id`` is its position in the room."""

    room: int = 0
    id: int = 0
    ts: int = 0
    user: str = ""
    text: str = ""
    user_id: int | None = field(default=None, compare=False)
    nonce: str = field(default="", compare=False)

    def _wire(self) -> dict[str, object]:
        return {
            "type": "message",
            "room": self.room,
            "id": self.id,
            "ts": self.ts,
            "user": self.user,
            "text": self.text,
        }


@dataclass(slots=True)
class MessageDeleted(_Encoded):
    """A message was removed; it moves no cursor."""

    room: int = 0
    id: int = 0

    def _wire(self) -> dict[str, object]:
        return {"type": "deleted", "room": self.room, "id": self.id}


RoomEvent = ChatMessage | MessageDeleted
