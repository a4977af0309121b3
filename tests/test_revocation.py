"""Rights taken away reach connections already open, on every transport, without any move
by the client: logout, login as someone else, deactivation, removal from a private room, a
room turned private, a room deleted. Driven through Django's own pages and admin."""

from __future__ import annotations

import gc
import json
import re
import threading
import time

import pytest
import requests
from websockets.exceptions import ConnectionClosed

from .server import ChatServerProcess, login, logout, poll, post_message, recv_until, wait_for, ws_connect

LOBBY, SECOND, PRIVATE = 1, 2, 3
USER_IDS = {"alice": 1, "bob": 2, "carol": 3, "admin": 4}
# Deadlines for something the server does by itself: generous for a loaded CI machine.
PROMPTLY = 5.0


def admin_change(admin: requests.Session, server: ChatServerProcess, path: str, changes: dict) -> None:
    """Save an admin change form with the fields it shows, as a person would, with ``changes``."""
    url = server.url + path
    page = admin.get(url, timeout=10)
    page.raise_for_status()
    fields: dict[str, list[str]] = {}
    for tag in re.findall(r"<(?:input|select|textarea)\b[^>]*>", page.text):
        name = re.search(r'name="([^"]+)"', tag)
        if name is None or "disabled" in tag:
            continue
        kind = re.search(r'type="([^"]+)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        if kind and kind.group(1) in ("checkbox", "radio") and "checked" not in tag:
            continue
        if kind and kind.group(1) in ("submit", "button", "file"):
            continue
        if tag.startswith("<select"):
            continue
        default = "on" if kind and kind.group(1) == "checkbox" else ""  # what a browser sends
        fields.setdefault(name.group(1), []).append(value.group(1) if value else default)
    for select in re.findall(r'<select\b[^>]*name="([^"]+)"[^>]*>(.*?)</select>', page.text, re.S):
        chosen = re.findall(r'<option value="([^"]*)"[^>]*selected', select[1])
        if chosen:
            fields[select[0]] = chosen
    for name, value in changes.items():
        if value is None:
            fields.pop(name, None)
        else:
            fields[name] = value if isinstance(value, list) else [value]
    fields["csrfmiddlewaretoken"] = [admin.cookies["csrftoken"]]
    fields["_save"] = ["Save"]
    response = admin.post(url, data=fields, headers={"Referer": url}, allow_redirects=False, timeout=10)
    assert response.status_code == 302, f"the admin refused the change:\n{response.text[-3000:]}"


def admin_delete(admin: requests.Session, server: ChatServerProcess, path: str) -> None:
    url = server.url + path
    admin.get(url, timeout=10).raise_for_status()
    response = admin.post(
        url,
        data={"csrfmiddlewaretoken": admin.cookies["csrftoken"], "post": "yes"},
        headers={"Referer": url},
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 302


def closed_with(ws, timeout: float = PROMPTLY) -> int | None:
    """The close code the server ends a connection with, reading whatever comes first."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ws.recv(timeout=deadline - time.monotonic())
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    except TimeoutError:
        pass
    raise AssertionError(f"the connection was not closed within {timeout}s")


def subscribe(ws, room: int) -> dict:
    ws.send(json.dumps({"type": "subscribe", "room": room}))
    return recv_until(ws, lambda f: f.get("room") == room and f["type"] in ("subscribed", "error"))[-1]


class ParkedPoll(threading.Thread):
    """A long-poll held open in the background, as a page's receiver holds one."""

    def __init__(self, server: ChatServerProcess, room: int, since: int, session: requests.Session | None):
        super().__init__(daemon=True)
        self.args = (server, room, since, session)
        self.response: requests.Response | None = None

    def run(self) -> None:
        server, room, since, session = self.args
        self.response = poll(server, room, since=since, timeout=60, session=session)

    def answer(self, timeout: float = PROMPTLY) -> requests.Response:
        self.join(timeout)
        assert self.response is not None, f"the parked poll was not answered within {timeout}s"
        return self.response


def park(server, room: int, session=None) -> ParkedPoll:
    since = poll(server, room, session=session).json()["last"]
    before = parked_count(server)
    parked = ParkedPoll(server, room, since, session)
    parked.start()
    wait_for(lambda: parked_count(server) > before, PROMPTLY, what="the poll to park")
    return parked


def parked_count(server) -> int:
    return server.stats()["parked_polls"]


def test_logout_elsewhere_closes_open_connections_of_that_browser_at_once(server):
    alice = login(server, "alice")
    with ws_connect(server, alice) as ws:
        assert subscribe(ws, PRIVATE)["type"] == "subscribed"
        parked = park(server, PRIVATE, alice)
        logout(alice, server)
        assert closed_with(ws) == 4001
        answer = parked.answer()
        assert answer.status_code == 401
        assert answer.json()["error"] == {
            "code": "session_ended",
            "message": "the session changed: poll again",
            "retryable": True,
        }
    # Back with the browser's cookie as it is now: anonymous, so the private room is gone,
    # and posting is refused at once (no 5-second session cache).
    with ws_connect(server, alice) as ws:
        assert subscribe(ws, PRIVATE)["code"] == "unknown_room"
        ws.send(json.dumps({"type": "send", "room": LOBBY, "text": "still here?", "nonce": "n1"}))
        assert recv_until(ws, lambda f: f.get("nonce") == "n1")[-1]["code"] == "not_authenticated"
    assert poll(server, PRIVATE, session=alice).status_code == 404


def test_login_elsewhere_makes_an_anonymous_page_start_over_as_the_user(server):
    browser = requests.Session()
    browser.get(server.url + "/chats/1/", timeout=10)  # the page sets the CSRF cookie
    assert "csrftoken" in browser.cookies and "sessionid" not in browser.cookies
    with ws_connect(server, browser) as ws:
        assert subscribe(ws, LOBBY)["type"] == "subscribed"
        parked = park(server, LOBBY, browser)
        page = browser.get(server.url + "/accounts/login/", timeout=10)
        page.raise_for_status()
        browser.post(
            server.url + "/accounts/login/",
            data={
                "username": "alice",
                "password": "correct-horse-battery-staple",
                "csrfmiddlewaretoken": browser.cookies["csrftoken"],
            },
            headers={"Referer": server.url + "/accounts/login/"},
            allow_redirects=False,
            timeout=10,
        )
        assert "sessionid" in browser.cookies
        assert closed_with(ws) == 4001
        assert parked.answer().status_code == 401
    with ws_connect(server, browser) as ws:
        ws.send(json.dumps({"type": "send", "room": LOBBY, "text": "logged in now", "nonce": "n1"}))
        assert recv_until(ws, lambda f: f.get("nonce") == "n1")[-1]["type"] == "ack"


def test_other_browsers_of_the_same_user_keep_their_connections(server):
    phone, laptop = login(server, "alice"), login(server, "alice")
    with ws_connect(server, phone) as phone_ws, ws_connect(server, laptop) as laptop_ws:
        subscribe(phone_ws, LOBBY)
        subscribe(laptop_ws, LOBBY)
        logout(phone, server)
        assert closed_with(phone_ws) == 4001
        assert post_message(laptop, server, LOBBY, "laptop still works").status_code == 200
        assert recv_until(laptop_ws, lambda f: f["type"] == "message")[-1]["text"] == "laptop still works"


def test_a_deactivated_user_is_disconnected_everywhere(server):
    admin, alice, bob = login(server, "admin"), login(server, "alice"), login(server, "bob")
    with ws_connect(server, alice) as alice_ws, ws_connect(server, bob) as bob_ws:
        subscribe(alice_ws, LOBBY)
        subscribe(bob_ws, LOBBY)
        parked = park(server, LOBBY, alice)
        admin_change(admin, server, f"/admin/auth/user/{USER_IDS['alice']}/change/", {"is_active": None})
        assert closed_with(alice_ws) == 4001
        assert parked.answer().status_code == 401
        # Bob's connection is untouched.
        assert post_message(bob, server, LOBBY, "bob still here").status_code == 200
        assert recv_until(bob_ws, lambda f: f["type"] == "message")[-1]["text"] == "bob still here"
    assert post_message(alice, server, LOBBY, "let me back").status_code == 403


def test_removal_from_a_private_room_ends_the_subscription_on_every_transport(server):
    admin, alice, bob = login(server, "admin"), login(server, "alice"), login(server, "bob")
    members = [str(USER_IDS["alice"]), str(USER_IDS["bob"])]
    admin_change(admin, server, f"/admin/chat/chatroom/{PRIVATE}/change/", {"members": members})
    with ws_connect(server, alice) as alice_ws, ws_connect(server, bob) as bob_ws:
        subscribe(alice_ws, PRIVATE)
        subscribe(alice_ws, LOBBY)
        subscribe(bob_ws, PRIVATE)
        parked = park(server, PRIVATE, alice)
        admin_change(admin, server, f"/admin/chat/chatroom/{PRIVATE}/change/", {"members": [members[1]]})
        ended = recv_until(alice_ws, lambda f: f["type"] == "unsubscribed", PROMPTLY)[-1]
        assert ended == {
            "type": "unsubscribed",
            "room": PRIVATE,
            "code": "unknown_room",
            "message": "no such room",
        }
        assert parked.answer().json()["error"]["code"] == "unknown_room"
        # Bob, still a member, goes on reading it; Alice's connection and other rooms live on.
        assert post_message(bob, server, PRIVATE, "members only").status_code == 200
        assert recv_until(bob_ws, lambda f: f["type"] == "message")[-1]["text"] == "members only"
        assert post_message(bob, server, LOBBY, "lobby").status_code == 200
        frames = recv_until(alice_ws, lambda f: f["type"] == "message")
        assert [f["text"] for f in frames if f["type"] == "message"] == ["lobby"]
        assert subscribe(alice_ws, PRIVATE)["code"] == "unknown_room"


def test_a_room_turned_private_or_deleted_ends_subscriptions_of_those_who_may_not_read_it(server):
    admin, alice = login(server, "admin"), login(server, "alice")
    with ws_connect(server, alice) as alice_ws, ws_connect(server) as anonymous_ws:
        subscribe(alice_ws, SECOND)
        subscribe(anonymous_ws, SECOND)
        anonymous_poll = park(server, SECOND)
        admin_change(
            admin,
            server,
            f"/admin/chat/chatroom/{SECOND}/change/",
            {"is_private": "on", "members": [str(USER_IDS["alice"])]},
        )
        ended = recv_until(anonymous_ws, lambda f: f["type"] == "unsubscribed", PROMPTLY)[-1]
        assert ended["code"] == "unknown_room"
        assert anonymous_poll.answer().status_code == 404
        assert post_message(alice, server, SECOND, "now private").status_code == 200
        assert recv_until(alice_ws, lambda f: f["type"] == "message")[-1]["text"] == "now private"

        member_poll = park(server, SECOND, alice)
        admin_delete(admin, server, f"/admin/chat/chatroom/{SECOND}/delete/")
        ended = recv_until(alice_ws, lambda f: f["type"] == "unsubscribed", PROMPTLY)[-1]
        assert ended["code"] == "unknown_room"
        assert member_poll.answer().status_code == 404


@pytest.mark.parametrize("transport", ["websocket", "longpoll"])
def test_parked_polls_and_websockets_count_against_one_limit(server_factory, transport):
    server = server_factory({"CHAT_MAX_CONNECTIONS_PER_USER": "2"})
    alice = login(server, "alice")
    first = park(server, LOBBY, alice)
    with ws_connect(server, alice) as ws:
        subscribe(ws, LOBBY)
        if transport == "longpoll":
            refused = poll(server, LOBBY, since=0, timeout=5, session=alice)
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "too_many_connections"
            assert refused.json()["error"]["retryable"] is True
        else:
            from websockets.exceptions import InvalidStatus

            with pytest.raises(InvalidStatus) as denied:
                ws_connect(server, alice)
            assert denied.value.response.status_code == 429
    post_message(alice, server, LOBBY, "wake up")
    first.answer()
    # Both slots are free again.
    with ws_connect(server, alice), ws_connect(server, alice):
        pass


def test_anonymous_polls_count_against_the_address_limit(server_factory):
    server = server_factory({"CHAT_MAX_CONNECTIONS_PER_IP": "1"})
    parked = park(server, LOBBY)
    refused = poll(server, LOBBY, since=0, timeout=5)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_connections"
    assert refused.headers["retry-after"] == "5"
    with pytest.raises(Exception, match="429"):
        ws_connect(server)
    # Every connection from the address counts, pages included; another address carries on.
    assert requests.get(server.url + "/chats/", timeout=5).status_code == 429
    login_session = login(server, "alice", address="127.0.0.2")
    post_message(login_session, server, LOBBY, "wake up")
    login_session.close()
    assert parked.answer().status_code == 200
    # requests keeps the poll's connection open as long as its response object lives.
    parked.response = None
    gc.collect()
    wait_for(lambda: server.stats()["connections"] == 0, what="the answered poll's connection to close")
    assert poll(server, LOBBY, since=0).status_code == 200
