"""What every storage backend must do, through the four interfaces only.

Each backend is one entry of ``BACKENDS``: a function that builds a ``Backend`` (the four
parts, plus ways to let time pass and pending work finish). The local backend runs on a
fake clock; the Redis backend talks to a real redis-server of its own over real
connections, turning the real reactor until each Deferred fires (``tests.reactor_wait``).

The tests at the end need two processes sharing one database and one Redis: they build
two Redis backends in this one process, which share nothing else.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from django.contrib.auth.models import User
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, maybeDeferred

from chat.models import ChatRoom
from twisted_chat.events import DELETED, EDITED, Author, ChatMessage
from twisted_chat.storage import Storage, archive
from twisted_chat.storage.directory import LocalRoomDirectory
from twisted_chat.storage.interfaces import NoSuchMessage, RoomInfo, UnknownRoom
from twisted_chat.storage.memory_broker import LocalBroker
from twisted_chat.storage.memory_presence import LocalPresence
from twisted_chat.storage.message_log import SqlMessageLog
from twisted_chat.storage.redis_connection import RedisConnection
from twisted_chat.storage.redis_feed import RedisMessageFeed
from twisted_chat.storage.redis_presence import RedisPresence

from .reactor_wait import turn, wait_for, wait_until

pytestmark = pytest.mark.django_db


@dataclass
class Backend:
    storage: Storage
    settle: Callable[[], None]  # let pending writes and deliveries finish
    advance: Callable[[float], None]  # let this many seconds pass
    committed: list[tuple[int, list[int]]] = field(default_factory=list)
    wait: Callable[[Deferred], None] | None = None  # turn a real reactor until it fires
    # Presence timings are scaled by this on a real clock, to keep the tests short.
    time_scale: float = 1.0


def local_backend() -> Backend:
    clock = task.Clock()
    committed: list[tuple[int, list[int]]] = []
    broker = LocalBroker()

    def on_committed(room_id: int, messages: list[ChatMessage]) -> None:
        committed.append((room_id, [m.id for m in messages]))
        broker.publish(room_id, messages)

    storage = Storage(
        LocalRoomDirectory(run_now),
        SqlMessageLog(clock, run_now, run_now, on_committed),
        broker,
        LocalPresence(clock=clock.seconds),
    )
    return Backend(storage, lambda: clock.advance(0), clock.advance, committed)


def run_now(fn, *args):
    return maybeDeferred(fn, *args)


def redis_backend(redis_url: str, gap_wait: float = 0.1) -> Backend:
    """One process's Redis backend; several share the database and the redis-server."""
    # Generous: these tests run the database on the reactor thread (run_now), and a loaded
    # machine can hold it long enough for a short reply timeout to drop the connection.
    connection = RedisConnection(reactor, redis_url, timeout=5.0)
    wait_until(lambda: connection.available and connection.commands_ready, 10, "the connections to Redis")
    committed: list[tuple[int, list[int]]] = []
    broker = LocalBroker()

    def on_committed(room_id: int, messages: list[ChatMessage]) -> None:
        committed.append((room_id, [m.id for m in messages]))
        broker.publish(room_id, messages)

    feed = RedisMessageFeed(connection, f"test-{next(_processes)}", window=100)
    log = SqlMessageLog(reactor, run_now, run_now, on_committed, window=100, feed=feed, gap_wait=gap_wait)
    storage = Storage(
        LocalRoomDirectory(run_now),
        log,
        broker,
        RedisPresence(connection.commands, reactor, timeout=connection.timeout, prefix=connection.prefix),
    )

    def settle() -> None:
        # A round trip after every publish: their replies, and the acks they hold, come first.
        wait_until(lambda: log.idle, 10, "the log to finish its work")
        wait_for(connection.run(connection.commands.ping), 10)
        wait_until(lambda: log.idle, 10, "the log to finish its work")

    def wait(d: Deferred) -> None:
        fired: list[object] = []
        d.addBoth(lambda result: (fired.append(result), result)[1])
        wait_until(lambda: bool(fired), 10, "a Deferred to fire")

    backend = Backend(storage, settle, turn, committed, wait=wait, time_scale=0.1)
    _open_connections.append((connection, log))
    return backend


_processes = itertools.count(1)
_open_connections: list[tuple[RedisConnection, SqlMessageLog]] = []

BACKENDS = {"local": local_backend, "redis": redis_backend}


@pytest.fixture
def redis_url(redis_server) -> Iterator[str]:
    yield redis_server.url
    for connection, log in _open_connections:
        log.close()
        wait_for(connection.close(), 10)
    _open_connections.clear()


@pytest.fixture(params=sorted(BACKENDS))
def backend(request) -> Backend:
    if request.param == "redis":
        return redis_backend(request.getfixturevalue("redis_url"))
    return local_backend()


@pytest.fixture
def room():
    return ChatRoom.objects.create(name="Contract room")


@pytest.fixture
def alice():
    return Author(User.objects.create_user("alice").pk, "alice")


def result_of(d: Deferred, backend: Backend | None = None):
    if backend is not None:
        if backend.wait is not None:
            backend.wait(d)
        backend.settle()
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def failure_of(d: Deferred, backend: Backend):
    if backend.wait is not None:
        backend.wait(d)
    backend.settle()
    results = []
    d.addBoth(results.append)
    assert results and hasattr(results[0], "check"), f"expected a failure, got {results}"
    return results[0]


# --- room directory ---------------------------------------------------------------------


def test_directory_describes_rooms_and_who_may_read_them(backend, room, alice):
    directory = backend.storage.directory
    info = result_of(directory.get(room.pk), backend)
    assert info == RoomInfo(room.pk, "Contract room", False, frozenset())
    assert info.readable_by(None) and info.readable_by(alice)
    assert failure_of(directory.get(room.pk + 1000), backend).check(UnknownRoom)


def test_directory_sees_a_change_once_told_and_tells_its_watchers(backend, room, alice):
    directory = backend.storage.directory
    seen: list[int] = []
    directory.watch(seen.append)
    assert result_of(directory.get(room.pk), backend).readable_by(None)
    room.is_private = True
    room.save()
    room.members.add(User.objects.get(pk=alice.id))
    directory.room_changed(room.pk)
    backend.settle()
    assert seen == [room.pk]
    info = result_of(directory.get(room.pk), backend)
    assert not info.readable_by(None) and info.readable_by(alice)
    assert not info.readable_by(Author(alice.id + 1, "mallory"))
    room.delete()
    directory.room_changed(room.pk)
    assert failure_of(directory.get(room.pk), backend).check(UnknownRoom)


# --- message log ------------------------------------------------------------------------


def test_log_ids_follow_the_order_of_appends_and_commits_are_handed_on_first(backend, room, alice):
    log = backend.storage.log
    handed_on_at_ack: dict[int, list[int]] = {}

    def acked(message_id: int) -> int:
        handed_on_at_ack[message_id] = [i for _, ids in backend.committed for i in ids]
        return message_id

    acks = [log.append(room.pk, alice, f"m{i}").addCallback(acked) for i in range(5)]
    backend.settle()
    assert [result_of(ack) for ack in acks] == [1, 2, 3, 4, 5]
    assert [i for _, ids in backend.committed for i in ids] == [1, 2, 3, 4, 5]
    for message_id, handed_on in handed_on_at_ack.items():
        assert message_id in handed_on, "acknowledged before it was handed to the broker"
    assert result_of(log.last_id(room.pk), backend) == 5


def test_log_reads_committed_messages_in_order(backend, room, alice):
    log = backend.storage.log
    for i in range(12):
        log.append(room.pk, alice, f"m{i}")
    backend.settle()
    after = result_of(log.read_after(room.pk, 3, 4), backend)
    assert [(m.id, m.text, m.user) for m in after] == [
        (4, "m3", "alice"),
        (5, "m4", "alice"),
        (6, "m5", "alice"),
        (7, "m6", "alice"),
    ]
    assert [m.id for m in result_of(log.read_latest(room.pk, 3), backend)] == [10, 11, 12]
    assert result_of(log.read_after(room.pk, 12, 10), backend) == []


def test_log_accepts_a_nonce_once_per_author(backend, room, alice):
    log = backend.storage.log
    bob = Author(User.objects.create_user("bob").pk, "bob")
    first = log.append(room.pk, alice, "hello", "n-1")
    retry = log.append(room.pk, alice, "hello", "n-1")
    other_author = log.append(room.pk, bob, "hello", "n-1")
    backend.settle()
    assert result_of(first) == result_of(retry) == 1
    assert result_of(other_author) == 2
    assert result_of(log.append(room.pk, alice, "hello", "n-1"), backend) == 1
    assert [m.id for m in result_of(log.read_after(room.pk, 0, 10), backend)] == [1, 2]


def test_log_rooms_have_their_own_sequences(backend, room, alice):
    other = ChatRoom.objects.create(name="Other")
    log = backend.storage.log
    acks = [log.append(r.pk, alice, "x") for r in (room, other, room, other, room)]
    backend.settle()
    assert [result_of(a) for a in acks] == [1, 1, 2, 2, 3]


def test_log_keeps_edits_and_deletions_in_the_sequence_and_applies_them(backend, room, alice):
    log = backend.storage.log
    for text in "abc":
        log.append(room.pk, alice, text)
    backend.settle()
    assert result_of(log.append(room.pk, alice, "A!", kind=EDITED, target=1), backend) == 4
    assert result_of(log.append(room.pk, alice, "", kind=DELETED, target=2), backend) == 5
    entries = result_of(log.read_after(room.pk, 0, 10), backend)
    assert [(e.id, e.kind, e.target, e.text) for e in entries] == [
        (1, "message", None, "A!"),
        (3, "message", None, "c"),
        (4, "edited", 1, "A!"),
        (5, "deleted", 2, ""),
    ]
    latest = result_of(log.read_latest(room.pk, 10), backend)
    assert [(m.id, m.text) for m in latest] == [(1, "A!"), (3, "c")]
    assert latest[0].edited == entries[2].ts and latest[1].edited is None
    assert result_of(log.find(room.pk, 1), backend).text == "A!"
    assert result_of(log.find(room.pk, 2), backend) is None
    # The database says the same, for a reader that does not have the window.
    assert [(m.id, m.text) for m in archive.read_latest(room.pk, 10)] == [(1, "A!"), (3, "c")]
    assert failure_of(log.append(room.pk, alice, "?", kind=EDITED, target=2), backend).check(NoSuchMessage)
    assert result_of(log.last_id(room.pk), backend) == 5


def test_log_fails_every_call_on_an_unknown_room(backend, alice):
    log = backend.storage.log
    assert failure_of(log.last_id(4242), backend).check(UnknownRoom)
    assert failure_of(log.append(4242, alice, "x"), backend).check(UnknownRoom)
    assert failure_of(log.read_after(4242, 0, 10), backend).check(UnknownRoom)


# --- broker -----------------------------------------------------------------------------


def test_broker_hands_events_in_order_to_each_handler_of_the_room_only(backend, room):
    broker = backend.storage.broker
    got: dict[str, list[tuple[int, list[str]]]] = {"a": [], "b": [], "other": []}

    def handler(name):
        return lambda room_id, events: got[name].append((room_id, [e.json for e in events]))

    a, b, other = handler("a"), handler("b"), handler("other")
    for room_id, h in ((room.pk, a), (room.pk, b), (room.pk + 1, other)):
        result_of(broker.subscribe(room_id, h), backend)
    events = [
        ChatMessage(room.pk, 1, 0, "alice", "one"),
        ChatMessage(room.pk, 2, 0, "alice", "", kind=DELETED, target=1),
        ChatMessage(room.pk, 2, 0, "alice", "two"),
    ]
    broker.publish(room.pk, events[:2])
    broker.publish(room.pk, events[2:])
    backend.settle()
    expected = [(room.pk, [e.json for e in events[:2]]), (room.pk, [events[2].json])]
    assert got["a"] == got["b"] == expected
    assert got["other"] == []
    broker.unsubscribe(room.pk, b)
    broker.publish(room.pk, [ChatMessage(room.pk, 4, 0, "alice", "three")])
    backend.settle()
    assert len(got["a"]) == 3 and len(got["b"]) == 2


def test_broker_keeps_delivering_when_a_handler_fails(backend, room):
    broker = backend.storage.broker
    got: list[int] = []

    def broken(room_id, events):
        raise RuntimeError("handler bug")

    result_of(broker.subscribe(room.pk, broken), backend)
    result_of(broker.subscribe(room.pk, lambda room_id, events: got.extend(e.id for e in events)), backend)
    broker.publish(room.pk, [ChatMessage(room.pk, 1, 0, "alice", "one")])
    backend.settle()
    assert got == [1]


# --- presence ---------------------------------------------------------------------------


def test_presence_entries_expire_unless_set_again(backend, room):
    presence = backend.storage.presence
    ttl, step = 10 * backend.time_scale, 6 * backend.time_scale
    presence.set(room.pk, "c1", {"user": "alice"}, ttl=ttl)
    presence.set(room.pk, "c2", {"user": "bob"}, ttl=ttl)
    presence.set(room.pk + 1, "c3", {"user": "carol"}, ttl=ttl)
    assert result_of(presence.entries(room.pk), backend) == {"c1": {"user": "alice"}, "c2": {"user": "bob"}}
    backend.advance(step)
    presence.set(room.pk, "c1", {"user": "alice"}, ttl=ttl)
    # c2 lapses at ttl, c1 not before step + ttl: looked at as soon as c2 is gone, c1 is
    # there however late this process turned (Redis expires on its own clock).
    for _ in range(40):
        entries = result_of(presence.entries(room.pk), backend)
        if "c2" not in entries:
            break
        backend.advance(ttl / 20)
    assert entries == {"c1": {"user": "alice"}}
    presence.remove(room.pk, "c1")
    assert result_of(presence.entries(room.pk), backend) == {}
    backend.advance(step)
    assert result_of(presence.entries(room.pk + 1), backend) == {}


# --- several processes sharing a database and Redis ---------------------------------------


@pytest.fixture
def two_processes(redis_url) -> tuple[Backend, Backend]:
    return redis_backend(redis_url), redis_backend(redis_url)


def delivered(backend: Backend, room_id: int) -> list[int]:
    return [i for r, ids in backend.committed if r == room_id for i in ids]


@pytest.mark.django_db(transaction=True)
def test_processes_hand_on_each_others_messages_in_one_order(two_processes, room, alice):
    a, b = two_processes
    for backend in (a, b):
        result_of(backend.storage.log.last_id(room.pk), backend)
    acks = []
    for i in range(20):
        acks.append(a.storage.log.append(room.pk, alice, f"a{i}"))
        acks.append(b.storage.log.append(room.pk, alice, f"b{i}"))
    ids = [result_of(d, a) for d in acks]
    wait_until(lambda: len(delivered(a, room.pk)) == len(delivered(b, room.pk)) == 40, 10, "40 each")
    assert delivered(a, room.pk) == delivered(b, room.pk) == list(range(1, 41))
    assert sorted(ids) == list(range(1, 41))


@pytest.mark.django_db(transaction=True)
def test_a_retry_on_another_process_gets_the_original_id(two_processes, room, alice):
    a, b = two_processes
    first = result_of(a.storage.log.append(room.pk, alice, "hello", "n-1"), a)
    assert result_of(b.storage.log.append(room.pk, alice, "hello", "n-1"), b) == first
    assert [m.id for m in result_of(b.storage.log.read_after(room.pk, 0, 10), b)] == [first]


@pytest.mark.django_db(transaction=True)
def test_a_message_that_was_never_published_is_read_from_the_database(redis_url, room, alice):
    a, b = redis_backend(redis_url), redis_backend(redis_url, gap_wait=0.05)
    result_of(b.storage.log.last_id(room.pk), b)
    # A process that dies between its commit and its publish: the row is there, no message.
    outcomes = archive.write_batch([ChatMessage(room.pk, 0, 0, "alice", "orphan", alice.id)])
    assert outcomes == [archive.Stored(1)]
    result_of(a.storage.log.append(room.pk, alice, "next"), a)
    wait_until(lambda: delivered(b, room.pk) == [1, 2], 10, "the hole filled from the database")
    assert [m.text for m in result_of(b.storage.log.read_after(room.pk, 0, 10), b)] == ["orphan", "next"]
    # With no later message to reveal it, the periodic check of the rooms finds it.
    archive.write_batch([ChatMessage(room.pk, 0, 0, "alice", "last words", alice.id)])
    b.storage.log._check_rooms()
    wait_until(lambda: delivered(b, room.pk) == [1, 2, 3], 10, "the trailing message")


@pytest.mark.django_db(transaction=True)
def test_a_process_started_later_reads_recent_history_from_redis(redis_url, room, alice, monkeypatch):
    a = redis_backend(redis_url)
    for i in range(5):
        a.storage.log.append(room.pk, alice, f"m{i}")
    a.settle()
    result_of(a.storage.log.append(room.pk, alice, "", kind=DELETED, target=2), a)
    rows_read: list[str] = []
    for name in ("read_after", "read_latest", "read_between"):
        real = getattr(archive, name)
        monkeypatch.setattr(
            archive, name, lambda *args, _real=real, _name=name: (rows_read.append(_name), _real(*args))[1]
        )
    b = redis_backend(redis_url)
    latest = result_of(b.storage.log.read_latest(room.pk, 10), b)
    assert [m.id for m in latest] == [1, 3, 4, 5]
    assert [m.id for m in result_of(b.storage.log.read_after(room.pk, 0, 10), b)] == [1, 3, 4, 5, 6]
    assert rows_read == [], "a deleted message's tombstone keeps the Redis window whole"
