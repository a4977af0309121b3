"""JSON responses for the Twisted resources, with the headers every one of them needs."""

from __future__ import annotations

import json
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
    return json_body(request, error.as_http_body(), error.status)
