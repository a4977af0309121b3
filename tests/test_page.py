"""The room page as a person uses it, in real Chromium against a real server: sending and
its failures, the message box, how messages are shown, history, several rooms, phones, the
keyboard, presence and typing, edits and deletions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Page, expect

from .browser import DELIVERED, PENDING, log_in, message_rows, say, stored_texts, wait_until_delivered
from .server import ROOT, base_env, login, manage, post_message
from .test_revocation import USER_IDS
from .test_room_life import admin_add, run_in_django

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LOBBY, SECOND = 1, 2
TRANSPORTS = {"websocket": "/chats/{room}/?transport=websocket", "longpoll": "/chats/long_poll/{room}/"}
ALL_TRANSPORTS = {**TRANSPORTS, "stream": "/chats/{room}/?transport=stream"}
# Where test_screenshots_for_the_docs saves its pictures when CHAT_SCREENSHOTS=1.
DOCS_SCREENSHOTS = ROOT / "docs" / "screenshots"


# --- helpers ------------------------------------------------------------------------------

# Script errors and dialogs (an alert run by a message would be one) of each page opened.
problems: dict[Page, list[str]] = {}


def open_page(
    browser,
    server,
    username: str | None,
    path: str,
    *,
    before: Callable[[Page], Any] | None = None,
    room: bool = True,
    **context_options: Any,
) -> Page:
    """A fresh browser context (UTC, US English unless told), logged in as ``username`` (or
    anonymous), on ``path`` (a room page, once connected). ``before`` runs on the page
    before it opens ``path``: to watch its requests and sockets from the start."""
    context = browser.new_context(**{"timezone_id": "UTC", "locale": "en-US", **context_options})
    page = context.new_page()
    problems[page] = []
    page.on("pageerror", lambda error: problems[page].append(f"error: {error}"))
    page.on("dialog", lambda dialog: (problems[page].append(f"dialog: {dialog.message}"), dialog.dismiss()))
    if username is not None:
        log_in(page, server, username)
    if before is not None:
        before(page)
    page.goto(server.url + path)
    if room:
        expect(page.locator("#connection-state")).to_have_text("connected", timeout=10_000)
    return page


def room_path(transport: str, room: int = LOBBY) -> str:
    return ALL_TRANSPORTS[transport].format(room=room)


def pump_until(page: Page, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "it") -> Any:
    """Wait for something that Playwright's own events fill in (routes, frames): they are
    only dispatched while the page is being talked to, so ask it small things meanwhile."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        page.wait_for_timeout(25)
    return result


def seed(database_template: Path, tmp_path: Path, rooms: dict[int, list[tuple[str, str, int]]]) -> Path:
    """A copy of the template database with messages already in rooms: (user, text, ts ms)
    each, with ids from 1; a user of "" makes a system message."""
    path = tmp_path / "seeded.sqlite3"
    shutil.copy(database_template, path)
    code = (
        "import json\n"
        "from django.contrib.auth.models import User\n"
        "from chat.models import ChatRoom, Message\n"
        f"rooms = json.loads({json.dumps(json.dumps(rooms))})\n"
        "users = {user.username: user for user in User.objects.all()}\n"
        "for room_id, rows in rooms.items():\n"
        "    room = ChatRoom.objects.get(pk=int(room_id))\n"
        "    Message.objects.bulk_create([\n"
        "        Message(room=room, seq=seq, user=users.get(user), username=user, text=text, ts=ts,\n"
        "                kind=Message.MESSAGE if user else Message.SYSTEM)\n"
        "        for seq, (user, text, ts) in enumerate(rows, 1)])\n"
        "    room.last_message_id = len(rows)\n"
        "    room.save(update_fields=['last_message_id'])\n"
    )
    manage(base_env(f"sqlite:///{path}"), "shell", "-c", code)
    return path


def room_texts(server, room: int = LOBBY) -> list[str]:
    """What the room holds now, as its history shows it (deleted messages left out)."""
    history = requests.get(f"{server.url}/chats/{room}/history", params={"limit": 100}, timeout=10)
    return [message["text"] for message in history.json()["messages"]]


def texts(page: Page) -> list[str]:
    return [row[2] for row in message_rows(page)]


def scroll_to_top(page: Page) -> None:
    page.eval_on_selector("#timeline", "timeline => { timeline.scrollTop = 0; }")


def unread(page: Page, room: int) -> str | None:
    """The unread count the sidebar shows for a room, or None."""
    badge = page.locator(f'#room-list li[data-room-id="{room}"] .room-badge-unread')
    return badge.get_attribute("data-count") if badge.count() else None


def sidebar_link(page: Page, room: int):
    return page.locator(f'#room-list a[data-room-id="{room}"]')


def watch_sends(page: Page, sent: list[dict]) -> None:
    """Collect in ``sent`` every command the page sends, as its JSON, on any transport."""
    page.on(
        "websocket", lambda socket: socket.on("framesent", lambda payload: sent.append(json.loads(payload)))
    )
    page.on(
        "request",
        lambda request: (
            sent.append({"type": "send", **request.post_data_json})
            if request.method == "POST" and request.url.endswith("/poll")
            else None
        ),
    )


# --- sending -----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_message_shows_at_once_as_pending_and_as_sent_when_acknowledged(browser, server, transport):
    held: list = []  # the send, held on its way to the server
    upstream: dict = {}

    def hold_sends(page: Page) -> None:
        if transport == "longpoll":
            page.route(
                "**/poll",
                lambda route: held.append(route) if route.request.method == "POST" else route.fallback(),
            )
            return

        def through(socket) -> None:
            upstream["socket"] = server_side = socket.connect_to_server()
            socket.on_message(
                lambda frame: (
                    held.append(frame) if json.loads(frame)["type"] == "send" else server_side.send(frame)
                )
            )

        page.route_web_socket("**/ws", through)

    page = open_page(browser, server, "alice", room_path(transport), before=hold_sends)
    say(page, "hello, pending")
    pending = page.locator(PENDING)
    expect(pending).to_have_count(1)
    expect(pending.locator(".text")).to_have_text("hello, pending")
    expect(pending.locator(".status")).to_have_text("sending…")
    expect(pending).to_have_css("opacity", "0.55")
    pump_until(page, lambda: held, what="the send to be held")
    expect(page.locator(DELIVERED)).to_have_count(0)

    if transport == "longpoll":
        held[0].continue_()
    else:
        upstream["socket"].send(held[0])
    wait_until_delivered(page, 1)
    expect(page.locator(DELIVERED).locator(".time")).to_be_visible()
    assert message_rows(page) == [("1", "alice", "hello, pending")]
    assert stored_texts(server) == ["hello, pending"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_send_refused_by_the_rate_limit_says_how_long_in_seconds_and_retry_sends_it_once(
    browser, server_factory, transport
):
    # One message per 2 s: the second one typed at once is refused for about 2 s.
    server = server_factory({"CHAT_SEND_RATE": "0.5", "CHAT_SEND_BURST": "1"})
    sent: list[dict] = []
    page = open_page(
        browser, server, "alice", room_path(transport), before=lambda page: watch_sends(page, sent)
    )
    say(page, "first")
    wait_until_delivered(page, 1)

    say(page, "second")
    waiting = page.locator(PENDING)
    too_fast = re.compile(r"^you're sending too fast — try again in [12] seconds?$")
    expect(waiting.locator(".status")).to_have_text(too_fast)
    expect(page.locator("#composer-error")).to_have_text(
        re.compile(r"sending too fast — try again in [12] seconds?")
    )
    waiting.get_by_role("button", name="Retry sending this message").click()

    wait_until_delivered(page, 2)
    assert texts(page) == ["first", "second"]
    assert stored_texts(server) == ["first", "second"]
    tries = [frame for frame in sent if frame.get("type") == "send" and frame.get("text") == "second"]
    assert len(tries) >= 2, "the message was not sent again"
    assert len({frame["nonce"] for frame in tries}) == 1, "a retry used another nonce"
    # The composer's note goes once a message has gone through.
    expect(page.locator("#composer-error")).to_be_hidden()


def test_a_message_refused_for_good_says_why_and_retry_resends_it_with_its_nonce(browser, server):
    sent: list[dict] = []
    page = open_page(
        browser, server, "alice", room_path("longpoll"), before=lambda page: watch_sends(page, sent)
    )
    failures = {"count": 1}

    def refuse_once(route) -> None:
        if route.request.method == "POST" and failures["count"]:
            failures["count"] -= 1
            body = {
                "error": {"code": "banned", "message": "you are banned from this room", "retryable": False}
            }
            route.fulfill(status=403, content_type="application/json", body=json.dumps(body))
        else:
            route.fallback()

    page.route("**/poll", refuse_once)
    say(page, "let me in")
    failed = page.locator("#messages li.message.failed")
    expect(failed.locator(".status")).to_have_text("not sent: you are banned from this room")
    expect(page.locator("#composer-error")).to_have_text(
        re.compile("not sent: you are banned from this room")
    )
    failed.get_by_role("button", name="Retry sending this message").click()
    wait_until_delivered(page, 1)
    expect(page.locator("#messages li.message.failed")).to_have_count(0)
    assert stored_texts(server) == ["let me in"]
    nonces = {frame["nonce"] for frame in sent if frame.get("text") == "let me in"}
    assert len(nonces) == 1
    say(page, "and another")
    wait_until_delivered(page, 2)
    expect(page.locator("#composer-error")).to_be_hidden()


# --- the message box ----------------------------------------------------------------------


def test_the_box_is_focused_on_load_and_shift_enter_starts_a_new_line(browser, server):
    page = open_page(browser, server, "alice", room_path("websocket"))
    box = page.locator("#message-input")
    expect(box).to_be_focused()
    assert box.evaluate("box => box.tagName") == "TEXTAREA"
    expect(page.get_by_label("Message Lobby")).to_have_count(1)

    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    expect(box).to_have_value("first line\nsecond line")
    page.keyboard.press("Enter")
    wait_until_delivered(page, 1)
    text = page.locator(f"{DELIVERED} .text")
    expect(text).to_have_text("first line\nsecond line")
    expect(text).to_have_css("white-space", "pre-wrap")
    expect(text).to_have_attribute("dir", "auto")
    assert stored_texts(server) == ["first line\nsecond line"]


def test_the_counter_shows_near_the_limit_and_a_text_over_it_cannot_be_sent(browser, server):
    page = open_page(browser, server, "alice", room_path("websocket"))
    box, counter, button = (
        page.locator("#message-input"),
        page.locator("#char-counter"),
        page.locator("#send-button"),
    )
    assert page.locator("#chat").get_attribute("data-max-length") == "4000"
    assert box.get_attribute("maxlength") is None, "the box must not cut a text silently"
    box.fill("short")
    expect(counter).to_be_hidden()
    expect(button).to_be_enabled()

    box.fill("x" * 3950)
    expect(counter).to_have_text("50 left")
    box.fill("x" * 4012)
    expect(box).to_have_value("x" * 4012)
    expect(counter).to_have_text("12 over the limit")
    expect(button).to_be_disabled()
    box.press("Enter")
    expect(page.locator("#composer-error")).to_contain_text("12 characters over the limit")
    expect(box).to_have_value("x" * 4012)
    expect(page.locator(PENDING)).to_have_count(0)

    box.press("End")
    for _ in range(12):
        box.press("Backspace")
    expect(counter).to_have_text("0 left")
    expect(button).to_be_enabled()
    box.press("Enter")
    wait_until_delivered(page, 1)
    assert stored_texts(server) == ["x" * 4000]


def test_an_empty_room_says_so_and_invites_the_first_message(browser, server):
    page = open_page(browser, server, "alice", room_path("websocket", SECOND))
    empty = page.locator("#empty-room")
    expect(empty).to_be_visible()
    expect(empty).to_contain_text("No messages yet")
    say(page, "first words")
    wait_until_delivered(page, 1)
    expect(empty).to_be_hidden()


# --- how messages are shown ---------------------------------------------------------------


def test_messages_are_grouped_by_author_with_day_separators_and_local_times(
    browser, server_factory, database_template, tmp_path
):
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    ms = lambda moment: int(moment.timestamp() * 1000)  # noqa: E731
    yesterday = midnight - timedelta(hours=14)
    today = max(midnight + timedelta(minutes=1), now - timedelta(minutes=30))
    minute = timedelta(minutes=1)
    rows = [
        ("alice", "two days ago", ms(midnight - timedelta(hours=36))),
        ("alice", "yesterday, first", ms(yesterday)),
        ("alice", "yesterday, a minute later", ms(yesterday + minute)),
        ("bob", "bob answers", ms(yesterday + 2 * minute)),
        ("", "The room will close tonight", ms(yesterday + 3 * minute)),
        ("bob", "after the notice", ms(yesterday + 4 * minute)),
        ("alice", "today, first", ms(today)),
        ("alice", "today, four minutes later", ms(today + 4 * minute)),
        ("alice", "today, six minutes after that", ms(today + 10 * minute)),
    ]
    server = server_factory(database=seed(database_template, tmp_path, {LOBBY: rows}))
    page = open_page(browser, server, "alice", room_path("longpoll"))
    wait_until_delivered(page, len(rows))

    days = page.locator("#message-list li.day").all_text_contents()
    assert len(days) == 3 and days[1:] == ["Yesterday", "Today"], days
    assert re.fullmatch(r"\w+day, \w+ \d+(, \d{4})?", days[0]), days
    shown = page.eval_on_selector_all(
        "#message-list li.message",
        "rows => rows.map(row => [row.querySelector('.text').textContent,"
        " row.classList.contains('continued')])",
    )
    assert [tuple(row) for row in shown] == [
        ("two days ago", False),
        ("yesterday, first", False),
        ("yesterday, a minute later", True),
        ("bob answers", False),
        ("The room will close tonight", False),
        ("after the notice", False),
        ("today, first", False),
        ("today, four minutes later", True),
        ("today, six minutes after that", False),
    ]
    system = page.locator("#message-list li.message.system")
    expect(system).to_have_count(1)
    expect(system.locator(".avatar")).to_have_count(0)
    expect(system).to_have_css("text-align", "center")
    # Local times: the reader's time zone, as Intl formats it.
    first = page.locator("#message-list li.message").first.locator("time")
    expect(first).to_have_text(re.compile(r"^12:00\sPM$"))
    # Own messages are set apart; everyone's texts are bidi isolates.
    mine = page.locator("#message-list li.message.mine")
    expect(mine).to_have_count(6)
    assert mine.first.evaluate("row => getComputedStyle(row).backgroundColor") != page.locator(
        "#message-list li.message:not(.mine, .system)"
    ).first.evaluate("row => getComputedStyle(row).backgroundColor")
    assert page.locator("#message-list .text:not([dir=auto])").count() == 0


def test_links_are_clickable_and_safe_and_markup_shows_as_text(browser, server):
    page = open_page(browser, server, "alice", room_path("websocket"))
    say(page, "docs at https://example.com/a_(b)?q=1, then <b>bold</b> javascript:alert(1)")
    say(page, '<a href="javascript:alert(1)">x</a> [y](javascript:alert(2)) <img src=x onerror=alert(3)>')
    wait_until_delivered(page, 2)
    links = page.locator("#message-list .text a")
    expect(links).to_have_count(1)
    expect(links).to_have_attribute("href", "https://example.com/a_(b)?q=1")
    expect(links).to_have_text("https://example.com/a_(b)?q=1")
    expect(links).to_have_attribute("rel", "noopener noreferrer nofollow ugc")
    expect(links).to_have_attribute("target", "_blank")
    assert page.locator("#message-list b, #message-list img, #message-list a[href^=javascript]").count() == 0
    expect(page.locator(f"{DELIVERED} .text").first).to_contain_text("<b>bold</b> javascript:alert(1)")
    assert problems[page] == []


# --- history --------------------------------------------------------------------------------


def test_older_history_loads_at_the_top_keeping_the_place_back_to_the_first_message(
    browser, server_factory, database_template, tmp_path
):
    start = int(time.time() * 1000) - 130 * 60_000
    rows = [("bob" if i % 3 else "alice", f"message {i}", start + i * 60_000) for i in range(1, 121)]
    server = server_factory(database=seed(database_template, tmp_path, {LOBBY: rows}))
    page = open_page(browser, server, "alice", room_path("websocket"))
    wait_until_delivered(page, 50)
    assert texts(page)[-1] == "message 120"
    edge = page.locator("#history-edge")

    for shown in (100, 120):
        # Scroll to the top, and note where the oldest message shown is as history loads
        # (its bottom: its top moves up if it joins the group of the message before it).
        reference, bottom = page.eval_on_selector(
            "#timeline",
            """timeline => {
                timeline.scrollTop = 0;
                const row = document.querySelector('#message-list li.message');
                return [row.dataset.id, row.getBoundingClientRect().bottom];
            }""",
        )
        wait_until_delivered(page, shown)
        moved = page.locator(f'#message-list li[data-id="{reference}"]').evaluate(
            f"row => row.getBoundingClientRect().bottom - {bottom}"
        )
        assert abs(moved) < 3, f"the view moved by {moved}px as older messages came in above"
    expect(edge).to_have_text("This is the beginning of Lobby.")
    ids = [int(row[0]) for row in message_rows(page)]
    assert ids == list(range(1, 121))
    scroll_to_top(page)
    expect(edge).to_have_text("This is the beginning of Lobby.")
    assert len(message_rows(page)) == 120


# --- several rooms ------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ALL_TRANSPORTS)
def test_the_sidebar_counts_unread_messages_of_rooms_not_on_screen(browser, server, transport):
    connections: list[str] = []  # what the page opened to receive: sockets, streams, polls

    def watch(page: Page) -> None:
        page.on("websocket", lambda socket: connections.append(socket.url))
        page.on(
            "request",
            lambda request: (
                connections.append(request.url)
                if request.method == "GET" and re.search(r"/(stream|poll)\?", request.url)
                else None
            ),
        )

    page = open_page(browser, server, "alice", room_path(transport), before=watch)
    expect(sidebar_link(page, SECOND)).to_be_visible()
    expect(sidebar_link(page, LOBBY)).to_have_attribute("aria-current", "page")
    bob = login(server, "bob")
    post_message(bob, server, SECOND, "psst")
    expect(page.locator('#room-list li[data-room-id="2"] .room-badge-unread')).to_have_attribute(
        "data-count", "1", timeout=10_000
    )
    post_message(bob, server, SECOND, "over here")
    expect(page.locator('#room-list li[data-room-id="2"] .room-badge-unread')).to_have_attribute(
        "data-count", "2", timeout=10_000
    )
    expect(sidebar_link(page, SECOND)).to_contain_text("2 unread messages")
    assert unread(page, LOBBY) is None
    # One connection carries every room: one socket, or requests for all rooms at once.
    if transport == "websocket":
        assert len(connections) == 1
    else:
        assert re.search(r"rooms=1[^&]*%2C2", connections[-1]), connections

    sidebar_link(page, SECOND).click()
    expect(page).to_have_url(re.compile(r"/2/"))
    expect(page.locator("#room-name")).to_have_text("Second")
    wait_until_delivered(page, 2)
    assert texts(page) == ["psst", "over here"]
    assert unread(page, SECOND) is None
    post_message(bob, server, LOBBY, "back in the lobby")
    expect(page.locator('#room-list li[data-room-id="1"] .room-badge-unread')).to_have_attribute(
        "data-count", "1", timeout=10_000
    )


@pytest.mark.parametrize("transport", ALL_TRANSPORTS)
def test_switching_rooms_keeps_everything_and_back_and_forward_work(browser, server, transport):
    page = open_page(browser, server, "alice", room_path(transport))
    page.evaluate("window.notReloaded = true")
    say(page, "in the lobby")
    wait_until_delivered(page, 1)
    page.fill("#message-input", "a draft for the lobby")

    sidebar_link(page, SECOND).click()
    expect(page.locator("#room-name")).to_have_text("Second")
    expect(page.locator("#message-input")).to_have_value("")
    expect(page.locator("#message-input")).to_be_focused()
    say(page, "in the second room")
    wait_until_delivered(page, 1)
    bob = login(server, "bob")
    for i in range(3):
        post_message(bob, server, LOBBY, f"meanwhile {i}")
    expect(page.locator('#room-list li[data-room-id="1"] .room-badge-unread')).to_have_attribute(
        "data-count", "3", timeout=10_000
    )

    page.go_back()
    expect(page.locator("#room-name")).to_have_text("Lobby")
    expect(page).to_have_url(re.compile(r"/1/"))
    wait_until_delivered(page, 4)
    assert texts(page) == ["in the lobby", "meanwhile 0", "meanwhile 1", "meanwhile 2"]
    expect(page.locator("#message-input")).to_have_value("a draft for the lobby")
    page.go_forward()
    expect(page.locator("#room-name")).to_have_text("Second")
    wait_until_delivered(page, 1)
    assert texts(page) == ["in the second room"]
    assert page.evaluate("window.notReloaded") is True
    assert page.title().startswith("Second")


def test_a_ban_from_one_room_is_shown_there_and_the_other_rooms_go_on(browser, server):
    page = open_page(browser, server, "alice", room_path("websocket"))
    expect(sidebar_link(page, SECOND)).to_be_visible()
    admin_add(
        login(server, "admin"), server, "/admin/chat/ban/add/", {"user": USER_IDS["alice"], "room": SECOND}
    )
    expect(sidebar_link(page, SECOND)).to_contain_text("unavailable", timeout=10_000)
    say(page, "still here")
    wait_until_delivered(page, 1)

    sidebar_link(page, SECOND).click()
    expect(page.locator("#error")).to_have_text("you are banned from this room")
    expect(page.locator("#connection-state")).to_have_text("stopped")
    expect(page.locator("#message-input")).to_be_disabled()
    sidebar_link(page, LOBBY).click()
    expect(page.locator("#connection-state")).to_have_text("connected")
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#message-input")).to_be_enabled()


def test_a_connection_ended_by_a_moderator_says_why_and_comes_back_only_when_asked(
    browser, server_factory, shared_database, redis_server
):
    server = server_factory(
        {"CHAT_REDIS_URL": redis_server.url, "CHAT_WORKERS": "1"}, database=shared_database
    )
    sockets: list[str] = []
    page = open_page(
        browser,
        server,
        "alice",
        room_path("websocket"),
        before=lambda p: p.on("websocket", lambda socket: sockets.append(socket.url)),
    )
    run_in_django(
        server,
        f"from twisted_chat import live; live.disconnect_user({USER_IDS['alice']}, 'take a break')",
        redis_server.url,
    )
    expect(page.locator("#connection-state")).to_have_text("disconnected", timeout=10_000)
    expect(page.locator("#error")).to_have_text("take a break")
    post_message(login(server, "bob"), server, LOBBY, "said while alice was away")
    reconnect = page.get_by_role("button", name="Reconnect")
    reconnect.click()
    expect(page.locator("#connection-state")).to_have_text("connected", timeout=10_000)
    expect(page.locator(DELIVERED).last).to_contain_text("said while alice was away", timeout=10_000)
    expect(reconnect).to_be_hidden()
    assert len(sockets) == 2, "the page reconnected by itself"


# --- phones, the keyboard -------------------------------------------------------------------------


def test_on_a_phone_the_rooms_are_a_drawer_and_the_box_stays_in_view(browser, server):
    page = open_page(browser, server, "alice", room_path("websocket"), viewport={"width": 360, "height": 740})
    nav, toggle = page.locator("#room-nav"), page.locator("#rooms-toggle")
    expect(toggle).to_be_visible()
    expect(nav).not_to_be_in_viewport()
    expect(page.locator("#people")).to_be_hidden()
    box = page.locator("#message-input")
    expect(box).to_be_in_viewport()
    expect(page.locator("#send-button")).to_be_in_viewport()

    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(nav).to_be_in_viewport()
    sidebar_link(page, SECOND).click()
    expect(page.locator("#room-name")).to_have_text("Second")
    expect(nav).not_to_be_in_viewport()

    page.locator("#people-toggle").click()
    expect(page.locator("#people")).to_be_visible()
    expect(page.locator("#people-list")).to_contain_text("alice")
    page.keyboard.press("Escape")
    expect(page.locator("#people")).to_be_hidden()

    bob = login(server, "bob")
    for i in range(30):
        post_message(bob, server, SECOND, f"a long conversation, line {i}")
    wait_until_delivered(page, 30)
    expect(box).to_be_in_viewport()
    assert page.evaluate("document.scrollingElement.scrollHeight <= innerHeight + 1"), (
        "the page itself scrolls"
    )
    # Pinned to the newest message.
    expect(page.locator(DELIVERED).last).to_be_in_viewport()


def test_everything_works_from_the_keyboard(browser, server):
    page = open_page(browser, server, "alice", room_path("websocket"))
    # The skip link is the first stop of Tab in the page, shown when it has focus.
    first_stop = page.evaluate(
        """() => [...document.querySelectorAll('a[href], button, textarea, [tabindex]')]
            .find(el => el.checkVisibility({ visibilityProperty: true }) && el.tabIndex >= 0).className"""
    )
    assert first_stop == "skip-link"
    skip = page.locator(".skip-link")
    skip.focus()
    expect(skip).to_be_in_viewport()
    page.keyboard.press("Enter")
    expect(page.locator("#message-input")).to_be_focused()
    page.keyboard.type("typed without a mouse")
    page.keyboard.press("Enter")
    wait_until_delivered(page, 1)

    # Back from the box to the link to the second room, and open it.
    second = sidebar_link(page, SECOND)
    for _ in range(40):
        if second.evaluate("link => link === document.activeElement"):
            break
        page.keyboard.press("Shift+Tab")
    expect(second).to_be_focused()
    outline = second.evaluate("link => getComputedStyle(link).outlineStyle")
    assert outline != "none", "no visible focus"
    page.keyboard.press("Enter")
    expect(page.locator("#room-name")).to_have_text("Second")
    expect(page.locator("#message-input")).to_be_focused()
    page.keyboard.type("and in the second room")
    page.keyboard.press("Enter")
    wait_until_delivered(page, 1)
    assert stored_texts(server, SECOND) == ["and in the second room"]

    # Edit the last message: Up in the empty box, then Enter saves.
    page.keyboard.press("ArrowUp")
    editor = page.locator("#message-list .edit-form textarea")
    expect(editor).to_be_focused()
    page.keyboard.press("End")
    page.keyboard.type(", edited")
    page.keyboard.press("Enter")
    expect(page.locator(f"{DELIVERED} .text")).to_have_text("and in the second room, edited", timeout=10_000)
    expect(page.locator(f"{DELIVERED} .edited")).to_be_visible()


def test_buttons_and_regions_have_names(browser, server):
    page = open_page(browser, server, "alice", room_path("websocket"))
    say(page, "hello")
    wait_until_delivered(page, 1)
    log = page.locator("#messages")
    expect(log).to_have_attribute("role", "log")
    expect(log).to_have_attribute("aria-live", "polite")
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll('button, a[href], textarea')]
            .filter(el => !(el.getAttribute('aria-label') || el.textContent.trim() || el.labels?.length))
            .map(el => el.outerHTML)"""
    )
    assert unnamed == []
    expect(page.get_by_role("button", name="Edit message")).to_have_count(1)
    expect(page.get_by_role("button", name="Delete message")).to_have_count(1)


def test_the_connection_state_is_always_shown(browser, server):
    page = open_page(browser, server, "alice", room_path("websocket"))
    state = page.locator("#connection-state")
    expect(page.locator("#transport")).to_have_text("WebSocket")
    page.context.set_offline(True)
    expect(state).to_have_text("offline")
    page.context.set_offline(False)
    expect(state).to_have_text("connected", timeout=20_000)


# --- scrolling ------------------------------------------------------------------------------------


def test_new_messages_below_are_announced_by_a_button_and_the_bottom_stays_pinned(browser, server):
    bob = login(server, "bob")
    for i in range(40):
        post_message(bob, server, LOBBY, f"earlier {i}")
    page = open_page(browser, server, "alice", room_path("websocket"))
    wait_until_delivered(page, 40)
    post_message(bob, server, LOBBY, "while at the bottom")
    expect(page.locator(DELIVERED).last).to_have_text(re.compile("while at the bottom"))
    expect(page.locator(DELIVERED).last).to_be_in_viewport()
    jump = page.locator("#new-messages")
    expect(jump).to_be_hidden()

    page.eval_on_selector("#timeline", "timeline => { timeline.scrollTop = 200; }")
    post_message(bob, server, LOBBY, "while scrolled up")
    expect(jump).to_have_text("1 new message")
    expect(page.locator(DELIVERED).last).not_to_be_in_viewport()
    jump.click()
    expect(page.locator(DELIVERED).last).to_be_in_viewport()
    expect(jump).to_be_hidden()


# --- presence and typing ----------------------------------------------------------------------------


def keep_typing(typists: list[Page], line, text: str | re.Pattern[str], timeout: float = 30.0) -> None:
    """Each typist goes on typing, as people do, until ``line`` says ``text``. A notice
    shows for 6 s after the last one: on a loaded machine an earlier typist's would lapse
    before a later one's arrives if they all stopped."""
    deadline = time.monotonic() + timeout
    while True:
        for page in typists:
            page.keyboard.type(".")
        try:
            expect(line).to_have_text(text, timeout=1_000)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


@pytest.mark.parametrize("transport", ALL_TRANSPORTS)
def test_who_is_online_and_who_is_typing(browser, server, transport):
    alice = open_page(browser, server, "alice", room_path(transport))
    bob = open_page(browser, server, "bob", room_path("websocket"))
    carol = open_page(browser, server, "carol", room_path("longpoll"))
    admin = open_page(browser, server, "admin", room_path("stream"))
    expect(alice.locator("#people-list li")).to_have_count(4, timeout=10_000)
    expect(alice.locator("#people-list")).to_contain_text("alice (you)")
    expect(alice.locator("#people-count")).to_have_text("4")

    typing = alice.locator("#typing")
    bob.keyboard.type("I am writing")
    expect(typing).to_have_text("bob is typing…", timeout=10_000)
    carol.keyboard.type("me too")
    keep_typing([bob, carol], typing, re.compile("^(bob and carol|carol and bob) are typing…$"))
    admin.keyboard.type("and me")
    keep_typing([bob, carol, admin], typing, "several people are typing…")
    bob.keyboard.press("Enter")
    admin.keyboard.press("Enter")
    keep_typing([carol], typing, "carol is typing…")

    bob.context.close()
    expect(alice.locator("#people-list li")).to_have_count(3, timeout=10_000)
    expect(alice.locator("#people-list")).not_to_contain_text("bob")


# --- edits and deletions ------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ALL_TRANSPORTS)
def test_authors_edit_and_delete_their_messages_and_everyone_sees_it(browser, server, transport):
    alice = open_page(browser, server, "alice", room_path(transport))
    bob = open_page(browser, server, "bob", room_path("websocket"))
    say(alice, "a typo hree")
    say(alice, "to be deleted")
    for page in (alice, bob):
        wait_until_delivered(page, 2)
    first = alice.locator(DELIVERED).first
    expect(bob.locator(DELIVERED).first.get_by_role("button", name="Edit message")).to_have_count(0)
    expect(bob.locator(DELIVERED).first.get_by_role("button", name="Delete message")).to_have_count(0)

    first.hover()
    first.get_by_role("button", name="Edit message").click()
    editor = first.locator("textarea")
    expect(editor).to_be_focused()
    editor.fill("a typo here")
    editor.press("Escape")
    expect(first.locator(".text")).to_have_text("a typo hree")
    expect(first.get_by_role("button", name="Edit message")).to_be_focused()
    first.get_by_role("button", name="Edit message").click()
    first.locator("textarea").fill("a typo here")
    first.locator("textarea").press("Enter")
    for page in (alice, bob):
        row = page.locator(DELIVERED).first
        expect(row.locator(".text")).to_have_text("a typo here", timeout=10_000)
        expect(row.locator(".edited")).to_have_text("(edited)")
        expect(row.locator(".edited")).to_have_attribute("title", re.compile(r"^Edited \w+day, "))

    second = alice.locator(DELIVERED).nth(1)
    second.hover()
    second.get_by_role("button", name="Delete message").click()
    dialog = alice.locator("#delete-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator("blockquote")).to_have_text("to be deleted")
    dialog.get_by_role("button", name="Cancel").click()
    expect(alice.locator(DELIVERED)).to_have_count(2)
    second.get_by_role("button", name="Delete message").click()
    dialog.get_by_role("button", name="Delete").click()
    for page in (alice, bob):
        expect(page.locator(DELIVERED)).to_have_count(1, timeout=10_000)
        assert texts(page) == ["a typo here"]


def test_staff_may_delete_anyones_message(browser, server):
    post_message(login(server, "bob"), server, LOBBY, "spam")
    admin = open_page(browser, server, "admin", room_path("websocket"))
    assert admin.locator("#chat").get_attribute("data-is-staff") == "1"
    wait_until_delivered(admin, 1)
    row = admin.locator(DELIVERED).first
    expect(row.get_by_role("button", name="Edit message")).to_have_count(0)
    row.hover()
    row.get_by_role("button", name="Delete message").click()
    admin.locator("#delete-dialog").get_by_role("button", name="Delete").click()
    expect(admin.locator(DELIVERED)).to_have_count(0, timeout=10_000)
    assert room_texts(server) == []


# --- screenshots for the docs ------------------------------------------------------------------------


def test_screenshots_for_the_docs(browser, server_factory, database_template, tmp_path):
    """The room page on the WebSocket and on long-poll, on a desktop and a phone, and the
    room list, with a conversation between two people at a fixed time of day.

    ``CHAT_SCREENSHOTS=1 pytest tests/test_page.py -k screenshots`` saves them in
    docs/screenshots/; other runs take them all the same, in a temporary directory.
    """
    folder = DOCS_SCREENSHOTS if os.environ.get("CHAT_SCREENSHOTS") == "1" else tmp_path / "screenshots"
    now = datetime(2025, 3, 14, 15, 30, tzinfo=UTC)
    at = lambda minutes: int((now - timedelta(minutes=minutes)).timestamp() * 1000)  # noqa: E731
    conversation = [
        ("bob", "Morning! Did the deploy go out?", at(26 * 60)),
        ("alice", "It did, around midnight. No alarms so far.", at(25 * 60)),
        ("", "The Lobby is read-only tonight from 22:00 to 22:30 for maintenance.", at(24 * 60)),
        ("bob", "Nice. I'm looking at the latency graphs now", at(52)),
        ("bob", "p99 is down to 12 ms!\nThe write-up is at https://example.com/notes/latency", at(51)),
        ("alice", "That's the group commit paying off.", at(12)),
        ("alice", "Let's keep an eye on it through the afternoon peak.", at(11)),
        ("bob", "Will do. I'll post the numbers here at 5.", at(3)),
    ]
    seeded = seed(database_template, tmp_path, {LOBBY: conversation, SECOND: [("bob", "Hi!", at(90))]})
    server = server_factory(database=seeded)
    folder.mkdir(parents=True, exist_ok=True)
    bob = open_page(browser, server, "bob", room_path("websocket"))
    sizes = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}

    def fixed_clock(page: Page) -> None:
        page.clock.set_fixed_time(now)

    for transport, path in (("websocket", "/chats/1/"), ("longpoll", "/chats/long_poll/1/")):
        for size, viewport in sizes.items():
            page = open_page(
                browser, server, "alice", path, before=fixed_clock, viewport=viewport, device_scale_factor=1
            )
            wait_until_delivered(page, len(conversation))
            expect(page.locator("#people-list li")).to_have_count(2, timeout=10_000)
            expect(page.locator("#history-edge")).to_have_text("This is the beginning of Lobby.")
            page.locator("#message-input").blur()
            page.screenshot(path=folder / f"room-{transport}-{size}.png")
            page.context.close()
    page = open_page(
        browser, server, "alice", "/chats/", before=fixed_clock, room=False, viewport=sizes["desktop"]
    )
    page.screenshot(path=folder / "room-list.png")
    bob.context.close()
    assert sorted(path.name for path in folder.glob("*.png")) == [
        "room-list.png",
        "room-longpoll-desktop.png",
        "room-longpoll-phone.png",
        "room-websocket-desktop.png",
        "room-websocket-phone.png",
    ]
