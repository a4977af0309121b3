"""Parsing and validation of what clients send, shared by the WebSocket and long-poll.

Every failure is a ProtocolError (``errors``) whose code is part of the documented
protocol (docs/protocol.md); nothing a client sends raises anything else.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from .errors import ProtocolError

# Ids are JSON numbers; keep them where every client (JavaScript too) reads them exactly.
MAX_ID = 2**53 - 1
MAX_NONCE_LENGTH = 64

_NONCE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
# Unicode category Cc (C0 and C1 controls) except tab and newline, and Cs (surrogates).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
# The most bytes one character of text can take in a request body: a character outside the
# BMP is a surrogate pair of JSON escapes (12 bytes), or 4 UTF-8 bytes percent-encoded (12).
MAX_BYTES_PER_CHAR = 12

# Bidi embeddings and overrides close with PDF; isolates close with PDI.
_EMBEDDINGS = frozenset("\u202a\u202b\u202d\u202e")
_ISOLATES = frozenset("\u2066\u2067\u2068")
_PDF, _PDI = "\u202c", "\u2069"
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
# Letters and symbols that draw nothing (Hangul fillers, braille blank, ...).
_BLANK = frozenset("\u115f\u1160\u3164\uffa0\u2800\u180e")


@dataclass(frozen=True, slots=True)
class Subscribe:
    room: int
    since: int | None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    room: int


@dataclass(frozen=True, slots=True)
class Send:
    room: int
    text: str
    nonce: str


@dataclass(frozen=True, slots=True)
class Change:
    """An edit (``text`` given) or a deletion of message ``id``."""

    kind: str
    room: int
    id: int
    text: str
    nonce: str


@dataclass(frozen=True, slots=True)
class Typing:
    room: int


Command = Subscribe | Unsubscribe | Send | Change | Typing


def parse_room(value: Any) -> int:
    """A room id from JSON (int) or a query string (digits)."""
    room = _parse_int(value, "room")
    if room is None:
        raise ProtocolError("bad_request", "'room' is required")
    if room < 1:
        raise ProtocolError("bad_request", "'room' must be a positive integer")
    return room


def parse_rooms(value: str, limit: int) -> dict[int, int | None]:
    """``1:5,2:7,3``: rooms, each with the ``since`` to resume after (or none)."""
    rooms: dict[int, int | None] = {}
    for part in value.split(","):
        room, _, since = part.partition(":")
        rooms[parse_room(room)] = parse_since(since) if since else None
    if len(rooms) > limit:
        raise ProtocolError("too_many_rooms", f"at most {limit} rooms per connection")
    return rooms


def parse_since(value: Any) -> int | None:
    return _parse_int(value, "since")


def _parse_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ProtocolError("bad_request", f"'{name}' must be an integer")
    if isinstance(value, str):
        if not value.isascii() or not value.isdigit() or len(value) > 16:
            raise ProtocolError("bad_request", f"'{name}' must be a non-negative integer")
        value = int(value)
    if not isinstance(value, int):
        raise ProtocolError("bad_request", f"'{name}' must be an integer")
    if value < 0 or value > MAX_ID:
        raise ProtocolError("bad_request", f"'{name}' must be between 0 and {MAX_ID}")
    return value


def parse_nonce(value: Any) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not _NONCE_RE.match(value):
        raise ProtocolError(
            "bad_request",
            "'nonce' must be 1-64 characters of letters, digits, '_', '.', ':' or '-'",
        )
    return value


def clean_text(value: Any, max_length: int, nonce: str | None = None) -> str:
    """Strip control characters (keeping newlines and tabs) and surrounding blanks, close
    the bidi controls a text leaves open, and refuse a text that shows nothing.

    Length is in characters (code points), however the text was encoded on the wire.
    """
    if not isinstance(value, str):
        raise ProtocolError("bad_request", "'text' must be a string", nonce)
    if len(value) > max_length * 4:
        raise ProtocolError("too_large", f"'text' is over {max_length} characters", nonce)
    text = _CONTROL.sub("", value).strip()
    if not text:
        raise ProtocolError("bad_request", "'text' is empty", nonce)
    if not any(_visible(char) for char in text):
        raise ProtocolError("bad_request", "'text' has nothing visible", nonce)
    if _BIDI.search(text):
        text = balance_bidi(text)
    if len(text) > max_length:
        raise ProtocolError("too_large", f"'text' is over {max_length} characters", nonce)
    return text


def _visible(char: str) -> bool:
    """Draws something by itself: not a control, format character (zero-width spaces and
    joiners, bidi marks), separator, lone combining mark or blank letter."""
    return unicodedata.category(char)[0] not in "CZM" and char not in _BLANK


def balance_bidi(text: str) -> str:
    """Drop bidi closers that close nothing and close what is left open, so that a message
    cannot reverse or reorder whatever the page shows after it."""
    kept: list[str] = []
    open_: list[str] = []
    for char in text:
        if char in _EMBEDDINGS or char in _ISOLATES:
            open_.append(char)
        elif char == _PDF:
            if not open_ or open_[-1] not in _EMBEDDINGS:
                continue
            open_.pop()
        elif char == _PDI:
            if not any(c in _ISOLATES for c in open_):
                continue
            # A PDI also closes the embeddings opened inside its isolate.
            while open_.pop() not in _ISOLATES:
                pass
        kept.append(char)
    kept.extend(_PDI if c in _ISOLATES else _PDF for c in reversed(open_))
    return "".join(kept)


def parse_json(data: bytes | str, what: str) -> Any:
    """JSON from a client. Nesting too deep for the parser is as bad as invalid JSON."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise ProtocolError("bad_request", f"{what} is not valid JSON") from None


def parse_client_frame(payload: bytes, max_text_length: int) -> Command:
    """One WebSocket text frame (already valid UTF-8) into a command."""
    frame = parse_json(payload, "frame")
    if not isinstance(frame, dict):
        raise ProtocolError("bad_request", "frame must be a JSON object")
    kind = frame.get("type")
    if kind == "subscribe":
        return Subscribe(parse_room(frame.get("room")), parse_since(frame.get("since")))
    if kind == "unsubscribe":
        return Unsubscribe(parse_room(frame.get("room")))
    return parse_write(kind, frame, max_text_length)


WRITES = ("send", "edit", "delete", "typing")


def parse_write(kind: Any, fields: dict[str, Any], max_text_length: int) -> Send | Change | Typing:
    """A command that writes to a room, from a WebSocket frame or a ``POST /poll`` body."""
    if kind not in WRITES:
        expected = ", ".join(("subscribe", "unsubscribe", *WRITES))
        raise ProtocolError("bad_request", f"'type' must be one of {expected}")
    if kind == "typing":
        return Typing(parse_room(fields.get("room")))
    nonce = parse_nonce(fields.get("nonce"))
    reply_nonce = nonce or None
    try:
        room = parse_room(fields.get("room"))
        message_id = None if kind == "send" else _parse_int(fields.get("id"), "id")
    except ProtocolError as error:
        error.nonce = reply_nonce
        raise
    if kind == "send":
        return Send(room, clean_text(fields.get("text"), max_text_length, reply_nonce), nonce)
    if not message_id:
        raise ProtocolError("bad_request", "'id' must be the id of a message", reply_nonce)
    text = clean_text(fields.get("text"), max_text_length, reply_nonce) if kind == "edit" else ""
    return Change("edited" if kind == "edit" else "deleted", room, message_id, text, nonce)


def ack(command: Send | Change, entry_id: int) -> dict[str, Any]:
    """What a write is answered with once committed (a WebSocket ``ack``, a POST's body):
    a message's id, or for a change the message's id and the change's own place."""
    if isinstance(command, Send):
        reply: dict[str, Any] = {"room": command.room, "id": entry_id}
    else:
        reply = {"room": command.room, "id": command.id, "seq": entry_id}
    if command.nonce:
        reply["nonce"] = command.nonce
    return reply
