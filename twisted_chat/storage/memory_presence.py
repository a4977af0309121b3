"""Process-local presence: entries that expire unless set again, read from a clock.

Expired entries are dropped when their room is read, and a room's entries all at once
when the last of them expires, so nothing outlives its ttl by more than one read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed


class LocalPresence:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._rooms: dict[int, dict[str, tuple[float, Any]]] = {}

    def set(self, room_id: int, key: str, value: Any, ttl: float) -> None:
        self._rooms.setdefault(room_id, {})[key] = (self._clock() + ttl, value)

    def remove(self, room_id: int, key: str) -> None:
        entries = self._rooms.get(room_id)
        if entries is not None:
            entries.pop(key, None)
            if not entries:
                del self._rooms[room_id]

    def entries(self, room_id: int) -> Deferred[dict[str, Any]]:
        entries = self._rooms.get(room_id)
        if not entries:
            return succeed({})
        now = self._clock()
        live = {key: value for key, (expires, value) in entries.items() if expires > now}
        if len(live) < len(entries):
            for key in [key for key, (expires, _) in entries.items() if expires <= now]:
                del entries[key]
            if not entries:
                del self._rooms[room_id]
        return succeed(live)
