"""A private redis-server for tests, on a free loopback port.

Tests never touch a shared Redis (nor FLUSHALL one): each gets its own throwaway server,
which can be stopped, killed and restarted on the same port to play an outage.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

REDIS_SERVER = shutil.which("redis-server") or "redis-server"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ping(port: int, timeout: float = 0.2) -> bool:
    """Whether a Redis answers PING on the port (a raw RESP exchange, no client library)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process without persistence; ``restart`` keeps its port."""

    def __init__(self, port: int | None = None, start_timeout: float = 10.0):
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self._dir = Path(tempfile.mkdtemp(prefix="redis-test-"))
        self._log_path = self._dir / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> RedisServer:
        """Start the server and return once it answers PING (or raise, with its log)."""
        if self.running:
            return self
        log = self._log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                [
                    REDIS_SERVER,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "no",
                    "--daemonize", "no",
                    "--dir", str(self._dir),
                    "--loglevel", "warning",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            log.close()
        deadline = time.monotonic() + self.start_timeout
        while not ping(self.port):
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}:\n{self.log()}")
            if time.monotonic() >= deadline:
                self.kill()
                raise RuntimeError(
                    f"redis-server did not answer within {self.start_timeout} s:\n{self.log()}"
                )
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, and wait until the process is gone (killed if it takes too long)."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        self._end(signal.SIGKILL, 10.0)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open but nothing is answered (a hung Redis)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def restart(self) -> RedisServer:
        """Stop and start again on the same port: every key is lost (nothing is saved)."""
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def log(self) -> str:
        try:
            return self._log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        process.send_signal(signal.SIGCONT)  # a frozen server cannot act on SIGTERM
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def connect(server: RedisServer) -> Any:
    """A txredisapi connection made as the chat server makes its command connection."""
    import txredisapi

    return txredisapi.lazyConnection(
        "127.0.0.1", server.port, 0, convertNumbers=False, connectTimeout=5, replyTimeout=5
    )


def wait_connected(connection: Any, timeout: float = 10.0) -> None:
    """Turn the reactor until ``connection`` answers PING.

    After a restart txredisapi reconnects by itself: its ClientService tries again after
    a backoff of about 1 s, then e (2.7) s, ... up to 10 s, each with some jitter.
    """
    from .reactor_wait import reactor, wait_until

    pinging = False
    answered = False

    def ping_done(reply: Any) -> None:  # a failure too: ping again
        nonlocal pinging, answered
        pinging, answered = False, reply == "PONG"

    def probe() -> bool:
        nonlocal pinging
        if not answered and not pinging:
            pinging = True
            connection.ping().addTimeout(0.25, reactor).addBoth(ping_done)
        return answered

    wait_until(probe, timeout, "the Redis connection answers PING")
