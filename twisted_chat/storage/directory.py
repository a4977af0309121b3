"""The process-local room directory: the database's rooms, cached on the reactor thread.

Django tells it of every change (``django_signals``); a change drops the cached room and
tells the watchers, which read the room again. A load that was already running when the
change came is not trusted: it is run again.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed

from . import archive
from .interfaces import RoomInfo, RunInThread
from .room_loads import RoomLoads

log = logging.getLogger(__name__)


class LocalRoomDirectory:
    def __init__(self, run_query: RunInThread, max_rooms: int = 1000):
        self._run_query = run_query
        self._max_rooms = max_rooms
        self._rooms: OrderedDict[int, RoomInfo] = OrderedDict()
        self._loads: RoomLoads[RoomInfo] = RoomLoads(self._load)
        self._changed_while_loading: set[int] = set()
        self._watchers: list[Callable[[int], None]] = []

    def get(self, room_id: int) -> Deferred[RoomInfo]:
        info = self._rooms.get(room_id)
        if info is not None:
            self._rooms.move_to_end(room_id)
            return succeed(info)
        return self._loads.get(room_id)

    def _load(self, room_id: int) -> Deferred[RoomInfo]:
        self._changed_while_loading.discard(room_id)
        return self._run_query(archive.load_room_info, room_id).addCallback(self._loaded, room_id)

    def _loaded(self, info: RoomInfo, room_id: int) -> RoomInfo | Deferred[RoomInfo]:
        if room_id in self._changed_while_loading:
            return self._load(room_id)
        self._rooms[room_id] = info
        if len(self._rooms) > self._max_rooms:
            self._rooms.popitem(last=False)
        return info

    def room_changed(self, room_id: int) -> None:
        self._rooms.pop(room_id, None)
        if self._loads.running(room_id):
            self._changed_while_loading.add(room_id)
        for watcher in self._watchers:
            try:
                watcher(room_id)
            except Exception:
                log.exception("a watcher of room %s failed", room_id)

    def watch(self, watcher: Callable[[int], None]) -> None:
        self._watchers.append(watcher)
