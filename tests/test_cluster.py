"""Several processes, one chat: real twistd servers sharing one database and one redis-server.

Each test starts its own redis-server on a free port (tests.redis_server) and never
touches the machine's shared one. The database is a SQLite file all the servers open, or
a fresh PostgreSQL database when the suite runs with DATABASE_URL=postgres://...
(``make test-postgres``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus

from . import postgres_server
from .conftest import fill_template
from .server import ChatServerProcess, base_env, login, logout, post_message, recv_until, wait_for, ws_connect

LOBBY = 1


@pytest.fixture
def cluster(server_factory, shared_database, redis_server):
    """Start servers that share the database and Redis: ``cluster(workers=1, **env)``."""

    def start(workers: int = 1, **env: str) -> ChatServerProcess:
        return server_factory(
            {"CHAT_REDIS_URL": redis_server.url, "CHAT_WORKERS": str(workers), **env},
            database=shared_database,
        )

    return start


class Reader:
    """A WebSocket subscribed to a room, read by a thread: ids, acks and errors as they come."""

    def __init__(self, server: ChatServerProcess, session: requests.Session, room: int, since: int = 0):
        self._sockets = contextlib.ExitStack()
        self.ws = self._sockets.enter_context(ws_connect(server, session))
        self.ws.send(json.dumps({"type": "subscribe", "room": room, "since": since}))
        recv_until(self.ws, lambda f: f.get("type") == "subscribed")
        self.room = room
        self.ids: list[int] = []
        self.acks: dict[str, int] = {}
        self.errors: list[dict[str, Any]] = []
        self.closed: int | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for raw in self.ws:
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind == "message" and frame["room"] == self.room:
                    self.ids.append(frame["id"])
                elif kind == "ack":
                    self.acks[frame["nonce"]] = frame["id"]
                elif kind == "error":
                    self.errors.append(frame)
        except ConnectionClosed as closed:
            self.closed = closed.rcvd.code if closed.rcvd else 1006
            return
        self.closed = self.ws.close_code or 1000

    def send(self, text: str, nonce: str) -> None:
        self.ws.send(json.dumps({"type": "send", "room": self.room, "text": text, "nonce": nonce}))

    def close(self) -> None:
        self._sockets.close()
        self._thread.join(5)


class Poller:
    """A long-poll client that keeps polling a room from its last id, in a thread."""

    def __init__(self, server: ChatServerProcess, session: requests.Session, room: int):
        self.server, self.session, self.room = server, session, room
        self.ids: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            since = self.ids[-1] if self.ids else 0
            url = f"{self.server.url}/poll?room={self.room}&since={since}&timeout=2"
            try:
                response = self.session.get(url, timeout=10)
            except requests.RequestException:
                continue
            if response.status_code == 200:
                self.ids.extend(m["id"] for m in response.json()["messages"] if m["type"] == "message")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def history(server: ChatServerProcess, session: requests.Session, room: int) -> list[int]:
    ids: list[int] = []
    while True:
        since = ids[-1] if ids else 0
        response = session.get(f"{server.url}/poll?room={room}&since={since}&timeout=0", timeout=10)
        response.raise_for_status()
        page = [m["id"] for m in response.json()["messages"]]
        if not page:
            return ids
        ids.extend(page)


def test_every_client_of_every_process_sees_one_order(cluster):
    servers = [cluster(), cluster(), cluster(workers=2)]
    sessions = [login(s, "alice") for s in servers]
    readers = [Reader(s, session, LOBBY) for s, session in zip(servers, sessions, strict=True)]
    readers.append(Reader(servers[2], login(servers[2], "bob"), LOBBY))
    pollers = [Poller(servers[0], sessions[0], LOBBY), Poller(servers[2], sessions[2], LOBBY)]
    per_sender = 60

    def post_all(server: ChatServerProcess, session: requests.Session, tag: str) -> None:
        for i in range(per_sender):
            assert post_message(session, server, LOBBY, f"{tag}{i}", f"{tag}-{i}").status_code == 200

    posters = [
        threading.Thread(target=post_all, args=(servers[1], login(servers[1], "carol"), "p")),
        threading.Thread(target=post_all, args=(servers[2], login(servers[2], "carol"), "q")),
    ]
    for poster in posters:
        poster.start()
    for index, reader in enumerate(readers[:3]):
        for i in range(per_sender):
            reader.send(f"w{index}-{i}", f"w{index}-{i}")
    for poster in posters:
        poster.join(60)
    total = per_sender * (len(posters) + 3)
    everyone = [*readers, *pollers]
    wait_for(lambda: all(len(c.ids) >= total for c in everyone), 60, what=f"{total} messages everywhere")
    expected = list(range(1, total + 1))
    for client in everyone:
        assert client.ids == expected
    assert all(not r.errors for r in readers), [r.errors for r in readers]
    # A retry that lands on another process gets the original id, and adds nothing.
    first = readers[0].acks["w0-0"]
    retry = post_message(sessions[1], servers[1], LOBBY, "w0-0", "w0-0")
    assert retry.status_code == 200 and retry.json()["id"] == first
    assert history(servers[1], sessions[1], LOBBY) == expected
    for client in everyone:
        client.close()


def test_a_redis_outage_delays_other_processes_but_loses_nothing(cluster, redis_server):
    a, b = cluster(), cluster()
    alice_a, alice_b = login(a, "alice"), login(b, "alice")
    on_a, on_b = Reader(a, alice_a, LOBBY), Reader(b, alice_b, LOBBY)
    sent = 0

    def send_some(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            sent += 1
            (on_a if sent % 2 else on_b).send(f"m{sent}", f"n-{sent}")

    send_some(40)
    redis_server.stop()
    wait_for(lambda: a.stats().get("redis") == "down" and b.stats().get("redis") == "down", 15, what="down")
    send_some(40)
    # While Redis is down, each process still hears the other through the database.
    wait_for(lambda: len(on_a.acks) + len(on_b.acks) == 80, 30, what="80 acks during the outage")
    wait_for(lambda: len(on_a.ids) == len(on_b.ids) == 80, 30, what="80 messages on both sides")
    redis_server.start()
    wait_for(lambda: a.stats().get("redis") == "up" and b.stats().get("redis") == "up", 30, what="up")
    send_some(40)
    wait_for(lambda: len(on_a.acks) + len(on_b.acks) == 120, 30, what="120 acks")
    wait_for(lambda: len(on_a.ids) == len(on_b.ids) == 120, 30, what="120 messages on both sides")
    expected = list(range(1, 121))
    assert on_a.ids == on_b.ids == expected
    assert sorted({*on_a.acks.values(), *on_b.acks.values()}) == expected
    assert history(a, alice_a, LOBBY) == expected
    assert on_a.closed is None and on_b.closed is None, "no connection dropped because of Redis"
    metrics = a.metrics()
    assert "chat_redis_up 1.0" in metrics and "chat_redis_outages_total 1.0" in metrics
    assert a.log_tail(400).count("Redis connection lost") == 1


def test_a_worker_killed_after_acks_loses_nothing_and_its_clients_resume_elsewhere(cluster):
    a, b = cluster(), cluster()
    alice_a, alice_b = login(a, "alice"), login(b, "alice")
    watcher = Reader(b, login(b, "bob"), LOBBY)
    sender = Reader(a, alice_a, LOBBY)
    for i in range(50):
        sender.send(f"m{i}", f"n-{i}")
    wait_for(lambda: len(sender.acks) == 50, 30, what="50 acks")
    a.kill()
    acked = sorted(sender.acks.values())
    resumed = Reader(b, alice_b, LOBBY, since=sender.ids[-1] if sender.ids else 0)
    resumed.send("after the crash", "n-after")
    wait_for(lambda: "n-after" in resumed.acks, 30, what="a send on the other worker")
    final = history(b, alice_b, LOBBY)
    assert set(acked) <= set(final) and len(final) == len(set(final)) == 51
    wait_for(lambda: len(watcher.ids) == 51, 30, what="the watcher to see all 51")
    assert watcher.ids == final
    assert sender.ids + resumed.ids == final


@pytest.fixture
def private_postgres(database_template, tmp_path) -> Iterator[str]:
    """A PostgreSQL of the test's own, filled like the SQLite template: it gets restarted."""
    if not postgres_server.available():
        if os.environ.get("CI"):
            pytest.fail("initdb and pg_ctl are needed for the PostgreSQL restart test")
        pytest.skip("no initdb and pg_ctl on this machine")
    server = postgres_server.PostgresServer().start()
    try:
        with psycopg.connect(
            server.admin_url.replace("postgres://", "postgresql://", 1), autocommit=True
        ) as admin:
            admin.execute('CREATE DATABASE "chat"')
        fill_template(base_env(server.url("chat")))
        yield server
    finally:
        server.close()


def test_a_postgresql_restart_mid_traffic_loses_nothing_acknowledged(
    server_factory, private_postgres, redis_server
):
    database = private_postgres.url("chat")
    env = {"CHAT_REDIS_URL": redis_server.url, "CHAT_WORKERS": "1"}
    a, b = server_factory(env, database=database), server_factory(env, database=database)
    on_a, on_b = Reader(a, login(a, "alice"), LOBBY), Reader(b, login(b, "bob"), LOBBY)
    nonces = [f"n-{i}" for i in range(90)]

    def send_until_acked(reader: Reader, mine: list[str], deadline: float) -> None:
        for nonce in mine:  # paced, so that the restart lands in the middle
            reader.send(nonce, nonce)
            time.sleep(0.05)
        # Retries reuse the nonce: whatever the database had taken, the message is stored once.
        while any(n not in reader.acks for n in mine):
            assert time.monotonic() < deadline, "not every message was acknowledged"
            for nonce in mine:
                if nonce not in reader.acks:
                    reader.send(nonce, nonce)
            time.sleep(0.5)

    deadline = time.monotonic() + 90
    senders = [
        threading.Thread(target=send_until_acked, args=(on_a, nonces[0::2], deadline)),
        threading.Thread(target=send_until_acked, args=(on_b, nonces[1::2], deadline)),
    ]
    for sender in senders:
        sender.start()
    wait_for(lambda: len(on_a.acks) + len(on_b.acks) >= 20, 30, what="some acks before the restart")
    private_postgres.stop()
    acked_before_restart = len(on_a.acks) + len(on_b.acks)
    private_postgres.start()
    for sender in senders:
        sender.join(100)
    final = history(a, login(a, "carol"), LOBBY)
    acked = {*on_a.acks.values(), *on_b.acks.values()}
    assert acked_before_restart < len(nonces), "the restart came after the traffic"
    with psycopg.connect(database.replace("postgres://", "postgresql://", 1)) as check:
        (held,) = check.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = 'chat'").fetchone()
    # 2 servers x (2 page + 1 password + 4 query + 1 writer threads), and this check's own.
    assert held <= 2 * 8 + 1, f"{held} connections: a leak"
    assert len(acked) == len(nonces) and acked == set(final) and len(final) == len(set(final))
    wait_for(lambda: on_a.ids == on_b.ids == final, 30, what="both readers to hold the whole history")
    assert on_a.closed is None and on_b.closed is None


def test_limits_per_user_hold_across_processes(cluster):
    a, b = (
        cluster(CHAT_MAX_CONNECTIONS_PER_USER="2", CHAT_SEND_RATE="1", CHAT_SEND_BURST="3"),
        cluster(CHAT_MAX_CONNECTIONS_PER_USER="2", CHAT_SEND_RATE="1", CHAT_SEND_BURST="3"),
    )
    alice_a, alice_b = login(a, "alice"), login(b, "alice")
    on_a = Reader(a, alice_a, LOBBY)
    on_b = Reader(b, alice_b, LOBBY)
    with pytest.raises(InvalidStatus) as denied:
        ws_connect(a, alice_a)
    assert denied.value.response.status_code == 429
    refused = requests.get(
        f"{b.url}/poll?room={LOBBY}&since=0&timeout=1", cookies=alice_b.cookies, timeout=10
    )
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_connections"
    # Three sends make the burst, whichever process takes them; the fourth waits.
    for i, reader in enumerate((on_a, on_b, on_a)):
        reader.send(f"m{i}", f"n-{i}")
        wait_for(lambda i=i, reader=reader: f"n-{i}" in reader.acks, 10, what=f"ack {i}")
    on_b.send("too soon", "n-3")
    wait_for(lambda: on_b.errors, 10, what="a refusal")
    assert on_b.errors[0]["code"] == "rate_limited" and on_b.errors[0]["nonce"] == "n-3"
    on_a.close()
    wait_for(lambda: a.stats()["websockets"] == 0, 10, what="the slot given back")
    wait_for(lambda: _can_connect(b, alice_b), 10, what="a second connection on the other process")


def _can_connect(server: ChatServerProcess, session: requests.Session) -> bool:
    try:
        with ws_connect(server, session):
            pass
    except InvalidStatus:
        return False
    return True


def test_a_logout_on_one_process_ends_that_browsers_connections_on_every_process(cluster):
    a, b = cluster(), cluster()
    alice = login(a, "alice")
    on_b = Reader(b, alice, LOBBY)
    logout(alice, a)
    wait_for(lambda: on_b.closed is not None, 10, what="the other process to end the connection")
    assert on_b.closed == 4001


def test_a_worker_that_dies_is_started_again_and_the_port_keeps_serving(cluster):
    server = cluster(workers=2)
    assert server.process is not None
    workers = _children(server.process.pid)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)

    def replaced() -> bool:
        now = _children(server.process.pid)  # one reading: a reaped worker is not yet replaced
        return len(now) == 2 and workers[0] not in now and len(set(now) - set(workers)) == 1

    wait_for(replaced, 30, what="a new worker in place of the killed one")
    # Both workers answer on their operators' ports, and the shared port serves everyone.
    for ops_port in (server.ops_port, server.ops_port + 1):
        wait_for(lambda p=ops_port: _healthy(p), 30, what=f"worker on {ops_port}")
    alice = login(server, "alice")
    readers = [Reader(server, alice, LOBBY) for _ in range(6)]
    readers[0].send("after the restart", "n-r")
    wait_for(lambda: all(r.ids for r in readers), 20, what="every reader to get the message")
    assert "worker 0 ended" in server.log_tail(200) or "worker 1 ended" in server.log_tail(200)


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            children += [int(c) for c in f.read().split()]
    return children


def _healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_signups_per_address_are_counted_across_processes_and_survive_a_redis_outage(cluster, redis_server):
    a, b = cluster(CHAT_SIGNUPS_PER_HOUR="2"), cluster(CHAT_SIGNUPS_PER_HOUR="2")

    def sign_up(server: ChatServerProcess, username: str) -> int:
        browser = requests.Session()
        browser.get(server.url + "/accounts/signup/", timeout=10).raise_for_status()
        password = "a-long-pass-phrase-1"
        response = browser.post(
            server.url + "/accounts/signup/",
            data={
                "username": username,
                "password1": password,
                "password2": password,
                "csrfmiddlewaretoken": browser.cookies["csrftoken"],
            },
            headers={"Referer": server.url + "/accounts/signup/"},
            allow_redirects=False,
            timeout=10,
        )
        return response.status_code

    assert sign_up(a, "first") == 302
    assert sign_up(b, "second") == 302
    assert sign_up(a, "third") == 429
    redis_server.stop()
    # Without Redis each process counts on its own: signups still work, still limited.
    assert sign_up(b, "fourth") == 302
    assert sign_up(b, "fifth") == 302
    assert sign_up(b, "sixth") == 429
