"""``write_now`` on a real TCP socket: order is kept whatever the kernel takes.

A socketpair stands in for the network and a MemoryReactor records whether the transport
asked to be told when the socket is writable, so each step is deterministic.
"""

from __future__ import annotations

import socket

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor

from twisted_chat.eager_write import queued_bytes, write_now


@pytest.fixture
def pair():
    ours, peer = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ours.setblocking(False)
    peer.settimeout(5)
    reactor = MemoryReactor()
    transport = tcp.Server(ours, Protocol(), ("127.0.0.1", 1), None, 1, reactor)
    transport.protocol.makeConnection(transport)
    yield transport, peer, reactor
    ours.close()
    peer.close()


def read_exactly(peer: socket.socket, size: int, transport: tcp.Server) -> bytes:
    """Read as the client would, letting the transport flush its queue as room appears."""
    received = b""
    while len(received) < size:
        if queued_bytes(transport):
            transport.doWrite()
        received += peer.recv(65536)
    return received


def test_a_write_with_nothing_queued_is_sent_at_once(pair):
    transport, peer, reactor = pair
    write_now(transport, b"hello")
    assert queued_bytes(transport) == 0
    assert transport not in reactor.getWriters(), "no reactor turn is needed"
    assert peer.recv(100) == b"hello"


def test_what_the_kernel_does_not_take_is_queued_and_later_writes_wait_behind_it(pair):
    transport, peer, reactor = pair
    big = bytes(range(256)) * 4096  # 1 MiB: far more than both socket buffers
    write_now(transport, big)
    assert 0 < queued_bytes(transport) < len(big)
    assert transport in reactor.getWriters()
    # The client reads what the kernel holds: the socket has room again, but the transport
    # still holds the rest of ``big``, which must go first.
    head = peer.recv(65536)
    write_now(transport, b"tail")
    assert head + read_exactly(peer, len(big) + 4 - len(head), transport) == big + b"tail"


def test_a_closing_transport_is_not_written_to_directly(pair):
    transport, peer, _reactor = pair
    transport.loseConnection()
    write_now(transport, b"late")
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)
