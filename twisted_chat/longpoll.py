"""The chat over HTTP long-poll: ``GET /poll`` waits for messages, ``POST /poll`` sends one.

A thin adapter over the room core (``hub``). Each GET is a client of the hub for the time
it runs, counted against the same connection limits as a WebSocket: it subscribes from
``since``, and is answered by the first events it gets, or empty when its time is up. The
poll bodies of one batch are built once per cursor, however many polls are parked on it.
A client that leaves while parked is forgotten at once.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from django.core.exceptions import BadRequest, SuspiciousOperation
from django.http.multipartparser import MultiPartParserError
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from . import wire
from .errors import ProtocolError, as_protocol_error
from .events import Author, ChatMessage, PresenceUpdate, RoomEvent
from .http_json import error_body, header_text, json_body, query_arg
from .hub import Client, Identity, RoomHub
from .origins import OriginPolicy
from .sessions import CsrfRejected, authenticate_form_post, keys_from_cookies
from .site import can_answer

log = logging.getLogger(__name__)


# A plain (optionally dotted) JavaScript identifier: nothing that could end the call early.
_JS_IDENTIFIER = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]{0,63}(\.[A-Za-z_$][A-Za-z0-9_$]{0,63}){0,4}$")


class _Poll:
    """One GET as the hub's client: answered by its first events, an error, or its timeout."""

    def __init__(
        self, resource: LongPollResource, request: Request, room_id: int, since: int | None, timeout: float
    ):
        self.resource = resource
        self.request = request
        self.room_id = room_id
        self.since = since
        self.timeout = timeout
        self.cursor = 0
        self.events: list[RoomEvent] = []
        self.client: Client | None = None
        self.timer: Any = None
        self.done = False
        request.notifyFinish().addBoth(self._finished)

    def _finished(self, _: object) -> None:
        """The response is sent, or the client left: either way, this poll is over."""
        self.done = True
        self._release()

    def _release(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if self.client is not None:
            self.client.close()
        self.resource.parked.discard(self)

    def answer(self, body: bytes, error: ProtocolError | None = None) -> None:
        if self.done:
            return
        self.done = True
        self._release()
        if error is not None:
            _finish_error(self.request, error)
        else:
            _finish(self.request, body)

    # --- the hub's ClientSink -------------------------------------------------------------

    def subscribed(self, room_id: int, last: int, present: PresenceUpdate | None) -> None:
        """Who is present goes in the answer as it is then, not as it is now."""
        self.cursor = last if self.since is None else min(self.since, last)

    def deliver(self, room_id: int, events: Sequence[RoomEvent]) -> None:
        if self.since is None:
            self.events.extend(events)
            return
        body, delivered = self.resource.body_after(room_id, self.cursor, events)
        self.resource.delivered += delivered
        self.answer(body)

    def caught_up(self, room_id: int) -> None:
        if self.since is None:
            body, delivered = self.resource.body_after(room_id, 0, self.events, self.cursor)
            self.resource.delivered += delivered
            self.answer(body)
        elif self.timeout <= 0:
            self.expire()
        else:
            self.resource.parked.add(self)
            self.timer = self.resource.reactor.callLater(self.timeout, self.expire)

    def expire(self) -> None:
        self.answer(self.resource.empty_body(self.room_id, self.cursor))

    def subscribe_failed(self, room_id: int, error: ProtocolError) -> None:
        self.answer(b"", error)

    def subscription_ended(self, room_id: int, error: ProtocolError) -> None:
        self.answer(b"", error)

    def session_ended(self) -> None:
        self.answer(b"", ProtocolError("session_ended", "the session changed: poll again"))

    def disconnected(self, error: ProtocolError) -> None:
        self.answer(b"", error)

    def queued_bytes(self) -> int:
        return 0

    def drop_slow(self) -> None:
        """A poll holds one response; it cannot fall behind."""


class _RoomsPoll(_Poll):
    """One GET for several rooms (``rooms=1:5,2:7``), as a page with a sidebar polls: one
    connection, one subscription per room, answered as soon as any room has news."""

    def __init__(
        self, resource: LongPollResource, request: Request, rooms: dict[int, int | None], timeout: float
    ):
        super().__init__(resource, request, next(iter(rooms)), None, timeout)
        self.sinces = rooms
        self.cursors: dict[int, int] = {}
        self.found: dict[int, list[RoomEvent]] = {room_id: [] for room_id in rooms}
        self.errors: dict[int, ProtocolError] = {}
        self.waiting = set(rooms)
        self.count = 0

    def subscribe_all(self, client: Client) -> None:
        for room_id, since in self.sinces.items():
            client.subscribe(room_id, since)

    def subscribed(self, room_id: int, last: int, present: PresenceUpdate | None) -> None:
        since = self.sinces[room_id]
        self.cursors[room_id] = last if since is None else min(since, last)

    def deliver(self, room_id: int, events: Sequence[RoomEvent]) -> None:
        self.found[room_id].extend(events)
        self.count += len(events)
        # Live news, or a page of history: the rooms still catching up carry on next poll.
        if not self.waiting or self.count >= self.resource.page_size:
            self.answer_now()

    def caught_up(self, room_id: int) -> None:
        self._settled(room_id)

    def subscribe_failed(self, room_id: int, error: ProtocolError) -> None:
        self.errors[room_id] = error
        self._settled(room_id)

    def subscription_ended(self, room_id: int, error: ProtocolError) -> None:
        self.errors[room_id] = error
        self.answer_now()

    def _settled(self, room_id: int) -> None:
        self.waiting.discard(room_id)
        if self.waiting:
            return
        if self.errors or any(self.found.values()) or self.timeout <= 0:
            self.answer_now()
        else:
            self.resource.parked.add(self)
            self.timer = self.resource.reactor.callLater(self.timeout, self.expire)

    def expire(self) -> None:
        self.answer_now()

    def answer_now(self) -> None:
        if self.done:
            return
        answers = []
        for room_id in self.sinces:
            error = self.errors.get(room_id)
            if error is not None:
                answers.append(f'{{"room":{room_id},"error":{json.dumps(error.as_http_body()["error"])}}}')
                continue
            cursor = self.cursors.get(room_id)
            if cursor is None:
                continue  # not subscribed yet: the client keeps its cursor
            events = self.found[room_id]
            messages = [e for e in events if isinstance(e, ChatMessage)]
            last = messages[-1].id if messages else cursor
            answers.append(_messages_body(room_id, last, events, self.resource.present(room_id)).decode())
        self.resource.delivered += sum(len(events) for events in self.found.values())
        self.answer(f'{{"rooms":[{",".join(answers)}]}}'.encode())


class LongPollResource(Resource):
    isLeaf = True

    def __init__(
        self,
        reactor: Any,
        hub: RoomHub,
        run_query: Any,
        origins: OriginPolicy,
        *,
        jsonp: bool = False,
        max_text_length: int = 4000,
        default_timeout: float = 25,
        max_timeout: float = 60,
        max_response_chars: int = 1024 * 1024,
        grace: float = 30,
    ):
        super().__init__()
        self.reactor = reactor
        self.page_size = hub.page_size
        # A poller stays present this long after its last poll ended.
        self._grace = grace
        self._hub = hub
        self._run_query = run_query
        self._origins = origins
        self._jsonp = jsonp
        self._max_text_length = max_text_length
        # Room for the longest text however it is encoded, and the other fields.
        self._max_body = max_text_length * wire.MAX_BYTES_PER_CHAR + 4096
        self._max_timeout = max_timeout
        self._max_response_chars = max_response_chars
        self._default_timeout = min(default_timeout, max_timeout)
        self.parked: set[_Poll] = set()
        self.delivered = 0
        # The bodies built for the batch being fanned out, by cursor.
        self._batch: Sequence[RoomEvent] | None = None
        self._bodies: dict[int, tuple[bytes, int]] = {}

    @property
    def parked_count(self) -> int:
        return len(self.parked)

    def render(self, request: Request) -> bytes | int:
        if request.method not in (b"GET", b"HEAD", b"POST"):
            request.setHeader(b"allow", b"GET, HEAD, POST")
            return error_body(request, ProtocolError("method_not_allowed", "use GET to poll or POST to send"))
        return super().render(request)

    # --- GET: wait for messages ---------------------------------------------------------

    def render_GET(self, request: Request) -> bytes | int:
        try:
            self._origins.check(request, "poll")
            rooms_arg = query_arg(request, b"rooms")
            rooms = (
                wire.parse_rooms(rooms_arg, self._hub.max_rooms_per_client) if rooms_arg is not None else None
            )
            room_id = next(iter(rooms)) if rooms else wire.parse_room(query_arg(request, b"room"))
            since_arg = query_arg(request, b"since")
            if since_arg is None:
                since_arg = query_arg(request, b"lastupdate")
            since = wire.parse_since(since_arg)
            timeout = self._parse_timeout(query_arg(request, b"timeout"))
            callback = query_arg(request, b"callback") if self._jsonp else None
            if callback is not None and not _JS_IDENTIFIER.match(callback):
                raise ProtocolError("bad_request", "'callback' must be a JavaScript identifier")
        except ProtocolError as error:
            return error_body(request, error)
        if callback is not None:
            request.jsonp_callback = callback.encode()  # type: ignore[attr-defined]
            # A script tag sends the reader's cookies from any site: JSONP is always anonymous.
            session_key = browser_key = None
        else:
            session_key, browser_key = keys_from_cookies(header_text(request, b"cookie"))
        identity = Identity(session_key, browser_key)
        poll = (
            _RoomsPoll(self, request, rooms, timeout)
            if rooms
            else _Poll(self, request, room_id, since, timeout)
        )
        if session_key is None:
            self._subscribe(None, poll, identity)
        else:
            d = self._hub.authenticate(session_key).addCallback(self._subscribe, poll, identity)
            d.addErrback(lambda failure: poll.answer(b"", as_protocol_error(failure)))
        return NOT_DONE_YET

    def _subscribe(self, author: Author | None, poll: _Poll, identity: Identity) -> None:
        if poll.done:
            return
        identity.author = author
        d = self._hub.connect(poll, identity, self._grace).addCallback(self._connected, poll)
        d.addErrback(lambda failure: poll.answer(b"", as_protocol_error(failure)))

    def _connected(self, client: Client, poll: _Poll) -> None:
        if poll.done:  # the client left while it was being admitted
            client.close()
            return
        poll.client = client
        if isinstance(poll, _RoomsPoll):
            poll.subscribe_all(client)
        else:
            client.subscribe(poll.room_id, poll.since)

    def _parse_timeout(self, value: str | None) -> float:
        if value is None:
            return self._default_timeout
        try:
            timeout = float(value)
        except ValueError:
            raise ProtocolError("bad_request", "'timeout' must be a number of seconds") from None
        if not 0 <= timeout < float("inf"):
            raise ProtocolError("bad_request", "'timeout' must be a number of seconds")
        return min(timeout, self._max_timeout)

    def body_after(
        self, room_id: int, cursor: int, events: Sequence[RoomEvent], last: int | None = None
    ) -> tuple[bytes, int]:
        """The answer to a poll at ``cursor`` (the events after it, cut to the size bound),
        and how many messages it carries.

        Polls parked on the same batch share one body per cursor.
        """
        if events is not self._batch:
            self._batch, self._bodies = events, {}
        answer = self._bodies.get(cursor)
        if answer is None:
            fresh = self._fit([e for e in events if not isinstance(e, ChatMessage) or e.id > cursor])
            messages = [e for e in fresh if isinstance(e, ChatMessage)]
            newest = messages[-1].id if messages else (cursor if last is None else last)
            body = _messages_body(room_id, newest, fresh, self.present(room_id))
            answer = self._bodies[cursor] = (body, len(messages))
        return answer

    def empty_body(self, room_id: int, cursor: int) -> bytes:
        return _messages_body(room_id, cursor, [], self.present(room_id))

    def present(self, room_id: int) -> str:
        """Who is in the room as the answer is sent, as a JSON list; the presence events
        in the same answer happened before it."""
        presence = self._hub.presence
        users = presence.users(room_id) if presence is not None else ()
        return json.dumps(users, ensure_ascii=False, separators=(",", ":"))

    def _fit(self, events: Sequence[RoomEvent]) -> Sequence[RoomEvent]:
        """Cut a page so that a response stays near the size bound (always one event)."""
        size = 0
        for index, event in enumerate(events):
            size += len(event.json) + 1
            if size > self._max_response_chars and index > 0:
                return events[:index]
        return events

    def release_all(self) -> None:
        """Answer every parked poll now (shutdown): clients poll again elsewhere or later."""
        for poll in list(self.parked):
            poll.expire()

    # --- POST: send a message -----------------------------------------------------------

    def render_POST(self, request: Request) -> bytes | int:
        assert request.content is not None, "twisted.web gives every request a body"
        body = request.content.read(self._max_body + 1)
        if len(body) > self._max_body:
            error = ProtocolError("too_large", f"'text' is over {self._max_text_length} characters")
            return error_body(request, error)
        environ = _wsgi_environ(request, body)
        d = self._run_query(_authenticate_and_read, environ)
        d.addCallback(self._post, request)
        d.addErrback(self._fail, request)
        return NOT_DONE_YET

    def _post(self, result: tuple[Author | None, dict[str, Any]], request: Request) -> Deferred[None] | None:
        """Send a message (the default), edit or delete one, or say that one is typing."""
        author, fields = result
        if "text" not in fields and "new_message" in fields:
            fields["text"] = fields["new_message"]  # the original tutorial's field
        command = wire.parse_write(fields.get("type", "send"), fields, self._max_text_length)
        if isinstance(command, wire.Typing):
            if author is None:
                raise ProtocolError("not_authenticated", "log in to post")
            self._hub.typing(author, command.room)
            _finish(request, json_body(request, {"room": command.room}))
            return None
        ack: Deferred[int] = Deferred()
        if isinstance(command, wire.Send):
            self._hub.post(author, command.room, command.text, command.nonce, ack)
        else:
            self._hub.change(author, command.kind, command.room, command.id, command.text, command.nonce, ack)
        return ack.addCallback(
            lambda entry_id: _finish(request, json_body(request, wire.ack(command, entry_id)))
        )

    def _fail(self, failure: Failure, request: Request) -> None:
        if failure.check(CsrfRejected):
            error = ProtocolError("csrf_failed", str(failure.value))
        else:
            error = as_protocol_error(failure)
        _finish_error(request, error)


def _authenticate_and_read(environ: dict[str, Any]) -> tuple[Author | None, dict[str, Any]]:
    """In a database thread: Django's session and CSRF checks, then the posted fields."""
    try:
        return _read_fields(*authenticate_form_post(environ))
    except (MultiPartParserError, SuspiciousOperation, BadRequest) as error:
        # Django's CSRF check parses the body first; a malformed one fails there.
        raise ProtocolError("bad_request", f"unreadable body: {error}") from None


def _read_fields(author: Author | None, django_request: Any) -> tuple[Author | None, dict[str, Any]]:
    content_type = django_request.content_type
    if content_type == "application/json":
        fields = wire.parse_json(django_request.body, "body")
        if not isinstance(fields, dict):
            raise ProtocolError("bad_request", "body must be a JSON object")
        return author, fields
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return author, {key: django_request.POST.get(key) for key in django_request.POST}
    raise ProtocolError("unsupported_media_type", "send application/json or a form")


def _messages_body(room_id: int, last: int, events: Sequence[RoomEvent], present: str) -> bytes:
    listed = ",".join(e.json for e in events)
    return f'{{"room":{room_id},"last":{last},"messages":[{listed}],"presence":{present}}}'.encode()


def _finish_error(request: Request, error: ProtocolError) -> None:
    _finish(request, error_body(request, error))


def _finish(request: Request, body: bytes) -> None:
    """Answer unless the client has already left (finish() after that raises)."""
    if not can_answer(request):
        return
    callback = getattr(request, "jsonp_callback", None)
    if callback is not None and request.code == 200:
        body = b"/**/" + callback + b"(" + body + b");"
        request.setHeader(b"content-type", b"application/javascript; charset=utf-8")
    else:
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"content-length", str(len(body)).encode())
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


def _wsgi_environ(request: Request, body: bytes) -> dict[str, Any]:
    """Enough of a WSGI environ for Django's session and CSRF middleware to judge a POST."""
    uri = request.uri
    query = uri.split(b"?", 1)[1] if b"?" in uri else b""
    host = request.getHost()
    client = request.getClientAddress()
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method.decode("latin-1"),
        "SCRIPT_NAME": "",
        "PATH_INFO": request.path.decode("latin-1"),
        "QUERY_STRING": query.decode("latin-1"),
        "SERVER_NAME": getattr(host, "host", "localhost"),
        "SERVER_PORT": str(getattr(host, "port", 80)),
        "SERVER_PROTOCOL": request.clientproto.decode("latin-1"),
        "REMOTE_ADDR": getattr(client, "host", ""),
        "CONTENT_TYPE": header_text(request, b"content-type"),
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "https" if request.isSecure() else "http",
    }
    for name, values in request.requestHeaders.getAllRawHeaders():
        key = name.decode("latin-1").upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ["HTTP_" + key] = ",".join(v.decode("latin-1") for v in values)
    return environ
