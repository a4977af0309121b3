"""Which pages may open a connection that carries the reader's cookies.

A browser names the page that opened a WebSocket, and a cross-site ``EventSource`` or
``fetch``, in the ``Origin`` header; the session cookie rides along whatever the page. So
every transport refuses an ``Origin`` that is neither the site itself (the ``Host`` it
was reached at) nor one of ``CHAT_ALLOWED_ORIGINS``.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from twisted.web.server import Request

from .errors import ProtocolError


class OriginPolicy:
    def __init__(self, allowed_origins: Iterable[str] = ()):
        self.allowed = {origin.rstrip("/").lower() for origin in allowed_origins}

    def allows(self, origin: str, host: str) -> bool:
        """Whether a page at ``origin`` may use the site reached at ``host``."""
        origin = origin.rstrip("/").lower()
        if origin in self.allowed:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc == host.lower()

    def check(self, request: Request, what: str) -> None:
        """Refuse a cross-site HTTP request (ProtocolError ``csrf_failed``). A browser sends
        no ``Origin`` on a same-origin GET, so none is let through."""
        origin = request.getHeader(b"origin")
        host = request.getHeader(b"host") or b""
        if origin is not None and not self.allows(origin.decode("latin-1"), host.decode("latin-1")):
            raise ProtocolError("csrf_failed", f"cross-origin {what} refused")
