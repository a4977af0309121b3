"""A crowd arriving in one room, then leaving: ``python -m bench.presence_churn``.

Starts our server on the Redis backend (from ``--root``: this checkout by default, or
another build's worktree, to compare), gives ``--users`` users a session each, and has
them all open a WebSocket to the lobby at once, while one more user watches the room's
presence events. It reports, for the arrival and for the departure: how long until the
watcher had seen every join (every leave), the server's CPU time, and the commands and CPU
time of the redis-server, which is where one process's presence writes and notices go.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from .run import ROOT, Server, running

ROOM = 1

_SESSIONS = """
import json
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore

User.objects.bulk_create([User(username=f"crowd{{i}}") for i in range({count})])
keys = []
for user in User.objects.filter(username__startswith="crowd"):
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    keys.append(session.session_key)
print(json.dumps([settings.SESSION_COOKIE_NAME, keys]))
"""


def sessions(server: Server, count: int) -> list[str]:
    """A logged-in session per user, made in the database (logging in through the form
    hashes a password per user: minutes for a thousand)."""
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", _SESSIONS.format(count=count)],
        cwd=server.root,
        env=server.env,
        check=True,
        capture_output=True,
        text=True,
    )
    name, keys = json.loads(result.stdout.strip().splitlines()[-1])
    return [f"{name}={key}" for key in keys]


def redis_commands(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n")
        data = b""
        while b"total_commands_processed:" not in data or not data.endswith(b"\r\n"):
            data += sock.recv(65536)
    line = data.split(b"total_commands_processed:")[1].split(b"\r\n")[0]
    return int(line)


class Watcher:
    """One user in the room, counting who the presence events say joined and left."""

    def __init__(self) -> None:
        self.joined: set[str] = set()
        self.left: set[str] = set()
        self.events = 0

    async def watch(self, ws: ClientConnection) -> None:
        async for frame in ws:
            event = json.loads(frame)
            if event.get("type") == "presence":
                self.events += 1
                self.joined.update(event.get("joined", ()))
                self.left.update(event.get("left", ()))


async def drain(ws: ClientConnection) -> None:
    async for _ in ws:
        pass


async def until(condition: Any, seconds: float, what: str) -> float:
    started = time.perf_counter()
    deadline = started + seconds
    while not condition():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"timed out after {seconds}s waiting for {what}")
        await asyncio.sleep(0.005)
    return time.perf_counter() - started


class Meter:
    """Server and redis-server CPU, and redis commands, over one phase."""

    def __init__(self, server: Server):
        self.server = server
        assert server.redis is not None
        self.redis = server.redis
        self.start = (server.cpu_seconds(), self.redis.cpu_seconds(), redis_commands(self.redis.port))

    def read(self, users: int, seconds: float, watcher_events: int) -> dict[str, Any]:
        cpu, redis_cpu, commands = (
            self.server.cpu_seconds(),
            self.redis.cpu_seconds(),
            redis_commands(self.redis.port),
        )
        return {
            "seen_all_s": round(seconds, 3),
            "server_cpu_ms": round((cpu - self.start[0]) * 1e3, 1),
            "redis_cpu_ms": round((redis_cpu - self.start[1]) * 1e3, 1),
            "redis_commands": commands - self.start[2] - 1,  # less this meter's own INFO
            "redis_commands_per_user": round((commands - self.start[2] - 1) / users, 2),
            "presence_events_to_watcher": watcher_events,
        }


async def crowd(server: Server, cookies: list[str], settle: float) -> dict[str, Any]:
    url = f"ws://127.0.0.1:{server.port}/ws?room={ROOM}"
    origin = f"http://127.0.0.1:{server.port}"

    def open_one(cookie: str) -> Any:
        return connect(url, additional_headers={"Cookie": cookie, "Origin": origin}, open_timeout=60)

    watcher = Watcher()
    async with open_one(server.cookie) as watching:
        task = asyncio.create_task(watcher.watch(watching))
        await until(lambda: watcher.events >= 1, 10, "the watcher's first presence")
        await asyncio.sleep(settle)
        users = len(cookies)
        before = watcher.events
        meter = Meter(server)
        started = time.perf_counter()
        sockets = await asyncio.gather(*(open_one(cookie) for cookie in cookies))
        # Each reads what it is sent, as a browser does: a client that stops reading
        # does not see the server's answer to its close.
        readers = [asyncio.create_task(drain(ws)) for ws in sockets]
        await until(lambda: len(watcher.joined) >= users, 60, "every join")
        seconds = time.perf_counter() - started
        await asyncio.sleep(settle)  # what is batched or read later lands in the figures too
        arrive = meter.read(users, seconds, watcher.events - before)
        before = watcher.events
        meter = Meter(server)
        started = time.perf_counter()
        await asyncio.gather(*(ws.close() for ws in sockets))
        await until(lambda: len(watcher.left) >= users, 60, "every leave")
        seconds = time.perf_counter() - started
        await asyncio.sleep(settle)
        leave = meter.read(users, seconds, watcher.events - before)
        task.cancel()
        await asyncio.gather(*readers)
    return {"users": users, "arrive": arrive, "leave": leave}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to run")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--settle", type=float, default=1.0, help="seconds to let each phase finish")
    args = parser.parse_args()
    with running("ours-redis", args.root.resolve(), CHAT_MAX_CONNECTIONS_PER_IP="0") as server:
        cookies = sessions(server, args.users)
        result = asyncio.run(crowd(server, cookies, args.settle))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
