"""What every storage backend must do, through the four interfaces only.

Each backend is one entry of ``BACKENDS``: a function that builds a ``Backend`` (the four
parts, plus ways to let time pass and pending work finish). The Redis backend adds its
own entry; every test here then runs against it too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from django.contrib.auth.models import User
from twisted.internet import task
from twisted.internet.defer import Deferred, maybeDeferred

from chat.models import ChatRoom
from twisted_chat.events import Author, ChatMessage, MessageDeleted
from twisted_chat.storage import Storage
from twisted_chat.storage.directory import LocalRoomDirectory
from twisted_chat.storage.interfaces import RoomInfo, UnknownRoom
from twisted_chat.storage.memory_broker import LocalBroker
from twisted_chat.storage.memory_presence import LocalPresence
from twisted_chat.storage.message_log import SqlMessageLog

pytestmark = pytest.mark.django_db


@dataclass
class Backend:
    storage: Storage
    settle: Callable[[], None]  # let pending writes and deliveries finish
    advance: Callable[[float], None]  # let this many seconds pass
    committed: list[tuple[int, list[int]]] = field(default_factory=list)


def local_backend() -> Backend:
    clock = task.Clock()
    committed: list[tuple[int, list[int]]] = []
    broker = LocalBroker()

    def on_committed(room_id: int, messages: list[ChatMessage]) -> None:
        committed.append((room_id, [m.id for m in messages]))
        broker.publish(room_id, messages)

    def run_now(fn, *args):
        return maybeDeferred(fn, *args)

    storage = Storage(
        LocalRoomDirectory(run_now),
        SqlMessageLog(clock, run_now, run_now, on_committed),
        broker,
        LocalPresence(clock=clock.seconds),
    )
    return Backend(storage, lambda: clock.advance(0), clock.advance, committed)


BACKENDS = {"local": local_backend}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request) -> Backend:
    return BACKENDS[request.param]()


@pytest.fixture
def room():
    return ChatRoom.objects.create(name="Contract room")


@pytest.fixture
def alice():
    return Author(User.objects.create_user("alice").pk, "alice")


def result_of(d: Deferred, backend: Backend | None = None):
    if backend is not None:
        backend.settle()
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def failure_of(d: Deferred, backend: Backend):
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


def test_log_forgets_deleted_messages(backend, room, alice):
    log = backend.storage.log
    for text in "abc":
        log.append(room.pk, alice, text)
    backend.settle()
    room.messages.filter(seq=2).delete()
    log.forget(room.pk, 2)
    assert [m.id for m in result_of(log.read_after(room.pk, 0, 10), backend)] == [1, 3]
    assert [m.id for m in result_of(log.read_latest(room.pk, 10), backend)] == [1, 3]


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
        MessageDeleted(room.pk, 1),
        ChatMessage(room.pk, 2, 0, "alice", "two"),
    ]
    broker.publish(room.pk, events[:2])
    broker.publish(room.pk, events[2:])
    backend.settle()
    expected = [(room.pk, [e.json for e in events[:2]]), (room.pk, [events[2].json])]
    assert got["a"] == got["b"] == expected
    assert got["other"] == []
    broker.unsubscribe(room.pk, b)
    broker.publish(room.pk, [ChatMessage(room.pk, 3, 0, "alice", "three")])
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
    presence.set(room.pk, "c1", {"user": "alice"}, ttl=10)
    presence.set(room.pk, "c2", {"user": "bob"}, ttl=10)
    presence.set(room.pk + 1, "c3", {"user": "carol"}, ttl=10)
    assert result_of(presence.entries(room.pk), backend) == {"c1": {"user": "alice"}, "c2": {"user": "bob"}}
    backend.advance(6)
    presence.set(room.pk, "c1", {"user": "alice"}, ttl=10)
    backend.advance(6)
    assert result_of(presence.entries(room.pk), backend) == {"c1": {"user": "alice"}}
    presence.remove(room.pk, "c1")
    assert result_of(presence.entries(room.pk), backend) == {}
    backend.advance(6)
    assert result_of(presence.entries(room.pk + 1), backend) == {}
