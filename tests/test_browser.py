"""Real Chromium (Debian's, driven by Playwright) on both room pages at once.

Run in their own processes' event loop only: Playwright's sync API refuses a running
asyncio loop, and nothing here runs a reactor in-process.
"""

from __future__ import annotations

import shutil

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from .server import PASSWORD, login, post_message

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]
XSS_PAYLOADS = ["<img src=x onerror=alert(1)>", "</script><script>alert(1)</script>"]


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is required: apt-get install chromium (make test does it)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_room(browser, server, username: str, path: str) -> tuple[Page, list[str]]:
    """A fresh browser context that logs in through the real form, then opens ``path``."""
    context = browser.new_context()
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(server.url + "/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/chats/")
    page.goto(server.url + path)
    expect(page.locator("#connection-state")).to_have_text("connected", timeout=10_000)
    return page, dialogs


def say(page: Page, text: str) -> None:
    page.fill("#message-input", text)
    page.press("#message-input", "Enter")
    expect(page.locator("#message-input")).to_have_value("", timeout=10_000)


def message_rows(page: Page) -> list[tuple[str, str, str]]:
    rows = page.eval_on_selector_all(
        "#messages li.message",
        "items => items.map(li => [li.dataset.id, li.querySelector('.author').textContent,"
        " li.querySelector('.text').textContent])",
    )
    return [tuple(row) for row in rows]


def test_websocket_page_and_long_poll_page_chat_both_ways(browser, server):
    alice_page, alice_dialogs = open_room(browser, server, "alice", "/chats/1/")
    bob_page, bob_dialogs = open_room(browser, server, "bob", "/chats/long_poll/1/")

    say(alice_page, "hello from the WebSocket page")
    expect(bob_page.locator("#messages li.message .text").last).to_have_text("hello from the WebSocket page")
    say(bob_page, "hello from the long-poll page")
    expect(alice_page.locator("#messages li.message .text").last).to_have_text(
        "hello from the long-poll page"
    )

    for payload in XSS_PAYLOADS:
        say(alice_page, payload)
    for page in (alice_page, bob_page):
        expect(page.locator("#messages li.message")).to_have_count(4)
        expect(page.locator("#messages li.message .text").last).to_have_text(XSS_PAYLOADS[-1])
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
    expect(poll_page.locator("#messages li.message")).to_have_count(1)

    server.stop()
    expect(ws_page.locator("#connection-state")).to_have_text("reconnecting", timeout=10_000)
    server.start()
    carol = login(server, "carol")
    for i in range(3):
        assert post_message(carol, server, 1, f"missed {i}").status_code == 200

    for page in (ws_page, poll_page):
        expect(page.locator("#connection-state")).to_have_text("connected", timeout=20_000)
        expect(page.locator("#messages li.message")).to_have_count(4, timeout=20_000)
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
    expect(page.locator("#messages li.message")).to_have_count(3, timeout=10_000)
    assert page.locator("#send-form").count() == 0
    expect(page.locator(".login-hint")).to_be_visible()
