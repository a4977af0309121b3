"""The one public ``Site``: Django at the root, the chat's own resources beside it.

Everything every request gets, whatever resource serves it, lives here: connections
counted per address and in all (``ConnectionGate``), a deadline for each request to arrive
whole, a body limit checked against the header, the ``Host`` checked as Django checks it,
and no version banner.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, cast

from autobahn.twisted.resource import WSGIRootResource
from django.http.request import split_domain_port, validate_host
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from .errors import ProtocolError
from .http_json import error_body, raw_error_response
from .limits import ConnectionGate


class ChatChannel(HTTPChannel):
    """One TCP connection: admitted by the gate, and given a deadline for each request.

    Twisted's idle timeout starts again with every byte, so a client sending one header
    byte every few seconds could hold a connection forever; here a request must arrive
    whole (head and body) within ``request_timeout`` of its first byte.
    """

    site: ChatSite
    _deadline: Any = None
    _refusal: ProtocolError | None = None
    _refused = False
    _busy = False

    @property
    def _tcp(self) -> Any:
        return self.transport

    def connectionMade(self) -> None:
        refusal = self.site.gate.admit(self.transport, str(getattr(self._tcp.getPeer(), "host", "")))
        if refusal is not None:
            # Answered as the request arrives (a client reads the answer to what it sent),
            # or after a second if nothing comes; either way the connection is not counted.
            self._refusal = refusal
            self._deadline = self.callLater(1.0, lambda: self.refuse(refusal))
            return
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        if self._refusal is not None:
            self.refuse(self._refusal)
        if self._refused:
            return
        if self._deadline is None and not self._busy:
            self._deadline = self.callLater(self.site.request_timeout, self._too_slow)
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        if self._refused:  # the rest of a refused request came in the same read
            return
        self._cancel_deadline()
        self._busy = True
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        self._busy = False
        super().requestDone(request)

    def _too_slow(self) -> None:
        self._deadline = None
        self.refuse(ProtocolError("request_timeout", "the request did not arrive in time"))

    def refuse(self, error: ProtocolError) -> None:
        """Answer at once and stop reading. The client may still be sending: the socket is
        half-closed, so it reads the answer instead of a reset, and closed for good after
        one more request timeout."""
        self._refused = True
        self._refusal = None
        self._cancel_deadline()
        self._tcp.write(raw_error_response(error))
        self._tcp.loseWriteConnection()
        self._deadline = self.callLater(self.site.request_timeout, self._tcp.abortConnection)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_deadline()
        self.site.gate.release(self.transport)
        super().connectionLost(reason)


class ChatRequest(Request):
    """A request whose body may not exceed a limit, and whose ``Host`` must be ours.

    A body announced as too large is refused from its header, unread (twisted.web would
    otherwise buffer any body whole before rendering); one that turns out larger than
    announced (chunked) is answered 413 once it has been discarded. ``client_gone`` says the
    client left before the answer: ``finish()`` would then raise.
    """

    channel: ChatChannel
    client_gone = False
    _too_large = False

    def connectionLost(self, reason: object) -> None:
        self.client_gone = True
        super().connectionLost(reason)

    def gotLength(self, length: int | None) -> None:
        self._body_size = 0
        if length is not None and length > self.channel.site.max_body:
            self._too_large = True
            self.content = io.BytesIO()  # stays empty: nothing of the body is kept
            self.channel.refuse(_too_large())
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._body_size += len(data)
        if self._body_size > self.channel.site.max_body:
            self._too_large = True
        if not self._too_large:
            super().handleContentChunk(data)

    def process(self) -> None:
        if self.channel._refused:
            return
        error = None
        if self._too_large:
            error = _too_large()
        elif not self.channel.site.host_allowed(self.getHeader(b"host")):
            error = ProtocolError("bad_request", "invalid Host header")
        if error is None:
            super().process()
            return
        self.setHeader(b"connection", b"close")
        self.write(error_body(self, error))
        self.finish()

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            # twisted.web names itself and its version in every answer.
            self.responseHeaders.removeHeader(b"server")
        super().write(data)


def _too_large() -> ProtocolError:
    return ProtocolError("too_large", "request body too large")


class ChatSite(Site):
    protocol = ChatChannel  # type: ignore[assignment]
    requestFactory = ChatRequest

    def __init__(
        self,
        resource: Resource,
        gate: ConnectionGate,
        allowed_hosts: Sequence[str],
        *,
        max_body: int,
        request_timeout: float,
        idle_timeout: float,
    ):
        # Django and the long-poll resource parse bodies themselves; twisted.web's own form
        # parsing would read each body twice and answer a malformed one with a bare 400.
        super().__init__(cast(IResource, resource), timeout=idle_timeout, parsePOSTFormSubmission=False)
        self.gate = gate
        self.allowed_hosts = list(allowed_hosts)
        self.max_body = max_body
        self.request_timeout = request_timeout
        self._hosts: dict[bytes | None, bool] = {}

    def host_allowed(self, host: bytes | None) -> bool:
        """Django's own rule (``ALLOWED_HOSTS``), on every path: DNS rebinding must not
        reach the WebSocket or the polls any more than the pages."""
        allowed = self._hosts.get(host)
        if allowed is None:
            domain, _port = split_domain_port(host.decode("latin-1")) if host else ("", "")
            allowed = bool(domain) and validate_host(domain, self.allowed_hosts)
            if len(self._hosts) > 1000:
                self._hosts.clear()
            self._hosts[host] = allowed
        return allowed


def build_site(
    django: Resource,
    websocket: Any,  # autobahn's WebSocketResource provides IResource without being a Resource
    longpoll: Resource,
    stream: Resource,
    static: Resource,
    health: Resource,
    gate: ConnectionGate,
    allowed_hosts: Sequence[str],
    *,
    max_body: int = 4 * 1024 * 1024,
    request_timeout: float = 10,
    idle_timeout: float = 30,
) -> ChatSite:
    """Every path not claimed here (``/ws``, ``/poll``, ``/stream``, ``/static``, ``/healthz``)
    goes to Django."""
    children: dict[bytes, Any] = {
        b"ws": websocket,
        b"poll": longpoll,
        b"stream": stream,
        b"static": static,
        b"healthz": health,
    }
    return ChatSite(
        WSGIRootResource(django, children),
        gate,
        allowed_hosts,
        max_body=max_body,
        request_timeout=request_timeout,
        idle_timeout=idle_timeout,
    )


def build_ops_site(children: dict[bytes, Resource]) -> Site:
    """The operators' site: nothing but what it is given (``/healthz``, ``/metrics``)."""
    root = Resource()
    for name, child in children.items():
        root.putChild(name, cast(IResource, child))
    return Site(root)


def can_answer(request: Request) -> bool:
    """Whether an answer can still be written: not finished, and the client still there."""
    return not request.finished and not getattr(request, "client_gone", False)
