"""The chat over HTTP long-poll: ``GET /poll`` waits for messages, ``POST /poll`` sends one.

A poll with nothing new is parked, not polled: the resource is the store's listener for
rooms with parked requests and answers all of them the moment a message is published,
encoding the response once. A client that leaves while parked is forgotten at once.
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
from .http_json import error_body, json_body
from .limits import SendRateLimiter
from .messages import Author, ChatMessage, deleted_event_json
from .sessions import CsrfRejected, SessionCache, authenticate_form_post, session_key_from_cookies
from .store import MessageStore, RoomInfo, StoreUnavailable, UnknownRoom

log = logging.getLogger(__name__)


# A plain (optionally dotted) JavaScript identifier: nothing that could end the call early.
_JS_IDENTIFIER = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]{0,63}(\.[A-Za-z_$][A-Za-z0-9_$]{0,63}){0,4}$")


class _Parked:
    __slots__ = ("request", "since", "timer")

    def __init__(self, request: Request, since: int, timer: Any):
        self.request = request
        self.since = since
        self.timer = timer


class LongPollResource(Resource):
    isLeaf = True

    def __init__(
        self,
        reactor: Any,
        store: MessageStore,
        sessions: SessionCache,
        run_query: Any,
        send_limiter: SendRateLimiter,
        *,
        jsonp: bool = False,
        max_text_length: int = 4000,
        recent_count: int = 50,
        page_size: int = 500,
        default_timeout: float = 25,
        max_timeout: float = 60,
        max_response_chars: int = 1024 * 1024,
    ):
        super().__init__()
        self._reactor = reactor
        self._store = store
        self._sessions = sessions
        self._run_query = run_query
        self._send_limiter = send_limiter
        self._jsonp = jsonp
        self._max_text_length = max_text_length
        self._max_body = max_text_length * 4 + 4096
        self._recent_count = recent_count
        self._page_size = page_size
        self._max_timeout = max_timeout
        self._max_response_chars = max_response_chars
        self._default_timeout = min(default_timeout, max_timeout)
        self._parked: dict[int, dict[Request, _Parked]] = {}
        self.delivered = 0

    @property
    def parked_count(self) -> int:
        return sum(len(waiters) for waiters in self._parked.values())

    def render(self, request: Request) -> bytes | int:
        if request.method not in (b"GET", b"HEAD", b"POST"):
            request.setHeader(b"allow", b"GET, HEAD, POST")
            return error_body(request, 405, "method_not_allowed", "use GET to poll or POST to send")
        return super().render(request)

    # --- GET: wait for messages ---------------------------------------------------------

    def render_GET(self, request: Request) -> bytes | int:
        try:
            room_id = wire.parse_room(_arg(request, b"room"))
            since_arg = _arg(request, b"since")
            since = wire.parse_since(since_arg if since_arg is not None else _arg(request, b"lastupdate"))
            timeout = self._parse_timeout(_arg(request, b"timeout"))
            callback = _arg(request, b"callback") if self._jsonp else None
            if callback is not None and not _JS_IDENTIFIER.match(callback):
                raise wire.ProtocolError("bad_request", "'callback' must be a JavaScript identifier")
        except wire.ProtocolError as error:
            return error_body(request, error.status, error.code, error.message)
        if callback is not None:
            request.jsonp_callback = callback.encode()
        d = self._store.open_room(room_id)
        d.addCallback(self._check_readable, request, callback)
        d.addCallback(self._read, request, room_id, since, timeout)
        d.addErrback(self._fail, request)
        return NOT_DONE_YET

    def _parse_timeout(self, value: str | None) -> float:
        if value is None:
            return self._default_timeout
        try:
            timeout = float(value)
        except ValueError:
            raise wire.ProtocolError("bad_request", "'timeout' must be a number of seconds") from None
        if not 0 <= timeout < float("inf"):
            raise wire.ProtocolError("bad_request", "'timeout' must be a number of seconds")
        return min(timeout, self._max_timeout)

    def _check_readable(
        self, info: RoomInfo, request: Request, callback: str | None
    ) -> Deferred[None] | None:
        if not info.is_private:
            return None
        if callback is not None:
            raise wire.ProtocolError("forbidden", "private rooms are never served over JSONP", status=403)
        session_key = session_key_from_cookies(_header(request, b"cookie"))

        def check(author: Author | None) -> None:
            if not info.readable_by(author):
                raise wire.ProtocolError("forbidden", "this room is private", status=403)

        return self._sessions.author(session_key).addCallback(check)

    def _read(self, _: None, request: Request, room_id: int, since: int | None, timeout: float):
        if since is None:
            latest = self._store.read_latest(room_id, self._recent_count)
            return latest.addCallback(self._answer_latest, request, room_id)
        since = min(since, self._store.last_id(room_id))
        after = self._store.read_after(room_id, since, self._page_size)
        return after.addCallback(self._answer_or_park, request, room_id, since, timeout)

    def _fit(self, messages: Sequence[ChatMessage]) -> Sequence[ChatMessage]:
        """Cut a page so that a response stays near the size bound (always one message)."""
        size = 0
        for index, message in enumerate(messages):
            size += len(message.json) + 1
            if size > self._max_response_chars and index > 0:
                return messages[:index]
        return messages

    def _answer_latest(self, messages: list[ChatMessage], request: Request, room_id: int) -> None:
        messages = self._fit(messages)
        last = messages[-1].id if messages else self._store.last_id(room_id)
        _finish(request, _messages_body(room_id, last, messages))

    def _answer_or_park(
        self, messages: list[ChatMessage], request: Request, room_id: int, since: int, timeout: float
    ) -> Deferred[None] | None:
        if messages:
            page = self._fit(messages)
            _finish(request, _messages_body(room_id, page[-1].id, page))
            return None
        if self._store.last_id(room_id) > since:
            # Published while the read was in flight: read again rather than wait.
            return self._read(None, request, room_id, since, timeout)
        if _gone(request):
            return None
        if timeout <= 0:
            _finish(request, _messages_body(room_id, since, []))
            return None
        self._park(request, room_id, since, timeout)
        return None

    def _park(self, request: Request, room_id: int, since: int, timeout: float) -> None:
        waiters = self._parked.get(room_id)
        if waiters is None:
            waiters = self._parked[room_id] = {}
            self._store.subscribe(room_id, self)
        timer = self._reactor.callLater(timeout, self._expire, request, room_id)
        waiters[request] = _Parked(request, since, timer)
        request.notifyFinish().addErrback(lambda _: self._unpark(request, room_id))

    def _unpark(self, request: Request, room_id: int) -> _Parked | None:
        waiters = self._parked.get(room_id)
        if waiters is None:
            return None
        parked = waiters.pop(request, None)
        if parked is not None and parked.timer.active():
            parked.timer.cancel()
        if not waiters:
            del self._parked[room_id]
            self._store.unsubscribe(room_id, self)
        return parked

    def _expire(self, request: Request, room_id: int) -> None:
        parked = self._unpark(request, room_id)
        if parked is not None:
            _finish(request, _messages_body(room_id, parked.since, []))

    def release_all(self) -> None:
        """Answer every parked poll now (shutdown): clients poll again elsewhere or later."""
        for room_id in list(self._parked):
            for request in list(self._parked.get(room_id, {})):
                self._expire(request, room_id)

    # --- RoomListener -------------------------------------------------------------------

    def messages_published(self, room_id: int, messages: Sequence[ChatMessage]) -> None:
        waiters = self._parked.pop(room_id, None)
        if not waiters:
            return
        self._store.unsubscribe(room_id, self)
        bodies: dict[int, bytes] = {}
        for parked in waiters.values():
            parked.timer.cancel()
            body = bodies.get(parked.since)
            if body is None:
                fresh = self._fit([m for m in messages if m.id > parked.since][: self._page_size])
                body = _messages_body(room_id, fresh[-1].id if fresh else parked.since, fresh)
                bodies[parked.since] = body
            _finish(parked.request, body)
            self.delivered += len(messages)

    def message_removed(self, room_id: int, message_id: int) -> None:
        event = deleted_event_json(room_id, message_id)
        for request in list(self._parked.get(room_id, {})):
            parked = self._unpark(request, room_id)
            if parked is not None:
                body = f'{{"room":{room_id},"last":{parked.since},"messages":[{event}]}}'
                _finish(request, body.encode())

    # --- POST: send a message -----------------------------------------------------------

    def render_POST(self, request: Request) -> bytes | int:
        body = request.content.read(self._max_body + 1)
        if len(body) > self._max_body:
            return error_body(request, 413, "too_large", f"'text' is over {self._max_text_length} characters")
        environ = _wsgi_environ(request, body)
        d = self._run_query(_authenticate_and_read, environ)
        d.addCallback(self._post, request)
        d.addErrback(self._fail, request)
        return NOT_DONE_YET

    def _post(self, result: tuple[Author | None, dict[str, Any]], request: Request) -> Deferred[None]:
        author, fields = result
        nonce = wire.parse_nonce(fields.get("nonce"))
        room_id = wire.parse_room(fields.get("room"))
        text = fields.get("text", fields.get("new_message"))
        text = wire.clean_text(text, self._max_text_length)
        if author is None:
            raise wire.ProtocolError("not_authenticated", "log in to post", status=403)
        wait = self._send_limiter.retry_after(author.id)
        if wait:
            raise wire.rate_limited(wait)

        def append(info: RoomInfo) -> Deferred[int]:
            if not info.readable_by(author):
                raise wire.ProtocolError("forbidden", "this room is private", status=403)
            return self._store.append(room_id, author, text, nonce)

        d = self._store.open_room(room_id).addCallback(append)
        return d.addCallback(
            lambda message_id: _finish(request, json_body(request, {"room": room_id, "id": message_id}))
        )

    def _fail(self, failure: Failure, request: Request) -> None:
        if failure.check(wire.ProtocolError):
            error = failure.value
            body = error_body(request, error.status, error.code, error.message)
            if error.retry_after is not None:
                request.setHeader(b"retry-after", str(max(1, round(error.retry_after))).encode())
        elif failure.check(UnknownRoom):
            body = error_body(request, 404, "unknown_room", "no such room")
        elif failure.check(CsrfRejected):
            body = error_body(request, 403, "csrf_failed", str(failure.value))
        elif failure.check(StoreUnavailable):
            body = error_body(request, 503, "unavailable", str(failure.value))
        else:
            log.error("long-poll request failed: %s", failure.getTraceback())
            body = error_body(request, 500, "internal_error", "the server failed")
        _finish(request, body)


def _authenticate_and_read(environ: dict[str, Any]) -> tuple[Author | None, dict[str, Any]]:
    """In a database thread: Django's session and CSRF checks, then the posted fields."""
    try:
        return _read_fields(*authenticate_form_post(environ))
    except (MultiPartParserError, SuspiciousOperation, BadRequest) as error:
        # Django's CSRF check parses the body first; a malformed one fails there.
        raise wire.ProtocolError("bad_request", f"unreadable body: {error}") from None


def _read_fields(author: Author | None, django_request: Any) -> tuple[Author | None, dict[str, Any]]:
    content_type = django_request.content_type
    if content_type == "application/json":
        try:
            fields = json.loads(django_request.body)
        except ValueError:
            raise wire.ProtocolError("bad_request", "body is not valid JSON") from None
        if not isinstance(fields, dict):
            raise wire.ProtocolError("bad_request", "body must be a JSON object")
        return author, fields
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return author, {key: django_request.POST.get(key) for key in django_request.POST}
    raise wire.ProtocolError("bad_request", "send application/json or a form", status=415)


def _messages_body(room_id: int, last: int, messages: Sequence[ChatMessage]) -> bytes:
    listed = ",".join(m.json for m in messages)
    return f'{{"room":{room_id},"last":{last},"messages":[{listed}]}}'.encode()


def _gone(request: Request) -> bool:
    return request.finished or getattr(request, "_disconnected", False)


def _finish(request: Request, body: bytes) -> None:
    """Answer unless the client has already left (finish() after that raises)."""
    if _gone(request):
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


def _arg(request: Request, name: bytes) -> str | None:
    values = request.args.get(name)
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise wire.ProtocolError("bad_request", f"'{name.decode()}' is not valid UTF-8") from None


def _header(request: Request, name: bytes) -> str:
    value = request.getHeader(name)
    return value.decode("latin-1") if value else ""


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
        "CONTENT_TYPE": _header(request, b"content-type"),
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "https" if request.isSecure() else "http",
    }
    for name, values in request.requestHeaders.getAllRawHeaders():
        key = name.decode("latin-1").upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ["HTTP_" + key] = ",".join(v.decode("latin-1") for v in values)
    return environ
