"""The one ``Site``: Django at the root, the chat's own resources beside it."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.resource import WebSocketResource, WSGIRootResource
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from twisted.web.wsgi import WSGIResource


class ChatRequest(Request):
    """A request whose body may not exceed a limit; a larger one is answered 413 unread.

    twisted.web otherwise buffers any body whole (to a temporary file) before rendering.
    ``client_gone`` says the client left before the answer: ``finish()`` would then raise.
    """

    max_body = 4 * 1024 * 1024
    client_gone = False

    def connectionLost(self, reason: object) -> None:
        self.client_gone = True
        super().connectionLost(reason)

    def gotLength(self, length: int | None) -> None:
        self._body_size = 0
        self._too_large = length is not None and length > self.max_body
        super().gotLength(None if self._too_large else length)

    def handleContentChunk(self, data: bytes) -> None:
        self._body_size += len(data)
        if self._body_size > self.max_body:
            self._too_large = True
        if not self._too_large:
            super().handleContentChunk(data)

    def process(self) -> None:
        if getattr(self, "_too_large", False):
            self.setResponseCode(413)
            self.setHeader(b"content-type", b"application/json")
            self.setHeader(b"connection", b"close")
            self.write(b'{"error":{"code":"too_large","message":"request body too large"}}')
            self.finish()
            return
        super().process()


def build_site(
    django: WSGIResource,
    websocket: WebSocketResource,
    longpoll: Resource,
    static: Resource,
    health: Resource,
    extra: dict[bytes, Resource] | None = None,
    max_body: int = 4 * 1024 * 1024,
) -> Site:
    """Every path not claimed here (``/ws``, ``/poll``, ``/static``, ``/healthz``) goes to Django."""
    # autobahn's WebSocketResource provides IResource without being a Resource.
    children: dict[bytes, Any] = {
        b"ws": websocket,
        b"poll": longpoll,
        b"static": static,
        b"healthz": health,
        **(extra or {}),
    }
    # Django and the long-poll resource parse bodies themselves; twisted.web's own form
    # parsing would read each body twice and answer a malformed one with a bare 400.
    return Site(
        WSGIRootResource(django, children),
        requestFactory=type("LimitedChatRequest", (ChatRequest,), {"max_body": max_body}),
        parsePOSTFormSubmission=False,
    )


def can_answer(request: Request) -> bool:
    """Whether an answer can still be written: not finished, and the client still there."""
    return not request.finished and not getattr(request, "client_gone", False)
