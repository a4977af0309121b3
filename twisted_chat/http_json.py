"""JSON responses for the Twisted resources, with the headers every one of them needs, and
the query and header values they read."""

from __future__ import annotations

import json
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from twisted.web.server import Request

from .errors import ProtocolError


def json_body(request: Request, obj: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def error_body(request: Request, error: ProtocolError) -> bytes:
    """The documented JSON error, with ``Retry-After`` (whole seconds) when waiting helps."""
    if error.retry_after is not None:
        request.setHeader(b"retry-after", str(max(1, round(error.retry_after))).encode())
    return json_body(request, error.as_http_body(), error.status)


def raw_error_response(error: ProtocolError, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """A whole HTTP response for a connection that is refused before (or instead of)
    being parsed: too many connections, a request too slow or too large, a refused
    WebSocket handshake."""
    body = json.dumps(error.as_http_body(), separators=(",", ":")).encode()
    head = [
        f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    if error.retry_after is not None:
        head.append(f"Retry-After: {max(1, round(error.retry_after))}")
    head.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def query_arg(request: Request, name: bytes) -> str | None:
    """The first value of a query parameter; ProtocolError ``bad_request`` if not UTF-8."""
    values = request.args.get(name)
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("bad_request", f"'{name.decode()}' is not valid UTF-8") from None


def header_text(request: Request, name: bytes) -> str:
    value = request.getHeader(name)
    return value.decode("latin-1") if value else ""
