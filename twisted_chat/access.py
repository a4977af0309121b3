"""Access log lines for WebSocket sessions, which twisted.web's access log never sees
(the upgrade takes the connection away before the request finishes)."""

from __future__ import annotations

import logging
import time
from typing import Any

logger = logging.getLogger("twisted_chat.access")


class AccessLog:
    def __init__(self, clock: Any = time.monotonic):
        self._clock = clock
        self._opened: dict[int, float] = {}

    def websocket_opened(self, protocol: Any) -> None:
        self._opened[id(protocol)] = self._clock()
        logger.info("WSCONNECT %s %s user=%s", _peer(protocol), _path(protocol), _user(protocol))

    def websocket_closed(self, protocol: Any, code: int | None) -> None:
        started = self._opened.pop(id(protocol), None)
        duration = self._clock() - started if started is not None else 0.0
        logger.info(
            "WSDISCONNECT %s %s user=%s code=%s duration=%.1fs",
            _peer(protocol),
            _path(protocol),
            _user(protocol),
            code,
            duration,
        )


def _peer(protocol: Any) -> str:
    return str(getattr(protocol, "peer", "-"))


def _path(protocol: Any) -> str:
    request = getattr(protocol, "http_request_uri", None)
    return request or "/ws"


def _user(protocol: Any) -> str:
    author = getattr(protocol, "author", None)
    return author.username if author is not None else "-"
