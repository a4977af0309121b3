"""The admin: messages are read and deleted, never edited; rooms can be closed; bans."""

import pytest

from chat.models import Ban, ChatRoom, Message

pytestmark = pytest.mark.django_db

TS = 1_700_000_000_123  # 14 Nov 2023, 22:13:20 UTC
SHOWN_TS = "14 Nov 2023, 22:13:20 UTC"


@pytest.fixture
def message(lobby):
    return Message.objects.create(
        room=lobby, seq=1, username="alice", text="hello", ts=TS, edited=TS + 3_600_000
    )


def test_a_message_page_shows_readable_times_and_offers_no_save(admin_client, message):
    response = admin_client.get(f"/admin/chat/message/{message.pk}/change/")
    html = response.content.decode()
    assert response.status_code == 200
    assert SHOWN_TS in html and "14 Nov 2023, 23:13:20 UTC" in html
    assert str(TS) not in html
    assert 'name="_save"' not in html and 'name="_continue"' not in html
    assert f"/admin/chat/message/{message.pk}/delete/" in html


def test_a_message_cannot_be_changed_but_can_be_deleted(admin_client, message):
    admin_client.post(f"/admin/chat/message/{message.pk}/change/", {"text": "rewritten"})
    message.refresh_from_db()
    assert message.text == "hello"
    response = admin_client.post(f"/admin/chat/message/{message.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and not Message.objects.filter(pk=message.pk).exists()


def test_the_message_list_shows_messages_not_records_of_changes(admin_client, lobby, message):
    Message.objects.create(room=lobby, seq=2, username="", text="the room opened", ts=TS, kind="system")
    Message.objects.create(
        room=lobby, seq=3, username="alice", text="edit record", ts=TS, kind="edited", target=1
    )
    Message.objects.create(
        room=lobby, seq=4, username="alice", text="delete record", ts=TS, kind="deleted", target=1
    )
    html = admin_client.get("/admin/chat/message/").content.decode()
    assert "hello" in html and "the room opened" in html
    assert "edit record" not in html and "delete record" not in html
    assert SHOWN_TS in html and str(TS) not in html


def test_rooms_show_whether_they_are_closed(admin_client, lobby):
    ChatRoom.objects.create(name="Shut", is_closed=True)
    html = admin_client.get("/admin/chat/chatroom/?is_closed__exact=1").content.decode()
    assert "Shut" in html and "Lobby" not in html
    assert "column-is_closed" in html


def test_bans_are_listed_searched_and_picked_by_autocomplete(admin_client, alice, bob, lobby):
    Ban.objects.create(user=alice, room=lobby, reason="spam")
    Ban.objects.create(user=bob, room=None, reason="abuse")
    html = admin_client.get("/admin/chat/ban/").content.decode()
    assert "every room" in html and "Lobby" in html and "spam" in html
    found = admin_client.get("/admin/chat/ban/?q=spam").content.decode()
    assert "alice" in found and "abuse" not in found
    form = admin_client.get("/admin/chat/ban/add/").content.decode()
    assert form.count("admin-autocomplete") >= 2
    response = admin_client.get(
        "/admin/autocomplete/",
        {"app_label": "chat", "model_name": "ban", "field_name": "room", "term": "Lob"},
    )
    assert [result["text"] for result in response.json()["results"]] == ["Lobby"]


def test_times_are_in_the_sites_time_zone(admin_client, message, settings):
    settings.TIME_ZONE = "Europe/Paris"
    html = admin_client.get("/admin/chat/message/").content.decode()
    assert "14 Nov 2023, 23:13:20 CET" in html
