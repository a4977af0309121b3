"""The room page's JSON: a room's older messages page by page, and the rooms one may open."""

import pytest
from django.urls import reverse

from chat.models import Ban, ChatRoom, Message

pytestmark = pytest.mark.django_db

UNKNOWN_ROOM = {"error": {"code": "unknown_room", "message": "no such room", "retryable": False}}


def history(client, room_id, **query):
    return client.get(reverse("chat:history", args=[room_id]), query)


def add_log(room, entries):
    """Write ``entries`` (kind, text, extra fields) as the room's log, ids from 1."""
    for seq, (kind, text, extra) in enumerate(entries, start=1):
        Message.objects.create(
            room=room, seq=seq, kind=kind, username="alice", text=text, ts=1_700_000_000_000 + seq, **extra
        )
    ChatRoom.objects.filter(pk=room.pk).update(last_message_id=len(entries))


def say(room, count):
    add_log(room, [(Message.MESSAGE, f"m{n}", {}) for n in range(1, count + 1)])


def test_history_gives_each_message_as_the_wire_object(client, lobby):
    add_log(
        lobby,
        [
            (Message.MESSAGE, "hi", {"edited": 1_700_000_009_000}),
            (Message.SYSTEM, "the room was renamed", {}),
            (Message.EDITED, "hi", {"target": 1}),
            (Message.MESSAGE, "gone soon", {}),
            (Message.DELETED, "", {"target": 4}),
            (Message.MESSAGE, "plain", {}),
        ],
    )
    response = history(client, lobby.pk)
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    base = {"type": "message", "room": lobby.pk}
    assert response.json() == {
        "room": lobby.pk,
        "messages": [
            {
                **base,
                "id": 1,
                "ts": 1_700_000_000_001,
                "user": "alice",
                "text": "hi",
                "edited": 1_700_000_009_000,
            },
            {
                **base,
                "id": 2,
                "ts": 1_700_000_000_002,
                "user": "",
                "text": "the room was renamed",
                "system": True,
            },
            {**base, "id": 4, "ts": 1_700_000_000_004, "user": "alice", "text": "gone soon"},
            {**base, "id": 6, "ts": 1_700_000_000_006, "user": "alice", "text": "plain"},
        ],
        "more": False,
    }


def test_paging_back_reaches_the_first_message_once_each(client, lobby):
    say(lobby, 120)
    Message.objects.filter(room=lobby, seq__in=[7, 8, 60]).delete()
    response = history(client, lobby.pk).json()
    assert [m["id"] for m in response["messages"]] == list(range(71, 121)) and response["more"]
    seen, query = [], {"limit": 30}
    while True:
        body = history(client, lobby.pk, **query).json()
        seen[:0] = [m["id"] for m in body["messages"]]
        if not body["more"]:
            break
        query["before"] = body["messages"][0]["id"]
    assert seen == [n for n in range(1, 121) if n not in (7, 8, 60)]


def test_before_and_limit_choose_the_page(client, lobby):
    say(lobby, 10)
    body = history(client, lobby.pk, before=6, limit=3).json()
    assert [m["id"] for m in body["messages"]] == [3, 4, 5] and body["more"] is True
    body = history(client, lobby.pk, before=3, limit=3).json()
    assert [m["id"] for m in body["messages"]] == [1, 2] and body["more"] is False
    assert history(client, lobby.pk, before=1).json() == {"room": lobby.pk, "messages": [], "more": False}
    assert history(client, lobby.pk, before=2**53 - 1).json()["messages"][-1]["id"] == 10


def test_a_limit_over_the_maximum_gives_the_maximum(client, lobby):
    say(lobby, 150)
    body = history(client, lobby.pk, limit=1000).json()
    assert len(body["messages"]) == 100 and body["more"] is True


@pytest.mark.parametrize(
    "query",
    [
        {"before": "abc"},
        {"before": "-1"},
        {"before": "1.5"},
        {"before": str(2**53)},
        {"before": ""},
        {"limit": "0"},
        {"limit": "ten"},
        {"limit": "-5"},
    ],
)
def test_a_bad_before_or_limit_is_a_bad_request(client, lobby, query):
    response = history(client, lobby.pk, **query)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "bad_request" and error["retryable"] is False and error["message"]
    assert response["Cache-Control"] == "no-store"


def test_a_private_room_is_answered_as_a_missing_one_except_to_members(client, alice, bob, private_room):
    say(private_room, 2)
    missing = history(client, 9999)
    assert missing.status_code == 404 and missing.json() == UNKNOWN_ROOM
    for user in (None, bob):
        if user:
            client.force_login(user)
        response = history(client, private_room.pk)
        assert response.status_code == 404 and response.json() == UNKNOWN_ROOM
    client.force_login(alice)
    assert [m["text"] for m in history(client, private_room.pk).json()["messages"]] == ["m1", "m2"]


def test_a_closed_room_is_not_found(client, lobby):
    say(lobby, 1)
    ChatRoom.objects.filter(pk=lobby.pk).update(is_closed=True)
    response = history(client, lobby.pk)
    assert response.status_code == 404 and response.json() == UNKNOWN_ROOM


@pytest.mark.parametrize("everywhere", [False, True])
def test_a_banned_user_is_refused(client, alice, lobby, everywhere):
    Ban.objects.create(user=alice, room=None if everywhere else lobby, reason="spam")
    client.force_login(alice)
    response = history(client, lobby.pk)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "banned"
    assert response.json()["error"]["retryable"] is False


def test_a_ban_does_not_reveal_a_private_room(client, bob, private_room):
    Ban.objects.create(user=bob, room=None)
    client.force_login(bob)
    assert history(client, private_room.pk).json() == UNKNOWN_ROOM


def test_an_anonymous_page_of_a_public_room_costs_two_queries(client, lobby, django_assert_num_queries):
    say(lobby, 60)
    with django_assert_num_queries(2):  # the room, then one page of messages
        assert history(client, lobby.pk, before=40, limit=10).status_code == 200


# --- rooms.json -----------------------------------------------------------------------------


def rooms_json(client):
    response = client.get(reverse("chat:rooms_json"))
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    return response.json()["rooms"]


def test_rooms_json_lists_what_the_user_may_open(client, alice, bob, lobby, private_room):
    lobby.description = "Say hello"
    lobby.save()
    say(lobby, 3)
    ChatRoom.objects.create(name="Shut", is_closed=True)
    assert rooms_json(client) == [
        {
            "id": lobby.pk,
            "name": "Lobby",
            "description": "Say hello",
            "url": f"/chats/{lobby.pk}/",
            "last_id": 3,
            "is_private": False,
        }
    ]
    client.force_login(alice)
    assert [room["name"] for room in rooms_json(client)] == ["Lobby", "Secret"]
    assert rooms_json(client)[1]["is_private"] is True
    client.force_login(bob)
    assert [room["name"] for room in rooms_json(client)] == ["Lobby"]


def test_rooms_json_leaves_out_rooms_the_user_is_banned_from(client, alice, lobby, private_room):
    client.force_login(alice)
    Ban.objects.create(user=alice, room=lobby)
    assert [room["name"] for room in rooms_json(client)] == ["Secret"]
    Ban.objects.create(user=alice, room=None)
    assert rooms_json(client) == []
