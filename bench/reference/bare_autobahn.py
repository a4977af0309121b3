"""The ceiling: a bare autobahn broadcast server with no framework.

Every text frame received is broadcast to every connection, encoded once
(``prepareMessage``) and sent with ``sendPreparedMessage``. No ids, no storage, no auth.

    python -m bench.reference.bare_autobahn PORT
"""

from __future__ import annotations

import resource
import sys

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor


class BroadcastProtocol(WebSocketServerProtocol):
    def onOpen(self) -> None:
        self.factory.clients.add(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        prepared = self.factory.prepareMessage(payload, isBinary)
        for client in self.factory.clients:
            client.sendPreparedMessage(prepared)

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
