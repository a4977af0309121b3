"""The chat over WebSocket (autobahn), one JSON object per text frame.

A thin adapter over the room core (``hub``): it checks the handshake, parses frames into
hub calls and turns what the hub tells a client into frames. Each event's frame is built
once per process (``RoomEvent.encoded``) and written as it is to every connection.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Sequence
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.server import Request

from . import wire
from .access import AccessLog
from .eager_write import queued_bytes, write_now
from .errors import ProtocolError, as_protocol_error
from .events import Author, PresenceUpdate, RoomEvent
from .http_json import error_body, raw_error_response
from .hub import Client, Identity, RoomHub
from .limits import ConnectionGate
from .origins import OriginPolicy
from .sessions import keys_from_cookies

log = logging.getLogger(__name__)


_OPEN = WebSocketServerProtocol.STATE_OPEN

# What a handshake autobahn refuses by itself is, by its status: a malformed or unsupported
# handshake, or (403) a cross-site one, refused by check_origin.
_HANDSHAKE_CODES = {400: "bad_request", 403: "csrf_failed", 426: "upgrade_required"}

# Close codes of our own (docs/protocol.md).
SESSION_CHANGED_CLOSE_CODE = 4001
SLOW_CONSUMER_CLOSE_CODE = 4008
# A moderator ended the connection: the client should not come back by itself.
DISCONNECTED_CLOSE_CODE = 4003


class ChatWebSocketProtocol(WebSocketServerProtocol):
    factory: ChatWebSocketFactory

    def __init__(self) -> None:
        super().__init__()
        self.client: Client | None = None
        self._identity: Identity | None = None
        self._initial: wire.Subscribe | ProtocolError | None = None
        self._refusal: ProtocolError | None = None
        self._gone = False

    @property
    def _tcp(self) -> Any:
        """The TCP transport (autobahn types it as an optional ITransport)."""
        return self.transport

    @property
    def author(self) -> Author | None:
        return self._identity.author if self._identity is not None else None

    # --- handshake ----------------------------------------------------------------------

    # autobahn's annotation leaves out the Deferred it documents and accepts (txaio.as_future).
    def onConnect(self, request: ConnectionRequest) -> Deferred[None]:  # type: ignore[override]
        self.factory.check_origin(request)
        session_key, browser_key = keys_from_cookies(request.headers.get("cookie", ""))
        self._identity = Identity(session_key, browser_key)
        self._initial = _initial_subscription(request.params)
        return self.factory.hub.authenticate(session_key).addCallbacks(self._admit, self._refuse)

    def _admit(self, author: Author | None) -> Deferred[None]:
        assert self._identity is not None
        if self._gone:
            # The client left while its session was looked up: take no slot for it.
            raise ConnectionDeny(ConnectionDeny.BAD_REQUEST, "connection closed")
        self._identity.author = author
        return self.factory.hub.connect(self, self._identity).addCallbacks(self._connected, self._refuse)

    def _connected(self, client: Client) -> None:
        if self._gone:
            client.close()
            raise ConnectionDeny(ConnectionDeny.BAD_REQUEST, "connection closed")
        self.client = client

    def _refuse(self, failure: Failure) -> None:
        raise self._deny(as_protocol_error(failure))

    def _deny(self, error: ProtocolError) -> ConnectionDeny:
        self._refusal = error
        return ConnectionDeny(error.status, error.message)

    def sendHttpErrorResponse(self, code: int, reason: str, responseHeaders: Any = None) -> None:
        """A refused handshake gets the documented JSON error, as every HTTP answer does
        (autobahn sends a status line and nothing else)."""
        error = self._refusal or ProtocolError(_HANDSHAKE_CODES.get(code, "bad_request"), reason)
        self.sendData(raw_error_response(error, responseHeaders or ()))

    def onOpen(self) -> None:
        # After the upgrade the HTTP channel is still the transport's producer; take its
        # place, so that a full send buffer tells this connection to stop receiving.
        self._tcp.unregisterProducer()
        self._tcp.registerProducer(self, True)
        self.factory.connection_opened(self)
        initial, self._initial = self._initial, None
        if isinstance(initial, ProtocolError):
            self.send_error(initial)
        elif initial is not None and self.client is not None:
            self.client.subscribe(initial.room, initial.since)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._gone = True
        if self.client is not None:
            self.client.close()
            self.factory.connection_closed(self, code)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # The HTTP connection that became this WebSocket was counted by the site's gate;
        # its channel no longer hears of the transport, so the slot is given back here.
        transport = self.transport
        super().connectionLost(reason)
        self.factory.gate.release(transport)

    # --- IPushProducer: the transport's send buffer --------------------------------------

    def pauseProducing(self) -> None:
        """The send buffer is full: read no more frames until it drains, so a client that
        does not read cannot make the server queue answers to its commands."""
        self._tcp.pauseProducing()
        if self.client is not None:
            self.client.paused()

    def resumeProducing(self) -> None:
        self._tcp.resumeProducing()
        if self.client is not None:
            self.client.resumed()

    def stopProducing(self) -> None:
        if self.client is not None:
            self.client.resumed()

    # --- frames from the client ---------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            self._handle_frame(payload, isBinary)
        except Exception:
            # A bug must not cost the client its connection, nor anyone else theirs.
            log.exception("handling a WebSocket frame failed")
            self.send_error(ProtocolError("internal_error", "the server failed"))

    def _handle_frame(self, payload: bytes, isBinary: bool) -> None:
        client = self.client
        if client is None or client.closed:
            return
        if isBinary:
            self.send_error(ProtocolError("bad_request", "binary frames are not supported"))
            return
        try:
            command = wire.parse_client_frame(payload, self.factory.max_text_length)
        except ProtocolError as error:
            self.send_error(error)
            return
        if isinstance(command, wire.Send):
            ack = client.send(command.room, command.text, command.nonce)
            ack.addCallbacks(
                self._acknowledge, self._refused, callbackArgs=(command,), errbackArgs=(command,)
            )
        elif isinstance(command, wire.Change):
            ack = client.change(command.kind, command.room, command.id, command.text, command.nonce)
            ack.addCallbacks(
                self._acknowledge, self._refused, callbackArgs=(command,), errbackArgs=(command,)
            )
        elif isinstance(command, wire.Typing):
            client.typing(command.room)
        elif isinstance(command, wire.Subscribe):
            client.subscribe(command.room, command.since)
        else:
            try:
                client.unsubscribe(command.room)
            except ProtocolError as error:
                self.send_error(error)
            else:
                self.send_json({"type": "unsubscribed", "room": command.room})

    def _acknowledge(self, entry_id: int, command: wire.Send | wire.Change) -> None:
        reply = wire.ack(command, entry_id)
        reply["type"] = "ack"
        self.send_json(reply)

    def _refused(self, failure: Failure, command: wire.Send | wire.Change) -> None:
        self.send_error(as_protocol_error(failure, command.nonce or None))

    # --- the hub's ClientSink -------------------------------------------------------------

    def subscribed(self, room_id: int, last: int, present: PresenceUpdate | None) -> None:
        self.send_json({"type": "subscribed", "room": room_id, "last": last})
        if present is not None:
            self.deliver(room_id, (present,))

    def deliver(self, room_id: int, events: Sequence[RoomEvent]) -> None:
        if self.state == _OPEN:
            factory = self.factory
            frames = factory.frames_of(events)
            transport = self.transport
            for frame in frames:
                write_now(transport, frame)
            factory.delivered += len(frames)

    def caught_up(self, room_id: int) -> None:
        """Nothing to say: live events follow the history on the same connection."""

    def subscribe_failed(self, room_id: int, error: ProtocolError) -> None:
        self.send_error(error)

    def subscription_ended(self, room_id: int, error: ProtocolError) -> None:
        self.send_json(
            {"type": "unsubscribed", "room": room_id, "code": error.code, "message": error.message}
        )

    def session_ended(self) -> None:
        self.sendClose(SESSION_CHANGED_CLOSE_CODE, "session changed: reconnect")

    def disconnected(self, error: ProtocolError) -> None:
        self.send_error(error)
        self.sendClose(DISCONNECTED_CLOSE_CODE, error.message[:100])

    def queued_bytes(self) -> int:
        return queued_bytes(self.transport)

    def drop_slow(self) -> None:
        """The client can reconnect and resume with ``since``; nothing is lost."""
        self.factory.slow_dropped += 1
        self.sendClose(SLOW_CONSUMER_CLOSE_CODE, "slow consumer: reconnect and resume with since")
        self.dropConnection(abort=True)

    # --- frames to the client -----------------------------------------------------------

    def send_frame(self, frame: bytes) -> None:
        """Write one ready-made frame, unless a close has begun (shutdown, slow consumer, client).

        autobahn's sendMessage and sendPreparedMessage go through sendData, which formats
        three debug-log arguments (with click colours when click is installed) on every
        call; for a frame that is already built, only the write is needed.
        """
        if self.state == _OPEN:
            write_now(self.transport, frame)

    def send_json(self, obj: dict[str, Any]) -> None:
        self.send_frame(text_frame(json.dumps(obj, separators=(",", ":"))))

    def send_error(self, error: ProtocolError) -> None:
        self.send_json(error.as_ws_frame())


def text_frame(text: str) -> bytes:
    """One unfragmented, unmasked text frame (RFC 6455 section 5.2), as a server sends it.

    The same bytes go to every connection, so no extension may rewrite frames: the factory
    declines permessage-deflate.
    """
    payload = text.encode()
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


def _initial_subscription(params: dict[str, list[str]]) -> wire.Subscribe | ProtocolError | None:
    """``?room=R&since=N`` on the URL subscribes at connect, for simple clients."""
    if "room" not in params:
        return None
    try:
        since = params.get("since", [None])[0]
        return wire.Subscribe(wire.parse_room(params["room"][0]), wire.parse_since(since))
    except ProtocolError as error:
        return error


class ChatWebSocketResource(WebSocketResource):
    """autobahn's resource, but a plain GET (no upgrade) gets a JSON 426, not autobahn's
    HTML page naming its version."""

    def render(self, request: Request) -> bytes:
        if (request.getHeader(b"upgrade") or b"").lower() != b"websocket":
            request.setHeader(b"upgrade", b"websocket")
            return error_body(request, ProtocolError("upgrade_required", "this is a WebSocket endpoint"))
        return super().render(request)


class ChatWebSocketFactory(WebSocketServerFactory):
    protocol = ChatWebSocketProtocol  # type: ignore[assignment]

    def __init__(
        self,
        hub: RoomHub,
        access_log: AccessLog,
        gate: ConnectionGate,
        *,
        origins: OriginPolicy,
        max_text_length: int = 4000,
        max_message_size: int = 64 * 1024,
        ping_interval: float = 20,
        ping_timeout: float = 20,
    ):
        # No Server header: versions are nobody's business.
        super().__init__(server=None)
        self.hub = hub
        self.access_log = access_log
        self.gate = gate
        self.delivered = 0
        self.slow_dropped = 0
        self._all_closed: list[Deferred[None]] = []
        self.origins = origins
        self.max_text_length = max_text_length
        self.connections: set[ChatWebSocketProtocol] = set()
        # The frames of the batch being fanned out, so that each subscriber after the first
        # gets them with one comparison.
        self._batch: Sequence[RoomEvent] = ()
        self._frames: list[bytes] = []
        # autobahn allows any size and any origin unless told otherwise; origins are checked
        # in check_origin, where the Host header is known.
        self.setProtocolOptions(
            maxMessagePayloadSize=max_message_size,
            maxFramePayloadSize=max_message_size,
            openHandshakeTimeout=5,
            closeHandshakeTimeout=1,
            # Say why (1007 bad UTF-8, 1009 too big) instead of just dropping the socket.
            failByDrop=False,
            # Heartbeats: a peer that stops answering pings is dropped, so half-open TCP
            # connections do not pile up.
            autoPingInterval=ping_interval,
            autoPingTimeout=ping_timeout,
            # Frames are built once and written as they are (text_frame), so no extension
            # that rewrites frames, such as permessage-deflate, may be negotiated.
            perMessageCompressionAccept=lambda _offers: None,
        )

    def frames_of(self, events: Sequence[RoomEvent]) -> list[bytes]:
        if events is not self._batch:
            self._batch = events
            self._frames = [event.encoded("ws", text_frame) for event in events]
        return self._frames

    def check_origin(self, request: ConnectionRequest) -> None:
        """Refuse cross-site handshakes: a browser always sends Origin, and the cookie rides along."""
        origin = request.headers.get("origin")
        if origin is None:
            if "cookie" in request.headers:
                raise ConnectionDeny(403, "Origin header required with a session cookie")
            return
        if not self.origins.allows(origin, request.headers.get("host", "")):
            raise ConnectionDeny(403, "cross-origin WebSocket refused")

    # --- connections --------------------------------------------------------------------

    def connection_opened(self, protocol: ChatWebSocketProtocol) -> None:
        self.connections.add(protocol)
        self.access_log.websocket_opened(protocol)

    def connection_closed(self, protocol: ChatWebSocketProtocol, code: int | None) -> None:
        if protocol not in self.connections:
            return
        self.connections.discard(protocol)
        self.access_log.websocket_closed(protocol, code)
        if not self.connections:
            waiters, self._all_closed = self._all_closed, []
            for waiter in waiters:
                waiter.callback(None)

    def going_away(self, reason: str) -> Deferred[None]:
        """Close every connection with 1001 (going away); fires when all are gone.

        autobahn's ``sendClose`` only lets applications send 1000 and 3000-4999, but 1001 is
        the code RFC 6455 gives a server that is going down, and clients reconnect on it.
        ``sendCloseFrame`` sends it with the same close handshake and timeout.
        """
        if not self.connections:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._all_closed.append(waiter)
        for protocol in list(self.connections):
            try:
                protocol.sendCloseFrame(code=1001, reasonUtf8=reason.encode()[:123], isReply=False)
            except Exception:
                log.exception("closing %s failed", protocol.peer)
                protocol.dropConnection(abort=True)
        return waiter
