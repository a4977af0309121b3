"""Who may open a room: closed rooms and bans, on the pages and in the one rule."""

import itertools

import pytest
from django.contrib.auth.models import AnonymousUser
from django.urls import reverse

from chat.models import Ban, ChatRoom, room_readable
from chat.views import visible_rooms

pytestmark = pytest.mark.django_db


def test_the_rule():
    assert room_readable(False, False)
    assert room_readable(True, True)
    assert not room_readable(True, False)
    assert not room_readable(False, False, is_closed=True)
    assert not room_readable(True, True, is_banned=True)


def test_a_closed_room_is_not_found_even_by_staff(client, staff, lobby):
    ChatRoom.objects.filter(pk=lobby.pk).update(is_closed=True)
    client.force_login(staff)
    assert client.get(reverse("chat:room", args=[lobby.pk])).status_code == 404
    assert client.get(reverse("chat:long_poll_room", args=[lobby.pk])).status_code == 404


@pytest.mark.parametrize("everywhere", [False, True])
def test_a_banned_user_is_told_so(client, alice, lobby, everywhere):
    Ban.objects.create(user=alice, room=None if everywhere else lobby)
    client.force_login(alice)
    response = client.get(reverse("chat:room", args=[lobby.pk]))
    assert response.status_code == 403
    assert "You are banned from this room" in response.content.decode()
    assert 'id="send-form"' not in response.content.decode()


def test_a_ban_elsewhere_changes_nothing(client, alice, lobby):
    Ban.objects.create(user=alice, room=ChatRoom.objects.create(name="Other"))
    client.force_login(alice)
    assert client.get(reverse("chat:room", args=[lobby.pk])).status_code == 200


def test_a_ban_does_not_reveal_a_private_room(client, bob, private_room):
    Ban.objects.create(user=bob, room=private_room)
    client.force_login(bob)
    assert client.get(reverse("chat:room", args=[private_room.pk])).status_code == 404


def test_the_room_list_and_the_room_pages_follow_the_same_rule(alice, bob, lobby, private_room):
    """visible_rooms (SQL) and is_visible_to (Python) agree for every kind of room and user."""
    closed = ChatRoom.objects.create(name="Closed", is_closed=True)
    closed_private = ChatRoom.objects.create(name="Closed private", is_private=True, is_closed=True)
    closed_private.members.add(alice)
    banned_from = ChatRoom.objects.create(name="Banned from")
    Ban.objects.create(user=bob, room=banned_from)
    carol = type(alice).objects.create_user("carol")
    Ban.objects.create(user=carol, room=None)
    rooms = [lobby, private_room, closed, closed_private, banned_from]
    for user, room in itertools.product([AnonymousUser(), alice, bob, carol], rooms):
        listed = visible_rooms(user).filter(pk=room.pk).exists()
        assert listed == room.is_visible_to(user), (user, room)
    assert {room.name for room in visible_rooms(alice)} == {"Lobby", "Secret", "Banned from"}
    assert {room.name for room in visible_rooms(bob)} == {"Lobby"}
    assert not visible_rooms(carol).exists()
