"""Every failure a client can see, and the one mapping from server failures to them.

Each code has one HTTP status and one ``retryable`` flag, the same on every transport
(docs/protocol.md). Clients obey the flag: they retry (after ``retry_after`` when given)
only what is retryable, and show the rest.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from twisted.python.failure import Failure

from .storage.interfaces import NoSuchMessage, StoreUnavailable, UnknownRoom

log = logging.getLogger(__name__)

# code: (HTTP status, retryable)
CODES: dict[str, tuple[int, bool]] = {
    "bad_request": (400, False),
    "session_ended": (401, True),
    "not_authenticated": (403, False),
    "csrf_failed": (403, False),
    "not_allowed": (403, False),
    "banned": (403, False),
    "disconnected": (403, False),
    "unknown_room": (404, False),
    "no_such_message": (404, False),
    "room_closed": (410, False),
    "method_not_allowed": (405, False),
    "request_timeout": (408, True),
    "too_large": (413, False),
    "unsupported_media_type": (415, False),
    "upgrade_required": (426, False),
    "too_many_rooms": (429, False),
    "too_many_connections": (429, True),
    "rate_limited": (429, True),
    "internal_error": (500, False),
    "unavailable": (503, True),
}


class ProtocolError(Exception):
    """A documented error: its ``code`` says what happened, ``nonce`` which send it answers."""

    def __init__(
        self,
        code: str,
        message: str,
        nonce: str | None = None,
        retry_after: float | None = None,
        room: int | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.nonce = nonce
        self.retry_after = retry_after
        self.room = room
        self.status, self.retryable = CODES[code]

    def _fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"code": self.code, "message": self.message, "retryable": self.retryable}
        if self.retry_after is not None:
            fields["retry_after"] = self.retry_after
        return fields

    def as_ws_frame(self) -> dict[str, Any]:
        frame = {"type": "error", **self._fields()}
        if self.nonce is not None:
            frame["nonce"] = self.nonce
        if self.room is not None:
            frame["room"] = self.room
        return frame

    def as_http_body(self) -> dict[str, Any]:
        return {"error": self._fields()}


def no_such_room(room: int | None = None, nonce: str | None = None) -> ProtocolError:
    """What a room that does not exist, or that the client may not read, looks like."""
    return ProtocolError("unknown_room", "no such room", nonce, room=room)


_REFUSALS = {
    "room_closed": "this room is closed",
    "banned": "you are banned from this room",
}


def refused(code: str, room: int, nonce: str | None = None) -> ProtocolError:
    """A room the client may not be in (``RoomInfo.refusal``), in words."""
    if code == "unknown_room":
        return no_such_room(room, nonce)
    return ProtocolError(code, _REFUSALS[code], nonce, room=room)


def rate_limited(
    wait: float, nonce: str | None = None, what: str = "messages", room: int | None = None
) -> ProtocolError:
    """``wait`` is rounded up, so a client that waits exactly that long gets through."""
    wait = math.ceil(wait * 100) / 100
    return ProtocolError("rate_limited", f"too many {what}: retry in {wait}s", nonce, wait, room)


def as_protocol_error(failure: Failure, nonce: str | None = None, room: int | None = None) -> ProtocolError:
    """The documented error for whatever went wrong; unexpected ones are logged."""
    if isinstance(failure.value, ProtocolError):
        return failure.value
    if failure.check(UnknownRoom):
        return no_such_room(room, nonce)
    if failure.check(NoSuchMessage):
        return ProtocolError("no_such_message", "no such message", nonce, room=room)
    if failure.check(StoreUnavailable):
        return ProtocolError("unavailable", str(failure.value), nonce, room=room)
    log.error("a chat command failed: %s", failure.getTraceback())
    return ProtocolError("internal_error", "the server failed", nonce, room=room)
