"""Load generator: WebSocket and event-stream subscribers, long-poll clients and senders, all asyncio.

Subscribers use minimal clients (a WebSocket: the handshake, then unmasked server frames;
an event stream: one chunked ``GET /stream``, its events found with one regex) so that the
generator spends as little CPU per delivery as possible; a Python generator still
saturates long before a good server does, so its own CPU share is reported.

Every sent text carries ``@<send time ns>:<sequence>@``; receivers find it with one regex,
whatever envelope the server wraps around it, and compute latency, gaps, duplicates and
order from it. Everything is bounded: counts, rates and deadlines are parameters.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import itertools
import json
import os
import re
import resource
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MARK = re.compile(rb"@(\d+):(\d+)@")
# Ours: the message's id in the room (``{"type": "message", "room": R, "id": N, ...}``).
MESSAGE_ID = re.compile(rb'"id": ?(\d+)')
# Ours over /stream: the events that end a subscription.
ERROR_EVENT = re.compile(rb'"type":"(?:error|unsubscribed)"')
# Subscriber kinds of a generator process (``subscriber_process``).
KINDS = ("ws", "stream", "poll")


def marked_text(seq: int, pad: int = 60) -> str:
    return f"@{time.time_ns()}:{seq}@ " + "x" * pad


@dataclass
class Target:
    """How to talk to one server under test."""

    kind: str  # "ours" (subscribed), "ours-sender" (not subscribed), "bare" or "channels"
    port: int
    cookie: str = ""
    since: int = 0  # ours: subscribe after this id, so earlier scenarios' messages are skipped
    run: str = field(default_factory=lambda: os.urandom(4).hex())  # keeps nonces unique per call

    @property
    def ws_path(self) -> str:
        paths = {
            "ours": f"/ws?room=1&since={self.since}",
            "ours-sender": "/ws",
            "bare": "/",
            "channels": "/ws/chat/lobby/",
        }
        return paths[self.kind]

    @property
    def stream_path(self) -> str:
        """Ours only: the room's event stream after ``since``."""
        return f"/stream?room=1&since={self.since}"

    def nonce(self, seq: int) -> str:
        return f"{self.run}-{seq}"

    @property
    def is_ours(self) -> bool:
        return self.kind.startswith("ours")

    def send_frame(self, seq: int, pad: int = 60) -> str:
        text = marked_text(seq, pad)
        if self.is_ours:
            return json.dumps({"type": "send", "room": 1, "text": text, "nonce": self.nonce(seq)})
        if self.kind == "channels":
            return json.dumps({"message": text})
        return text


@dataclass
class Tally:
    """What one group of receivers saw."""

    expected_per_client: int = 0
    # Keep each receiver's whole order (ours: message ids; others: sequence numbers), to
    # check that every receiver saw the same messages in the same order (``orders``).
    track_order: bool = False
    clients: int = 0
    received: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    first_ns: int = 0
    last_ns: int = 0

    def restart(self) -> None:
        """Forget deliveries so far (a warm-up); duplicates and disorder still count."""
        self.received = 0
        self.latencies_ns = []
        self.first_ns = self.last_ns = 0

    def record(
        self, state: dict[str, Any], seq: int, sent_ns: int, now_ns: int, message_id: int = -1
    ) -> None:
        seen: bytearray = state["seen"]
        if seq >= len(seen):
            seen.extend(b"\0" * (seq + 1 - len(seen)))
        if self.track_order:
            state.setdefault("order", []).append(seq if message_id < 0 else message_id)
        if seen[seq]:
            self.duplicates += 1
            return
        seen[seq] = 1
        if seq < state["last"]:
            self.out_of_order += 1
        state["last"] = max(state["last"], seq)
        self.received += 1
        self.latencies_ns.append(now_ns - sent_ns)
        if not self.first_ns:
            self.first_ns = now_ns
        self.last_ns = now_ns


class _Subscriber(asyncio.Protocol):
    def __init__(
        self,
        target: Target,
        tally: Tally,
        opened: asyncio.Future[None],
        local_addr: tuple[str, int] | None = None,
    ):
        self.target, self.tally, self.opened = target, tally, opened
        self.buffer = b""
        self.handshaken = False
        self.state: dict[str, Any] = {"seen": bytearray(), "last": -1}
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        origin = f"http://127.0.0.1:{self.target.port}"
        request = (
            f"GET {self.target.ws_path} HTTP/1.1\r\nHost: 127.0.0.1:{self.target.port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n"
        )
        transport.write(request.encode())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        if not self.handshaken:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            if not buffer.startswith(b"HTTP/1.1 101") and not self.opened.done():
                self.opened.set_exception(ConnectionError(buffer[:80].decode(errors="replace")))
                return
            self.handshaken = True
            buffer = buffer[end + 4 :]
            if not self.opened.done():
                self.opened.set_result(None)
        now = time.time_ns()
        pos = 0
        size = len(buffer)
        while size - pos >= 2:
            opcode = buffer[pos] & 0x0F
            length = buffer[pos + 1] & 0x7F
            header = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = struct.unpack_from(">H", buffer, pos + 2)[0]
                header = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = struct.unpack_from(">Q", buffer, pos + 2)[0]
                header = 10
            if size - pos < header + length:
                break
            payload = buffer[pos + header : pos + header + length]
            pos += header + length
            if opcode == 0x1:
                match = MARK.search(payload)
                if match:
                    message_id = -1
                    if self.tally.track_order and self.target.is_ours:
                        found = MESSAGE_ID.search(payload)
                        message_id = int(found.group(1)) if found else -1
                    self.tally.record(self.state, int(match.group(2)), int(match.group(1)), now, message_id)
            elif opcode == 0x9:
                self._pong(payload)
        self.buffer = buffer[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed before the handshake: {exc}"))

    def _pong(self, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + mask + masked)  # type: ignore[union-attr]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _StreamSubscriber(asyncio.Protocol):
    """One ``EventSource`` on ours: ``GET /stream`` over HTTP/1.1, chunked, parsed in place.

    As a browser does, it keeps the last ``id:`` it was given and the last ``retry:``; when
    the server ends the stream (after ``CHAT_STREAM_MAX_BYTES``) it asks again on the same
    connection after that delay, with ``Last-Event-ID``, and when the connection is lost
    (dropped as a slow consumer) it opens a new one the same way. Each counts in
    ``reconnects``. Events other than marked messages (the ``subscribed`` one, heartbeats)
    are skipped, ``error`` and ``unsubscribed`` ones counted in ``errors``.
    """

    MAX_FAILED_RECONNECTS = 20

    def __init__(
        self,
        target: Target,
        tally: Tally,
        opened: asyncio.Future[None],
        local_addr: tuple[str, int] | None = None,
    ):
        self.target, self.tally, self.opened = target, tally, opened
        self.local_addr = local_addr
        self.state: dict[str, Any] = {"seen": bytearray(), "last": -1}
        self.transport: asyncio.Transport | None = None
        self.last_event_id: int | None = None
        self.retry_ms = 3000  # EventSource's default until the server says otherwise
        self.requests = 0
        self.reconnects = 0
        self.errors = 0
        self.failed_reconnects = 0
        self.closing = False
        self._reset()

    def _reset(self) -> None:
        """A new response: its head first, then chunks."""
        self.in_head = True
        self.raw = b""  # bytes not yet decoded: part of the head or of a chunk header
        self.body = b""  # decoded bytes after the last complete event
        self.chunked = True
        self.chunk_left = 0  # of the current chunk: data bytes still to come, plus its CRLF
        self.ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.failed_reconnects = 0
        self._reset()
        self._request()

    def _request(self) -> None:
        if self.requests:
            self.reconnects += 1
        self.requests += 1
        resume = "" if self.last_event_id is None else f"Last-Event-ID: {self.last_event_id}\r\n"
        request = (
            f"GET {self.target.stream_path} HTTP/1.1\r\nHost: 127.0.0.1:{self.target.port}\r\n"
            f"Accept: text/event-stream\r\nCache-Control: no-cache\r\n{resume}\r\n"
        )
        self.transport.write(request.encode())  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if self.in_head:
            # (a previous response's last CRLF, if it came after the request went out again)
            data = self.raw + data if self.raw else data.lstrip(b"\r\n")
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.raw = data
                return
            head = data[:end]
            self.raw = b""
            if not head.startswith(b"HTTP/1.1 200"):
                self._refused(head)
                return
            self.in_head = False
            self.chunked = b"transfer-encoding: chunked" in head.lower()
            if not self.opened.done():
                self.opened.set_result(None)
            data = data[end + 4 :]
            if not data:
                return
        if not self.chunked:
            self._events(data)
            return
        # Most reads are one whole chunk (the server writes a batch of events as one).
        if not self.raw and not self.chunk_left:
            eol = data.find(b"\r\n")
            if eol > 0 and data[eol - 1] != 59:  # no chunk extension (";")
                length = int(data[:eol], 16)
                if length and eol + length + 4 == len(data):
                    self._events(data[eol + 2 : -2])
                    return
        body = self._dechunk(data)
        if body:
            self._events(body)
        if self.ended:
            self.ended = False
            asyncio.get_running_loop().call_later(self.retry_ms / 1000, self._ask_again)

    def _dechunk(self, data: bytes) -> bytes:
        """The body bytes in ``data``; a partial chunk header waits in ``raw``."""
        buffer = self.raw + data if self.raw else data
        pos, size = 0, len(buffer)
        left = self.chunk_left
        parts = []
        while pos < size:
            if left:
                take = min(left, size - pos)
                data_end = pos + min(take, max(left - 2, 0))  # the chunk's CRLF is not body
                if data_end > pos:
                    parts.append(buffer[pos:data_end])
                pos += take
                left -= take
                continue
            eol = buffer.find(b"\r\n", pos)
            if eol < 0:
                break
            length = int(buffer[pos:eol].split(b";", 1)[0], 16)
            pos = eol + 2
            if length == 0:  # the last chunk (no trailers follow): the server ended the stream
                self.ended = True
            left = length + 2
        self.chunk_left = left
        self.raw = buffer[pos:]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _events(self, data: bytes) -> None:
        """Record the marked messages among the complete events; keep the rest for later.

        The common batch is only message events (``id: N``, then the ``data:`` line with
        the marked text): split on the blank lines, each is looked at once. Anything else in
        a batch (the subscribed event, an id alone, ``retry:``, a heartbeat, an error) sends
        it through the slower look for the fields a reconnect needs.
        """
        body = self.body + data if self.body else data
        if body.endswith(b"\n\n"):
            self.body = b""
            events = body.split(b"\n\n")
            events.pop()  # the empty string after the last blank line
        else:
            end = body.rfind(b"\n\n")
            if end < 0:
                self.body = body
                return
            self.body = body[end + 2 :]
            body = body[: end + 2]
            events = body.split(b"\n\n")
            events.pop()
        now = time.time_ns()
        record, state, search = self.tally.record, self.state, MARK.search
        plain = True  # every event a marked message
        last = -1
        for event in events:
            eol = event.find(b"\n")
            match = search(event, eol) if eol > 0 else None
            if match is None or not event.startswith(b"id: "):
                plain = False
                continue
            last = int(event[4:eol])
            record(state, int(match.group(2)), int(match.group(1)), now, last)
        if plain:
            self.last_event_id = last
            return
        # The cursor a reconnect sends: the last ``id:`` field (a message's, the subscribed
        # event's, or the one alone that places a client in an empty room).
        found = _last_field(body, b"id: ")
        if found is not None:
            self.last_event_id = found
        found = _last_field(body, b"retry: ")
        if found is not None:
            self.retry_ms = found
        if ERROR_EVENT.search(body):
            self.errors += 1

    def _refused(self, head: bytes) -> None:
        error = ConnectionError(head[:80].decode(errors="replace"))
        if not self.opened.done():
            self.opened.set_exception(error)
            return
        self.errors += 1  # a reconnect refused: try again on a new connection
        if self.transport is not None:
            self.transport.close()

    def _ask_again(self) -> None:
        """After the server ended the stream: the same connection, kept alive."""
        if self.closing or self.transport is None or self.transport.is_closing():
            return  # connection_lost reconnects
        self._reset()
        self._request()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed before the response: {exc}"))
            return
        if not self.closing:
            asyncio.get_running_loop().call_later(self.retry_ms / 1000, self._reconnect)

    def _reconnect(self) -> None:
        if self.closing:
            return
        loop = asyncio.get_running_loop()
        task = loop.create_task(
            loop.create_connection(lambda: self, "127.0.0.1", self.target.port, local_addr=self.local_addr)
        )
        task.add_done_callback(self._reconnected)

    def _reconnected(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self.errors += 1
        self.failed_reconnects += 1
        if not self.closing and self.failed_reconnects < self.MAX_FAILED_RECONNECTS:
            asyncio.get_running_loop().call_later(self.retry_ms / 1000, self._reconnect)

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()


def _last_field(body: bytes, name: bytes) -> int | None:
    """The value of the last ``name`` field (at a line's start) in ``body``."""
    at = body.rfind(name)
    while at > 0 and body[at - 1] != 10:  # not at a line's start: inside a data line
        at = body.rfind(name, 0, at)
    if at < 0:
        return None
    eol = body.find(b"\n", at)
    try:
        return int(body[at + len(name) : eol])
    except ValueError:
        return None


async def open_subscribers(
    target: Target,
    count: int,
    tally: Tally,
    concurrency: int = 200,
    local_host: str | None = None,
    failures: list[str] | None = None,
    kind: str = "ws",
) -> list[Any]:
    """Open ``count`` subscribed WebSockets (``kind`` "ws") or event streams ("stream", ours
    only), ``concurrency`` handshakes at a time.

    ``local_host`` (127.0.0.x) is the source address: each has its own ephemeral ports.
    With a ``failures`` list, a connection that fails adds its error there instead of
    failing the whole call; only the ones that opened are returned.
    """
    loop = asyncio.get_running_loop()
    protocol_class = {"ws": _Subscriber, "stream": _StreamSubscriber}[kind]
    subscribers: list[Any] = []
    gate = asyncio.Semaphore(concurrency)
    local_addr = (local_host, 0) if local_host else None

    async def one() -> None:
        async with gate:
            opened: asyncio.Future[None] = loop.create_future()
            try:
                transport, protocol = await loop.create_connection(
                    lambda: protocol_class(target, tally, opened, local_addr),
                    "127.0.0.1",
                    target.port,
                    local_addr=local_addr,
                )
                try:
                    await asyncio.wait_for(opened, 30)
                except BaseException:
                    transport.abort()
                    raise
            except (TimeoutError, OSError) as error:
                if failures is None:
                    raise
                failures.append(f"{type(error).__name__}: {error}"[:120])
                return
            subscribers.append(protocol)

    await asyncio.gather(*(one() for _ in range(count)))
    tally.clients += len(subscribers)
    return subscribers


def orders(subscribers: list[Any]) -> dict[str, Any]:
    """Whether every subscriber received the same messages in the same order (``track_order``)."""
    return order_summary(Counter(tuple(s.state.get("order", ())) for s in subscribers))


def order_summary(counts: Counter[tuple[int, ...]]) -> dict[str, Any]:
    """``orders`` from each subscriber's order, counted (from several generator processes)."""
    common, common_count = counts.most_common(1)[0] if counts else ((), 0)
    return {
        "identical": len(counts) <= 1,
        "distinct_orders": len(counts),
        "subscribers_with_most_common": common_count,
        "length": len(common),
        "increasing": all(a < b for a, b in itertools.pairwise(common)),
    }


def subscriber_process(
    pipe: Any, port: int, since: int, count: int | dict[str, int], local_host: str, concurrency: int
) -> None:
    """A load-generator process (multiprocessing target): subscribers of ours' room 1.

    ``count`` is a number of WebSockets, or how many of each kind (``KINDS``: "ws",
    "stream", "poll") to open. Talks to its parent over ``pipe``: sends what it opened,
    then for each ``{"do": "expect", "messages": N, "timeout": S}`` waits until each
    subscriber has N messages (or S seconds) and sends what was received, in all and per
    kind (``transports``), with its own CPU time since it started or was last restarted;
    ``{"do": "restart"}`` forgets the deliveries so far (a warm-up); ``{"do": "close"}``
    ends it.
    """
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gc.disable()
    counts = {"ws": count} if isinstance(count, int) else count
    asyncio.run(_subscriber_process(pipe, port, since, counts, local_host, concurrency))


async def _subscriber_process(
    pipe: Any, port: int, since: int, counts: dict[str, int], local_host: str, concurrency: int
) -> None:
    loop = asyncio.get_running_loop()
    target = Target("ours", port, since=since)
    tallies = {kind: Tally(track_order=True) for kind, n in counts.items() if n}
    clients: dict[str, list[Any]] = {}
    failures: list[str] = []
    started = time.perf_counter()
    stop = asyncio.Event()
    pollers: list[asyncio.Task[None]] = []
    if counts.get("poll"):
        tally = tallies["poll"]
        pollers = [
            asyncio.create_task(long_poller(target, tally, stop, since, local_host=local_host))
            for _ in range(counts["poll"])
        ]
        tally.clients = len(pollers)
    opened = await asyncio.gather(
        *(
            open_subscribers(target, counts[kind], tallies[kind], concurrency, local_host, failures, kind)
            for kind in ("ws", "stream")
            if counts.get(kind)
        )
    )
    for kind, opened_clients in zip([k for k in ("ws", "stream") if counts.get(k)], opened, strict=True):
        clients[kind] = opened_clients
    every = [client for group in clients.values() for client in group]
    pipe.send(
        {
            "local_host": local_host,
            "opened": len(every) + len(pollers),
            "opened_per_kind": {kind: tally.clients for kind, tally in tallies.items()},
            "failed": len(failures),
            "errors": Counter(failures).most_common(5),
            "seconds": time.perf_counter() - started,
            "rlimit_nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        }
    )
    cpu, wall = time.process_time(), time.perf_counter()
    while True:
        command = await loop.run_in_executor(None, pipe.recv)
        if command["do"] == "restart":
            for tally in tallies.values():
                tally.restart()
            cpu, wall = time.process_time(), time.perf_counter()
            pipe.send({"restarted": True})
            continue
        if command["do"] != "expect":
            break
        deadline = time.monotonic() + command["timeout"]
        while time.monotonic() < deadline and any(
            tally.received < tally.clients * command["messages"] for tally in tallies.values()
        ):
            await asyncio.sleep(0.05)
        transports = {
            kind: _tally_report(tally, clients.get(kind, []), kind == "poll")
            for kind, tally in tallies.items()
        }
        pipe.send(
            {
                "received": sum(t["received"] for t in transports.values()),
                "duplicates": sum(t["duplicates"] for t in transports.values()),
                "out_of_order": sum(t["out_of_order"] for t in transports.values()),
                "transports": transports,
                "cpu_s": time.process_time() - cpu,
                "wall_s": time.perf_counter() - wall,
            }
        )
    stop.set()
    for task in pollers:
        task.cancel()
    await asyncio.gather(*pollers, return_exceptions=True)
    for client in every:
        client.close()
    pipe.send({"closed": len(every) + len(pollers)})


def _tally_report(tally: Tally, clients: list[Any], polls: bool) -> dict[str, Any]:
    """One kind's deliveries in a generator process (long-polls keep their order in the tally's
    per-poller state, which is not kept here: no order for them)."""
    return {
        "clients": tally.clients,
        "received": tally.received,
        "duplicates": tally.duplicates,
        "out_of_order": tally.out_of_order,
        "latencies_ns": tally.latencies_ns,
        "first_ns": tally.first_ns,
        "last_ns": tally.last_ns,
        "orders": None if polls else Counter(tuple(c.state.get("order", ())) for c in clients),
        "reconnects": sum(getattr(c, "reconnects", 0) for c in clients),
        "errors": sum(getattr(c, "errors", 0) for c in clients),
    }


async def long_poller(
    target: Target,
    tally: Tally,
    stop: asyncio.Event,
    since: int = 0,
    hold: int = 20,
    local_host: str | None = None,
) -> None:
    """One keep-alive HTTP client polling /poll until ``stop`` is set."""
    local_addr = (local_host, 0) if local_host else None
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port, local_addr=local_addr)
    state: dict[str, Any] = {"seen": bytearray(), "last": -1}
    try:
        while not stop.is_set():
            writer.write(
                f"GET /poll?room=1&since={since}&timeout={hold} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
            body = await reader.readexactly(length)
            now = time.time_ns()
            for match in MARK.finditer(body):
                tally.record(state, int(match.group(2)), int(match.group(1)), now)
            since = json.loads(body)["last"]
    finally:
        writer.close()


async def send_at_rate(
    target: Target, count: int, rate: float, pad: int = 60, start_seq: int = 0
) -> list[int]:
    """Send ``count`` marked messages at ``rate``/s on one connection; return ack latencies (ns)."""
    import websockets

    headers = {"Origin": f"http://127.0.0.1:{target.port}"}
    if target.cookie:
        headers["Cookie"] = target.cookie
    ack_latency: list[int] = []
    sent_at: dict[str, int] = {}
    async with websockets.connect(
        f"ws://127.0.0.1:{target.port}{target.ws_path}", additional_headers=headers, max_size=2**24
    ) as ws:

        async def read_acks() -> None:
            async for raw in ws:
                if target.is_ours and '"ack"' in raw:
                    frame = json.loads(raw)
                    started = sent_at.pop(frame.get("nonce"), None)
                    if started is not None:
                        ack_latency.append(time.time_ns() - started)

        reader = asyncio.create_task(read_acks())
        begin = time.perf_counter()
        for i in range(count):
            delay = begin + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            frame = target.send_frame(start_seq + i, pad)
            if target.is_ours:
                sent_at[target.nonce(start_seq + i)] = time.time_ns()
            await ws.send(frame)
        deadline = time.monotonic() + 10
        while target.is_ours and sent_at and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        reader.cancel()
    return ack_latency


def percentiles(values_ns: list[int]) -> dict[str, float]:
    if not values_ns:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values_ns)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": ordered[-1] / 1e6}
