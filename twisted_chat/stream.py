"""The chat as Server-Sent Events: ``GET /stream?room=R&since=N`` (``text/event-stream``),
or ``GET /stream?rooms=1:5,2:7`` for several rooms.

A thin adapter over the room core (``hub``), like the WebSocket and the long-poll: one
response held open per client, on the reactor. Each event is ``data:`` and the same JSON
object the other transports carry; on a one-room stream a message's event also has ``id:``
(its id), so the browser's ``EventSource`` resumes after any reconnect by sending
``Last-Event-ID``.

The bytes of a batch of events are built once per process, chunked framing included,
and written as they are to every stream of the room.

A stream ends by itself after about ``max_bytes`` (a buffering proxy could otherwise hold
it forever) and the client comes back from its last id; it is dropped when it falls
``max_backlog`` behind, as a WebSocket is. Comments every ``heartbeat`` seconds keep idle
proxies from closing it.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from . import wire
from .eager_write import queued_bytes, write_now
from .errors import ProtocolError, as_protocol_error
from .events import Author, ChatMessage, PresenceUpdate, RoomEvent
from .http_json import error_body, header_text, query_arg
from .hub import Client, Identity, RoomHub
from .origins import OriginPolicy
from .sessions import keys_from_cookies
from .site import can_answer

log = logging.getLogger(__name__)

_HEARTBEAT = b":\n\n"


def event_bytes(event: RoomEvent, with_id: bool = True) -> bytes:
    """One event as SSE: on a one-room stream a message carries its id, the stream's cursor."""
    if with_id and isinstance(event, ChatMessage):
        return event.encoded("sse", _message_event(event.id))
    return event.encoded("sse-data", _data_event)


def _message_event(message_id: int) -> Any:
    return lambda text: b"id: %d\ndata: %s\n\n" % (message_id, text.encode())


def _data_event(text: str) -> bytes:
    return b"data: %s\n\n" % text.encode()


def _json_event(obj: dict[str, Any]) -> bytes:
    return _data_event(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))


def _subscribed_event(room_id: int, last: int, present: PresenceUpdate | None) -> bytes:
    event = _json_event({"type": "subscribed", "room": room_id, "last": last})
    return event + (event_bytes(present) if present is not None else b"")


def _unsubscribed_event(room_id: int, error: ProtocolError) -> bytes:
    return _json_event(
        {"type": "unsubscribed", "room": room_id, "code": error.code, "message": error.message}
    )


def _chunk(data: bytes) -> bytes:
    """HTTP/1.1 chunked framing, which twisted.web would otherwise add at every write."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Stream:
    """One open ``GET /stream`` for one room, as the hub's client."""

    def __init__(self, resource: StreamResource, request: Request, room_id: int, since: int | None):
        self.resource = resource
        self.request = request
        self.room_id = room_id
        self.since = since
        self.client: Client | None = None
        # The room's newest id when subscribed; and whether an event has told the client
        # where it is (an ``id:``), which a reconnect sends back as Last-Event-ID.
        self.last = 0
        self.placed = False
        self.live = False
        self.open = False  # the 200 and its headers are sent
        self.done = False
        self.sent = 0
        # Streams that opened together get the same bytes: each ends at its own point
        # between 3/4 of the bound and the bound, so that they do not all come back at once.
        self.max_bytes = resource.max_bytes - random.randrange(resource.max_bytes // 4 + 1)
        request.notifyFinish().addBoth(self._finished)

    @property
    def _tcp(self) -> Any:
        return self.request.channel.transport

    def start(self, client: Client) -> None:
        client.subscribe(self.room_id, self.since)

    def _finished(self, _: object) -> None:
        """The stream ended, or the client left: either way it is over."""
        self.done = True
        self.resource.streams.discard(self)
        if self.client is not None:
            self.client.close()

    def fail(self, error: ProtocolError) -> None:
        """Before the stream opened: a JSON error with its status; after: an error event."""
        if self.done:
            return
        if self.open:
            self.end(_json_event(error.as_ws_frame()))
            return
        self.done = True
        if self.client is not None:
            self.client.close()
        if can_answer(self.request):
            body = error_body(self.request, error)
            self.request.setHeader(b"content-length", str(len(body)).encode())
            self.request.write(body)
            self.request.finish()

    def end(self, last: bytes, error: ProtocolError | None = None) -> None:
        """Close the stream after ``last``; the browser reconnects after its retry delay.

        Before the stream opened there is no stream to close: ``error`` is the answer.
        """
        if self.done:
            return
        if not self.open:
            self.fail(error or ProtocolError("unavailable", "the stream ended: reconnect"))
            return
        self.done = True
        if self.client is not None:
            self.client.close()
        if can_answer(self.request):
            self.write(last)
            self.request.unregisterProducer()
            self.request.finish()

    def write(self, data: bytes) -> None:
        """Write ready-made event bytes straight to the connection (see ``eager_write``)."""
        self.sent += len(data)
        write_now(self._tcp, _chunk(data) if self.request.chunked else data)

    def write_shared(self, data: bytes, chunked: bytes) -> None:
        self.sent += len(data)
        write_now(self._tcp, chunked if self.request.chunked else data)
        if self.sent >= self.max_bytes:
            self.resource.recycled += 1
            self.end(b"retry: %d\n\n" % self.resource.recycle_retry_ms)

    # --- IPushProducer: the connection's send buffer ---------------------------------------

    def pauseProducing(self) -> None:
        if self.client is not None:
            self.client.paused()

    def resumeProducing(self) -> None:
        if self.client is not None:
            self.client.resumed()

    def stopProducing(self) -> None:
        if self.client is not None:
            self.client.resumed()

    # --- the hub's ClientSink -------------------------------------------------------------

    def open_stream(self) -> bool:
        """Send the 200 and its headers; from now on errors are events."""
        if self.done or not can_answer(self.request):
            return False
        request = self.request
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        # no-transform: a proxy that compresses would hold events back to fill its blocks.
        request.setHeader(b"cache-control", b"no-store, no-transform")
        request.setHeader(b"x-content-type-options", b"nosniff")
        # nginx buffers responses unless told otherwise, per response.
        request.setHeader(b"x-accel-buffering", b"no")
        self.open = True
        # The first write sends the head; later ones go straight to the connection.
        request.write(b"")
        request.registerProducer(self, True)
        self.resource.streams.add(self)
        self.resource.beat_while_open()
        return True

    def subscribed(self, room_id: int, last: int, present: PresenceUpdate | None) -> None:
        # One room: the stream opens once the room is known to be readable, so that a
        # refusal is an HTTP status.
        if not self.open_stream():
            return
        preamble = b"retry: %d\n" % self.resource.retry_ms
        self.last = last
        if self.since is not None:
            # Resuming: the cursor is known now, whether or not a message follows.
            preamble += b"id: %d\n" % min(self.since, last)
            self.placed = True
        self.write(preamble + _subscribed_event(room_id, last, present))

    def deliver(self, room_id: int, events: Sequence[RoomEvent]) -> None:
        if self.done:
            return
        if not self.live and not self.placed:
            self.placed = any(isinstance(event, ChatMessage) for event in events)
        data, chunked = self.resource.bytes_of(events)
        self.resource.delivered += len(events)
        self.write_shared(data, chunked)

    def caught_up(self, room_id: int) -> None:
        """Live events follow the history on the same stream. If no message placed the
        client (an empty room, latest 50 asked), an ``id:`` alone does, so that a
        reconnect does not ask for the latest 50 again."""
        self.live = True
        if not self.placed and not self.done:
            self.placed = True
            self.write(b"id: %d\n\n" % self.last)

    def subscribe_failed(self, room_id: int, error: ProtocolError) -> None:
        self.fail(error)

    def subscription_ended(self, room_id: int, error: ProtocolError) -> None:
        self.end(_unsubscribed_event(room_id, error), error)

    def session_ended(self) -> None:
        """The browser logged out or in: its ``EventSource`` comes back at once with the
        cookie it has now."""
        error = ProtocolError("session_ended", "the session changed: reconnect")
        self.end(b"retry: 0\n" + _json_event(error.as_ws_frame()), error)

    def disconnected(self, error: ProtocolError) -> None:
        """A moderator ended the stream: the browser is told not to come back."""
        self.end(b"retry: 86400000\n" + _json_event(error.as_ws_frame()), error)

    def queued_bytes(self) -> int:
        return queued_bytes(self._tcp)

    def drop_slow(self) -> None:
        """The client resumes from its last id; nothing is lost."""
        self.resource.slow_dropped += 1
        self.done = True
        self._tcp.abortConnection()


class _RoomsStream(_Stream):
    """``GET /stream?rooms=1:5,2:7``: one stream for several rooms, as a page with a sidebar
    reads. It carries no ``id:`` lines (one cursor cannot say where each room is): the
    client keeps a cursor per room and reconnects itself, with them in the URL.

    The stream opens at once; a room that cannot be read, or stops being readable, is an
    ``unsubscribed`` event and the others carry on."""

    def __init__(self, resource: StreamResource, request: Request, rooms: dict[int, int | None]):
        super().__init__(resource, request, next(iter(rooms)), None)
        self.rooms = rooms
        self.carried = set(rooms)

    def start(self, client: Client) -> None:
        if self.open_stream():
            self.write(b"retry: %d\n\n" % self.resource.retry_ms)
            for room_id, since in self.rooms.items():
                client.subscribe(room_id, since)

    def subscribed(self, room_id: int, last: int, present: PresenceUpdate | None) -> None:
        if not self.done:
            self.write(_subscribed_event(room_id, last, present))

    def deliver(self, room_id: int, events: Sequence[RoomEvent]) -> None:
        if self.done:
            return
        data, chunked = self.resource.bytes_of(events, with_ids=False)
        self.resource.delivered += len(events)
        self.write_shared(data, chunked)

    def caught_up(self, room_id: int) -> None:
        """Nothing to place: the client's cursors come from the events' own ids."""

    def subscribe_failed(self, room_id: int, error: ProtocolError) -> None:
        self.subscription_ended(room_id, error)

    def subscription_ended(self, room_id: int, error: ProtocolError) -> None:
        self.carried.discard(room_id)
        if self.carried:
            if not self.done:
                self.write(_unsubscribed_event(room_id, error))
        else:
            self.end(_unsubscribed_event(room_id, error), error)


class StreamResource(Resource):
    isLeaf = True

    def __init__(
        self,
        reactor: Any,
        hub: RoomHub,
        origins: OriginPolicy,
        *,
        max_bytes: int = 256 * 1024,
        heartbeat: float = 15,
        retry_ms: int = 2000,
        recycle_retry_ms: int = 100,
        linger: float = 10,
    ):
        super().__init__()
        # A stream's user stays present over its reconnects (recycling, a dropped line).
        self.linger = linger
        self.reactor = reactor
        self._hub = hub
        self._origins = origins
        self.max_bytes = max_bytes
        self.retry_ms = retry_ms
        self.recycle_retry_ms = recycle_retry_ms
        self.streams: set[_Stream] = set()
        self.delivered = 0
        self.recycled = 0
        self.slow_dropped = 0
        self._heartbeat_interval = heartbeat
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = reactor
        # The bytes built for the batch being fanned out.
        self._batch: Sequence[RoomEvent] = ()
        self._bytes: dict[bool, tuple[bytes, bytes]] = {}

    def render(self, request: Request) -> bytes | int:
        if request.method != b"GET":
            request.setHeader(b"allow", b"GET")
            return error_body(request, ProtocolError("method_not_allowed", "use GET to stream"))
        try:
            stream = self._parse(request)
        except ProtocolError as error:
            return error_body(request, error)
        session_key, browser_key = keys_from_cookies(header_text(request, b"cookie"))
        identity = Identity(session_key, browser_key)
        d = self._hub.authenticate(session_key).addCallback(self._admit, stream, identity)
        d.addErrback(lambda failure: stream.fail(as_protocol_error(failure)))
        return NOT_DONE_YET

    def _parse(self, request: Request) -> _Stream:
        self._origins.check(request, "stream")
        rooms = query_arg(request, b"rooms")
        if rooms is not None:
            return _RoomsStream(self, request, wire.parse_rooms(rooms, self._hub.max_rooms_per_client))
        room_id = wire.parse_room(query_arg(request, b"room"))
        # EventSource sends the id of the last event it received when it reconnects, to
        # the URL it first opened: that id is the newer cursor.
        last_event_id = request.getHeader(b"last-event-id")
        if last_event_id is not None:
            since = wire.parse_since(last_event_id.decode("latin-1").strip())
        else:
            since = wire.parse_since(query_arg(request, b"since"))
        return _Stream(self, request, room_id, since)

    def _admit(self, author: Author | None, stream: _Stream, identity: Identity) -> None:
        if stream.done:
            return
        identity.author = author
        d = self._hub.connect(stream, identity, self.linger).addCallback(self._connected, stream)
        d.addErrback(lambda failure: stream.fail(as_protocol_error(failure)))

    def _connected(self, client: Client, stream: _Stream) -> None:
        if stream.done:  # the client left while it was being admitted
            client.close()
            return
        stream.client = client
        stream.start(client)

    def bytes_of(self, events: Sequence[RoomEvent], with_ids: bool = True) -> tuple[bytes, bytes]:
        """A batch's events, plain and as one HTTP chunk, shared by every stream it reaches."""
        if events is not self._batch:
            self._batch, self._bytes = events, {}
        built = self._bytes.get(with_ids)
        if built is None:
            data = b"".join([event_bytes(event, with_ids) for event in events])
            built = self._bytes[with_ids] = (data, _chunk(data))
        return built

    def beat_while_open(self) -> None:
        if not self._heartbeat.running and self._heartbeat_interval > 0:
            self._heartbeat.start(self._heartbeat_interval, now=False)

    def _beat(self) -> None:
        if not self.streams:
            self._heartbeat.stop()
            return
        chunked = _chunk(_HEARTBEAT)
        for stream in list(self.streams):
            stream.write_shared(_HEARTBEAT, chunked)

    def release_all(self) -> None:
        """End every stream (shutdown). Each comes back after its own random delay, so
        that the clients of a restarting server do not all return in the same instant."""
        for stream in list(self.streams):
            stream.end(b"retry: %d\n\n" % random.randint(self.retry_ms // 2, self.retry_ms * 2))
        if self._heartbeat.running:
            self._heartbeat.stop()
