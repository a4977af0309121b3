"""The long-poll cycle in process: CPU time to park a poll, and to wake it with a message.

No sockets and no HTTP: N ``DummyRequest``s go through ``LongPollResource`` and the room
core with real local storage on a throwaway SQLite database, and a reactor stand-in whose
timers cost nothing. The HTTP server around it is the same for every build, so this
isolates what the chat's own code costs per poll. Usage::

    python -m bench.poll_cycle [--polls 1000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class _Timer:
    def __init__(self) -> None:
        self._active = True

    def active(self) -> bool:
        return self._active

    def cancel(self) -> None:
        self._active = False


class _Reactor:
    """Runs ``callLater(0, ...)`` on ``advance``; longer timers never fire here."""

    def __init__(self) -> None:
        self._soon: list[tuple[Any, tuple[Any, ...]]] = []

    def callLater(self, delay: float, fn: Any, *args: Any) -> _Timer:
        if delay == 0:
            self._soon.append((fn, args))
        return _Timer()

    def advance(self, _: float) -> None:
        while self._soon:
            fn, args = self._soon.pop(0)
            fn(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    database = Path(tempfile.mkdtemp()) / "poll_cycle.sqlite3"
    os.environ.update(
        DJANGO_SETTINGS_MODULE="django_twisted_chat.settings",
        DATABASE_URL=f"sqlite:///{database}",
        DJANGO_DEBUG="1",
    )
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, check=True, env=os.environ)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth.models import User
    from twisted.internet.defer import maybeDeferred
    from twisted.web.test.requesthelper import DummyRequest

    from chat.models import ChatRoom
    from twisted_chat.events import Author
    from twisted_chat.hub import RoomHub
    from twisted_chat.limits import ConnectionLimits, SendRateLimiter
    from twisted_chat.longpoll import LongPollResource
    from twisted_chat.origins import OriginPolicy
    from twisted_chat.sessions import SessionCache
    from twisted_chat.storage.directory import LocalRoomDirectory
    from twisted_chat.storage.memory_broker import LocalBroker
    from twisted_chat.storage.message_log import SqlMessageLog

    room = ChatRoom.objects.create(name="poll cycle")
    author = Author(User.objects.create_user("poller").pk, "poller")
    reactor = _Reactor()
    broker = LocalBroker()
    log = SqlMessageLog(reactor, maybeDeferred, maybeDeferred, broker.publish)
    hub = RoomHub(
        LocalRoomDirectory(maybeDeferred),
        log,
        broker,
        SessionCache(maybeDeferred),
        SendRateLimiter(0, 0),
        ConnectionLimits(0),
        SendRateLimiter(0, 0),
    )
    resource = LongPollResource(reactor, hub, maybeDeferred, OriginPolicy())

    def post() -> None:
        log.append(room.pk, author, "wake up")
        reactor.advance(0)

    post()
    park, wake = [], []
    for _ in range(args.rounds):
        since = str(log.last_id(room.pk).result).encode()
        requests = []
        gc.collect()
        gc.disable()
        started = time.process_time()
        for _ in range(args.polls):
            request = DummyRequest([b""])
            request.method = b"GET"
            request.args = {b"room": [str(room.pk).encode()], b"since": [since], b"timeout": [b"60"]}
            resource.render(request)
            requests.append(request)
        parked = time.process_time()
        post()
        woken = time.process_time()
        gc.enable()
        if not all(request.finished for request in requests):
            raise SystemExit("not every poll was answered")
        park.append((parked - started) * 1e6 / args.polls)
        wake.append((woken - parked) * 1e6 / args.polls)
    park.sort()
    wake.sort()
    middle = args.rounds // 2
    print(f"{args.polls} polls, median of {args.rounds} rounds:")
    print(f"  park (request to parked, DummyRequest included): {park[middle]:.1f} us per poll")
    print(f"  wake (one message to every poll answered):        {wake[middle]:.1f} us per poll")


if __name__ == "__main__":
    main()
