"""The Django side: pages, private-room visibility, accounts, admin."""

import re

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from chat.models import ChatRoom, Message

pytestmark = pytest.mark.django_db


def test_demo_room_exists_after_migrations():
    assert ChatRoom.objects.filter(name="Lobby").exists()


def test_root_redirects_to_the_room_list(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"] == "/chats/"


def test_private_rooms_are_listed_only_for_members(client, alice, private_room):
    outsider = User.objects.create_user("mallory", password="pw-mallory-123456")
    anonymous_page = client.get(reverse("chat:room_list")).content.decode()
    assert "Lobby" in anonymous_page and "Secret" not in anonymous_page
    client.force_login(outsider)
    assert "Secret" not in client.get(reverse("chat:room_list")).content.decode()
    client.force_login(alice)
    assert "Secret" in client.get(reverse("chat:room_list")).content.decode()


@pytest.mark.parametrize(
    ("name", "query", "transport"),
    [
        ("chat:room", "", "auto"),
        ("chat:room", "?transport=stream", "stream"),
        ("chat:room", "?transport=websocket", "websocket"),
        ("chat:room", "?transport=carrier-pigeon", "auto"),
        ("chat:long_poll_room", "", "longpoll"),
    ],
)
def test_room_pages_carry_what_the_client_needs(client, alice, name, query, transport):
    lobby = ChatRoom.objects.get(name="Lobby")
    client.force_login(alice)
    response = client.get(reverse(name, args=[lobby.pk]) + query)
    html = response.content.decode()
    assert response.status_code == 200
    assert f'data-room-id="{lobby.pk}"' in html
    assert f'data-transport="{transport}"' in html
    assert 'data-username="alice"' in html and 'data-authenticated="true"' in html
    assert 'id="send-form"' in html and "csrftoken" in response.cookies
    assert "<script>" not in html, "inline script would break the CSP"
    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert response["X-Frame-Options"] == "DENY"


def test_anonymous_sees_the_room_with_the_send_form_hidden(client, alice):
    """The form is always there, hidden while anonymous: a login in another tab shows it."""
    lobby = ChatRoom.objects.get(name="Lobby")
    html = client.get(reverse("chat:room", args=[lobby.pk])).content.decode()
    assert 'data-authenticated="false"' in html
    assert re.search(r'<form id="send-form"[^>]* hidden>', html)
    assert re.search(r'<p class="login-hint">', html)
    client.force_login(alice)
    html = client.get(reverse("chat:room", args=[lobby.pk])).content.decode()
    assert re.search(r'<form id="send-form"[^>]*autocomplete="off">', html)
    assert re.search(r'<p class="login-hint" hidden>', html)


def test_unknown_and_private_rooms_are_not_found(client, private_room):
    assert client.get(reverse("chat:room", args=[9999])).status_code == 404
    assert client.get(reverse("chat:long_poll_room", args=[private_room.pk])).status_code == 404


def test_signup_creates_the_user_and_logs_in(client):
    response = client.post(
        reverse("signup"),
        {"username": "newbie", "password1": "a-long-pass-phrase-1", "password2": "a-long-pass-phrase-1"},
    )
    assert response.status_code == 302
    assert User.objects.filter(username="newbie").exists()
    assert "newbie" in client.get(reverse("chat:room_list")).content.decode()


def test_login_and_logout(client, alice):
    response = client.post(reverse("login"), {"username": "alice", "password": "pw-alice-123456"})
    assert response.status_code == 302
    assert client.session.get("_auth_user_id") == str(alice.pk)
    client.post(reverse("logout"))
    assert "_auth_user_id" not in client.session


def test_admin_manages_rooms_and_cannot_add_messages(admin_client):
    lobby = ChatRoom.objects.get(name="Lobby")
    Message.objects.create(room=lobby, seq=1, username="x", text="hello", ts=0)
    assert admin_client.get("/admin/chat/chatroom/").status_code == 200
    assert admin_client.get("/admin/chat/message/").status_code == 200
    assert admin_client.get("/admin/chat/message/add/").status_code == 403
    response = admin_client.post(
        "/admin/chat/chatroom/add/", {"name": "Created in admin", "description": "", "is_private": ""}
    )
    assert response.status_code == 302
    assert ChatRoom.objects.filter(name="Created in admin").exists()


def test_session_state_says_who_the_browser_is_now(client, alice):
    response = client.get(reverse("session_state"))
    assert response.json() == {"user": None}
    assert "no-cache" in response["Cache-Control"]
    client.force_login(alice)
    assert client.get(reverse("session_state")).json() == {"user": "alice"}


def test_an_anonymous_page_mints_no_csrf_cookie_unless_it_has_a_form_to_send(client):
    """The room list is the busiest page: it sets no cookie for a visitor who only reads."""
    response = client.get(reverse("chat:room_list"))
    assert "csrftoken" not in response.cookies
    assert "Both states are rendered" not in response.content.decode()
