"""Driving Debian's Chromium with Playwright: launch flags and the steps every page test takes."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from .server import PASSWORD, poll

# Headless, and no traffic to anything but loopback (the resolver rule stops Chromium's
# background look-ups of outside hosts).
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
# Messages the server has stored, and messages typed here that it has not stored yet.
DELIVERED = "#messages li.message:not(.pending, .failed)"
PENDING = "#messages li.message.pending"


def log_in(page: Page, server, username: str) -> None:
    """Log in through the real form, in the page's browser context."""
    page.goto(server.url + "/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    # Not the header's "Log out" button, there too when someone is logged in already.
    page.click("main button[type=submit]")
    page.wait_for_url("**/chats/")


def open_room(browser, server, username: str, path: str) -> tuple[Page, list[str]]:
    """A fresh browser context that logs in through the real form, then opens ``path``."""
    context = browser.new_context()
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    log_in(page, server, username)
    page.goto(server.url + path)
    expect(page.locator("#connection-state")).to_have_text("connected", timeout=10_000)
    return page, dialogs


def say(page: Page, text: str) -> None:
    page.fill("#message-input", text)
    page.press("#message-input", "Enter")
    expect(page.locator("#message-input")).to_have_value("", timeout=10_000)


def message_rows(page: Page) -> list[tuple[str, str, str]]:
    rows = page.eval_on_selector_all(
        DELIVERED,
        "items => items.map(li => [li.dataset.id, li.querySelector('.author').textContent,"
        " li.querySelector('.text').textContent])",
    )
    return [tuple(row) for row in rows]


def stored_texts(server, room: int = 1) -> list[str]:
    """What the server has stored in a room (the Lobby by default), in id order."""
    return [message["text"] for message in poll(server, room, since=0).json()["messages"]]


def wait_until_delivered(page: Page, count: int, timeout: float = 30_000) -> None:
    expect(page.locator(DELIVERED)).to_have_count(count, timeout=timeout)
    expect(page.locator(PENDING)).to_have_count(0, timeout=timeout)
