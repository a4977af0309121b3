"""PresenceTracker on a fake clock: users not connections, lingering, expiry of a dead
process, changes held after an announcement, and a crowd arriving together costing one
store write, one notice and two announcements."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from twisted_chat.events import Author
from twisted_chat.presence import PresenceTracker
from twisted_chat.storage.memory_presence import LocalPresence

ROOM = 1
TTL = 15.0
SETTLE = 0.1


class CountingPresence(LocalPresence):
    """The shared store, counting what each process writes to it."""

    def __init__(self, clock: Clock):
        super().__init__(clock=clock.seconds)
        self.writes: list[tuple[str, Any]] = []

    def set(self, room_id: int, key: str, value: Any, ttl: float) -> None:
        self.writes.append(("set", key))
        super().set(room_id, key, value, ttl)

    def remove(self, room_id: int, key: str) -> None:
        self.writes.append(("remove", key))
        super().remove(room_id, key)


class Process:
    """One process's tracker, with what it announced and told the others."""

    def __init__(self, clock: Clock, store: LocalPresence, name: str):
        self.tracker = PresenceTracker(clock, store, name, ttl=TTL, settle=SETTLE)
        self.announced: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
        self.told: list[int] = []
        self.tracker.announce = lambda room_id, joined, left: self.announced.append((joined, left))
        self.tracker.tell_others = self.told.append
        self.tracker.follow(ROOM)
        self.tracker.start()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> CountingPresence:
    return CountingPresence(clock)


ALICE, BOB = Author(1, "alice"), Author(2, "bob")


def test_a_user_with_several_connections_joins_once_and_leaves_with_the_last(clock, store):
    process = Process(clock, store, "p1")
    assert process.tracker.arrive(ROOM, ALICE).called
    assert process.tracker.arrive(ROOM, ALICE).called
    clock.advance(SETTLE)
    assert process.tracker.arrive(ROOM, BOB).called
    assert process.announced == [(("alice",), ()), (("bob",), ())]
    assert process.tracker.users(ROOM) == ("alice", "bob")
    clock.advance(SETTLE)
    process.tracker.depart(ROOM, ALICE)
    assert process.tracker.users(ROOM) == ("alice", "bob")
    process.tracker.depart(ROOM, ALICE)
    assert process.announced[-1] == ((), ("alice",))
    assert process.tracker.users(ROOM) == ("bob",)


def test_changes_soon_after_an_announcement_go_out_together(clock, store):
    process = Process(clock, store, "p1")
    process.tracker.arrive(ROOM, ALICE)
    assert process.announced == [(("alice",), ())]
    # Within the settle time of that announcement: held, and bob's arrival waits for it.
    bobs = process.tracker.arrive(ROOM, BOB)
    carol = Author(3, "carol")
    carols = process.tracker.arrive(ROOM, carol)
    process.tracker.depart(ROOM, carol)
    process.tracker.depart(ROOM, ALICE)
    assert not bobs.called and not carols.called
    assert process.tracker.users(ROOM) == ("alice",), "what was last announced"
    clock.advance(SETTLE)
    # One announcement of the difference; carol came and went unseen.
    assert process.announced == [(("alice",), ()), (("bob",), ("alice",))]
    assert bobs.called and carols.called
    assert process.tracker.users(ROOM) == ("bob",)
    # Nothing held now: the next change goes out at once.
    clock.advance(SETTLE)
    assert process.tracker.arrive(ROOM, carol).called
    assert process.announced[-1] == (("carol",), ())


def test_a_lingering_user_stays_until_the_linger_is_over(clock, store):
    process = Process(clock, store, "p1")
    process.tracker.arrive(ROOM, ALICE)
    process.tracker.depart(ROOM, ALICE, linger=8)
    clock.advance(TTL / 3)
    assert process.tracker.users(ROOM) == ("alice",)
    process.tracker.arrive(ROOM, ALICE)  # the next poll, in time: no leave, no join
    process.tracker.depart(ROOM, ALICE, linger=8)
    clock.advance(TTL / 3)
    assert process.tracker.users(ROOM) == ("alice",)
    clock.advance(TTL / 3)
    assert process.tracker.users(ROOM) == ()
    assert process.announced == [(("alice",), ()), ((), ("alice",))]


def test_a_crowd_arriving_together_is_one_write_one_notice_and_two_announcements(clock, store):
    process = Process(clock, store, "p1")
    arrivals = [process.tracker.arrive(ROOM, Author(uid, f"user{uid}")) for uid in range(1, 201)]
    # The first is announced to this process's clients at once, the others together ...
    assert process.announced == [(("user1",), ())]
    assert sum(arrival.called for arrival in arrivals) == 1
    # ... and the store and the other processes hear of them all together.
    assert store.writes == [] and process.told == []
    clock.advance(SETTLE)
    assert len(process.announced) == 2 and len(process.announced[1][0]) == 199
    assert all(arrival.called for arrival in arrivals)
    assert store.writes == [("set", "p1")]
    assert process.told == [ROOM]
    assert len(store.entries(ROOM).result["p1"]) == 200


def test_another_process_sees_users_come_and_go_and_a_dead_ones_expire(clock, store):
    one, two = Process(clock, store, "p1"), Process(clock, store, "p2")
    one.tracker.arrive(ROOM, ALICE)
    two.tracker.arrive(ROOM, BOB)
    clock.advance(SETTLE)
    # Each was told (here by hand; notices carry it over Redis) and read the room again.
    one.tracker.others_changed(ROOM)
    two.tracker.others_changed(ROOM)
    assert one.tracker.users(ROOM) == two.tracker.users(ROOM) == ("alice", "bob")

    # A clean stop takes its users away at once.
    clock.advance(SETTLE)
    one.tracker.stop()
    assert ("remove", "p1") in store.writes
    two.tracker.others_changed(ROOM)
    assert two.tracker.users(ROOM) == ("bob",)
    clock.advance(SETTLE)

    # A process that dies without a word: its entry lapses after the ttl, and the others'
    # regular reads see its users leave.
    # Its clock is its own, so that it can stop: a dead process refreshes nothing.
    its_clock = Clock()
    three = Process(its_clock, store, "p3")
    three.tracker.arrive(ROOM, ALICE)
    its_clock.advance(SETTLE)
    two.tracker.others_changed(ROOM)
    assert two.tracker.users(ROOM) == ("alice", "bob")
    clock.advance(TTL + TTL / 3)
    assert two.tracker.users(ROOM) == ("bob",)


def test_the_last_user_leaving_removes_the_entry_once_settled(clock, store):
    process = Process(clock, store, "p1")
    process.tracker.arrive(ROOM, ALICE)
    process.tracker.depart(ROOM, ALICE)
    process.tracker.unfollow(ROOM)  # nobody here, nobody following: the room is dropped
    clock.advance(SETTLE)
    assert store.writes == [("remove", "p1")]
    assert store.entries(ROOM).result == {}
