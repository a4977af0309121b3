"""Load generator: WebSocket subscribers, long-poll clients and senders, all asyncio.

Subscribers use a minimal WebSocket client (handshake, then unmasked server frames) so
that the generator spends as little CPU per delivery as possible; a Python generator
still saturates long before a good server does, so its own CPU share is reported.

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
    def __init__(self, target: Target, tally: Tally, opened: asyncio.Future[None]):
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


async def open_subscribers(
    target: Target,
    count: int,
    tally: Tally,
    concurrency: int = 200,
    local_host: str | None = None,
    failures: list[str] | None = None,
) -> list[_Subscriber]:
    """Open ``count`` subscribed WebSockets, ``concurrency`` handshakes at a time.

    ``local_host`` (127.0.0.x) is the source address: each has its own ephemeral ports.
    With a ``failures`` list, a connection that fails adds its error there instead of
    failing the whole call; only the ones that opened are returned.
    """
    loop = asyncio.get_running_loop()
    subscribers: list[_Subscriber] = []
    gate = asyncio.Semaphore(concurrency)
    local_addr = (local_host, 0) if local_host else None

    async def one() -> None:
        async with gate:
            opened: asyncio.Future[None] = loop.create_future()
            try:
                transport, protocol = await loop.create_connection(
                    lambda: _Subscriber(target, tally, opened),
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


def orders(subscribers: list[_Subscriber]) -> dict[str, Any]:
    """Whether every subscriber received the same messages in the same order (``track_order``)."""
    counts = Counter(tuple(s.state.get("order", ())) for s in subscribers)
    common, common_count = counts.most_common(1)[0] if counts else ((), 0)
    return {
        "identical": len(counts) <= 1,
        "distinct_orders": len(counts),
        "subscribers_with_most_common": common_count,
        "length": len(common),
        "increasing": all(a < b for a, b in itertools.pairwise(common)),
    }


def subscriber_process(
    pipe: Any, port: int, since: int, count: int, local_host: str, concurrency: int
) -> None:
    """A load-generator process (multiprocessing target): ``count`` subscribers of ours' room 1.

    Talks to its parent over ``pipe``: sends what it opened, then for each
    ``{"do": "expect", "messages": N, "timeout": S}`` waits until each subscriber has N
    messages (or S seconds) and sends what was received; ``{"do": "close"}`` ends it.
    """
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gc.disable()
    asyncio.run(_subscriber_process(pipe, port, since, count, local_host, concurrency))


async def _subscriber_process(
    pipe: Any, port: int, since: int, count: int, local_host: str, concurrency: int
) -> None:
    loop = asyncio.get_running_loop()
    tally = Tally(track_order=True)
    failures: list[str] = []
    started = time.perf_counter()
    clients = await open_subscribers(
        Target("ours", port, since=since), count, tally, concurrency, local_host, failures
    )
    pipe.send(
        {
            "local_host": local_host,
            "opened": len(clients),
            "failed": len(failures),
            "errors": Counter(failures).most_common(5),
            "seconds": time.perf_counter() - started,
            "rlimit_nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        }
    )
    while True:
        command = await loop.run_in_executor(None, pipe.recv)
        if command["do"] != "expect":
            break
        expected = len(clients) * command["messages"]
        deadline = time.monotonic() + command["timeout"]
        while tally.received < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        pipe.send(
            {
                "received": tally.received,
                "duplicates": tally.duplicates,
                "out_of_order": tally.out_of_order,
                "latencies_ns": tally.latencies_ns,
                "orders": Counter(tuple(c.state.get("order", ())) for c in clients),
            }
        )
    for client in clients:
        client.close()
    pipe.send({"closed": len(clients)})


async def long_poller(
    target: Target, tally: Tally, stop: asyncio.Event, since: int = 0, hold: int = 20
) -> None:
    """One keep-alive HTTP client polling /poll until ``stop`` is set."""
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
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
