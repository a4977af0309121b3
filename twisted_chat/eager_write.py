"""Writing to a TCP connection at once, instead of on the reactor's next turn.

A Twisted transport always buffers a write and sends it when epoll next reports the socket
writable. For a broadcast that is three system calls per connection (watch for writable,
send, stop watching), and at each one the reactor thread gives the GIL away to whichever
Django or database thread wants it, then waits a switch interval to get it back. When
nothing is queued, sending at once is one system call and keeps the order; whatever the
kernel does not take is queued behind it the usual way, so backpressure still works.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


def write_now(transport: Any, data: bytes) -> None:
    """Send ``data`` now if nothing is queued before it; queue what is left."""
    if (
        isinstance(transport, tcp.Connection)
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._tempDataBuffer
        and transport.offset == len(transport.dataBuffer)
    ):
        sent = transport.writeSomeData(data)
        # An int is what the kernel took; anything else is a lost connection, which the
        # transport's own write path notices and reports.
        if isinstance(sent, int):
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)


def queued_bytes(transport: Any) -> int:
    """Bytes written to a TCP transport that it has not yet handed to the kernel."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
