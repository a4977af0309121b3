"""The hostile proxy, against a tiny threaded HTTP/1.1 server standing in for the chat server.

Clients are raw sockets, so the tests see exactly what goes over the wire: which bytes
arrive when, and when a connection is closed.
"""

from __future__ import annotations

import gc
import json
import logging
import select
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from .hostile_proxy import HostileProxy, Mode
from .server import wait_for

TIMEOUT = 3.0
FIRST = b"data: first\n\n"
SECOND = b"data: second\n\n"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class Upstream(socketserver.ThreadingTCPServer):
    """Serves /echo (Content-Length), /chunked (one chunk, then waits for ``release``),
    /eof (no framing: ends by closing), /broken (closes mid-chunk) and /ws (101, then echo).

    Like Twisted it keeps connections alive unless asked for ``Connection: close``.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), UpstreamHandler)
        self.seen: list[Seen] = []
        self.release = threading.Event()
        self.first_sent = threading.Event()
        self.finished = threading.Event()

    @property
    def port(self) -> int:
        return self.server_address[1]


class UpstreamHandler(socketserver.StreamRequestHandler):
    server: Upstream

    def handle(self) -> None:
        self.connection.settimeout(TIMEOUT + 2)
        while line := self.rfile.readline():
            method, path, _ = line.decode().split(" ", 2)
            headers = {}
            while (header := self.rfile.readline()) not in (b"\r\n", b""):
                name, _, value = header.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = self.rfile.read(int(headers.get("content-length", 0)))
            self.server.seen.append(Seen(method, path, headers))
            close = headers.get("connection", "").lower() == "close"
            connection = b"Connection: close\r\n" if close else b""
            if path == "/ws":
                self.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n")
                self.wfile.write(b"Connection: Upgrade\r\n\r\n")
                while data := self.connection.recv(4096):
                    self.connection.sendall(data)
                return
            if path in ("/chunked", "/broken"):
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
                self.wfile.write(b"Transfer-Encoding: chunked\r\n" + connection + b"\r\n")
                self.wfile.write(b"%x\r\n%s\r\n" % (len(FIRST), FIRST))
                self.server.first_sent.set()
                if path == "/broken" or not self.server.release.wait(TIMEOUT + 2):
                    return
                self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(SECOND), SECOND))
                self.server.finished.set()
            elif path == "/eof":
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
                return
            else:
                echo = {"method": method, "path": path, "body": body.decode(), **headers}
                content = json.dumps(echo).encode()
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + connection)
                self.wfile.write(b"Content-Length: %d\r\n\r\n%s" % (len(content), content))
            if close:
                return


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class Client:
    """A browser-like HTTP/1.1 client on one keep-alive connection, as raw bytes."""

    opened: list[socket.socket] = []  # closed after each test by close_clients

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.opened.append(self.sock)
        self.buf = b""

    def send_request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> None:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        self.sock.sendall("\r\n".join([*lines, "", ""]).encode("latin-1") + body)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the proxy closed the connection")
        self.buf += data

    def read_until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            self._fill()
        data, _, self.buf = self.buf.partition(sep)
        return data + sep

    def read_exactly(self, size: int) -> bytes:
        while len(self.buf) < size:
            self._fill()
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def read_head(self) -> tuple[int, dict[str, str]]:
        status_line, *lines = self.read_until(b"\r\n\r\n").decode("latin-1").strip().split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (h.partition(":") for h in lines)}
        return int(status_line.split()[1]), headers

    def read_chunk(self) -> bytes:
        """One chunk's data; b"" for the last chunk (no trailers here)."""
        size = int(self.read_until(b"\r\n"), 16)
        return self.read_exactly(size + 2)[:-2]

    def read_response(self) -> Response:
        status, headers = self.read_head()
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while chunk := self.read_chunk():
                body += chunk
        elif "content-length" in headers:
            body = self.read_exactly(int(headers["content-length"]))
        else:
            body = self.read_until_closed()
        return Response(status, headers, body)

    def get(self, path: str, **headers: str) -> Response:
        self.send_request("GET", path, headers)
        return self.read_response()

    def read_until_closed(self) -> bytes:
        """Everything until the proxy closes the connection (a reset counts as closed)."""
        try:
            while True:
                self._fill()
        except (EOFError, ConnectionResetError):
            data, self.buf = self.buf, b""
            return data

    def nothing_arrives_for(self, seconds: float) -> bool:
        return not self.buf and not select.select([self.sock], [], [], seconds)[0]

    def upgrade(self) -> Response:
        self.send_request("GET", "/ws", {"Upgrade": "websocket", "Connection": "Upgrade"})
        status, headers = self.read_head()
        return Response(status, headers, b"")


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    yield
    while Client.opened:
        Client.opened.pop().close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def make_proxy(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> Iterator[Callable[[Mode], HostileProxy]]:
    """Proxies in front of ``upstream``; at the end each must stop cleanly, with no asyncio errors."""
    caplog.set_level(logging.WARNING, logger="asyncio")
    proxies: list[HostileProxy] = []

    def make(mode: Mode) -> HostileProxy:
        proxies.append(HostileProxy(upstream.port, mode=mode).start())
        return proxies[-1]

    yield make
    for proxy in proxies:
        thread = proxy._thread
        proxy.stop()
        assert thread is not None and not thread.is_alive()
    gc.collect()  # "Task was destroyed but it is pending" and the like are logged on collection
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


def test_pass_forwards_websocket_upgrade_and_echoes(make_proxy, upstream: Upstream) -> None:
    proxy = make_proxy("pass")
    client = Client(proxy.port)
    assert client.upgrade().status == 101
    client.sock.sendall(b"\x81\x04ping")
    assert client.read_exactly(6) == b"\x81\x04ping"
    assert (proxy.requests_seen("/ws"), proxy.refused_upgrades) == (1, 0)
    assert upstream.seen[0].headers["upgrade"] == "websocket"


@pytest.mark.parametrize("mode", ["no_upgrade", "buffer"])
def test_upgrade_is_refused_and_the_connection_closed(make_proxy, upstream: Upstream, mode: Mode) -> None:
    proxy = make_proxy(mode)
    client = Client(proxy.port)
    response = client.upgrade()
    assert 400 <= response.status < 600
    client.read_exactly(int(response.headers["content-length"]))
    assert client.read_until_closed() == b""
    assert (proxy.requests_seen("/ws"), proxy.refused_upgrades) == (1, 1)
    assert upstream.seen == []
    assert Client(proxy.port).get("/echo").status == 200  # other requests still go through


@pytest.mark.parametrize("mode", ["pass", "no_upgrade"])
def test_streaming_modes_deliver_the_first_chunk_before_upstream_finishes(
    make_proxy, upstream: Upstream, mode: Mode
) -> None:
    proxy = make_proxy(mode)
    client = Client(proxy.port)
    client.send_request("GET", "/chunked")
    status, headers = client.read_head()
    assert (status, headers["content-type"]) == (200, "text/event-stream")
    assert client.read_chunk() == FIRST
    assert not upstream.finished.is_set()
    upstream.release.set()
    assert client.read_chunk() == SECOND
    assert client.read_chunk() == b""
    assert proxy.requests_seen("/chunked") == 1


def test_buffer_mode_delivers_nothing_until_the_response_is_complete(make_proxy, upstream: Upstream) -> None:
    proxy = make_proxy("buffer")
    client = Client(proxy.port)
    client.send_request("GET", "/chunked")
    assert upstream.first_sent.wait(TIMEOUT)
    # A streaming proxy would pass the head and first chunk on within milliseconds.
    assert client.nothing_arrives_for(0.5)
    upstream.release.set()
    response = client.read_response()
    assert (response.status, response.body) == (200, FIRST + SECOND)


@pytest.mark.parametrize("mode", ["no_upgrade", "buffer"])
def test_a_response_ended_by_closing_is_relayed_then_the_connection_closed(make_proxy, mode: Mode) -> None:
    client = Client(make_proxy(mode).port)
    client.send_request("GET", "/eof")
    status, headers = client.read_head()
    assert (status, headers["connection"]) == (200, "close")
    assert client.read_until_closed() == b"until the end"


@pytest.mark.parametrize("mode", ["pass", "no_upgrade", "buffer"])
def test_keep_alive_serves_several_requests_on_one_connection(
    make_proxy, upstream: Upstream, mode: Mode
) -> None:
    proxy = make_proxy(mode)
    upstream.release.set()
    client = Client(proxy.port)
    first = client.get("/echo?n=1")
    chunked = client.get("/chunked")
    second = client.get("/echo?n=2")
    assert [first.status, chunked.status, second.status] == [200, 200, 200]
    assert chunked.body == FIRST + SECOND
    assert "connection" not in first.headers and "connection" not in second.headers
    assert json.loads(second.body)["path"] == "/echo?n=2"
    assert proxy.requests_seen("/echo") == 2 and proxy.requests_seen("/") == 3
    # Upstream: a fresh connection per request, asked to close it, with the browser's Host.
    assert [s.headers["connection"] for s in upstream.seen] == ["close"] * 3
    assert {s.headers["host"] for s in upstream.seen} == {f"127.0.0.1:{proxy.port}"}


@pytest.mark.parametrize("mode", ["pass", "no_upgrade", "buffer"])
def test_post_bodies_and_cookies_are_forwarded_untouched(make_proxy, mode: Mode) -> None:
    client = Client(make_proxy(mode).port)
    cookie = 'sessionid=abc123; csrftoken="x=y;z"; theme=dark'
    body = "message=héllo wörld&room=1".encode()
    client.send_request("POST", "/echo", {"Cookie": cookie}, body)
    echoed = json.loads(client.read_response().body)
    assert (echoed["method"], echoed["body"], echoed["cookie"]) == ("POST", body.decode(), cookie)
    assert client.get("/echo").status == 200  # the connection is still usable after a body


def test_set_mode_drops_open_connections_and_new_ones_use_the_new_mode(
    make_proxy, upstream: Upstream
) -> None:
    proxy = make_proxy("pass")
    idle = Client(proxy.port)
    assert idle.get("/echo").status == 200
    streaming = Client(proxy.port)
    streaming.send_request("GET", "/chunked")
    streaming.read_head()
    assert streaming.read_chunk() == FIRST
    wait_for(lambda: proxy.open_connections == 2, TIMEOUT, what="both connections are open")
    assert proxy.set_mode("no_upgrade") == 2
    assert proxy.mode == "no_upgrade"
    assert idle.read_until_closed() == b""
    assert streaming.read_until_closed() == b""
    assert proxy.open_connections == 0
    assert Client(proxy.port).upgrade().status == 400


def test_set_mode_without_dropping_leaves_open_connections_in_their_mode(make_proxy) -> None:
    proxy = make_proxy("pass")
    old = Client(proxy.port)
    assert old.get("/echo").status == 200
    assert proxy.set_mode("no_upgrade", drop_connections=False) == 0
    assert old.upgrade().status == 101
    assert Client(proxy.port).upgrade().status == 400


def test_a_client_leaving_a_held_response_frees_its_connection(make_proxy, upstream: Upstream) -> None:
    proxy = make_proxy("buffer")
    client = Client(proxy.port)
    client.send_request("GET", "/chunked")
    assert upstream.first_sent.wait(TIMEOUT)
    client.sock.close()
    wait_for(lambda: proxy.open_connections == 0, TIMEOUT, what="the proxy noticed the client left")
    assert Client(proxy.port).get("/echo").status == 200


@pytest.mark.parametrize("mode", ["no_upgrade", "buffer"])
def test_upstream_closing_mid_response_closes_the_client(make_proxy, mode: Mode) -> None:
    proxy = make_proxy(mode)
    client = Client(proxy.port)
    client.send_request("GET", "/broken")
    received = client.read_until_closed()
    assert (received == b"") if mode == "buffer" else received.startswith(b"HTTP/1.1 200")
    assert Client(proxy.port).get("/echo").status == 200


def test_an_upstream_that_is_down_gives_502() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    with HostileProxy(port, mode="no_upgrade") as proxy:
        assert Client(proxy.port).get("/echo").status == 502
