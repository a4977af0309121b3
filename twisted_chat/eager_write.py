"""Writing to a TCP connection at once, instead of on the reactor's next turn.

A Twisted transport always buffers a write and sends it when epoll next reports the socket
writable. For a broadcast that is three system calls per connection (watch for writable,
send, stop watching), and at each one the reactor thread gives the GIL away to whichever
Django or database thread wants it, then waits a switch interval to get it back. When
nothing is queued, sending at once is one system call and keeps the order; whatever the
kernel does not take is queued behind it the usual way, so backpressure still works.
"""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet import tcp

log = logging.getLogger(__name__)

# The FileDescriptor internals this module reads (pinned by tests/test_eager_write.py and
# by the upper bound on Twisted in requirements.txt). If a Twisted release drops any of
# them, every write goes through ``transport.write`` and slow consumers are judged by
# whether they are still paused, as logged once.
_INTERNALS = ("dataBuffer", "offset", "_tempDataBuffer", "_tempDataLen", "writeSomeData")
_internals_present: bool | None = None


def _can_read_internals(transport: Any) -> bool:
    global _internals_present
    if _internals_present is None:
        _internals_present = all(hasattr(transport, name) for name in _INTERNALS)
        if not _internals_present:
            log.warning("this Twisted's transports lack %s: writing through transport.write", _INTERNALS)
    return _internals_present


def write_now(transport: Any, data: bytes) -> None:
    """Send ``data`` now if nothing is queued before it; queue what is left."""
    if (
        isinstance(transport, tcp.Connection)
        and _can_read_internals(transport)
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
    """Bytes written to a TCP transport that it has not yet handed to the kernel.

    Only asked of a transport that has paused its producer; without the internals, such a
    transport counts as full.
    """
    if not _can_read_internals(transport):
        return 2**62
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
