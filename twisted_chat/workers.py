"""Several worker processes on one port: the supervisor binds it, each worker adopts it.

The parent process (``WorkerSupervisor``) binds and listens on the socket once, then
starts ``count`` workers, each a ``twistd`` running this same .tac with the socket handed
down as a file descriptor; the kernel spreads new connections over the workers that
accept on it. No request needs to reach a particular worker: they share every room
through Redis, so there is nothing to be sticky about.

A worker that dies is started again (after a pause that grows while it keeps dying
young). SIGTERM to the supervisor passes SIGTERM on to every worker, which shuts down
gracefully as a single server does, and waits for them all.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from twisted.application.service import Service
from twisted.internet import protocol
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.python.failure import Failure

log = logging.getLogger(__name__)

# The descriptor number the listening socket has in every worker.
WORKER_FD = 3
# twistd, run by this interpreter (whatever virtualenv it is in); argv follows "-c".
_RUN_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


class AdoptedPortService(Service):
    """Accept connections on a socket someone else bound (the supervisor)."""

    def __init__(self, reactor: Any, fd: int, factory: Any):
        self._reactor = reactor
        self._fd = fd
        self._factory = factory
        self._port: Any = None

    def startService(self) -> None:
        super().startService()
        self._port = self._reactor.adoptStreamPort(self._fd, socket.AF_INET, self._factory)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self._port = self._port, None
        return port.stopListening() if port is not None else None


class _Worker(protocol.ProcessProtocol):
    def __init__(self, supervisor: WorkerSupervisor, index: int):
        self.supervisor = supervisor
        self.index = index
        self.started = time.monotonic()
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.supervisor._ended(self, reason)


class WorkerSupervisor(Service):
    def __init__(
        self,
        reactor: Any,
        port: int,
        interface: str,
        count: int,
        tac: str,
        stop_timeout: float = 20.0,
    ):
        self._reactor = reactor
        self._port = port
        self._interface = interface
        self._tac = tac
        self._stop_timeout = stop_timeout
        self.count = count
        self._socket: socket.socket | None = None
        self._workers: dict[int, tuple[_Worker, Any]] = {}
        self._failures: dict[int, int] = {}
        self._stopping = False
        self.restarts = 0

    def startService(self) -> None:
        super().startService()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._interface, self._port))
        sock.listen(4096)  # as a single server's; the kernel caps it at somaxconn
        sock.setblocking(False)
        self._socket = sock
        log.info("listening on %s:%d for %d workers", self._interface, self._port, self.count)
        for index in range(self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        if self._stopping or self._socket is None:
            return
        worker = _Worker(self, index)
        env = {**os.environ, "CHAT_WORKER_FD": str(WORKER_FD), "CHAT_WORKER_INDEX": str(index)}
        argv = [sys.executable, "-c", _RUN_TWISTD, "-n", "--pidfile=", "-y", self._tac]
        transport = self._reactor.spawnProcess(
            worker,
            sys.executable,
            argv,
            env=env,
            childFDs={0: 0, 1: 1, 2: 2, WORKER_FD: self._socket.fileno()},
        )
        self._workers[index] = (worker, transport)

    def _ended(self, worker: _Worker, reason: Failure) -> None:
        if self._workers.get(worker.index, (None,))[0] is worker:
            del self._workers[worker.index]
        if self._stopping:
            return
        lived = time.monotonic() - worker.started
        failures = self._failures[worker.index] = 0 if lived > 30 else self._failures.get(worker.index, 0) + 1
        delay = min(0.5 * 2 ** max(failures - 1, 0), 30.0) if failures else 0.5
        log.error("worker %d ended (%s); starting it again in %.1f s", worker.index, reason.value, delay)
        self.restarts += 1
        self._reactor.callLater(delay, self._spawn, worker.index)

    def pids(self) -> list[int]:
        return [transport.pid for _, transport in self._workers.values() if transport.pid]

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._stopping = True
        if not self._workers:
            return succeed(None)
        ended = [worker.ended for worker, _ in self._workers.values()]
        for _, transport in self._workers.values():
            _signal(transport, signal.SIGTERM)
        killer = self._reactor.callLater(self._stop_timeout, self._kill_all)
        done = DeferredList(ended)

        def finished(result: Any) -> None:
            if killer.active():
                killer.cancel()
            if self._socket is not None:
                self._socket.close()
                self._socket = None

        return done.addCallback(finished)

    def _kill_all(self) -> None:
        for _, transport in self._workers.values():
            log.error("worker %d did not stop in %.0f s: killed", transport.pid or 0, self._stop_timeout)
            _signal(transport, signal.SIGKILL)


def _signal(transport: Any, signum: int) -> None:
    try:
        transport.signalProcess(signum)
    except ProcessExitedAlready:
        return
