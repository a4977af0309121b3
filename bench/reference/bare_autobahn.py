"""The ceiling: a bare autobahn broadcast server with no framework.

Every text frame received is broadcast to every open connection: framed once
(``prepareMessage``), then the same bytes written to each connection with ``write_now``,
which is how our server writes its fan-out (``ChatWebSocketProtocol.deliver`` in
twisted_chat/websocket.py). No ids, no storage, no auth, no rooms.

    python -m bench.reference.bare_autobahn PORT

Why it does not use ``sendPreparedMessage``: that calls ``sendData``, and after every
write ``sendData`` builds the arguments of a debug-log line: ``hltype(self.sendData)``,
``hlval(self.peer)`` and ``hlval(len(data))``, four ``click.style`` calls when click is
installed. Setting the log level does not help. txaio already makes ``log.debug`` a no-op
at its default level (info), but Python builds the arguments before it calls the no-op.
Measured alone, that is about 4 µs per send on the bench machine (1.3 µs without click).
Our server does not pay it, because it writes frames it has already built.

``write_now`` sends at once when nothing is queued: one system call, where
``transport.write`` takes three on the reactor's next turn. Our server writes with it too.
The reference imports it (the module needs only Twisted) so that both servers run the same
code.

While the reference paid for the formatting and the buffered writes, our server looked
cheaper than the bare server: 0.5x to 0.8x per delivery. Each of the two costs was about
half the gap. Now both servers build each frame once and write it the same way, so the
difference is what the framework costs (Django, rooms, storage, auth).
"""

from __future__ import annotations

import resource
import sys

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor

from twisted_chat.eager_write import write_now

_OPEN = WebSocketServerProtocol.STATE_OPEN


class BroadcastProtocol(WebSocketServerProtocol):
    def onOpen(self) -> None:
        self.factory.clients.add(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        # No compression is negotiated (autobahn's server default, which the factory
        # leaves alone), so every connection gets these same frame bytes.
        frame = self.factory.prepareMessage(payload, isBinary).payloadHybi
        for client in self.factory.clients:
            if client.state == _OPEN:  # as ours: nothing after a close has begun
                write_now(client.transport, frame)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.clients.discard(self)


class BroadcastFactory(WebSocketServerFactory):
    protocol = BroadcastProtocol

    def __init__(self) -> None:
        super().__init__()
        self.clients: set[BroadcastProtocol] = set()


def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    reactor.listenTCP(int(sys.argv[1]), BroadcastFactory(), interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
