"""Every rule of docs/security.md, over real connections to a real server."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys

import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .server import (
    ROOT,
    base_env,
    login,
    poll,
    post_message,
    recv_json,
    recv_until,
    session_from,
    wait_for,
    ws_connect,
)

LOBBY, PRIVATE = 1, 3


def send_frame(ws, text: str, nonce: str, room: int = LOBBY) -> dict:
    ws.send(json.dumps({"type": "send", "room": room, "text": text, "nonce": nonce}))
    return recv_until(ws, lambda f: f.get("nonce") == nonce and f["type"] in ("ack", "error"))[-1]


def handshake_status(server, **kwargs) -> int:
    try:
        with ws_connect(server, **kwargs):
            return 101
    except InvalidStatus as error:
        return error.response.status_code


# --- cross-site WebSocket hijacking -----------------------------------------------------


def test_websocket_handshake_checks_origin(server_factory):
    server = server_factory({"CHAT_ALLOWED_ORIGINS": "https://chat.example.com"})
    alice = login(server, "alice")
    assert handshake_status(server, session=alice) == 101
    assert handshake_status(server, session=alice, origin="https://evil.example") == 403
    assert handshake_status(server, session=alice, origin="http://127.0.0.1:1") == 403
    assert handshake_status(server, session=alice, origin="https://chat.example.com") == 101
    assert handshake_status(server, session=alice, origin="null") in (400, 403)  # autobahn refuses first


def test_missing_origin_is_allowed_only_without_a_session_cookie(server):
    from websockets.sync.client import connect

    alice = login(server, "alice")
    with connect(server.ws_url, open_timeout=10) as ws:  # a non-browser client
        ws.send(json.dumps({"type": "subscribe", "room": LOBBY}))
        assert recv_json(ws)["type"] == "subscribed"
    cookie = "; ".join(f"{c.name}={c.value}" for c in alice.cookies)
    with pytest.raises(InvalidStatus) as refused:
        connect(server.ws_url, additional_headers={"Cookie": cookie}, open_timeout=10)
    assert refused.value.response.status_code == 403


# --- CSRF and authentication ------------------------------------------------------------


def test_post_without_a_valid_csrf_token_is_refused(server):
    alice = login(server, "alice")
    for headers in ({}, {"X-CSRFToken": "x" * 64}, {"X-CSRFToken": alice.cookies["csrftoken"][:-1] + "A"}):
        response = alice.post(
            server.url + "/poll", json={"room": LOBBY, "text": "hi"}, headers=headers, timeout=10
        )
        assert response.status_code == 403, headers
        assert response.json()["error"]["code"] == "csrf_failed"
    assert post_message(alice, server, LOBBY, "with token").status_code == 200


# --- private rooms ----------------------------------------------------------------------


def test_private_room_is_closed_to_non_members_on_every_path(server):
    """To whoever may not read it, a private room does not exist: the same answers as for a
    room that does not, on every transport."""
    alice, bob = login(server, "alice"), login(server, "bob")
    assert post_message(alice, server, PRIVATE, "members only").status_code == 200
    missing = 999
    for session in (bob, None):
        with ws_connect(server, session) as ws:
            answers = []
            for room in (PRIVATE, missing):
                ws.send(json.dumps({"type": "subscribe", "room": room, "since": 0}))
                answers.append({k: v for k, v in recv_json(ws).items() if k != "room"})
            assert answers[0] == answers[1]
            assert answers[0]["code"] == "unknown_room" and answers[0]["retryable"] is False
        for since in (0, None):
            private = poll(server, PRIVATE, since=since, session=session)
            absent = poll(server, missing, since=since, session=session)
            assert (private.status_code, private.json()) == (absent.status_code, absent.json())
            assert private.status_code == 404
    with ws_connect(server, bob) as ws:
        private = send_frame(ws, "let me in", "b1", room=PRIVATE)
        absent = send_frame(ws, "let me in", "b2", room=missing)
        assert private["code"] == absent["code"] == "unknown_room"
        assert private["message"] == absent["message"]
    private = post_message(bob, server, PRIVATE, "let me in")
    absent = post_message(bob, server, missing, "let me in")
    assert (private.status_code, private.json()) == (absent.status_code, absent.json())
    assert private.status_code == 404
    assert "Private" not in bob.get(server.url + "/chats/", timeout=10).text
    # The member reads it on both transports.
    assert [m["text"] for m in poll(server, PRIVATE, since=0, session=alice).json()["messages"]] == [
        "members only"
    ]
    with ws_connect(server, alice, query=f"room={PRIVATE}&since=0") as ws:
        assert recv_json(ws)["type"] == "subscribed"
        assert recv_json(ws)["text"] == "members only"


# --- limits -----------------------------------------------------------------------------


def test_send_rate_is_limited_per_user_without_affecting_others(server_factory):
    # A token every 20 s: however slow the machine, the 30 sends take less than one.
    server = server_factory({"CHAT_SEND_RATE": "0.05", "CHAT_SEND_BURST": "20"})
    alice, bob = login(server, "alice"), login(server, "bob")
    with ws_connect(server, alice) as ws:
        for i in range(30):
            ws.send(json.dumps({"type": "send", "room": LOBBY, "text": f"flood {i}", "nonce": f"f{i}"}))
        replies = []
        while len(replies) < 30:
            frame = recv_json(ws)
            if frame["type"] in ("ack", "error"):
                replies.append(frame)
    limited = [r for r in replies if r["type"] == "error"]
    assert len(limited) == 10, replies
    assert all(r["code"] == "rate_limited" and 0 < r["retry_after"] <= 20 for r in limited)
    refused = post_message(alice, server, LOBBY, "one more")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert post_message(bob, server, LOBBY, "bob is unaffected").status_code == 200


def test_connections_per_user_and_per_address_are_capped(server_factory):
    """Every TCP connection counts against its address (WebSockets, polls, plain HTTP);
    WebSockets and polls count against their user too. Other addresses carry on."""
    server = server_factory({"CHAT_MAX_CONNECTIONS_PER_USER": "2", "CHAT_MAX_CONNECTIONS_PER_IP": "4"})
    alice = login(server, "alice")
    alice.close()  # no kept-alive HTTP connection from here on

    def open_connections(count: int) -> bool:
        return server.stats()["connections"] == count

    with contextlib.ExitStack() as open_sockets:
        first = open_sockets.enter_context(ws_connect(server, alice))
        open_sockets.enter_context(ws_connect(server, alice))
        assert handshake_status(server, session=alice) == 429
        wait_for(lambda: open_connections(2), what="the refused handshake to be closed")
        open_sockets.enter_context(ws_connect(server))
        open_sockets.enter_context(ws_connect(server))
        assert handshake_status(server) == 429
        refused_poll = poll(server, LOBBY)
        assert refused_poll.status_code == 429
        assert refused_poll.json()["error"]["code"] == "too_many_connections"
        assert requests.get(server.url + "/chats/", timeout=10).status_code == 429
        # Another address is not affected, and neither is alice's user from there.
        elsewhere = session_from("127.0.0.2")
        assert elsewhere.get(server.url + "/chats/", timeout=10).status_code == 200
        elsewhere.close()
        with ws_connect(server, address="127.0.0.2") as other:
            other.send(json.dumps({"type": "subscribe", "room": LOBBY}))
            assert recv_json(other)["type"] == "subscribed"
        first.close()
        wait_for(lambda: open_connections(3), what="the closed WebSocket to be released")
        assert handshake_status(server, session=alice) == 101


def test_rooms_per_connection_are_capped(server_factory):
    server = server_factory({"CHAT_MAX_ROOMS_PER_CONNECTION": "2"})
    with ws_connect(server) as ws:
        for room in (1, 2):
            ws.send(json.dumps({"type": "subscribe", "room": room}))
            assert recv_json(ws)["type"] == "subscribed"
        ws.send(json.dumps({"type": "subscribe", "room": 3}))
        assert recv_json(ws)["code"] == "too_many_rooms"


def test_oversized_websocket_message_closes_with_1009_and_others_carry_on(server):
    alice = login(server, "alice")
    with ws_connect(server, alice) as bystander, ws_connect(server, alice) as offender:
        offender.send("x" * (70 * 1024))
        with pytest.raises(ConnectionClosed) as closed:
            recv_json(offender)
        assert closed.value.rcvd.code == 1009
        assert send_frame(bystander, "still fine", "ok")["type"] == "ack"


def test_invalid_utf8_closes_with_1007(server):
    with ws_connect(server) as ws:
        ws.send(b'{"type":"subscribe","room":1,"x":"\xff\xfe"}', text=True)
        with pytest.raises(ConnectionClosed) as closed:
            recv_json(ws)
        assert closed.value.rcvd.code == 1007


def test_oversized_http_body_is_refused_unread(server):
    for path in ("/poll", "/accounts/login/"):  # the chat's resource and Django alike
        response = requests.post(server.url + path, data=b"x" * (5 * 1024 * 1024), timeout=30)
        assert response.status_code == 413, path
        assert response.json()["error"]["code"] == "too_large"


def test_long_poll_timeout_is_clamped(server_factory):
    server = server_factory({"CHAT_POLL_MAX_TIMEOUT": "0.5"})
    response = poll(server, LOBBY, since=0, timeout=3600)
    assert response.status_code == 200
    assert response.elapsed.total_seconds() < 5
    assert response.json() == {"room": LOBBY, "last": 0, "messages": [], "presence": []}


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ('{"type":"send","room":1,"text":5,"nonce":"a"}', "bad_request"),
        ('{"type":"send","room":true,"text":"x"}', "bad_request"),
        ('{"type":"send","room":-3,"text":"x"}', "bad_request"),
        ('{"type":"send","room":1,"text":"x","nonce":"has space"}', "bad_request"),
        ('{"type":"subscribe","room":1,"since":-1}', "bad_request"),
        ('{"type":"subscribe","room":1,"since":1e300}', "bad_request"),
        ('{"type":"subscribe","room":1,"since":"5"}', "subscribed"),
        ('{"type":"subscribe","room":1,"since":99999999999999999999}', "bad_request"),
        ('{"type":"subscribe","room":0}', "bad_request"),
        ('{"type":null}', "bad_request"),
        ('"just a string"', "bad_request"),
        ("{", "bad_request"),
    ],
)
def test_each_bad_frame_gets_a_documented_error(server, frame, code):
    alice = login(server, "alice")
    with ws_connect(server, alice) as ws:
        ws.send(frame)
        reply = recv_json(ws)
        assert reply.get("code", reply["type"]) == code, reply
        assert send_frame(ws, "still connected", "alive")["type"] == "ack"


def test_control_characters_are_stripped(server):
    alice = login(server, "alice")
    with ws_connect(server, alice) as ws:
        ack = send_frame(ws, "\x00he\x07llo\u0085\ttab\nline\x1b[31m", "ctl")
        assert ack["type"] == "ack"
    assert poll(server, LOBBY, since=0).json()["messages"][0]["text"] == "hello\ttab\nline[31m"
    with ws_connect(server, alice) as ws:
        assert send_frame(ws, "\x00\x01\x02", "only-controls")["code"] == "bad_request"


def test_long_poll_query_errors_and_unknown_parameters(server):
    bad = [
        {"room": "1", "since": "abc"},
        {"room": "1", "since": "-5"},
        {"room": "x"},
        {"room": "1", "timeout": "soon"},
    ]
    for params in bad:
        response = requests.get(server.url + "/poll", params=params, timeout=10)
        assert response.status_code == 400, params
        assert response.json()["error"]["code"] == "bad_request"
    ok = requests.get(server.url + "/poll", params={"room": 1, "colour": "blue", "timeout": 0}, timeout=10)
    assert ok.status_code == 200


# --- JSONP ------------------------------------------------------------------------------


def test_jsonp_is_off_by_default(server):
    response = requests.get(server.url + "/poll", params={"room": 1, "callback": "cb"}, timeout=10)
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["room"] == 1


def test_jsonp_when_enabled_takes_only_identifiers_and_public_rooms(server_factory):
    server = server_factory({"CHAT_JSONP": "1"})
    alice = login(server, "alice")
    good = requests.get(server.url + "/poll", params={"room": 1, "callback": "chat.receive"}, timeout=10)
    assert good.status_code == 200
    assert good.headers["content-type"].startswith("application/javascript")
    assert good.headers["x-content-type-options"] == "nosniff"
    assert good.text.startswith("/**/chat.receive({") and good.text.endswith(");")
    for callback in ("alert(1)//", "a;b", "x y", "", "a..b", "<script>"):
        response = requests.get(server.url + "/poll", params={"room": 1, "callback": callback}, timeout=10)
        assert response.status_code == 400, callback
    # JSONP is read by script tags on any site, so it is always anonymous: even a member's
    # browser gets the answer for a room that does not exist.
    private = alice.get(server.url + "/poll", params={"room": PRIVATE, "callback": "cb"}, timeout=10)
    assert private.status_code == 404
    assert private.json()["error"]["code"] == "unknown_room"


# --- headers ----------------------------------------------------------------------------


def test_pages_and_json_carry_security_headers(server):
    page = requests.get(server.url + "/chats/1/", timeout=10)
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Referrer-Policy"] == "same-origin"
    for response in (
        poll(server, LOBBY),
        requests.get(server.url + "/poll", params={"room": "x"}, timeout=10),
    ):
        assert response.headers["Cache-Control"] == "no-store"


# --- production settings ----------------------------------------------------------------


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = base_env("sqlite:///:memory:")
    full_env.pop("DJANGO_SECRET_KEY", None)
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_refuses_to_start_without_a_secret_key_when_debug_is_off():
    result = _manage("check", DJANGO_DEBUG="0")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


HTTPS_ONLY_WARNINGS = {"security.W004", "security.W008", "security.W012", "security.W016"}


def test_check_deploy_warns_only_about_https_termination():
    key = os.urandom(40).hex()
    plain = _manage("check", "--deploy", DJANGO_DEBUG="0", DJANGO_SECRET_KEY=key)
    assert set(re.findall(r"security\.[WE]\d+", plain.stderr + plain.stdout)) == HTTPS_ONLY_WARNINGS
    behind_tls = _manage("check", "--deploy", DJANGO_DEBUG="0", DJANGO_SECRET_KEY=key, DJANGO_HTTPS="1")
    assert set(re.findall(r"security\.[WE]\d+", behind_tls.stderr)) == {"security.W005", "security.W021"}
    whole_domain = _manage(
        "check",
        "--deploy",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=key,
        DJANGO_HTTPS="1",
        DJANGO_HSTS_INCLUDE_SUBDOMAINS="1",
        DJANGO_HSTS_PRELOAD="1",
    )
    assert "no issues" in whole_domain.stdout, whole_domain.stderr
