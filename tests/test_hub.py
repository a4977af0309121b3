"""The room core driven step by step: database jobs wait until the test lets them run, so
every interleaving of a client's commands with loading, catch-up and live events can be
set up exactly. Real SQL (SQLite or PostgreSQL), real local storage."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from twisted.internet import task
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from chat.models import ChatRoom
from twisted_chat.errors import ProtocolError
from twisted_chat.events import Author
from twisted_chat.hub import Identity, RoomHub
from twisted_chat.limits import ConnectionLimits, SendRateLimiter
from twisted_chat.sessions import SessionCache
from twisted_chat.storage import archive
from twisted_chat.storage.directory import LocalRoomDirectory
from twisted_chat.storage.memory_broker import LocalBroker
from twisted_chat.storage.message_log import SqlMessageLog

pytestmark = pytest.mark.django_db


class Jobs:
    """A thread-pool stand-in: jobs run at once, or wait while ``holding``."""

    def __init__(self):
        self.holding = False
        self.waiting: list[tuple[Deferred, object, tuple]] = []

    def __call__(self, fn, *args):
        if not self.holding:
            return maybeDeferred(fn, *args)
        d = Deferred()
        self.waiting.append((d, fn, args))
        return d

    def run_next(self):
        d, fn, args = self.waiting.pop(0)
        maybeDeferred(fn, *args).chainDeferred(d)
        return fn

    def run_all(self):
        while self.waiting:
            self.run_next()


class Sink:
    """A transport that writes down what the hub tells its client."""

    def __init__(self):
        self.calls: list[tuple] = []

    def subscribed(self, room_id, last, present):
        self.calls.append(("subscribed", room_id, last))

    def deliver(self, room_id, events):
        self.calls.extend(("event", room_id, e.id) for e in events)

    def caught_up(self, room_id):
        self.calls.append(("caught_up", room_id))

    def subscribe_failed(self, room_id, error):
        self.calls.append(("subscribe_failed", room_id, error.code))

    def subscription_ended(self, room_id, error):
        self.calls.append(("ended", room_id, error.code))

    def session_ended(self):
        self.calls.append(("session_ended",))

    queued = 0

    def queued_bytes(self):
        return self.queued

    def drop_slow(self):
        self.calls.append(("dropped",))

    def event_ids(self, room_id):
        return [call[2] for call in self.calls if call[0] == "event" and call[1] == room_id]


class World:
    def __init__(self, window=1000, per_user=0):
        self.clock = task.Clock()
        self.queries = Jobs()
        self.broker = LocalBroker()
        self.log = SqlMessageLog(self.clock, self.queries, maybeDeferred, self.broker.publish, window=window)
        self.directory = LocalRoomDirectory(self.queries)
        self.hub = RoomHub(
            self.directory,
            self.log,
            self.broker,
            SessionCache(self.queries),
            SendRateLimiter(0, 0),
            ConnectionLimits(per_user),
            SendRateLimiter(0, 0),
            page_size=3,
        )

    def client(self, author=None, session_key=None, browser_key=None):
        sink = Sink()
        identity = Identity(session_key, browser_key, author)
        outcome = []
        self.hub.connect(sink, identity).addBoth(outcome.append)
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        return outcome[0], sink

    def post(self, author, room_id, *texts):
        acks = []
        for text in texts:
            ack = Deferred()
            self.hub.post(author, room_id, text, "", ack)
            acks.append(ack)
        self.clock.advance(0)
        return acks


@pytest.fixture
def room():
    return ChatRoom.objects.create(name="Hub room")


@pytest.fixture
def alice():
    return Author(User.objects.create_user("alice").pk, "alice")


def test_unsubscribe_while_the_room_loads_leaves_nothing_behind(room):
    world = World()
    world.queries.holding = True
    client, sink = world.client()
    client.subscribe(room.pk, None)
    client.unsubscribe(room.pk)
    world.queries.run_all()
    assert sink.calls == []
    assert world.hub.subscription_count == 0
    assert world.broker.room_count == 0


def test_a_second_subscribe_while_loading_starts_over_with_one_catch_up(room, alice):
    World().post(alice, room.pk, "one", "two")
    world = World()  # a fresh process: the room is not loaded yet
    world.queries.holding = True
    client, sink = world.client()
    client.subscribe(room.pk, 0)
    client.subscribe(room.pk, 1)
    world.queries.run_all()
    assert sink.calls == [
        ("subscribed", room.pk, 2),
        ("event", room.pk, 2),
        ("caught_up", room.pk),
    ]
    assert world.hub.subscription_count == 1


def test_catch_up_merges_live_messages_without_gap_or_overlap(room, alice):
    world = World(window=2)  # history older than the window is read from the database
    world.post(alice, room.pk, *[f"old {i}" for i in range(7)])
    client, sink = world.client()
    world.queries.holding = True
    client.subscribe(room.pk, 0)
    while world.queries.waiting[0][1] is not archive.read_after:
        world.queries.run_next()
    # Subscribed and waiting for the first page of history; two messages arrive live.
    world.queries.holding = False
    world.post(alice, room.pk, "live 1", "live 2")
    assert sink.event_ids(room.pk) == []
    world.queries.run_all()
    assert sink.event_ids(room.pk) == list(range(1, 10))
    world.post(alice, room.pk, "live 3")
    assert sink.event_ids(room.pk) == list(range(1, 11))
    assert sink.calls.count(("caught_up", room.pk)) == 1


def test_a_room_turned_private_ends_only_the_subscriptions_of_those_who_may_not_read_it(room, alice):
    world = World()
    member, member_sink = world.client(author=alice)
    outsider, outsider_sink = world.client()
    member.subscribe(room.pk, None)
    outsider.subscribe(room.pk, None)
    room.is_private = True
    room.save()
    room.members.add(alice.id)
    world.directory.room_changed(room.pk)
    assert outsider_sink.calls[-1] == ("ended", room.pk, "unknown_room")
    assert world.hub.subscription_count == 1
    world.post(alice, room.pk, "members only")
    assert member_sink.event_ids(room.pk) == [1]
    assert outsider_sink.event_ids(room.pk) == []
    outsider.subscribe(room.pk, None)
    assert outsider_sink.calls[-1] == ("subscribe_failed", room.pk, "unknown_room")


def test_an_ended_session_closes_its_clients_and_frees_their_slots(room, alice):
    world = World(per_user=1)
    client, sink = world.client(author=alice, session_key="s1", browser_key="b1")
    client.subscribe(room.pk, None)
    with pytest.raises(ProtocolError) as refused:
        world.client(author=alice, session_key="s2")
    assert refused.value.code == "too_many_connections" and refused.value.retryable
    world.hub.session_ended(None, "b1")
    assert sink.calls[-1] == ("session_ended",)
    assert client.closed and world.hub.subscription_count == 0
    world.client(author=alice, session_key="s2")  # the slot is free again
    world.hub.session_ended("s1", None)
    assert sink.calls.count(("session_ended",)) == 1


def test_a_refused_sender_is_told_the_true_wait_and_cannot_overtake_it():
    start = 100.0
    now = [start]
    limiter = SendRateLimiter(rate=5, burst=2, clock=lambda: now[0])
    assert limiter.retry_after("alice") == 0 and limiter.retry_after("alice") == 0
    wait = limiter.retry_after("alice")
    assert wait >= 1 / 5, "the hint must be at least one token's time"
    now[0] = start + wait / 2
    # A later message sent before the wait is over is refused too, so it cannot overtake.
    assert limiter.retry_after("alice") == pytest.approx(wait / 2)
    assert limiter.retry_after("bob") == 0, "another user is not held back"
    now[0] = start + wait
    assert limiter.retry_after("alice") == 0, "waiting exactly the hint gets through"


def test_a_room_change_during_its_load_is_not_lost(room):
    world = World()
    world.queries.holding = True
    first, second = world.directory.get(room.pk), world.directory.get(room.pk)
    assert len(world.queries.waiting) == 1, "one load for everyone who asked"
    d, fn, args = world.queries.waiting.pop(0)
    as_it_was = fn(*args)  # the thread reads the room as it was...
    room.is_private = True  # ...then an admin makes it private, and the notice comes first
    room.save()
    world.directory.room_changed(room.pk)
    d.callback(as_it_was)
    world.queries.run_all()
    infos = []
    first.addCallback(infos.append)
    second.addCallback(infos.append)
    assert [info.is_private for info in infos] == [True, True]


def stop_reading_after_a_page(world, client, sink):
    """The next page fills the transport, which asks to pause; the client reads no more."""
    deliver = sink.deliver

    def fill(room_id, events):
        deliver(room_id, events)
        sink.queued = world.hub.max_backlog + 1
        client.paused()

    sink.deliver = fill


def test_catch_up_drops_a_client_that_does_not_read_as_live_fan_out_would(room, alice):
    world = World()
    world.post(alice, room.id, *[f"m{n}" for n in range(7)])
    client, sink = world.client()
    stop_reading_after_a_page(world, client, sink)
    client.subscribe(room.id, 0)
    # The first page (3 messages) went out, judged by what was queued before it (a
    # WebSocket's 101 or a stream's 200 may still be); no more pages are read for it.
    assert sink.event_ids(room.id) == [1, 2, 3]
    assert sink.calls[-1] == ("dropped",)
    assert client.closed and world.hub.slow_consumers_dropped == 1


def test_a_last_page_that_fills_the_transport_is_not_a_slow_consumer(room, alice):
    """A stream's 200 or a WebSocket's 101 may still be queued when the history is written
    behind it; a client is judged slow by what it had not read before a page, not by the
    page it has just been given."""
    world = World()
    world.post(alice, room.id, "one", "two")
    client, sink = world.client()
    stop_reading_after_a_page(world, client, sink)
    client.subscribe(room.id, 0)
    assert sink.event_ids(room.id) == [1, 2]
    assert sink.calls[-1] == ("caught_up", room.id) and not client.closed


def test_catch_up_writes_nothing_to_a_client_already_too_far_behind(room, alice):
    world = World()
    world.post(alice, room.id, *[f"m{n}" for n in range(7)])
    client, sink = world.client()
    sink.queued = world.hub.max_backlog + 1
    client.paused()
    client.subscribe(room.id, 0)
    assert sink.event_ids(room.id) == []
    assert sink.calls[-1] == ("dropped",) and client.closed


def test_subscribing_again_resumes_after_what_the_connection_was_sent(room, alice):
    world = World()
    world.post(alice, room.id, "one", "two")
    client, sink = world.client()
    client.subscribe(room.id, 0)
    world.post(alice, room.id, "three")
    assert sink.event_ids(room.id) == [1, 2, 3]
    client.unsubscribe(room.id)
    client.subscribe(room.id, 0)
    client.subscribe(room.id, None)
    world.post(alice, room.id, "four")
    assert sink.event_ids(room.id) == [1, 2, 3, 4]
