"""Presence, typing, editing and deleting, and moderation, end to end over real twistd.

These pin the protocol of docs/protocol.md ("Presence", "Typing", "Editing and deleting",
"Moderation") on the WebSocket and the long-poll alike.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import subprocess
import sys
import threading

import requests

from .server import (
    ROOT,
    ChatServerProcess,
    base_env,
    login,
    poll,
    post_command,
    post_message,
    recv_json,
    recv_until,
    wait_for,
    ws_connect,
)
from .test_revocation import PROMPTLY, USER_IDS, admin_change, closed_with

LOBBY = 1


def subscribe(ws, room: int = LOBBY, since: int | None = None) -> list[dict]:
    """Subscribe; the frames up to and including who is present."""
    ws.send(json.dumps({"type": "subscribe", "room": room, "since": since}))
    return recv_until(ws, lambda f: f.get("type") == "presence" and "users" in f, everything=True)


def presence_changes(ws, name: str, timeout: float) -> list[dict]:
    """Presence frames that name ``name``, read until ``timeout`` passes with nothing more."""
    found = []
    while True:
        try:
            frame = recv_json(ws, timeout, everything=True)
        except TimeoutError:
            return found
        if frame.get("type") == "presence" and (
            name in frame.get("joined", ()) or name in frame.get("left", ())
        ):
            found.append(frame)


def ws_write(ws, **fields) -> dict:
    """Send a command that is answered (ack or error, by nonce)."""
    ws.send(json.dumps(fields))
    return recv_until(ws, lambda f: f.get("nonce") == fields["nonce"] and f["type"] in ("ack", "error"))[-1]


# --- presence ---------------------------------------------------------------------------


def test_presence_is_users_not_connections_on_every_transport(server_factory):
    server = server_factory({"CHAT_PRESENCE_GRACE": "3"})
    alice, bob = login(server, "alice"), login(server, "bob")
    with contextlib.ExitStack() as sockets, ws_connect(server, bob) as watcher:
        assert subscribe(watcher)[-1] == {"type": "presence", "room": LOBBY, "users": ["bob"]}
        first = sockets.enter_context(ws_connect(server, alice))
        subscribe(first)
        joined = recv_until(watcher, lambda f: f.get("type") == "presence", everything=True)[-1]
        assert joined == {"type": "presence", "room": LOBBY, "joined": ["alice"], "left": []}
        # A second tab, and a long-poll: still one alice.
        with ws_connect(server, alice) as second:
            assert subscribe(second)[-1]["users"] == ["alice", "bob"]
            answer = poll(server, LOBBY, since=0, session=alice).json()
            assert answer["presence"] == ["alice", "bob"]
            first.close()
        # Both sockets are gone, but the poller stays for the grace period, then leaves once.
        changes = presence_changes(watcher, "alice", timeout=3 + PROMPTLY)
        assert changes == [{"type": "presence", "room": LOBBY, "joined": [], "left": ["alice"]}]
        assert poll(server, LOBBY, since=0, session=bob).json()["presence"] == ["bob"]


def test_a_long_poll_answer_carries_presence_and_is_woken_by_a_join(server):
    alice, bob = login(server, "alice"), login(server, "bob")
    first = poll(server, LOBBY, session=bob).json()
    assert first["presence"] == ["bob"]
    result: dict = {}

    def park() -> None:
        result["answer"] = poll(server, LOBBY, since=first["last"], timeout=20, session=bob).json()

    parked = threading.Thread(target=park)
    parked.start()
    wait_for(lambda: server.stats()["parked_polls"] == 1, PROMPTLY, what="the poll to park")
    with ws_connect(server, alice) as ws:
        subscribe(ws)
        parked.join(PROMPTLY)
        assert result["answer"]["messages"] == [
            {"type": "presence", "room": LOBBY, "joined": ["alice"], "left": []}
        ]
        assert result["answer"]["presence"] == ["alice", "bob"]


def test_a_dead_process_users_leave_within_the_grace_period(server_factory, shared_database, redis_server):
    env = {"CHAT_REDIS_URL": redis_server.url, "CHAT_WORKERS": "1", "CHAT_PRESENCE_GRACE": "4"}
    a = server_factory(env, database=shared_database)
    b = server_factory(env, database=shared_database)
    alice, bob = login(a, "alice"), login(b, "bob")
    with contextlib.ExitStack() as sockets, ws_connect(b, bob) as watcher:
        subscribe(watcher)
        on_a = sockets.enter_context(ws_connect(a, alice))
        subscribe(on_a)
        joined = recv_until(watcher, lambda f: "alice" in f.get("joined", ()), everything=True)[-1]
        assert joined["joined"] == ["alice"]
        a.kill()
        left = recv_until(
            watcher, lambda f: "alice" in f.get("left", ()), timeout=4 + PROMPTLY, everything=True
        )
        assert left[-1] == {"type": "presence", "room": LOBBY, "joined": [], "left": ["alice"]}


# --- typing -----------------------------------------------------------------------------


def test_typing_reaches_the_others_not_the_typist_and_is_rate_limited(server):
    alice, bob = login(server, "alice"), login(server, "bob")
    with ws_connect(server, alice) as typist, ws_connect(server, bob) as reader:
        subscribe(typist)
        subscribe(reader)
        typist.send(json.dumps({"type": "typing", "room": LOBBY}))
        typist.send(json.dumps({"type": "typing", "room": LOBBY}))  # within 2 s: dropped
        frame = recv_until(reader, lambda f: f.get("type") == "typing", everything=True)[-1]
        assert frame == {"type": "typing", "room": LOBBY, "user": "alice"}
        # Bob types over the long-poll; alice hears it, and neither heard their own.
        assert post_command(bob, server, type="typing", room=LOBBY).json() == {"room": LOBBY}
        assert recv_until(typist, lambda f: f.get("type") == "typing", everything=True)[-1]["user"] == "bob"
        typist.send(json.dumps({"type": "send", "room": LOBBY, "text": "done typing"}))
        said = lambda f: f.get("text") == "done typing"  # noqa: E731
        frames = recv_until(reader, said, everything=True)
        assert [f for f in frames if f.get("type") == "typing"] == [], "the second typing was dropped"
        own = recv_until(typist, said, everything=True)
        assert [f for f in own if f.get("type") == "typing"] == []
    # Anonymous readers cannot type.
    assert post_command(requests.Session(), server, type="typing", room=LOBBY).status_code == 403


# --- editing and deleting -----------------------------------------------------------------


def test_authors_edit_and_delete_their_own_messages_within_the_window(server_factory):
    server = server_factory({"CHAT_EDIT_WINDOW": "2"})
    alice, bob, admin = login(server, "alice"), login(server, "bob"), login(server, "admin")
    with ws_connect(server, alice) as author, ws_connect(server, bob) as reader:
        subscribe(author)
        subscribe(reader)
        sent = ws_write(author, type="send", room=LOBBY, text="teh typo", nonce="s1")
        # Bob may not touch it.
        refused = post_command(
            bob, server, type="edit", room=LOBBY, id=sent["id"], text="mine now", nonce="b1"
        )
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "not_allowed"
        edited = ws_write(author, type="edit", room=LOBBY, id=sent["id"], text="the typo", nonce="e1")
        assert edited == {
            "type": "ack",
            "room": LOBBY,
            "id": sent["id"],
            "seq": sent["id"] + 1,
            "nonce": "e1",
        }
        event = recv_until(reader, lambda f: f.get("type") == "edited")[-1]
        assert event["id"] == sent["id"] and event["text"] == "the typo" and event["seq"] == sent["id"] + 1
        history = poll(server, LOBBY).json()["messages"]
        assert history[-1]["text"] == "the typo" and history[-1]["edited"] == event["edited"]
        # The same edit again (a retry with its nonce) changes nothing more.
        again = ws_write(author, type="edit", room=LOBBY, id=sent["id"], text="the typo", nonce="e1")
        assert again["seq"] == edited["seq"]
        gone = post_command(alice, server, type="delete", room=LOBBY, id=sent["id"], nonce="d1")
        assert gone.json() == {"room": LOBBY, "id": sent["id"], "seq": sent["id"] + 2, "nonce": "d1"}
        assert recv_until(reader, lambda f: f.get("type") == "deleted")[-1]["id"] == sent["id"]
        missing = ws_write(author, type="edit", room=LOBBY, id=sent["id"], text="back?", nonce="e2")
        assert missing["code"] == "no_such_message"
        # Past the window the author may not; staff may still delete anyone's message.
        late = ws_write(author, type="send", room=LOBBY, text="too late to fix", nonce="s2")
        nonces = itertools.count()

        def refused_late() -> bool:
            answer = ws_write(
                author, type="edit", room=LOBBY, id=late["id"], text="x", nonce=f"e{next(nonces)}"
            )
            return answer.get("code") == "not_allowed"

        wait_for(refused_late, 10, 0.5, "the edit window to close")
        assert post_command(admin, server, type="delete", room=LOBBY, id=late["id"]).status_code == 200
        assert recv_until(reader, lambda f: f.get("type") == "deleted" and f["id"] == late["id"])
    assert [m["id"] for m in poll(server, LOBBY).json()["messages"]] == []


def test_a_client_that_resumes_learns_of_edits_and_deletions_made_while_away(server):
    alice = login(server, "alice")
    ids = [post_message(alice, server, LOBBY, text).json()["id"] for text in ("one", "two", "three")]
    left_at = poll(server, LOBBY).json()["last"]
    assert post_command(alice, server, type="edit", room=LOBBY, id=ids[0], text="ONE").status_code == 200
    assert post_command(alice, server, type="delete", room=LOBBY, id=ids[1]).status_code == 200
    expected = [("edited", ids[0]), ("deleted", ids[1])]
    # Long-poll: the next poll from where it was.
    answer = poll(server, LOBBY, since=left_at).json()
    assert [(m["type"], m["id"]) for m in answer["messages"]] == expected
    assert answer["last"] == left_at + 2
    # WebSocket: a reconnect from where it was.
    with ws_connect(server) as ws:
        frames = subscribe(ws, since=left_at)
        frames += recv_until(ws, lambda f: f.get("type") == "deleted")
        assert [(f["type"], f["id"]) for f in frames if f["type"] in ("edited", "deleted")] == expected


# --- moderation -------------------------------------------------------------------------


def admin_add(admin: requests.Session, server: ChatServerProcess, path: str, fields: dict) -> None:
    url = server.url + path
    admin.get(url, timeout=10).raise_for_status()
    data = {**fields, "csrfmiddlewaretoken": admin.cookies["csrftoken"], "_save": "Save"}
    response = admin.post(url, data=data, headers={"Referer": url}, allow_redirects=False, timeout=10)
    assert response.status_code == 302, f"the admin refused:\n{response.text[-3000:]}"


def test_a_ban_from_the_admin_ends_open_connections_and_refuses_new_ones(server):
    alice, admin = login(server, "alice"), login(server, "admin")
    with ws_connect(server, alice) as ws:
        subscribe(ws)
        result: dict = {}
        last = poll(server, LOBBY, session=alice).json()["last"]
        parked = threading.Thread(
            target=lambda: result.update(answer=poll(server, LOBBY, since=last, timeout=20, session=alice))
        )
        parked.start()
        wait_for(lambda: server.stats()["parked_polls"] == 1, PROMPTLY, what="the poll to park")
        admin_add(admin, server, "/admin/chat/ban/add/", {"user": USER_IDS["alice"], "room": LOBBY})
        ended = recv_until(ws, lambda f: f.get("type") == "unsubscribed", PROMPTLY)[-1]
        assert ended == {
            "type": "unsubscribed",
            "room": LOBBY,
            "code": "banned",
            "message": "you are banned from this room",
        }
        parked.join(PROMPTLY)
        assert result["answer"].status_code == 403 and result["answer"].json()["error"]["code"] == "banned"
        ws.send(json.dumps({"type": "subscribe", "room": LOBBY}))
        assert recv_json(ws)["code"] == "banned"
        refused = post_message(alice, server, LOBBY, "let me in")
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "banned"
        # Other rooms are still open to her.
        ws.send(json.dumps({"type": "subscribe", "room": 2}))
        assert recv_json(ws)["type"] == "subscribed"


def test_closing_a_room_in_the_admin_disconnects_its_clients_with_the_reason(server):
    bob, admin = login(server, "bob"), login(server, "admin")
    with ws_connect(server, bob) as ws:
        subscribe(ws, room=2)
        admin_change(admin, server, "/admin/chat/chatroom/2/change/", {"is_closed": "on"})
        ended = recv_until(ws, lambda f: f.get("type") == "unsubscribed", PROMPTLY)[-1]
        assert ended["code"] == "room_closed" and ended["room"] == 2
    assert poll(server, 2).status_code == 410


def run_in_django(server: ChatServerProcess, code: str, redis_url: str) -> None:
    """Run Django code in another process (as a management command or a task would), in a
    plain thread, against the server's database and Redis."""
    env = base_env(server.database_url)
    env["CHAT_REDIS_URL"] = redis_url
    script = (
        f"import threading\ndef work():\n    {code}\nt = threading.Thread(target=work)\nt.start()\nt.join()\n"
    )
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script], cwd=ROOT, env=env, check=True, timeout=60
    )


def test_django_code_in_any_process_posts_into_rooms_and_disconnects_users(
    server_factory, shared_database, redis_server
):
    server = server_factory(
        {"CHAT_REDIS_URL": redis_server.url, "CHAT_WORKERS": "1"}, database=shared_database
    )
    alice = login(server, "alice")
    with ws_connect(server, alice) as ws:
        subscribe(ws)
        run_in_django(
            server,
            "from twisted_chat import live; live.post_system_message(1, 'Maintenance at 5')",
            redis_server.url,
        )
        notice = recv_until(ws, lambda f: f.get("type") == "message", PROMPTLY)[-1]
        assert notice["system"] is True and notice["user"] == "" and notice["text"] == "Maintenance at 5"
        run_in_django(
            server,
            f"from twisted_chat import live; live.disconnect_user({USER_IDS['alice']}, 'take a break')",
            redis_server.url,
        )
        error = recv_until(ws, lambda f: f.get("type") == "error", PROMPTLY)[-1]
        assert error["code"] == "disconnected" and error["message"] == "take a break"
        assert closed_with(ws) == 4003


def test_admin_message_times_are_dates_and_records_are_not_listed(server):
    alice, admin = login(server, "alice"), login(server, "admin")
    sent = post_message(alice, server, LOBBY, "an ordinary message").json()
    post_command(alice, server, type="edit", room=LOBBY, id=sent["id"], text="an edited message")
    page = admin.get(server.url + "/admin/chat/message/", timeout=10).text
    assert len(re.findall(r"/admin/chat/message/\d+/change/", page)) == 1


# --- several rooms over one poll ------------------------------------------------------------


def test_one_poll_follows_several_rooms(server):
    alice, bob = login(server, "alice"), login(server, "bob")
    in_lobby = post_message(alice, server, LOBBY, "lobby news").json()["id"]
    first = bob.get(server.url + "/poll", params={"rooms": f"{LOBBY},2", "timeout": 0}, timeout=10).json()
    by_room = {answer["room"]: answer for answer in first["rooms"]}
    assert [m["id"] for m in by_room[LOBBY]["messages"] if m["type"] == "message"] == [in_lobby]
    assert by_room[2]["messages"] == [] and by_room[2]["presence"] == ["bob"]
    cursors = f"{LOBBY}:{by_room[LOBBY]['last']},2:{by_room[2]['last']}"
    result: dict = {}
    parked = threading.Thread(
        target=lambda: result.update(
            answer=bob.get(server.url + "/poll", params={"rooms": cursors, "timeout": 20}, timeout=30).json()
        )
    )
    parked.start()
    wait_for(lambda: server.stats()["parked_polls"] == 1, PROMPTLY, what="the poll to park")
    in_second = post_message(alice, server, 2, "news in the second room").json()["id"]
    parked.join(PROMPTLY)
    news = {answer["room"]: answer for answer in result["answer"]["rooms"]}
    assert [m["id"] for m in news[2]["messages"]] == [in_second] and news[2]["last"] == in_second
    assert news[LOBBY]["messages"] == [] and news[LOBBY]["last"] == by_room[LOBBY]["last"]
    # A room that cannot be read is an error in its own entry; the others are answered.
    mixed = bob.get(server.url + "/poll", params={"rooms": f"{LOBBY},3", "timeout": 0}, timeout=10).json()
    errors = {answer["room"]: answer.get("error", {}).get("code") for answer in mixed["rooms"]}
    assert errors == {LOBBY: None, 3: "unknown_room"}
    too_many = bob.get(server.url + "/poll", params={"rooms": ",".join(map(str, range(1, 60)))}, timeout=10)
    assert too_many.status_code == 429 and too_many.json()["error"]["code"] == "too_many_rooms"
