"""End-to-end: real twistd, real WebSocket and HTTP clients, one room, both transports."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import threading
import time
import uuid

import pytest
import requests

from .server import (
    ChatServerProcess,
    login,
    poll,
    post_message,
    recv_json,
    recv_until,
    wait_for,
    ws_connect,
)

LOBBY = 1


def subscribe(ws, room: int = LOBBY, since: int | None = None) -> dict:
    frame = {"type": "subscribe", "room": room}
    if since is not None:
        frame["since"] = since
    ws.send(json.dumps(frame))
    reply = recv_json(ws)
    assert reply["type"] == "subscribed" and reply["room"] == room, reply
    return reply


def send(ws, text: str, room: int = LOBBY, nonce: str | None = None) -> dict:
    nonce = nonce or uuid.uuid4().hex
    ws.send(json.dumps({"type": "send", "room": room, "text": text, "nonce": nonce}))
    frames = recv_until(ws, lambda f: f.get("type") in ("ack", "error") and f.get("nonce") == nonce)
    return frames[-1]


def test_websocket_send_is_acked_and_delivered_to_others(server):
    alice = login(server, "alice")
    with ws_connect(server, alice) as sender, ws_connect(server) as reader:
        subscribe(sender)
        subscribe(reader)
        ack = send(sender, "hello <b>world</b>")
        assert ack == {"type": "ack", "room": LOBBY, "id": ack["id"], "nonce": ack["nonce"]}
        message = recv_json(reader)
        assert message["type"] == "message"
        assert message["id"] == ack["id"] == 1
        assert message["user"] == "alice"
        assert message["text"] == "hello <b>world</b>"
        assert abs(message["ts"] - time.time() * 1000) < 10_000


def test_compression_is_declined_so_every_client_gets_the_same_frame_bytes(server):
    with ws_connect(server) as ws:
        assert "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        subscribe(ws)


def test_author_is_the_session_user_not_a_name_the_client_sends(server):
    alice = login(server, "alice")
    with ws_connect(server, alice) as ws:
        subscribe(ws)
        ws.send(json.dumps({"type": "send", "room": LOBBY, "text": "hi", "user": "mallory", "nonce": "n1"}))
        message = recv_until(ws, lambda f: f.get("type") == "message")[-1]
        assert message["user"] == "alice"
    reply = post_message(alice, server, LOBBY, "via poll")
    assert reply.status_code == 200
    latest = poll(server, LOBBY).json()["messages"]
    assert [m["user"] for m in latest] == ["alice", "alice"]


def test_anonymous_can_read_but_not_post(server):
    with ws_connect(server) as ws:
        subscribe(ws)
        error = send(ws, "hi")
        assert error["type"] == "error" and error["code"] == "not_authenticated"
    anonymous = requests.Session()
    anonymous.get(server.url + f"/chats/long_poll/{LOBBY}/", timeout=10)  # sets the CSRF cookie
    response = post_message(anonymous, server, LOBBY, "hi")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "not_authenticated"
    assert poll(server, LOBBY).json()["messages"] == []


def test_long_poll_post_needs_the_csrf_token(server):
    alice = login(server, "alice")
    response = alice.post(server.url + "/poll", json={"room": LOBBY, "text": "hi"}, timeout=10)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "csrf_failed"
    form = alice.post(
        server.url + "/poll",
        data={"room": LOBBY, "new_message": "form post", "csrfmiddlewaretoken": alice.cookies["csrftoken"]},
        timeout=10,
    )
    assert form.status_code == 200, form.text
    assert form.json() == {"room": LOBBY, "id": 1}


def test_parked_poll_wakes_when_a_websocket_message_arrives(server):
    alice = login(server, "alice")
    results: list[requests.Response] = []
    poller = threading.Thread(target=lambda: results.append(poll(server, LOBBY, since=0, timeout=20)))
    poller.start()
    # Wait until the poll is really parked before sending, so the wake-up path is tested.
    wait_for(lambda: _parked(server) >= 1, what="the poll to park")
    started = time.monotonic()
    with ws_connect(server, alice) as ws:
        ack = send(ws, "wake up")
    poller.join(15)
    assert results, "the parked poll never returned"
    body = results[0].json()
    assert body["last"] == ack["id"]
    assert [m["text"] for m in body["messages"]] == ["wake up"]
    assert time.monotonic() - started < 5


def _parked(server) -> int:
    return int(server.stats().get("parked_polls", 0))


def test_poll_without_since_returns_latest_fifty_and_times_out_empty(server):
    alice = login(server, "alice")
    with ws_connect(server, alice) as ws:
        for i in range(60):
            assert send(ws, f"m{i}")["type"] == "ack"
    latest = poll(server, LOBBY).json()
    assert [m["id"] for m in latest["messages"]] == list(range(11, 61))
    assert latest["last"] == 60
    started = time.monotonic()
    empty = poll(server, LOBBY, since=60, timeout=0.5).json()
    assert empty == {"room": LOBBY, "last": 60, "messages": [], "presence": []}
    assert time.monotonic() - started >= 0.4
    alias = requests.get(server.url + "/poll", params={"room": LOBBY, "lastupdate": 58}, timeout=10).json()
    assert [m["id"] for m in alias["messages"]] == [59, 60]


def test_websocket_subscribe_without_since_sends_the_latest_fifty(server):
    alice = login(server, "alice")
    for i in range(55):
        assert post_message(alice, server, LOBBY, f"m{i}").status_code == 200
    with ws_connect(server, query=f"room={LOBBY}") as ws:
        assert recv_json(ws) == {"type": "subscribed", "room": LOBBY, "last": 55}
        ids = [recv_json(ws)["id"] for _ in range(50)]
        assert ids == list(range(6, 56))


def test_both_transports_see_all_concurrent_messages_in_one_order(server):
    """Senders on both transports at once; every reader gets every message, same order."""
    users = ["alice", "bob", "carol"]
    sessions = {name: login(server, name) for name in users}
    per_ws_sender, per_poll_sender = 60, 30
    expected = per_ws_sender * len(users) + per_poll_sender * 2

    readers = contextlib.ExitStack()
    ws_readers = [readers.enter_context(ws_connect(server)) for _ in range(3)]
    for reader in ws_readers:
        subscribe(reader, since=0)
    poll_results: dict[int, list[dict]] = {0: [], 1: []}
    stop_polling = threading.Event()

    def long_poller(index: int) -> None:
        since = 0
        deadline = time.monotonic() + 60
        while len(poll_results[index]) < expected and time.monotonic() < deadline:
            body = poll(server, LOBBY, since=since, timeout=5).json()
            poll_results[index].extend(body["messages"])
            since = body["last"]
            if stop_polling.is_set():
                break

    def ws_sender(name: str) -> None:
        with ws_connect(server, sessions[name]) as ws:
            nonces = [f"{name}-{i}" for i in range(per_ws_sender)]
            for i, nonce in enumerate(nonces):
                ws.send(json.dumps({"type": "send", "room": LOBBY, "text": f"{name} ws {i}", "nonce": nonce}))
            acked = set()
            deadline = time.monotonic() + 60
            while len(acked) < per_ws_sender and time.monotonic() < deadline:
                frame = recv_json(ws, 30)
                if frame["type"] == "ack":
                    acked.add(frame["nonce"])
                assert frame["type"] != "error", frame
            assert len(acked) == per_ws_sender

    def poll_sender(name: str) -> None:
        for i in range(per_poll_sender):
            response = post_message(sessions[name], server, LOBBY, f"{name} poll {i}", nonce=f"{name}-p{i}")
            assert response.status_code == 200, response.text

    threads = [threading.Thread(target=long_poller, args=(i,)) for i in poll_results]
    threads += [threading.Thread(target=ws_sender, args=(name,)) for name in users]
    threads += [threading.Thread(target=poll_sender, args=(name,)) for name in users[:2]]
    for thread in threads:
        thread.start()
    ws_streams = []
    for reader in ws_readers:
        stream = []
        while len(stream) < expected:
            frame = recv_json(reader, 30)
            if frame["type"] == "message":
                stream.append(frame)
        ws_streams.append(stream)
    readers.close()
    for thread in threads:
        thread.join(90)
    stop_polling.set()

    reference = [m["id"] for m in ws_streams[0]]
    assert reference == list(range(1, expected + 1)), "gaps, duplicates or reordering"
    for stream in ws_streams[1:]:
        assert [(m["id"], m["text"]) for m in stream] == [(m["id"], m["text"]) for m in ws_streams[0]]
    for index, stream in poll_results.items():
        assert [m["id"] for m in stream] == reference, f"long-poll reader {index} differs"
        assert [m["text"] for m in stream] == [m["text"] for m in ws_streams[0]]
    # Each sender's own messages keep the order they were sent in.
    for name in users:
        mine = [m["text"] for m in ws_streams[0] if m["text"].startswith(f"{name} ws ")]
        assert mine == [f"{name} ws {i}" for i in range(per_ws_sender)]


def test_resume_with_since_on_both_transports(server):
    alice = login(server, "alice")
    for i in range(10):
        post_message(alice, server, LOBBY, f"m{i}")
    with ws_connect(server, query=f"room={LOBBY}&since=7") as ws:
        assert recv_json(ws)["last"] == 10
        assert [recv_json(ws)["id"] for _ in range(3)] == [8, 9, 10]
        post_message(alice, server, LOBBY, "live")
        assert recv_json(ws)["id"] == 11
    body = poll(server, LOBBY, since=4).json()
    assert [m["id"] for m in body["messages"]] == [5, 6, 7, 8, 9, 10, 11]
    assert body["last"] == 11


def test_nonce_retry_gets_the_original_id_and_no_duplicate(server):
    alice = login(server, "alice")
    with ws_connect(server, alice) as ws:
        subscribe(ws)
        first = send(ws, "once", nonce="retry-me")
        second = send(ws, "once", nonce="retry-me")
        assert first["id"] == second["id"]
    again = post_message(alice, server, LOBBY, "once", nonce="retry-me")
    assert again.json()["id"] == first["id"]
    # Another user may use the same nonce: it is theirs.
    bob = login(server, "bob")
    assert post_message(bob, server, LOBBY, "bob's", nonce="retry-me").json()["id"] == first["id"] + 1
    assert [m["text"] for m in poll(server, LOBBY, since=0).json()["messages"]] == ["once", "bob's"]


def test_history_survives_restart_and_ids_continue(server):
    alice = login(server, "alice")
    acked = [post_message(alice, server, LOBBY, f"before {i}", nonce=f"b{i}").json()["id"] for i in range(5)]
    server.restart()
    assert [m["id"] for m in poll(server, LOBBY, since=0).json()["messages"]] == acked
    alice = login(server, "alice")
    assert post_message(alice, server, LOBBY, "after").json()["id"] == acked[-1] + 1
    # A nonce sent before the restart is still known after it.
    assert post_message(alice, server, LOBBY, "before 0", nonce="b0").json()["id"] == acked[0]


@pytest.mark.slow
def test_sigkill_right_after_acks_loses_nothing(server):
    alice = login(server, "alice")
    acked: list[int] = []
    with ws_connect(server, alice) as ws:
        for i in range(200):
            ws.send(json.dumps({"type": "send", "room": LOBBY, "text": f"k{i}", "nonce": f"k{i}"}))
        while len(acked) < 200:
            frame = recv_json(ws, 30)
            if frame["type"] == "ack":
                acked.append(frame["id"])
        server.kill()
    server.start()
    stored = []
    since = 0
    while True:
        body = poll(server, LOBBY, since=since).json()
        if not body["messages"]:
            break
        stored.extend(m["id"] for m in body["messages"])
        since = body["last"]
    assert set(acked) <= set(stored)
    assert stored == sorted(stored)


def test_unknown_room_and_bad_input_get_clear_errors_and_the_connection_lives(server):
    alice = login(server, "alice")
    with ws_connect(server, alice) as ws:
        for frame, code in [
            ("not json", "bad_request"),
            ("[1,2]", "bad_request"),
            ('{"type":"dance"}', "bad_request"),
            ('{"type":"subscribe","room":"x"}', "bad_request"),
            ('{"type":"subscribe","room":999}', "unknown_room"),
            ('{"type":"send","room":1,"text":"   "}', "bad_request"),
            ('{"type":"send","room":1,"text":"' + "x" * 4001 + '"}', "too_large"),
        ]:
            ws.send(frame)
            reply = recv_json(ws)
            assert reply["type"] == "error" and reply["code"] == code, (frame[:40], reply)
        ws.send(b"\x00binary")
        assert recv_json(ws)["code"] == "bad_request"
        assert send(ws, "still here")["type"] == "ack"
    assert poll(server, 999).status_code == 404
    assert requests.get(server.url + "/poll", params={"room": "abc"}, timeout=5).status_code == 400
    assert requests.get(server.url + "/poll", params={"room": 1, "since": "-1"}, timeout=5).status_code == 400
    assert requests.put(server.url + "/poll", timeout=5).status_code == 405
    too_long = post_message(alice, server, LOBBY, "x" * 4001)
    assert too_long.status_code == 413
    assert too_long.json()["error"]["code"] == "too_large"


def test_admin_delete_removes_message_from_open_clients_and_history(server):
    alice = login(server, "alice")
    admin = login(server, "admin")
    with ws_connect(server, alice) as ws:
        subscribe(ws)
        keep = send(ws, "keep me")
        doomed = send(ws, "delete me")
        changelist = admin.get(server.url + "/admin/chat/message/", params={"q": "delete me"}, timeout=10)
        assert changelist.status_code == 200
        pk = _admin_pk(changelist.text)
        response = admin.post(
            server.url + f"/admin/chat/message/{pk}/delete/",
            data={"post": "yes", "csrfmiddlewaretoken": admin.cookies["csrftoken"]},
            headers={"Referer": server.url + "/admin/"},
            timeout=10,
        )
        assert response.status_code in (200, 302)
        event = recv_until(ws, lambda f: f.get("type") == "deleted")[-1]
        assert event == {"type": "deleted", "room": LOBBY, "id": doomed["id"], "seq": doomed["id"] + 1}
    # The deletion has its place in the log: a client that resumes learns of it.
    expected = [("message", keep["id"]), ("deleted", doomed["id"])]
    history = poll(server, LOBBY, since=0).json()["messages"]
    assert [(m["type"], m["id"]) for m in history] == expected
    server.restart()
    history = poll(server, LOBBY, since=0).json()["messages"]
    assert [(m["type"], m["id"]) for m in history] == expected
    assert [m["id"] for m in poll(server, LOBBY).json()["messages"]] == [keep["id"]]


def _admin_pk(html: str) -> int:
    match = re.search(r"/admin/chat/message/(\d+)/change/", html)
    assert match, "message not listed in the admin"
    return int(match.group(1))


def test_pages_and_static_files_are_served_by_the_same_process(server):
    assert requests.get(server.url + "/", allow_redirects=False, timeout=10).headers["Location"] == "/chats/"
    assert requests.get(server.url + "/chats/", timeout=10).status_code == 200
    assert requests.get(server.url + f"/chats/{LOBBY}/", timeout=10).status_code == 200
    assert requests.get(server.url + f"/chats/long_poll/{LOBBY}/", timeout=10).status_code == 200
    script = requests.get(server.url + "/static/chat/chat-client.js", timeout=10)
    assert script.status_code == 200 and "export class ChatClient" in script.text
    assert requests.get(server.url + "/static/chat/", timeout=10).status_code == 404
    assert requests.get(server.url + "/static/../manage.py", timeout=10).status_code == 404


def test_several_workers_without_redis_are_refused_at_start(database_template, tmp_path):
    database = tmp_path / "db.sqlite3"
    shutil.copy(database_template, database)
    server = ChatServerProcess(f"sqlite:///{database}", tmp_path / "server.log", {"CHAT_WORKERS": "2"})
    with pytest.raises(RuntimeError, match="the server exited") as refused:
        server.start(timeout=30)
    assert "CHAT_WORKERS=2 needs CHAT_REDIS_URL" in str(refused.value)
