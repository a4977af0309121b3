"""End-to-end: the chat as Server-Sent Events (``GET /stream``), over a real twistd server.

The streams are read from raw sockets, by a parser that follows the HTML standard's
``EventSource`` (fields, comments, dispatch at a blank line, the last event ID) and
decodes the chunked framing itself, so that a response that ends cleanly (its terminating
chunk) is told apart from one that is cut. ``EventSourceClient`` reconnects as a browser
does: after the ``retry:`` delay, to the URL it first opened, with ``Last-Event-ID``.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import json
import re
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from .server import (
    EPHEMERAL,
    ChatServerProcess,
    cookie_header,
    login,
    logout,
    post_message,
    recv_json,
    wait_for,
    ws_connect,
)
from .test_cluster import Poller, Reader
from .test_revocation import USER_IDS, admin_change, admin_delete

LOBBY, SECOND, PRIVATE = 1, 2, 3
MISSING = 999


# --- a reader of text/event-stream -----------------------------------------------------


@dataclass
class Event:
    """A dispatched event, with the last event ID it was dispatched with."""

    type: str
    data: str
    last_event_id: str

    @functools.cached_property
    def json(self) -> dict[str, Any]:
        """Parsed once: waits re-read every event many times while the reader thread runs."""
        return json.loads(self.data)


_LINE = re.compile(r"([^\r\n]*)(\r\n|\r|\n)")


class EventStreamParser:
    """The event stream interpretation of the HTML standard, fed bytes as they come."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._started = False
        self._pending = ""
        self._after_cr = False
        self._data: list[str] = []
        self._type = ""
        self._id_buffer = ""
        # What ``EventSource`` keeps: set at every dispatch, even of an event without data.
        self.last_event_id = ""
        self.dispatches = 0
        self.retry: int | None = None
        self.events: list[Event] = []
        self.comments = 0
        # Every line as (field, value); a blank line is ("", "").
        self.lines: list[tuple[str, str]] = []

    def feed(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._after_cr and text:
            text = text.removeprefix("\n")  # the LF of a CRLF split between reads
            self._after_cr = False
        buffer = self._pending + text
        # Only up to the last line break: the regex would rescan an unfinished line from
        # each of its characters, quadratic in a long line that comes in many reads.
        complete = max(buffer.rfind("\r"), buffer.rfind("\n")) + 1
        for match in _LINE.finditer(buffer, 0, complete):
            self._line(match.group(1))
            self._after_cr = match.group(2) == "\r" and match.end() == len(buffer)
        self._pending = buffer[complete:]

    def _line(self, line: str) -> None:
        if not line:
            self.lines.append(("", ""))
            self._dispatch()
            return
        if line.startswith(":"):
            self.comments += 1
            self.lines.append((":", line[1:]))
            return
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        self.lines.append((name, value))
        if name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self._id_buffer = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)

    def _dispatch(self) -> None:
        self.last_event_id = self._id_buffer
        self.dispatches += 1
        if not self._data:
            self._type = ""
            return
        self.events.append(Event(self._type or "message", "\n".join(self._data), self.last_event_id))
        self._data, self._type = [], ""


class ChunkedDecoder:
    """HTTP/1.1 chunked transfer coding; ``done`` once the terminating chunk has come."""

    def __init__(self) -> None:
        self._buffer = b""
        self._state = "size"
        self._remaining = 0
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = []
        while not self.done:
            if self._state in ("size", "trailer"):
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    break
                line, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
                if self._state == "trailer":
                    self.done = not line
                    continue
                size = int(line.split(b";")[0], 16)
                self._state, self._remaining = ("trailer", 0) if size == 0 else ("data", size)
            elif self._state == "data":
                if not self._buffer:
                    break
                piece = self._buffer[: self._remaining]
                self._buffer = self._buffer[len(piece) :]
                self._remaining -= len(piece)
                out.append(piece)
                if self._remaining == 0:
                    self._state = "crlf"
            else:
                if len(self._buffer) < 2:
                    break
                assert self._buffer[:2] == b"\r\n", f"bad chunk framing: {self._buffer[:20]!r}"
                self._buffer = self._buffer[2:]
                self._state = "size"
        return b"".join(out)


class EventStream:
    """One ``GET /stream`` on a raw socket. A 200 is read by a thread (unless ``read`` is
    False); any other answer is read whole, its JSON in ``body``.

    ``ended`` says how the response ended: "clean" (the terminating chunk), "eof" (the
    server closed without it), "reset", or "closed" (by this side).
    """

    def __init__(
        self,
        server: ChatServerProcess,
        room: int | str | None,
        *,
        since: int | str | None = None,
        rooms: str | None = None,
        last_event_id: str | None = None,
        session: requests.Session | None = None,
        origin: str | None = None,
        receive_buffer: int | None = None,
        max_segment: int | None = None,
        read: bool = True,
        method: str = "GET",
    ):
        params: dict[str, Any] = {"room": room} if room is not None else {"rooms": rooms}
        if since is not None:
            params["since"] = since
        head = [
            f"{method} /stream?{urlencode(params)} HTTP/1.1",
            f"Host: 127.0.0.1:{server.port}",
            "Accept: text/event-stream",
            "Cache-Control: no-cache",
        ]
        if session is not None:
            head.append(f"Cookie: {cookie_header(session)}")
        if origin is not None:
            head.append(f"Origin: {origin}")
        if last_event_id is not None:
            head.append(f"Last-Event-ID: {last_event_id}")
        self.sock = socket.socket()
        if receive_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        if max_segment:
            # A small MSS keeps the server's kernel from taking megabytes into its send
            # buffer (loopback's is sized from a 64 KiB MSS): the backlog builds up sooner.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, max_segment)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", server.port))
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        self.parser = EventStreamParser()
        self.chunks = ChunkedDecoder()
        self.payload_bytes = 0
        self.ended: str | None = None
        self.body: dict[str, Any] | None = None
        self._thread: threading.Thread | None = None
        try:
            self.status, self.headers, rest = self._read_head()
        except ConnectionResetError:
            # No answer at all: status 0, as a network error is to EventSource.
            self.status, self.headers, self.ended = 0, {}, "reset"
            self.sock.close()
            return
        if self.status != 200:
            self.body = json.loads(self._read_body(rest))
            self.sock.close()
            return
        assert self.headers.get("transfer-encoding") == "chunked", self.headers
        self._feed(rest)
        if read:
            self.sock.settimeout(None)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()

    def _read_head(self) -> tuple[int, dict[str, str], bytes]:
        data = b""
        while b"\r\n\r\n" not in data:
            more = self.sock.recv(65536)
            assert more, f"the server closed before answering: {data!r}"
            data += more
        head, rest = data.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers, rest

    def _read_body(self, rest: bytes) -> bytes:
        length = int(self.headers["content-length"])
        while len(rest) < length:
            more = self.sock.recv(65536)
            assert more, "the server closed in the middle of an answer"
            rest += more
        return rest[:length]

    def _feed(self, data: bytes) -> None:
        payload = self.chunks.feed(data)
        self.payload_bytes += len(payload)
        self.parser.feed(payload)
        if self.chunks.done:
            self.ended = "clean"

    def _read(self) -> None:
        while self.ended is None:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                self.ended = "reset"
                break
            except OSError:
                self.ended = "closed"
                break
            if not data:
                self.ended = "eof"
                break
            self._feed(data)
        self.sock.close()

    def read_to_end(self, timeout: float) -> str:
        """For a stream not read by a thread: read until the server ends it."""
        assert self._thread is None
        self.sock.settimeout(timeout)
        try:
            self._read()
        except TimeoutError:
            raise AssertionError(f"the server did not end the stream within {timeout}s") from None
        assert self.ended is not None
        return self.ended

    def close(self) -> None:
        if self.status == 200 and self.ended is None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)
        self.sock.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what came ---

    @property
    def events(self) -> list[Event]:
        """What came, without presence and typing (``all_events`` has them)."""
        return [event for event in self.parser.events if event.json.get("type") not in EPHEMERAL]

    @property
    def all_events(self) -> list[Event]:
        return list(self.parser.events)

    @property
    def data(self) -> list[dict[str, Any]]:
        return [event.json for event in self.events]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [frame for frame in self.data if frame["type"] == "message"]

    @property
    def ids(self) -> list[int]:
        return [message["id"] for message in self.messages]

    def wait_ended(self, timeout: float = 10) -> str:
        wait_for(lambda: self.ended is not None, timeout, what="the stream to end")
        assert self.ended is not None
        return self.ended

    def wait_ids(self, count: int, timeout: float = 10) -> list[int]:
        wait_for(lambda: len(self.ids) >= count, timeout, what=f"{count} messages on the stream")
        return self.ids

    def wait_events(self, count: int, timeout: float = 10) -> list[Event]:
        wait_for(lambda: len(self.events) >= count, timeout, what=f"{count} events on the stream")
        return self.events


class EventSourceClient:
    """What a browser's ``EventSource`` does with one URL: when a response ends (however it
    ends), reconnect after the ``retry:`` delay with the last event ID it was given in a
    ``Last-Event-ID`` header; give up on an answer that is not a 200."""

    def __init__(
        self,
        server: ChatServerProcess,
        room: int,
        *,
        since: int | None = None,
        session: requests.Session | None = None,
        max_delay: float = 0.5,
    ):
        self.server, self.room, self.since, self.session = server, room, since, session
        self.max_delay = max_delay
        self.responses: list[EventStream] = []
        self.last_event_id = ""
        self.refused: EventStream | None = None
        self.attempts = 0  # connections tried, reset before any answer or not
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        retry_ms = 3000
        while not self._stop.is_set():
            stream = EventStream(
                self.server,
                self.room,
                since=self.since,
                last_event_id=self.last_event_id or None,
                session=self.session,
            )
            self.attempts += 1
            if stream.status == 0:  # a network error: try again, as EventSource does
                self._stop.wait(min(retry_ms / 1000, self.max_delay))
                continue
            if stream.status != 200:
                self.refused = stream
                return
            self.responses.append(stream)
            while stream.ended is None and not self._stop.is_set():
                self._stop.wait(0.01)
            stream.close()
            if stream.parser.dispatches:
                self.last_event_id = stream.parser.last_event_id
            if stream.parser.retry is not None:
                retry_ms = stream.parser.retry
            self._stop.wait(min(retry_ms / 1000, self.max_delay))

    @property
    def current(self) -> EventStream | None:
        return self.responses[-1] if self.responses else None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [m for stream in list(self.responses) for m in stream.messages]

    @property
    def ids(self) -> list[int]:
        return [message["id"] for message in self.messages]

    def wait_ids(self, count: int, timeout: float = 20) -> list[int]:
        def enough() -> bool:
            assert self.refused is None, f"refused: {self.refused.status} {self.refused.body}"
            return len(self.ids) >= count

        try:
            wait_for(enough, timeout, what=f"{count} messages through the EventSource")
        except AssertionError as timeout_error:
            raise AssertionError(
                f"{timeout_error}: {len(self.ids)} came in {len(self.responses)} responses; "
                f"{self.attempts - len(self.responses)} of {self.attempts} connections were reset "
                "before any answer"
            ) from None
        return self.ids

    def wait_reconnect(self, previous: EventStream, timeout: float = 10) -> EventStream:
        """The response that replaced ``previous``."""
        wait_for(lambda: self.current is not previous, timeout, what="a reconnect")
        assert self.current is not None
        return self.current

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for stream in self.responses:
            stream.close()

    def __enter__(self) -> EventSourceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- helpers ---------------------------------------------------------------------------


def metric(server: ChatServerProcess, name: str) -> float:
    """One sample from the operators' /metrics, e.g. ``chat_stream_recycled_total``."""
    for line in server.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} is not in /metrics")


def stats(server: ChatServerProcess, key: str) -> int:
    return int(server.stats()[key])


def post_all(session: requests.Session, server: ChatServerProcess, room: int, texts: list[str]) -> list[int]:
    """POST /poll each text in turn; their ids."""
    ids = []
    for text in texts:
        response = post_message(session, server, room, text, nonce=uuid.uuid4().hex)
        assert response.status_code == 200, response.text
        ids.append(response.json()["id"])
    return ids


def ws_send_all(ws: Any, room: int, texts: list[str], timeout: float = 30) -> list[int]:
    """Send every text as a frame at once, then collect the acks: ids in send order."""
    nonces = [uuid.uuid4().hex for _ in texts]
    for text, nonce in zip(texts, nonces, strict=True):
        ws.send(json.dumps({"type": "send", "room": room, "text": text, "nonce": nonce}))
    acks: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while len(acks) < len(texts):
        frame = recv_json(ws, max(deadline - time.monotonic(), 0.01))
        assert frame["type"] != "error", frame
        if frame["type"] == "ack":
            acks[frame["nonce"]] = frame["id"]
    return [acks[nonce] for nonce in nonces]


def assert_refused(stream: EventStream, status: int, code: str) -> None:
    assert stream.status == status, (stream.status, stream.body)
    assert stream.headers["content-type"].startswith("application/json"), stream.headers
    assert stream.body is not None and stream.body["error"]["code"] == code, stream.body


# --- 1. catch-up and resuming ------------------------------------------------------------


def test_latest_fifty_then_live_and_resume_with_since_or_last_event_id(server):
    alice = login(server, "alice")
    texts = [f"m{i}" for i in range(59)] + ["two\nlines"]
    assert post_all(alice, server, LOBBY, texts) == list(range(1, 61))

    with EventStream(server, LOBBY) as latest:
        assert latest.headers["content-type"].startswith("text/event-stream")
        assert "no-store" in latest.headers["cache-control"]
        latest.wait_ids(50)
        # The retry delay comes first; without since nothing places the cursor before
        # the history, whose every event carries its id.
        assert latest.parser.lines[0] == ("retry", "2000")
        first = latest.events[0]
        assert first.json == {"type": "subscribed", "room": LOBBY, "last": 60}
        assert first.last_event_id == ""
        assert latest.ids == list(range(11, 61))
        assert all(e.last_event_id == str(e.json["id"]) for e in latest.events[1:])
        assert latest.messages[-1]["text"] == "two\nlines" and latest.messages[-1]["user"] == "alice"
        post_all(alice, server, LOBBY, ["live"])
        assert latest.wait_ids(51)[-1] == 61
        assert latest.parser.last_event_id == "61"

    with EventStream(server, LOBBY, since=55) as resumed:
        assert resumed.wait_ids(6) == [56, 57, 58, 59, 60, 61]
        # The cursor is given with the subscribed event already.
        assert resumed.parser.lines[:2] == [("retry", "2000"), ("id", "55")]
        assert resumed.events[0].last_event_id == "55"

    # EventSource keeps the URL it opened (with its old since) and sends Last-Event-ID.
    with EventStream(server, LOBBY, since=3, last_event_id="58") as reconnected:
        assert reconnected.wait_ids(3) == [59, 60, 61]
        assert reconnected.events[0].last_event_id == "58"
        post_all(alice, server, LOBBY, ["after the reconnect"])
        assert reconnected.wait_ids(4) == [59, 60, 61, 62]

    # An empty room: nothing to send, but the cursor is placed all the same.
    with EventStream(server, SECOND) as empty:
        wait_for(lambda: empty.parser.last_event_id == "0", what="a bare id line")
        assert empty.data == [{"type": "subscribed", "room": SECOND, "last": 0}]
        post_all(alice, server, SECOND, ["first in second"])
        assert empty.wait_ids(1) == [1]


def test_an_eventsource_that_loses_its_connection_misses_nothing_and_sees_nothing_twice(server):
    alice = login(server, "alice")
    post_all(alice, server, LOBBY, [f"old{i}" for i in range(70)])
    with EventSourceClient(server, LOBBY, max_delay=0.05) as source:
        assert source.wait_ids(50) == list(range(21, 71))
        for round_ in range(3):
            current = source.current
            assert current is not None
            post_all(alice, server, LOBBY, [f"r{round_}-{i}" for i in range(5)])
            current.close()  # the network drops it: the client comes back with Last-Event-ID
            post_all(alice, server, LOBBY, [f"r{round_}-late{i}" for i in range(5)])
            source.wait_reconnect(current)
        assert source.wait_ids(80) == list(range(21, 101))
        assert len(source.responses) == 4
        # Reconnects carried the cursor: not one asked for the latest 50 again.
        assert all(stream.parser.lines[1][0] == "id" for stream in source.responses[1:])


def test_a_deletion_is_an_event_with_its_own_place_in_the_stream(server):
    admin, alice = login(server, "admin"), login(server, "alice")
    post_all(alice, server, LOBBY, ["keep me", "delete me"])
    with EventStream(server, LOBBY, since=0) as stream:
        stream.wait_ids(2)
        changelist = admin.get(server.url + "/admin/chat/message/", params={"q": "delete me"}, timeout=10)
        found = re.search(r"/admin/chat/message/(\d+)/change/", changelist.text)
        assert found, "the message is not listed in the admin"
        admin_delete(admin, server, f"/admin/chat/message/{found.group(1)}/delete/")
        wait_for(lambda: stream.data[-1]["type"] == "deleted", what="the deleted event")
        assert stream.data[-1] == {"type": "deleted", "room": LOBBY, "id": 2, "seq": 3}
        assert stream.events[-1].last_event_id == "3"
    with EventStream(server, LOBBY, since=0) as again:
        wait_for(lambda: again.parser.last_event_id == "3", what="the history and the deletion")
        assert again.ids == [1]
        assert again.data[-1] == {"type": "deleted", "room": LOBBY, "id": 2, "seq": 3}
    with EventStream(server, LOBBY, since=3) as resumed:
        wait_for(lambda: resumed.parser.last_event_id == "3", what="the cursor")
        assert resumed.ids == []


def test_errors_before_the_stream_opens_are_json_with_the_status(server):
    assert_refused(EventStream(server, "abc"), 400, "bad_request")
    assert_refused(EventStream(server, LOBBY, since="-1"), 400, "bad_request")
    assert_refused(EventStream(server, LOBBY, last_event_id="abc"), 400, "bad_request")
    assert_refused(EventStream(server, LOBBY, since=0, last_event_id="1.5"), 400, "bad_request")
    assert_refused(EventStream(server, MISSING), 404, "unknown_room")
    refused = EventStream(server, LOBBY, method="POST")
    assert_refused(refused, 405, "method_not_allowed")
    assert refused.headers["allow"] == "GET"


def test_one_stream_for_several_rooms_carries_each_from_its_own_place(server):
    alice = login(server, "alice")
    post_all(alice, server, LOBBY, ["l1", "l2", "l3"])
    post_all(alice, server, SECOND, ["s1", "s2"])
    with EventStream(server, None, rooms=f"{LOBBY}:1,{SECOND}", session=alice) as stream:
        wait_for(lambda: len(stream.messages) == 4, what="both rooms' history")
        by_room = {
            room: [(m["id"], m["text"]) for m in stream.messages if m["room"] == room] for room in (1, 2)
        }
        assert by_room == {LOBBY: [(2, "l2"), (3, "l3")], SECOND: [(1, "s1"), (2, "s2")]}
        subscribed = [d for d in stream.data if d["type"] == "subscribed"]
        assert subscribed == [
            {"type": "subscribed", "room": LOBBY, "last": 3},
            {"type": "subscribed", "room": SECOND, "last": 2},
        ]
        wait_for(
            lambda: len([e for e in stream.all_events if e.json["type"] == "presence"]) == 2, what="presence"
        )
        post_all(alice, server, SECOND, ["live in second"])
        post_all(alice, server, LOBBY, ["live in lobby"])
        wait_for(lambda: len(stream.messages) == 6, what="live messages in both rooms")
        assert [(m["room"], m["id"]) for m in stream.messages[4:]] == [(SECOND, 3), (LOBBY, 4)]
        # One cursor cannot say where two rooms are: no id lines, the client keeps them.
        assert [line for line in stream.parser.lines if line[0] == "id"] == []
        assert stream.parser.lines[0] == ("retry", "2000")


def test_a_room_a_several_room_stream_cannot_read_is_an_event_and_the_others_carry_on(server):
    admin, alice = login(server, "admin"), login(server, "alice")
    with EventStream(server, None, rooms=f"{MISSING},{LOBBY}:0,{SECOND}:0") as stream:
        wait_for(lambda: len([d for d in stream.data if d["type"] == "subscribed"]) == 2, what="two rooms")
        refused = [d for d in stream.data if d["type"] == "unsubscribed"]
        assert [(d["room"], d["code"]) for d in refused] == [(MISSING, "unknown_room")]
        # A room made private ends its subscription, not the stream.
        changes = {"is_private": "on", "members": [str(USER_IDS["alice"])]}
        admin_change(admin, server, f"/admin/chat/chatroom/{SECOND}/change/", changes)
        wait_for(lambda: stream.data[-1]["type"] == "unsubscribed", what="the room's end")
        assert (stream.data[-1]["room"], stream.data[-1]["code"]) == (SECOND, "unknown_room")
        post_all(alice, server, LOBBY, ["still here"])
        assert stream.wait_ids(1) == [1] and stream.ended is None
    # No room left to carry: the stream says why for each and ends.
    with EventStream(server, None, rooms=f"{MISSING},{SECOND}") as nothing:
        assert nothing.wait_ended() == "clean"
        assert [(d["room"], d["code"]) for d in nothing.data] == [
            (MISSING, "unknown_room"),
            (SECOND, "unknown_room"),
        ]


def test_a_several_room_stream_is_refused_with_json_for_bad_lists(server):
    assert_refused(EventStream(server, None, rooms="1:x"), 400, "bad_request")
    assert_refused(EventStream(server, None, rooms=""), 400, "bad_request")
    too_many = ",".join(str(room) for room in range(1, 52))
    assert_refused(EventStream(server, None, rooms=too_many), 429, "too_many_rooms")


# --- 2. every transport, one order -------------------------------------------------------


def test_senders_on_every_transport_readers_on_every_transport_one_order(server):
    alice, bob, carol = (login(server, name) for name in ("alice", "bob", "carol"))
    per_sender = 50
    total = 3 * per_sender
    ws_reader = Reader(server, requests.Session(), LOBBY)
    poller = Poller(server, requests.Session(), LOBBY)
    anonymous_stream = EventStream(server, LOBBY, since=0)
    # Carol's page reads by stream and sends with POST /poll.
    carol_stream = EventStream(server, LOBBY, since=0, session=carol)
    wait_for(lambda: stats(server, "streams") == 2, what="both streams to open")
    texts = {name: [f"{name}-{i}" for i in range(per_sender)] for name in ("alice", "bob", "carol")}
    acked: dict[str, list[int]] = {}

    def websocket_sender() -> None:
        with ws_connect(server, alice) as ws:
            acked["alice"] = ws_send_all(ws, LOBBY, texts["alice"])

    def poll_sender(name: str, session: requests.Session) -> None:
        acked[name] = post_all(session, server, LOBBY, texts[name])

    senders = [
        threading.Thread(target=websocket_sender),
        threading.Thread(target=poll_sender, args=("bob", bob)),
        threading.Thread(target=poll_sender, args=("carol", carol)),
    ]
    try:
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(60)
        assert sorted(i for ids in acked.values() for i in ids) == list(range(1, total + 1)), acked
        readers: dict[str, Any] = {
            "websocket": ws_reader,
            "longpoll": poller,
            "stream": anonymous_stream,
            "carol": carol_stream,
        }
        wait_for(
            lambda: all(len(reader.ids) >= total for reader in readers.values()),
            30,
            what=f"{total} messages on every reader",
        )
        expected = list(range(1, total + 1))
        for name, reader in readers.items():
            assert reader.ids == expected, f"{name}: gaps, duplicates or reordering"
        order = [(m["id"], m["text"], m["user"]) for m in anonymous_stream.messages]
        assert [(m["id"], m["text"], m["user"]) for m in carol_stream.messages] == order
        # Each sender's messages keep the order they were sent in, with the ids acked.
        for name in texts:
            mine = [(i, text) for i, text, user in order if user == name]
            assert mine == list(zip(acked[name], texts[name], strict=True))
        assert anonymous_stream.ended is None and carol_stream.ended is None
        assert metric(server, 'chat_deliveries_total{transport="stream"}') >= 2 * total
        assert metric(server, "chat_stream_connections") == 2
    finally:
        ws_reader.close()
        poller.close()
        anonymous_stream.close()
        carol_stream.close()


# --- 3. byte-bounded streams -------------------------------------------------------------


def test_a_stream_ends_after_max_bytes_and_the_client_resumes_without_loss(server_factory):
    server = server_factory({"CHAT_STREAM_MAX_BYTES": "4096"})
    alice = login(server, "alice")
    count = 200
    with EventSourceClient(server, LOBBY, since=0) as source:
        wait_for(lambda: stats(server, "streams") == 1, what="the stream to open")
        with ws_connect(server, alice) as ws:
            # In bursts, so that batches hold several events; each is read before the next,
            # so that the stream ends again and again under live traffic.
            for start in range(0, count, 20):
                ws_send_all(ws, LOBBY, [f"message {i} " + "x" * 60 for i in range(start, start + 20)])
                source.wait_ids(start + 20)
        assert source.ids == list(range(1, count + 1))
        ended = [stream for stream in source.responses if stream.ended is not None]
        assert len(ended) >= 4, f"{len(ended)} recycles for {count} messages of ~150 bytes"
        for stream in ended:
            assert stream.ended == "clean", "a recycled stream ends with its terminating chunk"
            # At an event boundary, with a short retry delay.
            assert stream.parser.lines[-3:] == [("", ""), ("retry", "100"), ("", "")]
            # Each stream ends at its own point between 3/4 of the bound and the bound.
            assert stream.payload_bytes - len(b"retry: 100\n\n") >= 4096 * 3 // 4
        # Each new response was placed by Last-Event-ID, not by the URL's since=0.
        for before, after in zip(source.responses, source.responses[1:], strict=False):
            assert after.parser.lines[1] == ("id", before.parser.last_event_id)
        recycled = metric(server, "chat_stream_recycled_total")
        assert recycled >= len(ended)
    wait_for(lambda: stats(server, "streams") == 0, what="the last stream to close")


# --- 4. slow readers -------------------------------------------------------------------


def drop_a_slow_stream(server_factory: Any) -> tuple[ChatServerProcess, EventStream, list[int]]:
    """A stream that stops reading while 3 kB messages are sent, until the server drops it;
    a stream that reads, in the same room, gets every one of them. The byte bound is lifted:
    a stream that reaches it ends by itself, which would end a reader that does not read
    before it is ever CHAT_MAX_WS_BACKLOG_BYTES behind."""
    server = server_factory(
        {"CHAT_MAX_WS_BACKLOG_BYTES": str(64 * 1024), "CHAT_STREAM_MAX_BYTES": str(64 * 1024 * 1024)}
    )
    alice = login(server, "alice")
    slow = EventStream(server, LOBBY, since=0, receive_buffer=4096, max_segment=536, read=False)
    fast = EventStream(server, LOBBY, since=0)
    wait_for(lambda: stats(server, "streams") == 2, what="both streams to open")
    dropped = 'chat_slow_consumer_disconnects_total{transport="stream"}'
    acked: list[int] = []
    try:
        with ws_connect(server, alice) as ws:
            deadline = time.monotonic() + 10
            while stats(server, "streams") == 2:
                assert time.monotonic() < deadline, f"not dropped after {len(acked)} messages of 3 kB"
                start = len(acked)
                acked += ws_send_all(ws, LOBBY, [f"{start + i} " + "y" * 3000 for i in range(20)])
        assert metric(server, dropped) == 1
        assert metric(server, 'chat_slow_consumer_disconnects_total{transport="websocket"}') == 0
        assert slow.read_to_end(10) in ("reset", "eof"), "the server cut the connection"
        assert stats(server, "streams") == 1
        assert fast.wait_ids(len(acked), 30) == acked == list(range(1, len(acked) + 1))
        assert fast.ended is None
    finally:
        slow.close()
        fast.close()
    # What it had been given before the reset is the start of the room, in order.
    assert slow.ids == acked[: len(slow.ids)] and len(slow.ids) < len(acked)
    return server, slow, acked


def test_a_stream_that_does_not_read_is_dropped_and_others_get_everything(server_factory):
    drop_a_slow_stream(server_factory)


def test_a_dropped_stream_resumes_from_its_last_id_and_misses_nothing(server_factory):
    server, slow, acked = drop_a_slow_stream(server_factory)
    with EventSourceClient(server, LOBBY, since=int(slow.parser.last_event_id)) as resumed:
        resumed.wait_ids(len(acked) - len(slow.ids), 8)
        assert slow.ids + resumed.ids == acked


def test_a_stream_that_resumes_far_behind_is_not_taken_for_a_slow_consumer(server_factory):
    """A first page of history over the backlog limit is no slow consumer.

    The stream's head goes out through twisted.web's buffered write, so the first page,
    written in the same reactor turn, queues behind it; judged after being written, the
    page looked like a client that does not read, and every reconnect was reset before
    its first byte. The hub judges before each page now. With the defaults (1 MiB limit,
    256 KiB bound) the bound ends the stream first; here it is raised, as an operator
    without a buffering proxy may.
    """
    server = server_factory({"CHAT_STREAM_MAX_BYTES": str(8 * 1024 * 1024)})
    alice = login(server, "alice")
    with ws_connect(server, alice) as ws:
        acked = []
        for _ in range(15):  # 300 messages of 4000 characters: 1.2 MB, over the 1 MiB limit
            acked += ws_send_all(ws, LOBBY, ["z" * 4000] * 20)
    with ws_connect(server) as websocket:
        websocket.send(json.dumps({"type": "subscribe", "room": LOBBY, "since": 0}))
        assert recv_json(websocket)["type"] == "subscribed"
        assert [recv_json(websocket)["id"] for _ in acked] == acked
    with EventSourceClient(server, LOBBY, since=0) as source:
        assert source.wait_ids(len(acked), 8) == acked
    assert metric(server, 'chat_slow_consumer_disconnects_total{transport="stream"}') == 0


# --- 5-7. who may open a stream ---------------------------------------------------------


def test_a_private_room_is_a_missing_room_to_whoever_may_not_read_it(server):
    alice, bob = login(server, "alice"), login(server, "bob")
    assert post_message(alice, server, PRIVATE, "members only").status_code == 200
    for session in (None, bob):
        for since in (None, 0):
            private = EventStream(server, PRIVATE, since=since, session=session)
            missing = EventStream(server, MISSING, since=since, session=session)
            assert_refused(private, 404, "unknown_room")
            assert (private.status, private.body) == (missing.status, missing.body)
    with EventStream(server, PRIVATE, since=0, session=alice) as member:
        assert member.wait_ids(1) == [1]
        assert member.messages[0]["text"] == "members only"
        assert post_message(alice, server, PRIVATE, "live, members only").status_code == 200
        assert member.wait_ids(2) == [1, 2]


def test_a_cross_site_origin_is_refused_on_the_stream_and_the_poll(server_factory):
    server = server_factory({"CHAT_ALLOWED_ORIGINS": "https://app.example"})
    alice = login(server, "alice")
    for origin in ("http://evil.example", f"http://127.0.0.1:{server.port}.evil.example", "null"):
        assert_refused(EventStream(server, LOBBY, session=alice, origin=origin), 403, "csrf_failed")
        refused = alice.get(
            server.url + "/poll", params={"room": LOBBY}, headers={"Origin": origin}, timeout=10
        )
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"
    for same_or_allowed in (server.url, "https://app.example", None):
        with EventStream(server, LOBBY, session=alice, origin=same_or_allowed) as allowed:
            assert allowed.status == 200
            assert allowed.wait_events(1)[0].json["type"] == "subscribed"
        headers = {"Origin": same_or_allowed} if same_or_allowed else {}
        answer = alice.get(server.url + "/poll", params={"room": LOBBY}, headers=headers, timeout=10)
        assert answer.status_code == 200, answer.text


def test_streams_count_against_the_connections_per_user(server_factory):
    server = server_factory({"CHAT_MAX_CONNECTIONS_PER_USER": "2"})
    alice = login(server, "alice")
    first = EventStream(server, LOBBY, session=alice)
    second = EventStream(server, LOBBY, session=alice)
    try:
        refused = EventStream(server, LOBBY, session=alice)
        assert_refused(refused, 429, "too_many_connections")
        assert refused.body is not None and refused.body["error"]["retryable"] is True
        assert int(refused.headers["retry-after"]) >= 1
        poll_refused = alice.get(server.url + "/poll", params={"room": LOBBY, "timeout": 5}, timeout=10)
        assert poll_refused.status_code == 429
        with pytest.raises(Exception, match="429"):
            ws_connect(server, alice)
        # Another user, and anonymous readers, are not affected.
        with EventStream(server, LOBBY, session=login(server, "bob")) as other:
            assert other.status == 200
        first.close()
        wait_for(lambda: stats(server, "streams") == 1, what="the closed stream to give its slot back")
        with EventStream(server, LOBBY, session=alice) as again:
            assert again.status == 200
    finally:
        first.close()
        second.close()


# --- 8. rights taken away ----------------------------------------------------------------


def test_logout_ends_that_browsers_stream_with_session_ended(server):
    alice, bob = login(server, "alice"), login(server, "bob")
    mine = EventStream(server, PRIVATE, session=alice)
    other = EventStream(server, LOBBY, session=bob)
    try:
        wait_for(lambda: mine.parser.last_event_id == "0" and other.parser.dispatches >= 2, what="cursors")
        logout(alice, server)
        assert mine.wait_ended(5) == "clean"
        assert mine.data[-1]["type"] == "error" and mine.data[-1]["code"] == "session_ended"
        assert mine.data[-1]["retryable"] is True
        # Come back at once, with the cookie the browser has now.
        assert mine.parser.retry == 0
        assert mine.parser.lines[-3][0] == "retry"
        # With that cookie the private room is gone; the other browser reads on.
        assert_refused(EventStream(server, PRIVATE, session=alice), 404, "unknown_room")
        assert post_message(bob, server, LOBBY, "bob is still here").status_code == 200
        assert other.wait_ids(1) == [1] and other.ended is None
    finally:
        mine.close()
        other.close()


def test_a_room_made_private_ends_the_streams_that_may_no_longer_read_it(server):
    admin, alice = login(server, "admin"), login(server, "alice")
    anonymous = EventStream(server, SECOND)
    member = EventStream(server, SECOND, session=alice)
    try:
        wait_for(lambda: anonymous.parser.dispatches >= 2 and member.parser.dispatches >= 2, what="cursors")
        changes = {"is_private": "on", "members": [str(USER_IDS["alice"])]}
        admin_change(admin, server, f"/admin/chat/chatroom/{SECOND}/change/", changes)
        assert anonymous.wait_ended(5) == "clean"
        ended = anonymous.data[-1]
        assert ended["type"] == "unsubscribed" and ended["room"] == SECOND
        assert ended["code"] == "unknown_room"
        assert_refused(EventStream(server, SECOND), 404, "unknown_room")
        assert post_message(alice, server, SECOND, "members only now").status_code == 200
        assert member.wait_ids(1) == [1] and member.ended is None
    finally:
        anonymous.close()
        member.close()


# --- 9-10. shutdown and heartbeats --------------------------------------------------------


def test_sigterm_ends_every_stream_cleanly_with_a_retry_and_they_resume(server):
    alice = login(server, "alice")
    post_all(alice, server, LOBBY, ["before 1", "before 2"])
    streams = [EventStream(server, LOBBY, since=0), EventStream(server, LOBBY, session=alice)]
    try:
        for stream in streams:
            stream.wait_ids(2)
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        for stream in streams:
            assert stream.wait_ended(10) == "clean"
            field, value = stream.parser.lines[-2]
            assert field == "retry" and 1000 <= int(value) <= 4000, stream.parser.lines[-3:]
        assert server.process.wait(15) in (0, -signal.SIGTERM)
        assert "shut down cleanly" in server.log_tail(), server.log_tail()
    finally:
        for stream in streams:
            stream.close()
    server.process = None
    server.start()
    alice = login(server, "alice")
    post_all(alice, server, LOBBY, ["after"])
    last = streams[0].parser.last_event_id
    with EventStream(server, LOBBY, since=0, last_event_id=last) as resumed:
        assert resumed.wait_ids(1) == [3]


def test_heartbeat_comments_keep_an_idle_stream_alive(server_factory):
    server = server_factory({"CHAT_STREAM_HEARTBEAT": "0.5"})
    alice = login(server, "alice")
    with EventStream(server, LOBBY) as idle:
        wait_for(lambda: idle.parser.comments >= 3, 5, what="three heartbeats")
        assert idle.data == [{"type": "subscribed", "room": LOBBY, "last": 0}]
        assert (":", "") in idle.parser.lines
        assert post_message(alice, server, LOBBY, "between beats").status_code == 200
        assert idle.wait_ids(1) == [1]
        beats = idle.parser.comments
        wait_for(lambda: idle.parser.comments >= beats + 2, 5, what="heartbeats after a message")
        assert idle.ended is None and idle.parser.last_event_id == "1"


# --- 11. several processes ------------------------------------------------------------------


@pytest.fixture
def cluster(server_factory, shared_database, redis_server):
    def start(**env: str) -> ChatServerProcess:
        return server_factory(
            {"CHAT_REDIS_URL": redis_server.url, "CHAT_WORKERS": "1", **env}, database=shared_database
        )

    return start


def test_a_stream_on_every_process_sees_the_one_order(cluster):
    servers = [cluster(), cluster()]
    sessions = [login(s, "alice") for s in servers]
    streams = [EventStream(s, LOBBY, since=0) for s in servers]
    readers = [Reader(s, login(s, "bob"), LOBBY) for s in servers]
    per_sender = 40
    try:
        senders = [
            threading.Thread(
                target=post_all, args=(sessions[i], s, LOBBY, [f"p{i}-{n}" for n in range(per_sender)])
            )
            for i, s in enumerate(servers)
        ]
        for sender in senders:
            sender.start()
        for i, reader in enumerate(readers):
            for n in range(per_sender):
                reader.send(f"w{i}-{n}", f"w{i}-{n}")
        for sender in senders:
            sender.join(60)
        total = 4 * per_sender
        everyone: list[Any] = [*streams, *readers]
        wait_for(lambda: all(len(c.ids) >= total for c in everyone), 30, what=f"{total} everywhere")
        for client in everyone:
            assert client.ids == list(range(1, total + 1))
        assert streams[0].messages == streams[1].messages
    finally:
        for stream in streams:
            stream.close()
        for reader in readers:
            reader.close()
