"""Real Chromium (Debian's, driven by Playwright) on both room pages at once.

Run in their own processes' event loop only: Playwright's sync API refuses a running
asyncio loop, and nothing here runs a reactor in-process.
"""

from __future__ import annotations

import itertools
import json
import re
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, Request, expect

from .browser import (
    DELIVERED,
    PENDING,
    log_in,
    message_rows,
    open_room,
    say,
    stored_texts,
    wait_until_delivered,
)
from .server import base_env, login, manage, post_message

pytestmark = [pytest.mark.browser, pytest.mark.slow]

XSS_PAYLOADS = ["<img src=x onerror=alert(1)>", "</script><script>alert(1)</script>"]
LOBBY = 1
WS_ROOM, POLL_ROOM = "/chats/1/", "/chats/long_poll/1/"


def test_websocket_page_and_long_poll_page_chat_both_ways(browser, server):
    alice_page, alice_dialogs = open_room(browser, server, "alice", "/chats/1/")
    bob_page, bob_dialogs = open_room(browser, server, "bob", "/chats/long_poll/1/")

    say(alice_page, "hello from the WebSocket page")
    expect(bob_page.locator(f"{DELIVERED} .text").last).to_have_text("hello from the WebSocket page")
    say(bob_page, "hello from the long-poll page")
    expect(alice_page.locator(f"{DELIVERED} .text").last).to_have_text("hello from the long-poll page")

    for payload in XSS_PAYLOADS:
        say(alice_page, payload)
    for page in (alice_page, bob_page):
        expect(page.locator(DELIVERED)).to_have_count(4)
        expect(page.locator(PENDING)).to_have_count(0)
        expect(page.locator(f"{DELIVERED} .text").last).to_have_text(XSS_PAYLOADS[-1])
        assert page.locator("#messages img").count() == 0
        assert page.locator("#messages script").count() == 0

    expected = [
        ("1", "alice", "hello from the WebSocket page"),
        ("2", "bob", "hello from the long-poll page"),
        ("3", "alice", XSS_PAYLOADS[0]),
        ("4", "alice", XSS_PAYLOADS[1]),
    ]
    assert message_rows(alice_page) == expected
    assert message_rows(bob_page) == expected
    assert alice_dialogs == [] and bob_dialogs == [], "a payload ran as script"
    # The page carries a CSP that forbids inline script.
    response = alice_page.request.get(server.url + "/chats/1/")
    assert "script-src 'self'" in response.headers["content-security-policy"]


def test_pages_reconnect_after_a_restart_and_receive_what_they_missed(browser, server):
    ws_page, _ = open_room(browser, server, "alice", "/chats/1/")
    poll_page, _ = open_room(browser, server, "bob", "/chats/long_poll/1/")
    say(ws_page, "before restart")
    expect(poll_page.locator(DELIVERED)).to_have_count(1)

    server.stop()
    expect(ws_page.locator("#connection-state")).to_have_text("reconnecting", timeout=10_000)
    server.start()
    carol = login(server, "carol")
    for i in range(3):
        assert post_message(carol, server, 1, f"missed {i}").status_code == 200

    for page in (ws_page, poll_page):
        expect(page.locator("#connection-state")).to_have_text("connected", timeout=20_000)
        expect(page.locator(DELIVERED)).to_have_count(4, timeout=20_000)
        assert [row[2] for row in message_rows(page)] == [
            "before restart",
            "missed 0",
            "missed 1",
            "missed 2",
        ]


def test_history_shows_on_open_and_anonymous_readers_cannot_post(browser, server):
    alice = login(server, "alice")
    for i in range(3):
        post_message(alice, server, 1, f"history {i}")
    page = browser.new_context().new_page()
    page.goto(server.url + "/chats/long_poll/1/")
    expect(page.locator(DELIVERED)).to_have_count(3, timeout=10_000)
    expect(page.locator("#send-form")).to_be_hidden()
    expect(page.locator(".login-hint")).to_be_visible()


# --- the outbox: order, one POST per message, retries -------------------------------------


def type_quickly(page: Page, texts: list[str]) -> None:
    """Type and send each text without waiting for the server."""
    for text in texts:
        page.fill("#message-input", text)
        page.press("#message-input", "Enter")


def test_messages_typed_fast_on_the_websocket_page_are_stored_once_in_typed_order(browser, server_factory):
    server = server_factory({"CHAT_SEND_RATE": "5", "CHAT_SEND_BURST": "5"})
    page, _ = open_room(browser, server, "alice", WS_ROOM)
    refusals: list[dict] = []
    page.on(
        "websocket",
        lambda ws: ws.on(
            "framereceived",
            lambda payload: (
                refusals.append(frame) if (frame := json.loads(payload))["type"] == "error" else None
            ),
        ),
    )
    page.reload()  # so that the listener sees the page's socket
    expect(page.locator("#connection-state")).to_have_text("connected", timeout=10_000)
    texts = [f"fast {i}" for i in range(30)]

    type_quickly(page, texts)
    wait_until_delivered(page, 30)

    assert stored_texts(server) == texts
    assert [row[2] for row in message_rows(page)] == texts
    assert {frame["code"] for frame in refusals} <= {"rate_limited"}
    assert len(refusals) <= 15, f"{len(refusals)} refusals: the client retried too eagerly"


def test_messages_typed_fast_on_the_long_poll_page_go_one_post_at_a_time_in_order(browser, server_factory):
    server = server_factory({"CHAT_SEND_RATE": "5", "CHAT_SEND_BURST": "5"})
    page, _ = open_room(browser, server, "alice", POLL_ROOM)
    posts: list[Request] = []  # every POST /poll, answered or failed
    for event in ("requestfinished", "requestfailed"):
        page.on(event, lambda request: posts.append(request) if request.method == "POST" else None)
    texts = [f"fast {i}" for i in range(30)]

    type_quickly(page, texts)
    wait_until_delivered(page, 30)

    assert stored_texts(server) == texts
    assert {urlsplit(request.url).path for request in posts} == {"/poll"}
    posts.sort(key=lambda request: request.timing["startTime"])
    statuses = [response.status if (response := request.response()) else None for request in posts]
    assert statuses.count(200) == 30 and set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) <= 15, f"{statuses.count(429)} refusals: the client retried too eagerly"
    # One POST at a time: each starts after the previous was answered, and after a 429 not
    # before the retry_after it gave.
    for request, following in itertools.pairwise(posts):
        answered_at = request.timing["startTime"] + request.timing["responseEnd"]
        response = request.response()
        wait_ms = response.json()["error"]["retry_after"] * 1000 if response.status == 429 else 0
        assert following.timing["startTime"] >= answered_at + wait_ms - 1, (request.post_data, wait_ms)


def test_each_message_is_posted_once_from_the_long_poll_page(browser, server):
    page, _ = open_room(browser, server, "alice", POLL_ROOM)
    posts: list[Request] = []
    page.on("request", lambda request: posts.append(request) if request.method == "POST" else None)
    texts = [f"once {i}" for i in range(5)]

    type_quickly(page, texts)
    wait_until_delivered(page, 5)
    # One more poll answer, from someone else: answers must not cause sends.
    post_message(login(server, "bob"), server, LOBBY, "from bob")
    wait_until_delivered(page, 6)

    # Typing notices go by POST too when typing outlasts their settle time (a slow machine).
    sends = [body for request in posts if (body := request.post_data_json).get("type", "send") == "send"]
    assert [body["text"] for body in sends] == texts
    assert stored_texts(server) == [*texts, "from bob"]


# --- messages typed while the server is away -----------------------------------------------


@pytest.mark.parametrize("path", [WS_ROOM, POLL_ROOM])
def test_a_message_typed_while_the_server_is_down_shows_as_pending_then_is_delivered_once(
    browser, server, path
):
    page, _ = open_room(browser, server, "alice", path)
    say(page, "before")
    wait_until_delivered(page, 1)

    server.stop()
    say(page, "while down")
    pending = page.locator(PENDING)
    expect(pending).to_have_count(1, timeout=2_000)
    expect(pending.locator(".text")).to_have_text("while down")
    expect(pending.locator(".status")).to_have_text(re.compile("waiting|sending"))
    expect(pending).to_have_css("opacity", "0.55")

    server.start()
    wait_until_delivered(page, 2, timeout=20_000)
    assert [row[1:] for row in message_rows(page)] == [("alice", "before"), ("alice", "while down")]
    assert stored_texts(server) == ["before", "while down"]


def test_a_pending_message_survives_closing_the_page_and_is_sent_by_the_next_one(browser, server):
    page, _ = open_room(browser, server, "alice", WS_ROOM)
    context = page.context
    server.stop()
    say(page, "typed, then the tab was closed")
    expect(page.locator(PENDING)).to_have_count(1, timeout=2_000)
    page.close()

    server.start()
    page = context.new_page()
    page.goto(server.url + WS_ROOM)
    wait_until_delivered(page, 1, timeout=20_000)
    assert message_rows(page)[0][1:] == ("alice", "typed, then the tab was closed")
    assert stored_texts(server) == ["typed, then the tab was closed"]


def test_pending_messages_are_kept_per_user_and_never_sent_as_someone_else(browser, server):
    page, _ = open_room(browser, server, "alice", WS_ROOM)
    context = page.context
    server.stop()
    say(page, "alice's, unsent")
    expect(page.locator(PENDING)).to_have_count(1, timeout=2_000)
    page.close()

    server.start()
    page = context.new_page()
    log_in(page, server, "bob")  # the same browser, now bob's
    page.goto(server.url + WS_ROOM)
    expect(page.locator("#connection-state")).to_have_text("connected", timeout=10_000)
    expect(page.locator(PENDING)).to_have_count(0)
    say(page, "bob's")
    wait_until_delivered(page, 1)
    assert stored_texts(server) == ["bob's"]

    log_in(page, server, "alice")
    page.goto(server.url + WS_ROOM)
    wait_until_delivered(page, 2, timeout=20_000)
    assert [row[1:] for row in message_rows(page)] == [("bob", "bob's"), ("alice", "alice's, unsent")]
    assert stored_texts(server) == ["bob's", "alice's, unsent"]


@pytest.mark.parametrize("path", [WS_ROOM, POLL_ROOM])
def test_a_message_refused_for_good_is_shown_as_failed_and_the_next_one_goes_on(browser, server, path):
    page, _ = open_room(browser, server, "alice", path)
    # As if the limit had changed since the page was rendered.
    page.eval_on_selector("#chat", "chat => { chat.dataset.maxLength = '5000'; }")
    say(page, "x" * 4001)
    say(page, "after the refused one")

    wait_until_delivered(page, 1)
    failed = page.locator("#messages li.message.failed")
    expect(failed).to_have_count(1)
    expect(failed.locator(".status")).to_have_text(re.compile("^not sent: .*4000 characters"))
    assert message_rows(page)[0][1:] == ("alice", "after the refused one")
    assert stored_texts(server) == ["after the refused one"]
    assert "xxxx" not in page.evaluate("JSON.stringify(localStorage)")


SECOND_ROOM = ["/chats/2/", "/chats/long_poll/2/"]


def expect_room_gone(page: Page) -> None:
    """The page says why and stops: no reconnecting, nothing more to type."""
    expect(page.locator("#connection-state")).to_have_text("stopped", timeout=20_000)
    expect(page.locator("#error")).to_have_text("no such room")
    expect(page.locator("#message-input")).to_be_disabled()


@pytest.mark.parametrize("path", SECOND_ROOM)
def test_a_room_deleted_while_open_is_reported_and_not_retried(browser, server, path):
    page, _ = open_room(browser, server, "alice", path)
    admin = login(server, "admin")
    url = f"{server.url}/admin/chat/chatroom/2/delete/"
    admin.get(url, timeout=10).raise_for_status()
    deleted = admin.post(
        url,
        data={"post": "yes", "csrfmiddlewaretoken": admin.cookies["csrftoken"]},
        headers={"Referer": url},
        allow_redirects=False,
        timeout=10,
    )
    assert deleted.status_code == 302
    expect_room_gone(page)


@pytest.mark.parametrize("path", SECOND_ROOM)
def test_a_room_deleted_while_the_page_was_away_is_reported_not_retried(browser, server, path):
    page, _ = open_room(browser, server, "alice", path)
    server.stop()
    manage(
        base_env(server.database_url),
        "shell",
        "-c",
        "from chat.models import ChatRoom\nChatRoom.objects.get(pk=2).delete()",
    )
    server.start()
    expect_room_gone(page)


# --- the page's user changes under it ---------------------------------------------------------


def test_logout_and_login_in_another_tab_change_the_open_page_without_a_reload(browser, server_factory):
    # One send per 5 s: the second message is still waiting when alice logs out.
    server = server_factory({"CHAT_SEND_RATE": "0.2", "CHAT_SEND_BURST": "1"})
    page, _ = open_room(browser, server, "alice", WS_ROOM)
    sent_frames: list[dict] = []
    page.on(
        "websocket", lambda ws: ws.on("framesent", lambda payload: sent_frames.append(json.loads(payload)))
    )
    page.evaluate("window.notReloaded = true")
    other_tab = page.context.new_page()
    other_tab.goto(server.url + "/chats/")

    say(page, "first")
    say(page, "second, held back by the rate limit")
    expect(page.locator(DELIVERED)).to_have_count(1)
    expect(page.locator(PENDING)).to_have_count(1)
    other_tab.click("header.site button[type=submit]")  # Log out

    expect(page.locator("#send-form")).to_be_hidden(timeout=10_000)
    expect(page.locator(".login-hint")).to_be_visible()
    expect(page.locator("#site-signed-out")).to_be_visible()
    expect(page.locator("#site-signed-in")).to_be_hidden()
    expect(page.locator(PENDING)).to_have_count(0)
    # Kept for alice, not sent as anonymous: let a whole round trip pass, then look.
    sends_when_logged_out = len([f for f in sent_frames if f["type"] == "send"])
    post_message(login(server, "bob"), server, LOBBY, "from bob")
    expect(page.locator(f"{DELIVERED} .text").last).to_have_text("from bob", timeout=10_000)
    assert len([f for f in sent_frames if f["type"] == "send"]) == sends_when_logged_out
    assert "second, held back" in page.evaluate("JSON.stringify(localStorage)")

    log_in(other_tab, server, "alice")
    expect(page.locator("#send-form")).to_be_visible(timeout=10_000)
    expect(page.locator(".login-hint")).to_be_hidden()
    say(page, "third")
    wait_until_delivered(page, 4, timeout=20_000)
    assert [row[1:] for row in message_rows(page)] == [
        ("alice", "first"),
        ("bob", "from bob"),
        ("alice", "second, held back by the rate limit"),
        ("alice", "third"),
    ]
    assert page.locator(f"{DELIVERED}.mine").count() == 3
    assert stored_texts(server) == ["first", "from bob", "second, held back by the rate limit", "third"]
    assert page.evaluate("window.notReloaded") is True
    # The header follows too, and its logout form carries the CSRF token of the new login.
    expect(page.locator("#site-signed-in .whoami")).to_have_text("alice")
    page.click("#logout-form button")
    page.wait_for_url("**/chats/")
    assert page.evaluate("fetch('/accounts/session/').then(r => r.json())") == {"user": None}
