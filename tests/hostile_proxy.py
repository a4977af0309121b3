"""A reverse proxy for browser tests that makes the network as hostile as real ones are.

Real clients sit behind corporate proxies that refuse WebSocket upgrades, and behind
antivirus middleboxes that hold every response until it is complete (so a Server-Sent
Events stream never arrives). :class:`HostileProxy` stands between the browser and a real
chat server on 127.0.0.1 and can be switched at runtime between:

* ``"pass"``: transparent. Every request is forwarded and its response streamed back;
  a WebSocket upgrade is forwarded too and, once the server answers 101, bytes are
  spliced both ways.
* ``"no_upgrade"``: like a corporate proxy, a request with ``Upgrade: websocket`` gets a
  ``400 Bad Request`` and the connection is closed; everything else is streamed as in
  ``"pass"`` (so SSE still works).
* ``"buffer"``: like ``"no_upgrade"``, but each response is held until the upstream has
  sent all of it (or closed), then delivered in one piece.

A mode applies to client connections accepted after it is set; ``set_mode`` closes the
existing ones by default so the page has to reconnect through the new mode. Every mode
parses requests, so ``requests_seen`` counts them all. Each request goes upstream on a
fresh connection with ``Connection: close`` (upgrades keep their headers), while the
browser's side keeps HTTP/1.1 keep-alive whenever the response is framed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Literal, TypeVar

Mode = Literal["pass", "no_upgrade", "buffer"]
MODES: tuple[Mode, ...] = ("pass", "no_upgrade", "buffer")
Framing = Literal["none", "chunked", "length", "close"]
T = TypeVar("T")

log = logging.getLogger(__name__)
_HOP_BY_HOP = ("connection", "keep-alive", "proxy-connection")
_MAX_HEAD = 64 * 1024
_READ = 64 * 1024


def _plain(status: str, text: str) -> bytes:
    """A complete response after which the proxy closes the connection."""
    body = text.encode()
    head = f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
    return f"{head}Connection: close\r\n\r\n".encode() + body


_REFUSED = _plain("400 Bad Request", "WebSocket upgrades are not allowed through this proxy\n")
_BAD_GATEWAY = _plain("502 Bad Gateway", "the upstream server did not answer\n")


class _Head:
    """A request or status line and its headers, kept in order and spelling (cookies untouched)."""

    def __init__(self, start: str, headers: list[tuple[str, str]]) -> None:
        self.start, self.headers = start, headers

    @classmethod
    def parse(cls, raw: bytes) -> _Head:
        start, *lines = raw.decode("latin-1").rstrip("\r\n").split("\r\n")
        headers = []
        for line in lines:
            name, colon, value = line.partition(":")
            if not colon:
                raise ValueError(f"malformed header line {line!r}")
            headers.append((name.strip(), value.strip()))
        return cls(start, headers)

    def get(self, name: str) -> str:
        return ", ".join(value for key, value in self.headers if key.lower() == name)

    def without(self, names: tuple[str, ...], *extra: tuple[str, str]) -> _Head:
        kept = [(key, value) for key, value in self.headers if key.lower() not in names]
        return _Head(self.start, [*kept, *extra])

    def encode(self) -> bytes:
        lines = [self.start, *(f"{key}: {value}" for key, value in self.headers), "", ""]
        return "\r\n".join(lines).encode("latin-1")


class _Stream:
    """One side of a connection: asyncio streams plus a read-ahead buffer of our own.

    The buffer lets a watcher read from the client while a response is relayed, to notice
    a hang-up (a held-open SSE response would otherwise keep its upstream forever) without
    losing bytes that turn out to be the start of the next request.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.buf = reader, writer, bytearray()

    async def fill(self) -> bool:
        """Read what arrives next into the buffer; False at end of stream."""
        data = await self.reader.read(_READ)
        self.buf += data
        return bool(data)

    def take(self, size: int) -> bytes:
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    async def read_until(self, sep: bytes) -> bytes:
        while (end := self.buf.find(sep)) < 0:
            if len(self.buf) > _MAX_HEAD or not await self.fill():
                raise EOFError("closed, or a line too long")
        return self.take(end + len(sep))

    async def read_exactly(self, size: int) -> bytes:
        while len(self.buf) < size:
            if not await self.fill():
                raise EOFError("closed in the middle of a body")
        return self.take(size)

    async def read_some(self, limit: int = _READ) -> bytes:
        if not self.buf:
            await self.fill()
        return self.take(limit)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


def _framing(head: _Head, *, request: bool, no_body: bool = False) -> Framing:
    if no_body:
        return "none"
    if "chunked" in head.get("transfer-encoding").lower():
        return "chunked"
    if head.get("content-length"):
        return "length"
    return "none" if request else "close"  # a request without framing has no body


async def _body(src: _Stream, head: _Head, framing: Framing) -> AsyncIterator[bytes]:
    """The body's bytes as they were on the wire (a chunked body stays chunked)."""
    if framing == "chunked":
        while True:
            line = await src.read_until(b"\r\n")
            size = int(line.split(b";")[0], 16)
            if size == 0:  # the last chunk, then trailers up to an empty line
                while (trailer := await src.read_until(b"\r\n")) != b"\r\n":
                    line += trailer
                yield line + b"\r\n"
                return
            yield line + await src.read_exactly(size + 2)
    elif framing == "length":
        remaining = int(head.get("content-length"))
        while remaining > 0:
            if not (data := await src.read_some(min(remaining, _READ))):
                raise EOFError("closed in the middle of a body")
            remaining -= len(data)
            yield data
    elif framing == "close":
        while data := await src.read_some():
            yield data


async def _reap(*tasks: asyncio.Future[Any]) -> None:
    """Cancel helper tasks and wait for them, retrieving their errors so none is logged."""
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.debug("helper task failed", exc_info=task.exception())


async def _unless_hangup(client: _Stream, work: Coroutine[Any, Any, T]) -> T | None:
    """Run ``work``, but cancel it and return None if the client closes meanwhile.

    Bytes the client sends early (a pipelined request) stay in its buffer.
    """
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(client.fill())
    try:
        while True:
            await asyncio.wait([task, watch], return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            if watch.exception() is not None or not watch.result() or len(client.buf) > _MAX_HEAD:
                return None
            watch = asyncio.ensure_future(client.fill())
    finally:
        await _reap(task, watch)


async def _splice(client: _Stream, upstream: _Stream) -> None:
    """Copy bytes both ways (an upgraded connection) until either side closes."""

    async def pump(src: _Stream, dst: _Stream) -> None:
        if src.buf:  # what arrived with the request or the 101
            await dst.send(src.take(len(src.buf)))
        while data := await src.reader.read(_READ):
            await dst.send(data)

    tasks = [asyncio.ensure_future(pump(client, upstream)), asyncio.ensure_future(pump(upstream, client))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await _reap(*tasks)


class HostileProxy:
    """A reverse proxy to ``upstream_host:upstream_port`` on its own event loop thread."""

    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1", mode: Mode = "pass") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.upstream_host, self.upstream_port, self._mode = upstream_host, upstream_port, mode
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._port = 0
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._lock = threading.Lock()
        self._paths: list[str] = []
        self._refused = 0

    # Life cycle, called from the test's thread.

    def start(self) -> HostileProxy:
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="hostile-proxy", daemon=True)
        self._thread.start()
        self._port = ready.result(timeout=10)
        return self

    def stop(self) -> None:
        """Close the listener and every connection, and join the thread."""
        if self._thread is None or self._loop is None:
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> HostileProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def mode(self) -> Mode:
        return self._mode

    def set_mode(self, mode: Mode, drop_connections: bool = True) -> int:
        """Switch mode for new connections; by default close the open ones (returns how many)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self._mode = mode
        return self.drop_connections() if drop_connections else 0

    def drop_connections(self) -> int:
        """Close every open client connection (and its upstream); returns how many."""
        return self._call(self._drop()) if self._loop is not None else 0

    # Counters, so tests can assert which transports the page tried.

    @property
    def open_connections(self) -> int:
        """Client connections being served now."""
        return len(self._connections)

    @property
    def refused_upgrades(self) -> int:
        with self._lock:
            return self._refused

    def requests_seen(self, prefix: str = "/") -> int:
        """Requests (refused upgrades included) whose path starts with ``prefix``."""
        with self._lock:
            return sum(path.startswith(prefix) for path in self._paths)

    def reset_counters(self) -> None:
        with self._lock:
            self._paths.clear()
            self._refused = 0

    # The event loop thread.

    def _call(self, work: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=10)

    def _run(self, ready: concurrent.futures.Future[int]) -> None:
        self._loop = loop = asyncio.new_event_loop()
        try:
            self._server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            ready.set_result(self._server.sockets[0].getsockname()[1])
            loop.run_forever()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
        finally:
            loop.close()

    async def _drop(self) -> int:
        connections = dict(self._connections)
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        for writer in connections.values():
            writer.transport.abort()
        return len(connections)

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._drop()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection: its requests one after another, in the mode at accept time."""
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        client, mode = _Stream(reader, writer), self._mode
        try:
            while await self._exchange(client, mode):
                pass
        except asyncio.CancelledError:
            # Only _drop cancels this task, and nothing awaits its result but _drop; on
            # Python 3.11 asyncio would log an error for a cancelled connection callback.
            pass
        except Exception:
            log.debug("connection ended with an error", exc_info=True)
        finally:
            del self._connections[task]
            writer.close()

    async def _exchange(self, client: _Stream, mode: Mode) -> bool:
        """Proxy one request; True if the client connection stays open for another."""
        try:
            request = _Head.parse(await client.read_until(b"\r\n\r\n"))
        except EOFError:
            return False  # the client closed an idle connection
        method, target, version = request.start.split(" ", 2)
        upgrade = "websocket" in request.get("upgrade").lower()
        refuse = upgrade and mode != "pass"
        with self._lock:
            self._paths.append(target.split("?", 1)[0])
            self._refused += 1 if refuse else 0
        if refuse:
            await client.send(_REFUSED)
            return False
        body = b"".join([piece async for piece in _body(client, request, _framing(request, request=True))])
        keep_alive = version == "HTTP/1.1" and "close" not in request.get("connection").lower()
        if not upgrade:
            request = request.without(_HOP_BY_HOP, ("Connection", "close"))
        try:
            upstream = _Stream(*await asyncio.open_connection(self.upstream_host, self.upstream_port))
        except OSError:
            await client.send(_BAD_GATEWAY)
            return False
        try:
            await upstream.send(request.encode() + body)
            outcome = await _unless_hangup(client, self._respond(client, upstream, method, mode, keep_alive))
            if outcome == "splice":
                await _splice(client, upstream)
            return outcome == "keep"
        finally:
            upstream.writer.close()

    async def _respond(
        self, client: _Stream, upstream: _Stream, method: str, mode: Mode, keep_alive: bool
    ) -> str:
        """Relay one response: returns "keep", "close", or "splice" after a 101."""
        try:
            raw = await upstream.read_until(b"\r\n\r\n")
            while 100 <= (status := int(raw.split(b" ", 2)[1])) < 200 and status != 101:
                raw = await upstream.read_until(b"\r\n\r\n")  # drop interim responses
        except (EOFError, OSError, ValueError, IndexError):
            log.debug("no response from upstream", exc_info=True)
            await client.send(_BAD_GATEWAY)
            return "close"
        if status == 101:
            await client.send(raw)
            return "splice"
        response = _Head.parse(raw)
        framing = _framing(response, request=False, no_body=method == "HEAD" or status in (204, 304))
        keep = keep_alive and framing != "close"
        head = response.without(_HOP_BY_HOP, *([] if keep else [("Connection", "close")])).encode()
        if mode == "buffer":
            await client.send(head + b"".join([piece async for piece in _body(upstream, response, framing)]))
        else:
            await client.send(head)
            async for piece in _body(upstream, response, framing):
                await client.send(piece)
        return "keep" if keep else "close"
