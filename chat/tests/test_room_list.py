"""The room list: what each room shows, who is online, and staff creating rooms."""

import pytest
from django.urls import reverse

from chat.models import Ban, ChatRoom, Message
from twisted_chat import live

pytestmark = pytest.mark.django_db


@pytest.fixture
def online(monkeypatch):
    """Who the chat server says is in each room; records every question asked."""
    asked: list[list[int]] = []
    answer: dict[int, list[str]] = {}

    def fake_online(room_ids, timeout=1.0):
        asked.append(list(room_ids))
        return {room_id: names for room_id, names in answer.items() if room_id in room_ids}

    monkeypatch.setattr(live, "online", fake_online)
    return answer, asked


def page(client):
    response = client.get(reverse("chat:room_list"))
    assert response.status_code == 200
    return response.content.decode()


def test_each_room_shows_its_description_and_last_message_time(client, lobby, online):
    lobby.description = "Where everyone meets"
    lobby.save()
    Message.objects.create(room=lobby, seq=1, username="a", text="hi", ts=1_700_000_000_123)
    # A later edit record is not a message: the time shown stays the message's.
    Message.objects.create(room=lobby, seq=2, username="a", text="hey", ts=1_800_000_000_000, kind="edited")
    html = page(client)
    assert "Where everyone meets" in html
    assert '<time datetime="2023-11-14T22:13:20+00:00">14 Nov 2023, 22:13 UTC</time>' in html


def test_a_room_without_messages_says_so(client, lobby, online):
    assert "No messages yet" in page(client)


def test_who_is_online_is_asked_once_for_every_room(client, lobby, online):
    second = ChatRoom.objects.create(name="Second")
    answer, asked = online
    answer[lobby.pk] = ["alice", "bob"]
    html = page(client)
    assert [sorted(ids) for ids in asked] == [sorted([lobby.pk, second.pk])]
    assert "Online: alice, bob" in html
    assert html.count("nobody online") == 1


def test_a_crowd_is_summed_up(client, lobby, online):
    answer, _ = online
    answer[lobby.pk] = [f"user{n}" for n in range(20)]
    assert "user7 and 12 more" in page(client)


def test_closed_rooms_are_listed_for_staff_only(client, alice, staff, online):
    ChatRoom.objects.create(name="Shut", is_closed=True)
    client.force_login(alice)
    assert "Shut" not in page(client)
    client.force_login(staff)
    html = page(client)
    assert "Shut" in html and "tag-closed" in html


def test_an_empty_list_says_so_and_invites_staff_to_create_a_room(client, staff, online):
    ChatRoom.objects.all().delete()
    html = page(client)
    assert "No rooms yet." in html and "Create the first one" not in html
    assert 'action="/chats/new/"' not in html
    client.force_login(staff)
    html = page(client)
    assert "Create the first one below." in html and 'action="/chats/new/"' in html


def test_a_user_banned_everywhere_is_told_why_the_list_is_empty(client, alice, online):
    Ban.objects.create(user=alice, room=None)
    client.force_login(alice)
    assert "You are banned from every room" in page(client)


def test_only_staff_may_create_a_room(client, alice):
    form = {"name": "New", "description": ""}
    assert client.post(reverse("chat:create_room"), form).status_code == 403
    client.force_login(alice)
    response = client.post(reverse("chat:create_room"), form)
    assert response.status_code == 403
    assert not ChatRoom.objects.filter(name="New").exists()


def test_staff_create_a_room_and_land_in_it(client, staff, online):
    client.force_login(staff)
    response = client.post(reverse("chat:create_room"), {"name": "Planning", "description": "Next steps"})
    room = ChatRoom.objects.get(name="Planning")
    assert response.status_code == 302 and response["Location"] == f"/chats/{room.pk}/"
    assert room.description == "Next steps" and not room.is_private


def test_a_private_room_has_its_creator_as_member(client, staff, online):
    client.force_login(staff)
    response = client.post(reverse("chat:create_room"), {"name": "Staff only", "is_private": "on"})
    room = ChatRoom.objects.get(name="Staff only")
    assert room.is_private and list(room.members.all()) == [staff]
    assert client.get(response["Location"]).status_code == 200


def test_a_refused_room_is_explained(client, staff, lobby, online):
    client.force_login(staff)
    response = client.post(reverse("chat:create_room"), {"name": "Lobby"})
    assert response.status_code == 200
    assert "There is already a room with that name. Pick another one." in response.content.decode()
    response = client.post(reverse("chat:create_room"), {"name": ""})
    assert "This field is required." in response.content.decode()
    assert ChatRoom.objects.count() == 1
