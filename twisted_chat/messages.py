"""The chat message as the server keeps it, and its one JSON form on the wire."""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Author:
    """Who sent a message: always the session's user, never a name the client sends."""

    id: int
    username: str


@dataclass(slots=True)
class ChatMessage:
    room: int
    id: int
    ts: int
    user: str
    text: str
    user_id: int | None = field(default=None, compare=False)
    nonce: str = field(default="", compare=False)
    _json: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def json(self) -> str:
        """The wire form, encoded once however many clients receive it."""
        if self._json is None:
            self._json = json.dumps(
                {
                    "type": "message",
                    "room": self.room,
                    "id": self.id,
                    "ts": self.ts,
                    "user": self.user,
                    "text": self.text,
                },
                ensure_ascii=False,
                separators=(",", ":"),
            )
        return self._json


def deleted_event_json(room_id: int, message_id: int) -> str:
    return json.dumps({"type": "deleted", "room": room_id, "id": message_id}, separators=(",", ":"))
