"""The one room page through hostile networks, in Chromium: a proxy in front of a real
server refuses WebSocket upgrades, or also holds every response until it is complete.

The page must pick the event stream, then long-poll, chat through them, and move back up
to the WebSocket by itself once the network lets it; at every switch nothing is lost or
shown twice.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from playwright.sync_api import Page, expect

from .browser import DELIVERED, message_rows, open_room, say
from .hostile_proxy import HostileProxy
from .server import login, poll, post_message, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LOBBY = 1
# Falling back takes the page's proof delay (4 s); moving back up waits for its first
# probe (5 to 10 s after settling), longer if a probe failed while the network was hostile.
FALL_BACK_MS = 15_000
MOVE_UP_S = 60


@pytest.fixture
def proxy(server) -> Iterator[HostileProxy]:
    with HostileProxy(server.port).start() as proxy:
        yield proxy


class Chatter:
    """Someone else in the room, posting steadily from outside the browser, so that
    messages keep arriving while the page switches transports."""

    def __init__(self, server, username: str):
        self.server = server
        self.session = login(server, username)
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Chatter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            response = post_message(self.session, self.server, LOBBY, f"steady {self.sent}")
            assert response.status_code == 200, response.text
            self.sent += 1


def transport(page: Page) -> str:
    return page.locator("#transport").get_attribute("data-transport") or ""


def expect_transport(page: Page, name: str, timeout_ms: float) -> None:
    expect(page.locator("#transport")).to_have_attribute("data-transport", name, timeout=timeout_ms)
    expect(page.locator("#connection-state")).to_have_text("connected", timeout=timeout_ms)


def expect_everything_once(page: Page, server) -> None:
    """The page shows exactly what the server stored up to a moment after now, in order:
    nothing missing, nothing twice."""
    wanted = poll(server, LOBBY, since=0).json()["messages"]
    newest = wanted[-1]["id"]

    def shown() -> list[tuple[str, str, str]] | None:
        rows = message_rows(page)
        return rows if rows and int(rows[-1][0]) >= newest else None

    rows = wait_for(shown, timeout=20, what=f"the page to show message {newest}")
    messages = poll(server, LOBBY, since=0).json()["messages"]
    stored = {m["id"]: (str(m["id"]), m["user"], m["text"]) for m in messages}
    shown_ids = [int(row[0]) for row in rows]
    assert len(set(shown_ids)) == len(rows), "a message is shown twice"
    assert rows == [stored[i] for i in shown_ids], "a row is not what the server stored"
    assert shown_ids == sorted(i for i in stored if i <= shown_ids[-1]), "a message is missing"


def test_through_a_proxy_that_refuses_websockets_the_page_streams_then_returns_to_websocket(
    browser, server, proxy
):
    proxy.set_mode("no_upgrade")
    page, dialogs = open_room(browser, SimpleNamespace(url=proxy.url), "alice", "/chats/1/")
    expect_transport(page, "stream", FALL_BACK_MS)
    assert proxy.refused_upgrades >= 1, "the page never tried the WebSocket"
    expect(page.locator("#transport")).to_have_text("event stream")

    with Chatter(server, "bob") as bob:
        say(page, "typed on the stream")
        wait_for(lambda: bob.sent >= 5, what="bob's messages")
        expect(page.locator(f"{DELIVERED} .text").filter(has_text="typed on the stream")).to_have_count(1)
        expect_everything_once(page, server)

        # The network heals: the page goes back to the WebSocket by itself.
        proxy.set_mode("pass")
        expect_transport(page, "websocket", MOVE_UP_S * 1000)
        say(page, "typed on the websocket")
        expect_everything_once(page, server)
    assert dialogs == []


def test_through_a_buffering_proxy_the_page_polls_then_climbs_back_to_websocket(browser, server, proxy):
    proxy.set_mode("buffer")
    page, _ = open_room(browser, SimpleNamespace(url=proxy.url), "alice", "/chats/1/")
    expect_transport(page, "longpoll", FALL_BACK_MS + 10_000)
    assert proxy.requests_seen("/stream") >= 1, "the page never tried the stream"

    with Chatter(server, "bob") as bob:
        say(page, "typed while polling")
        wait_for(lambda: bob.sent >= 5, what="bob's messages")
        expect_everything_once(page, server)

        # Only WebSockets are refused now: the stream works again, and the page takes it.
        proxy.set_mode("no_upgrade")
        expect_transport(page, "stream", MOVE_UP_S * 1000)
        expect_everything_once(page, server)

        proxy.set_mode("pass")
        expect_transport(page, "websocket", MOVE_UP_S * 1000)
        say(page, "typed on the websocket")
        expect_everything_once(page, server)
    texts = [row[2] for row in message_rows(page)]
    assert texts.count("typed while polling") == 1 and texts.count("typed on the websocket") == 1


@pytest.mark.parametrize("forced", ["stream", "websocket"])
def test_a_forced_transport_is_the_only_one_used(browser, server, forced):
    page, _ = open_room(browser, server, "alice", f"/chats/1/?transport={forced}")
    expect_transport(page, forced, 10_000)
    say(page, f"over the {forced}")
    post_message(login(server, "bob"), server, LOBBY, "from bob")
    expect_everything_once(page, server)
    assert transport(page) == forced
