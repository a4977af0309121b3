"""The chat over WebSocket (autobahn), one JSON object per text frame.

The factory is the store's single listener per room: it prepares each message's frame
once and hands the same bytes to every subscribed connection. A connection that
subscribes with ``since`` first catches up from history, buffering live messages, then
joins the live set; the cursor of the last id sent keeps both from overlapping.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Hashable, Sequence
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from . import wire
from .access import AccessLog
from .eager_write import queued_bytes, write_now
from .limits import ConnectionLimiter, SendRateLimiter
from .messages import Author, ChatMessage, deleted_event_json
from .sessions import SessionCache, session_key_from_cookies
from .store import MessageStore, StoreUnavailable, UnknownRoom

log = logging.getLogger(__name__)


# Close code for a connection dropped because it stopped reading (docs/protocol.md).
SLOW_CONSUMER_CLOSE_CODE = 4008


class ChatWebSocketProtocol(WebSocketServerProtocol):
    factory: ChatWebSocketFactory

    def __init__(self) -> None:
        super().__init__()
        self.author: Author | None = None
        self.session_key: str | None = None
        self.rooms: set[int] = set()
        self._initial: wire.Subscribe | wire.ProtocolError | None = None
        self._sends: Deferred[None] = succeed(None)
        self._open = False
        self._held: list[tuple[ConnectionLimiter, Hashable]] = []

    # --- handshake ----------------------------------------------------------------------

    def onConnect(self, request: ConnectionRequest) -> Deferred[None]:
        self.factory.check_origin(request)
        self.session_key = session_key_from_cookies(request.headers.get("cookie", ""))
        self._initial = _initial_subscription(request.params)
        return self.factory.sessions.author(self.session_key).addCallback(self._authenticated)

    def _authenticated(self, author: Author | None) -> None:
        self.author = author
        self._hold(self.factory.ip_connections, self.transport.getPeer().host, "address")
        if author is not None:
            self._hold(self.factory.user_connections, author.id, "user")

    def _hold(self, limiter: ConnectionLimiter, key: Hashable, what: str) -> None:
        if not limiter.acquire(key):
            raise ConnectionDeny(429, f"too many open connections for this {what}")
        self._held.append((limiter, key))

    def onOpen(self) -> None:
        self._open = True
        # After the upgrade the HTTP channel is still the transport's producer; take its
        # place, so that a full send buffer tells this connection to stop receiving.
        self.transport.unregisterProducer()
        self.transport.registerProducer(self, True)
        self.factory.connection_opened(self)
        initial, self._initial = self._initial, None
        if isinstance(initial, wire.ProtocolError):
            self.send_error(initial)
        elif initial is not None:
            self._subscribe(initial)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        held, self._held = self._held, []
        for limiter, key in held:
            limiter.release(key)
        if self._open:
            self._open = False
            self.factory.connection_closed(self, code)

    # --- IPushProducer: the transport's send buffer --------------------------------------

    def pauseProducing(self) -> None:
        self.factory.paused.add(self)

    def resumeProducing(self) -> None:
        self.factory.paused.discard(self)

    def stopProducing(self) -> None:
        self.factory.paused.discard(self)

    def queued_bytes(self) -> int:
        return queued_bytes(self.transport)

    def drop_slow_consumer(self) -> None:
        """Past the backlog limit: stop delivering, say why, and cut the connection.

        The client can reconnect and resume with ``since``; nothing is lost.
        """
        for room_id in list(self.rooms):
            self.factory.leave(self, room_id)
        self.rooms.clear()
        self.sendClose(SLOW_CONSUMER_CLOSE_CODE, "slow consumer: reconnect and resume with since")
        self.dropConnection(abort=True)

    # --- frames from the client ---------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            self._handle_frame(payload, isBinary)
        except Exception:
            # A bug must not cost the client its connection, nor anyone else theirs.
            log.exception("handling a WebSocket frame failed")
            self.send_error(wire.ProtocolError("internal_error", "the server failed", status=500))

    def _handle_frame(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self.send_error(wire.ProtocolError("bad_request", "binary frames are not supported"))
            return
        try:
            command = wire.parse_client_frame(payload, self.factory.max_text_length)
        except wire.ProtocolError as error:
            self.send_error(error)
            return
        if isinstance(command, wire.Send):
            # Sends run one after another per connection, so their ids keep their order.
            self._sends.addCallback(lambda _: self._send(command))
        elif isinstance(command, wire.Subscribe):
            self._subscribe(command)
        else:
            self._unsubscribe(command.room)

    def _subscribe(self, command: wire.Subscribe) -> None:
        room_id = command.room
        if room_id in self.rooms:
            self.factory.leave(self, room_id)
            self.rooms.discard(room_id)
        elif len(self.rooms) >= self.factory.max_rooms:
            self.send_error(
                wire.ProtocolError("too_many_rooms", f"at most {self.factory.max_rooms} rooms per connection")
            )
            return
        d = self.factory.store.open_room(room_id)
        d.addCallback(self._room_opened, command)
        d.addErrback(self._store_error, None)

    def _room_opened(self, info: Any, command: wire.Subscribe) -> Deferred[list[ChatMessage]] | None:
        if not self._open:
            return None
        if not info.readable_by(self.author):
            raise wire.ProtocolError("forbidden", "this room is private")
        store = self.factory.store
        room_id = command.room
        last = store.last_id(room_id)
        self.rooms.add(room_id)
        self.factory.begin_catch_up(self, room_id)
        self.send_json({"type": "subscribed", "room": room_id, "last": last})
        if command.since is None:
            backlog = store.read_latest(room_id, self.factory.recent_count)
            backlog.addCallback(self._catch_up, room_id, 0, False)
        else:
            since = min(command.since, last)
            backlog = store.read_after(room_id, since, self.factory.page_size)
            backlog.addCallback(self._catch_up, room_id, since, True)
        return backlog

    def _catch_up(
        self, messages: list[ChatMessage], room_id: int, cursor: int, paged: bool
    ) -> Deferred[Any] | None:
        if not self._open or room_id not in self.rooms:
            return None
        for message in messages:
            if message.id > cursor:
                self.send_frame(self.factory.text_frame(message.json))
                cursor = message.id
        if paged and len(messages) >= self.factory.page_size:
            more = self.factory.store.read_after(room_id, cursor, self.factory.page_size)
            return more.addCallback(self._catch_up, room_id, cursor, True)
        for message in self.factory.end_catch_up(self, room_id):
            if message.id > cursor:
                self.send_frame(self.factory.text_frame(message.json))
                cursor = message.id
        return None

    def _unsubscribe(self, room_id: int) -> None:
        if room_id in self.rooms:
            self.rooms.discard(room_id)
            self.factory.leave(self, room_id)
        self.send_json({"type": "unsubscribed", "room": room_id})

    def _send(self, command: wire.Send) -> Deferred[None]:
        d = self.factory.sessions.author(self.session_key)
        d.addCallback(self._send_as, command)
        d.addErrback(self._store_error, command.nonce or None)
        return d

    def _send_as(self, author: Author | None, command: wire.Send) -> Deferred[None] | None:
        self.author = author
        nonce = command.nonce or None
        if author is None:
            raise wire.ProtocolError("not_authenticated", "log in to post", nonce, 403)
        wait = self.factory.send_limiter.retry_after(author.id)
        if wait:
            raise wire.rate_limited(wait, nonce)
        store = self.factory.store
        return store.open_room(command.room).addCallback(self._append, author, command)

    def _append(self, info: Any, author: Author, command: wire.Send) -> None:
        if not info.readable_by(author):
            raise wire.ProtocolError("forbidden", "this room is private", command.nonce or None, 403)
        ack = self.factory.store.append(command.room, author, command.text, command.nonce)
        ack.addCallback(self._acknowledge, command)
        ack.addErrback(self._store_error, command.nonce or None)

    def _acknowledge(self, message_id: int, command: wire.Send) -> None:
        reply = {"type": "ack", "room": command.room, "id": message_id}
        if command.nonce:
            reply["nonce"] = command.nonce
        self.send_json(reply)

    def _store_error(self, failure: Failure, nonce: str | None) -> None:
        if failure.check(wire.ProtocolError):
            self.send_error(failure.value)
        elif failure.check(UnknownRoom):
            self.send_error(wire.ProtocolError("unknown_room", "no such room", nonce, 404))
        elif failure.check(StoreUnavailable):
            self.send_error(wire.ProtocolError("unavailable", str(failure.value), nonce, 503))
        else:
            log.error("WebSocket command failed: %s", failure.getTraceback())
            self.send_error(wire.ProtocolError("internal_error", "the server failed", nonce, 500))

    # --- frames to the client -----------------------------------------------------------

    def send_frame(self, frame: bytes) -> None:
        """Write one ready-made frame, unless a close has begun (shutdown, slow consumer, client).

        autobahn's sendMessage and sendPreparedMessage go through sendData, which formats
        three debug-log arguments (with click colours when click is installed) on every
        call; for a frame that is already built, only the write is needed.
        """
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            write_now(self.transport, frame)

    def send_json(self, obj: dict[str, Any]) -> None:
        self.send_frame(self.factory.text_frame(json.dumps(obj, separators=(",", ":"))))

    def send_error(self, error: wire.ProtocolError) -> None:
        self.send_json(error.as_ws_frame())


def _initial_subscription(params: dict[str, list[str]]) -> wire.Subscribe | wire.ProtocolError | None:
    """``?room=R&since=N`` on the URL subscribes at connect, for simple clients."""
    if "room" not in params:
        return None
    try:
        since = params.get("since", [None])[0]
        return wire.Subscribe(wire.parse_room(params["room"][0]), wire.parse_since(since))
    except wire.ProtocolError as error:
        return error


class ChatWebSocketFactory(WebSocketServerFactory):
    protocol = ChatWebSocketProtocol

    def __init__(
        self,
        store: MessageStore,
        sessions: SessionCache,
        access_log: AccessLog,
        send_limiter: SendRateLimiter,
        *,
        max_connections_per_user: int = 20,
        max_connections_per_ip: int = 200,
        allowed_origins: Sequence[str] = (),
        max_text_length: int = 4000,
        max_message_size: int = 64 * 1024,
        max_rooms: int = 50,
        recent_count: int = 50,
        page_size: int = 500,
        max_backlog: int = 1024 * 1024,
        ping_interval: float = 20,
        ping_timeout: float = 20,
    ):
        super().__init__()
        self.max_backlog = max_backlog
        self.delivered = 0
        self.slow_consumers_dropped = 0
        self._all_closed: list[Deferred[None]] = []
        self.store = store
        self.sessions = sessions
        self.access_log = access_log
        self.send_limiter = send_limiter
        self.user_connections = ConnectionLimiter(max_connections_per_user)
        self.ip_connections = ConnectionLimiter(max_connections_per_ip)
        self.allowed_origins = {origin.rstrip("/").lower() for origin in allowed_origins}
        self.max_text_length = max_text_length
        self.max_rooms = max_rooms
        self.recent_count = recent_count
        self.page_size = page_size
        self.connections: set[ChatWebSocketProtocol] = set()
        # Connections whose send buffer is over its high-water mark (they paused us).
        self.paused: set[ChatWebSocketProtocol] = set()
        self._live: dict[int, set[ChatWebSocketProtocol]] = {}
        self._catching_up: dict[int, dict[ChatWebSocketProtocol, list[ChatMessage]]] = {}
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

    def text_frame(self, text: str) -> bytes:
        """A server text frame, the same bytes for every connection (no extensions are accepted)."""
        return self.prepareMessage(text.encode()).payloadHybi

    def check_origin(self, request: ConnectionRequest) -> None:
        """Refuse cross-site handshakes: a browser always sends Origin, and the cookie rides along."""
        origin = request.headers.get("origin")
        if origin is None:
            if "cookie" in request.headers:
                raise ConnectionDeny(403, "Origin header required with a session cookie")
            return
        origin = origin.rstrip("/").lower()
        if origin in self.allowed_origins:
            return
        parts = urlsplit(origin)
        host = request.headers.get("host", "").lower()
        if parts.scheme in ("http", "https") and parts.netloc == host:
            return
        raise ConnectionDeny(403, "cross-origin WebSocket refused")

    # --- connections --------------------------------------------------------------------

    def connection_opened(self, protocol: ChatWebSocketProtocol) -> None:
        self.connections.add(protocol)
        self.access_log.websocket_opened(protocol)

    def connection_closed(self, protocol: ChatWebSocketProtocol, code: int | None) -> None:
        self.connections.discard(protocol)
        self.paused.discard(protocol)
        for room_id in protocol.rooms:
            self.leave(protocol, room_id)
        protocol.rooms.clear()
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

    # --- room membership ----------------------------------------------------------------

    def begin_catch_up(self, protocol: ChatWebSocketProtocol, room_id: int) -> None:
        if room_id not in self._live and room_id not in self._catching_up:
            self.store.subscribe(room_id, self)
        self._catching_up.setdefault(room_id, {})[protocol] = []

    def end_catch_up(self, protocol: ChatWebSocketProtocol, room_id: int) -> list[ChatMessage]:
        waiting = self._catching_up.get(room_id, {})
        buffered = waiting.pop(protocol, [])
        if not waiting:
            self._catching_up.pop(room_id, None)
        self._live.setdefault(room_id, set()).add(protocol)
        return buffered

    def leave(self, protocol: ChatWebSocketProtocol, room_id: int) -> None:
        live = self._live.get(room_id)
        if live is not None:
            live.discard(protocol)
            if not live:
                del self._live[room_id]
        waiting = self._catching_up.get(room_id)
        if waiting is not None:
            waiting.pop(protocol, None)
            if not waiting:
                del self._catching_up[room_id]
        if room_id not in self._live and room_id not in self._catching_up:
            self.store.unsubscribe(room_id, self)

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._live.values()) + sum(len(w) for w in self._catching_up.values())

    # --- RoomListener -------------------------------------------------------------------

    def messages_published(self, room_id: int, messages: Sequence[ChatMessage]) -> None:
        if self.paused:
            self._drop_slow_consumers()
        live = tuple(self._live.get(room_id, ()))
        waiting = self._catching_up.get(room_id)
        for message in messages:
            if live:
                frame = self.text_frame(message.json)
                for protocol in live:
                    protocol.send_frame(frame)
                self.delivered += len(live)
            if waiting:
                for buffer in waiting.values():
                    buffer.append(message)

    def _drop_slow_consumers(self) -> None:
        """Drop connections still too far behind when the next batch arrives.

        A batch is written to the transport in one reactor turn, so a healthy client may be
        briefly behind by a whole batch; one that has not drained by the next is slow.
        Memory per connection stays under the limit plus one batch plus the socket buffer.
        """
        slow = [p for p in self.paused if p.queued_bytes() > self.max_backlog]
        for protocol in slow:
            self.paused.discard(protocol)
            self.slow_consumers_dropped += 1
            log.warning("dropping slow consumer %s (%d bytes behind)", protocol.peer, protocol.queued_bytes())
            protocol.drop_slow_consumer()

    def message_removed(self, room_id: int, message_id: int) -> None:
        frame = self.text_frame(deleted_event_json(room_id, message_id))
        for protocol in (*self._live.get(room_id, ()), *self._catching_up.get(room_id, {})):
            protocol.send_frame(frame)
