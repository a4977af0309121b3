"""Login lockout (django-axes), the signup throttle, and look-alike usernames."""

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.urls import reverse

pytestmark = pytest.mark.django_db

PASSWORD = "pw-correct-123456"


@pytest.fixture(autouse=True)
def limits(settings):
    """Small limits keep each test a handful of requests; the signup counter starts empty."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins
    settings.AXES_FAILURE_LIMIT = 3
    settings.CHAT_SIGNUPS_PER_HOUR = 2
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def users():
    return {name: User.objects.create_user(name, password=PASSWORD) for name in ("alice", "bob", "carol")}


def log_in(client, username, password=PASSWORD, address="127.0.0.1", path=None, **headers):
    data = {"username": username, "password": password}
    return client.post(path or reverse("login"), data, REMOTE_ADDR=address, **headers)


def test_an_account_is_locked_after_the_limit_whatever_the_case_or_address(client, users):
    assert log_in(client, "alice", "wrong", "127.0.0.1").status_code == 200
    assert log_in(client, "Alice", "wrong", "127.0.0.3").status_code == 200
    assert log_in(client, "ALICE", "wrong", "127.0.0.4").status_code == 429
    # The right password is refused too, from any address, while the lock lasts.
    assert log_in(client, "alice", PASSWORD, "127.0.0.5").status_code == 429
    assert "_auth_user_id" not in client.session
    # Another account from another address is not affected.
    assert log_in(client, "bob", PASSWORD, "127.0.0.2").status_code == 302


def test_an_address_is_locked_across_usernames(client, users):
    for name in ("alice", "carol"):
        assert log_in(client, name, "wrong", "127.0.0.9").status_code == 200
    assert log_in(client, "nobody", "wrong", "127.0.0.9").status_code == 429
    assert log_in(client, "bob", PASSWORD, "127.0.0.9").status_code == 429
    assert log_in(client, "bob", PASSWORD, "127.0.0.2").status_code == 302


def test_the_lockout_answers_a_page_or_json(client, users):
    for _ in range(3):
        page = log_in(client, "alice", "wrong", HTTP_ACCEPT="text/html,*/*;q=0.8")
    assert page.status_code == 429 and page["Retry-After"] == "900"
    html = page.content.decode()
    assert "<h1>Too many failed logins</h1>" in html and "Try again in 15 minutes." in html
    response = log_in(client, "alice", PASSWORD, HTTP_ACCEPT="application/json")
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "rate_limited" and error["retry_after"] == 900
    assert "Too many failed logins" in error["message"]


def test_the_admin_login_is_throttled_too(client):
    User.objects.create_superuser("admin", password=PASSWORD)
    codes = [log_in(client, "admin", "wrong", path="/admin/login/").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert log_in(client, "admin", PASSWORD, path="/admin/login/").status_code == 429


def test_a_login_forgets_the_accounts_failures_but_not_the_addresss(client, users):
    """Logging in to one's own account must not wipe the count of an account one guesses at."""
    log_in(client, "alice", "wrong", "127.0.0.7")
    log_in(client, "alice", "wrong", "127.0.0.7")
    assert log_in(client, "alice", PASSWORD, "127.0.0.8").status_code == 302
    assert log_in(client, "alice", "wrong", "127.0.0.8").status_code == 200

    log_in(client, "bob", "wrong", "127.0.0.6")
    assert log_in(client, "carol", PASSWORD, "127.0.0.6").status_code == 302
    assert log_in(client, "bob", "wrong", "127.0.0.6").status_code == 200
    assert log_in(client, "bob", "wrong", "127.0.0.6").status_code == 429


def sign_up(client, username, address="127.0.0.1", password="a-long-pass-phrase-1", password2=None):
    data = {"username": username, "password1": password, "password2": password2 or password}
    return client.post(reverse("signup"), data, REMOTE_ADDR=address)


def test_signups_are_throttled_per_address_and_failed_ones_do_not_count(client):
    assert sign_up(client, "first", password2="does-not-match-1").status_code == 200
    assert sign_up(client, "first").status_code == 302
    assert sign_up(client, "second").status_code == 302
    refused = sign_up(client, "third")
    assert refused.status_code == 429 and 0 < int(refused["Retry-After"]) <= 3600
    assert "Too many accounts were created from your address" in refused.content.decode()
    assert not User.objects.filter(username="third").exists()
    assert sign_up(client, "third", address="127.0.0.2").status_code == 302


@pytest.mark.parametrize(
    ("username", "error"),
    [
        ("\u0430lice", "Use only letters a-z"),  # Cyrillic a (U+0430)
        ("Alice", "A user with that username already exists"),
        ("\uff41lice", "A user with that username already exists"),  # fullwidth a, NFKC to alice
        ("zoë", "Use only letters a-z"),
    ],
)
def test_signup_refuses_names_that_look_like_another(client, users, username, error):
    response = sign_up(client, username)
    assert response.status_code == 200 and error in response.content.decode()
    assert User.objects.count() == 3


def test_a_limit_of_zero_turns_the_throttles_off(client, users, settings):
    settings.AXES_ENABLED = False  # what CHAT_LOGIN_FAILURE_LIMIT=0 sets
    settings.CHAT_SIGNUPS_PER_HOUR = 0
    assert {log_in(client, "alice", "wrong").status_code for _ in range(4)} == {200}
    assert log_in(client, "alice", PASSWORD).status_code == 302
    assert {sign_up(client, f"new{i}").status_code for i in range(3)} == {302}
