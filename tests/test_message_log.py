"""The SQL message log's own machinery against a real database, driven deterministically:
the group commit, the bounded window, the high-water mark, nonces across restarts.

Thread jobs run synchronously and the reactor is a ``task.Clock``, so every step of the
group commit is visible: nothing is acknowledged or handed on before its write lands.
What every backend must do is in ``test_storage_contract.py``.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from twisted.internet import task
from twisted.internet.defer import Deferred, maybeDeferred, succeed

from chat.models import ChatRoom, Message
from twisted_chat.events import DELETED, Author, ChatMessage
from twisted_chat.storage import archive
from twisted_chat.storage.interfaces import StoreUnavailable
from twisted_chat.storage.message_log import SqlMessageLog

pytestmark = pytest.mark.django_db


def run_now(fn, *args):
    return maybeDeferred(fn, *args)


class HeldWrites:
    """A write runner whose batches wait until the test lets them through."""

    def __init__(self):
        self.held: list[tuple[Deferred, object, tuple]] = []

    def __call__(self, fn, *args):
        d = Deferred()
        self.held.append((d, fn, args))
        return d

    def release(self) -> int:
        d, fn, args = self.held.pop(0)
        maybeDeferred(fn, *args).chainDeferred(d)
        return len(args[0])

    def fail(self) -> None:
        d, _, _ = self.held.pop(0)
        d.errback(RuntimeError("disk on fire"))


class Recorder:
    """The committed listener: what the log hands on, per room per commit."""

    def __init__(self):
        self.committed: list[tuple[int, list[int]]] = []

    def __call__(self, room_id, messages):
        self.committed.append((room_id, [m.id for m in messages]))


@pytest.fixture
def room():
    return ChatRoom.objects.create(name="Test room")


@pytest.fixture
def alice():
    user = User.objects.create_user("alice")
    return Author(user.pk, "alice")


def make_store(clock, run_write=run_now, on_committed=None, **kwargs):
    return SqlMessageLog(
        clock, run_now, run_write, on_committed or Recorder(), clock=lambda: 1_700_000_000.5, **kwargs
    )


def result_of(d: Deferred):
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def test_ids_follow_acceptance_order_and_acks_wait_for_the_write(room, alice):
    clock, writes, listener = task.Clock(), HeldWrites(), Recorder()
    store = make_store(clock, writes, listener)
    acks = [store.append(room.pk, alice, f"m{i}") for i in range(3)]
    clock.advance(0)
    fired = []
    for ack in acks:
        ack.addCallback(fired.append)
    assert fired == [] and listener.committed == [] and result_of(store.last_id(room.pk)) == 0
    assert Message.objects.count() == 0
    writes.release()
    assert fired == [1, 2, 3]
    assert listener.committed == [(room.pk, [1, 2, 3])]
    assert list(Message.objects.values_list("seq", "text", "ts")) == [
        (1, "m0", 1_700_000_000_500),
        (2, "m1", 1_700_000_000_500),
        (3, "m2", 1_700_000_000_500),
    ]


def test_messages_accepted_during_a_write_share_the_next_transaction(room, alice):
    clock, writes = task.Clock(), HeldWrites()
    store = make_store(clock, writes)
    store.append(room.pk, alice, "first")
    clock.advance(0)
    assert len(writes.held) == 1
    for i in range(50):
        store.append(room.pk, alice, f"burst {i}")
    clock.advance(0)
    assert len(writes.held) == 1, "a second batch started while the first was in flight"
    assert writes.release() == 1
    assert writes.release() == 50
    assert store.writer.batches == 2
    assert ChatRoom.objects.get(pk=room.pk).last_message_id == 51


def test_a_failed_write_is_not_acknowledged_and_later_ones_go_on(room, alice):
    clock, writes, listener = task.Clock(), HeldWrites(), Recorder()
    store = make_store(clock, writes, listener)
    lost = store.append(room.pk, alice, "lost")
    clock.advance(0)
    writes.fail()
    assert result_of(lost).check(StoreUnavailable)
    kept = store.append(room.pk, alice, "kept")
    clock.advance(0)
    writes.release()
    assert result_of(kept) == 1, "a failed write gives out no id"
    assert listener.committed == [(room.pk, [1])]


def test_window_is_bounded_and_older_history_comes_from_the_database(room, alice):
    clock = task.Clock()
    store = make_store(clock, window=10)
    for i in range(35):
        store.append(room.pk, alice, f"m{i}")
        clock.advance(0)
    window = store._rooms[room.pk].window
    assert 10 <= len(window) < 20
    assert [m.id for m in result_of(store.read_after(room.pk, 0, 500))] == list(range(1, 36))
    assert [m.id for m in result_of(store.read_after(room.pk, 30, 500))] == [31, 32, 33, 34, 35]
    assert [m.id for m in result_of(store.read_latest(room.pk, 5))] == [31, 32, 33, 34, 35]
    assert [m.id for m in result_of(store.read_after(room.pk, 3, 4))] == [4, 5, 6, 7]


def test_a_new_store_continues_ids_above_the_high_water_mark(room, alice):
    clock = task.Clock()
    store = make_store(clock)
    for i in range(5):
        store.append(room.pk, alice, f"m{i}")
    clock.advance(0)
    Message.objects.filter(seq__gte=4).delete()  # the newest messages are deleted
    restarted = make_store(clock)
    ack = restarted.append(room.pk, alice, "after restart")
    clock.advance(0)
    assert result_of(ack) == 6, "ids of deleted messages must never be reused"
    assert [m.id for m in result_of(restarted.read_latest(room.pk, 50))] == [1, 2, 3, 6]


def test_same_nonce_is_accepted_once_in_memory_and_across_restarts(room, alice):
    clock, writes = task.Clock(), HeldWrites()
    store = make_store(clock, writes)
    first = store.append(room.pk, alice, "hello", "n-1")
    retry_in_flight = store.append(room.pk, alice, "hello", "n-1")
    clock.advance(0)
    writes.release()
    assert result_of(first) == result_of(retry_in_flight) == 1
    assert result_of(store.append(room.pk, alice, "hello", "n-1")) == 1
    # A store that never saw the nonce (small window, fresh process) finds it in the database.
    fresh = make_store(clock, window=1)
    fresh.append(room.pk, alice, "filler")
    clock.advance(0)
    fresh2 = make_store(clock, window=1)
    late_retry = fresh2.append(room.pk, alice, "hello", "n-1")
    clock.advance(0)
    assert result_of(late_retry) == 1
    assert Message.objects.filter(nonce="n-1").count() == 1


def test_close_waits_for_pending_writes_and_refuses_new_ones(room, alice):
    clock, writes = task.Clock(), HeldWrites()
    store = make_store(clock, writes)
    ack = store.append(room.pk, alice, "in flight")
    clock.advance(0)
    closed = store.close()
    assert not closed.called
    assert result_of(store.append(room.pk, alice, "too late")).check(StoreUnavailable)
    writes.release()
    assert result_of(ack) == 1
    clock.advance(0)
    assert closed.called


class FakeFeed:
    """A MessageFeed the test plays: it decides what other processes' messages arrive when."""

    available = True

    def start(self, received, reconnected):
        self.received, self.reconnected = received, reconnected
        self.published: list[list[int]] = []

    def follow(self, room_id):
        return succeed(None)

    def unfollow(self, room_id):
        pass

    def publish(self, room_id, messages):
        self.published.append([m.id for m in messages])
        return succeed(None)

    def recent(self, room_id, limit):
        return succeed(None)

    def forget(self, room_id, message_id):
        pass


def committed_elsewhere(room, alice, *texts) -> list[ChatMessage]:
    """Messages another process committed (in the database) and may or may not publish."""
    outcomes = archive.write_batch([ChatMessage(room.pk, 0, 0, "alice", t, alice.id) for t in texts])
    return [
        ChatMessage(room.pk, o.message_id, 0, "alice", t, alice.id)
        for o, t in zip(outcomes, texts, strict=True)
    ]


def test_messages_from_other_processes_are_handed_on_in_id_order_whatever_order_they_arrive_in(room, alice):
    clock, listener, feed = task.Clock(), Recorder(), FakeFeed()
    store = make_store(clock, on_committed=listener, feed=feed, gap_wait=0.1)
    assert result_of(store.last_id(room.pk)) == 0
    one, two, three = committed_elsewhere(room, alice, "one", "two", "three")
    feed.received(room.pk, [three])
    feed.received(room.pk, [two])
    assert listener.committed == [], "held until the first arrives"
    feed.received(room.pk, [one])
    assert listener.committed == [(room.pk, [1, 2, 3])]
    feed.received(room.pk, [two])
    assert listener.committed == [(room.pk, [1, 2, 3])], "a repeat is dropped"


def test_a_hole_the_feed_never_fills_is_read_from_the_database_and_deletions_are_skipped(room, alice):
    clock, listener, feed = task.Clock(), Recorder(), FakeFeed()
    store = make_store(clock, on_committed=listener, feed=feed, gap_wait=0.1)
    result_of(store.last_id(room.pk))
    *_, four = committed_elsewhere(room, alice, "one", "two", "three", "four")
    Message.objects.filter(room=room, seq=2).delete()  # deleted before anyone saw it
    feed.received(room.pk, [four])
    clock.advance(0.05)
    assert listener.committed == []
    clock.advance(0.05)
    assert listener.committed == [(room.pk, [1, 3, 4])]
    assert store.filled == 2
    # A local write after the hole waits for its predecessors, then is acknowledged.
    ack = store.append(room.pk, alice, "five")
    clock.advance(0)
    assert result_of(ack) == 5 and feed.published == [[5]]


def test_a_duplicate_from_another_process_is_acknowledged_once_its_id_is_handed_on(room, alice):
    clock, listener, feed = task.Clock(), Recorder(), FakeFeed()
    store = make_store(clock, on_committed=listener, feed=feed, gap_wait=0.1)
    result_of(store.last_id(room.pk))
    outcomes = archive.write_batch([ChatMessage(room.pk, 0, 0, "alice", "hi", alice.id, "n-1")])
    acked: list[int] = []
    store.append(room.pk, alice, "hi", "n-1").addCallback(acked.append)
    clock.advance(0)
    assert acked == [], "not before the client could have seen the original"
    clock.advance(0.1)
    assert acked == [outcomes[0].message_id] == [1]
    assert listener.committed == [(room.pk, [1])]


def test_a_deletion_from_another_process_removes_its_message_here(room, alice):
    clock, listener, feed = task.Clock(), Recorder(), FakeFeed()
    store = make_store(clock, on_committed=listener, feed=feed)
    result_of(store.last_id(room.pk))
    (one,) = committed_elsewhere(room, alice, "one")
    (outcome,) = archive.write_batch(
        [ChatMessage(room.pk, 0, 5, "alice", "", alice.id, kind=DELETED, target=1)]
    )
    deletion = ChatMessage(room.pk, outcome.message_id, 5, "alice", "", alice.id, kind=DELETED, target=1)
    feed.received(room.pk, [one, deletion])
    assert listener.committed == [(room.pk, [1, 2])]
    assert result_of(store.read_latest(room.pk, 10)) == []
    assert [e.id for e in result_of(store.read_after(room.pk, 0, 10))] == [2]
    assert not Message.objects.filter(room=room, seq=1).exists()
