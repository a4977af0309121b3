"""Failed logins lock an account and an address on a real server, and only those."""

from __future__ import annotations

import requests

from .server import PASSWORD, ChatServerProcess, session_from


def post_login(
    session: requests.Session, server: ChatServerProcess, username: str, password: str, **headers: str
) -> requests.Response:
    """One try at Django's login form, as a browser would (login() in server.py asserts success)."""
    url = server.url + "/accounts/login/"
    if "csrftoken" not in session.cookies:
        session.get(url, timeout=10).raise_for_status()
    return session.post(
        url,
        data={
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
        },
        headers={"Referer": url, **headers},
        allow_redirects=False,
        timeout=10,
    )


def test_wrong_passwords_lock_the_account_and_address_but_not_others(server_factory):
    server = server_factory(env={"CHAT_LOGIN_FAILURE_LIMIT": "5"})
    attacker = session_from("127.0.0.1")
    codes = [post_login(attacker, server, "alice", f"wrong-{i}").status_code for i in range(6)]
    assert codes == [200] * 4 + [429] * 2, codes

    # Locked: alice's right password, and any account from this address, until the cool-off.
    assert post_login(attacker, server, "alice", PASSWORD).status_code == 429
    assert post_login(attacker, server, "bob", PASSWORD).status_code == 429
    refused = post_login(attacker, server, "alice", PASSWORD, Accept="application/json")
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "900"
    assert refused.json()["error"]["code"] == "rate_limited"
    assert refused.json()["error"]["retry_after"] == 900

    # Another account from another address logs in; pages still answer.
    bob = session_from("127.0.0.2")
    response = post_login(bob, server, "bob", PASSWORD)
    assert response.status_code == 302 and "sessionid" in bob.cookies
    assert bob.get(server.url + "/chats/", timeout=10).status_code == 200
    assert attacker.get(server.url + "/chats/", timeout=10).status_code == 200
