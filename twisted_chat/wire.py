"""Parsing and validation of what clients send, shared by the WebSocket and long-poll.

Every failure is a ProtocolError (``errors``) whose code is part of the documented
protocol (docs/protocol.md); nothing a client sends raises anything else.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .errors import ProtocolError

# Ids are JSON numbers; keep them where every client (JavaScript too) reads them exactly.
MAX_ID = 2**53 - 1
MAX_NONCE_LENGTH = 64

_NONCE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
# Unicode category Cc (C0 and C1 controls) except tab and newline, and Cs (surrogates).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


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


def parse_room(value: Any) -> int:
    """A room id from JSON (int) or a query string (digits)."""
    room = _parse_int(value, "room")
    if room is None:
        raise ProtocolError("bad_request", "'room' is required")
    if room < 1:
        raise ProtocolError("bad_request", "'room' must be a positive integer")
    return room


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
    """Strip control characters (keeping newlines and tabs) and surrounding blanks."""
    if not isinstance(value, str):
        raise ProtocolError("bad_request", "'text' must be a string", nonce)
    if len(value) > max_length * 4:
        raise ProtocolError("too_large", f"'text' is over {max_length} characters", nonce)
    text = _CONTROL.sub("", value).strip()
    if not text:
        raise ProtocolError("bad_request", "'text' is empty", nonce)
    if len(text) > max_length:
        raise ProtocolError("too_large", f"'text' is over {max_length} characters", nonce)
    return text


def parse_client_frame(payload: bytes, max_text_length: int) -> Subscribe | Unsubscribe | Send:
    """One WebSocket text frame (already valid UTF-8) into a command."""
    try:
        frame = json.loads(payload)
    except ValueError:
        raise ProtocolError("bad_request", "frame is not valid JSON") from None
    if not isinstance(frame, dict):
        raise ProtocolError("bad_request", "frame must be a JSON object")
    kind = frame.get("type")
    if kind == "send":
        nonce = parse_nonce(frame.get("nonce"))
        reply_nonce = nonce or None
        try:
            room = parse_room(frame.get("room"))
        except ProtocolError as error:
            error.nonce = reply_nonce
            raise
        return Send(room, clean_text(frame.get("text"), max_text_length, reply_nonce), nonce)
    if kind == "subscribe":
        return Subscribe(parse_room(frame.get("room")), parse_since(frame.get("since")))
    if kind == "unsubscribe":
        return Unsubscribe(parse_room(frame.get("room")))
    raise ProtocolError("bad_request", "'type' must be one of subscribe, unsubscribe, send")
