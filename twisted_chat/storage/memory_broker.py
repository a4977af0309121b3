"""The process-local broker: publishing is a loop over the room's handlers."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from twisted.internet.defer import Deferred, succeed

from ..events import RoomEvent
from .interfaces import RoomHandler

log = logging.getLogger(__name__)


class LocalBroker:
    def __init__(self) -> None:
        self._handlers: dict[int, list[RoomHandler]] = {}

    def subscribe(self, room_id: int, handler: RoomHandler) -> Deferred[None]:
        handlers = self._handlers.setdefault(room_id, [])
        if handler not in handlers:
            handlers.append(handler)
        return succeed(None)

    def unsubscribe(self, room_id: int, handler: RoomHandler) -> None:
        handlers = self._handlers.get(room_id)
        if handlers is not None and handler in handlers:
            handlers.remove(handler)
            if not handlers:
                del self._handlers[room_id]

    def publish(self, room_id: int, events: Sequence[RoomEvent]) -> None:
        for handler in tuple(self._handlers.get(room_id, ())):
            try:
                handler(room_id, events)
            except Exception:
                log.exception("a handler of room %s failed", room_id)

    @property
    def room_count(self) -> int:
        return len(self._handlers)
