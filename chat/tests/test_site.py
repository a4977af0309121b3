"""The site around the chat: its icon, error pages, and account pages."""

import re

import pytest
from django.contrib.staticfiles import finders
from django.test import override_settings
from django.urls import include, path, reverse

pytestmark = pytest.mark.django_db


def test_favicon_ico_is_an_icon_browsers_may_keep(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/x-icon"
    assert response.content.startswith(b"\x00\x00\x01\x00")  # the ICO header
    assert "max-age=86400" in response["Cache-Control"]


def test_pages_link_the_icons_and_the_site_styles_before_the_chat_styles(client):
    html = client.get(reverse("chat:room_list")).content.decode()
    assert '<link rel="icon" href="/favicon.ico" sizes="32x32">' in html
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in html
    assert html.index("/static/chat/site.css") < html.index("/static/chat/chat.css")
    assert finders.find("favicon.svg") and finders.find("chat/site.css")


@pytest.mark.parametrize(
    ("url", "target"),
    [("/chats/", "#main"), ("/accounts/login/", "#main"), ("/chats/1/", "#message-input")],
)
def test_every_page_starts_with_a_skip_link_to_what_it_is_for(client, url, target):
    html = client.get(url).content.decode()
    body = html[html.index("<body>") + len("<body>") :].lstrip()
    assert body.startswith(f'<a class="skip-link" href="{target}">'), body[:120]
    assert html.count('class="skip-link"') == 1
    assert '<main id="main" tabindex="-1"' in html


# --- error pages with DEBUG off --------------------------------------------------------------


def broken_view(request):
    raise RuntimeError("a bug")


urlpatterns = [path("broken/", broken_view), path("", include("django_twisted_chat.urls"))]


@override_settings(DEBUG=False)
@pytest.mark.parametrize("url", ["/no-such-page/", "/chats/9999/"])
def test_not_found_is_a_page_of_the_site_with_a_way_back(client, url):
    response = client.get(url)
    html = response.content.decode()
    assert response.status_code == 404
    assert "There is nothing here" in html and 'href="/chats/"' in html
    assert 'class="site"' in html and "site.css" in html


@override_settings(DEBUG=False, ROOT_URLCONF=__name__)
def test_a_server_error_is_a_page_of_the_site_with_a_way_back(client):
    client.raise_request_exception = False
    response = client.get("/broken/")
    html = response.content.decode()
    assert response.status_code == 500
    assert "Something went wrong on our side" in html and 'href="/"' in html
    assert "site.css" in html and "a bug" not in html


# --- accounts --------------------------------------------------------------------------------


def labelled(html, name):
    """The input named ``name`` has a label, and is it the autofocused one."""
    field = re.search(rf'<input [^>]*name="{name}"[^>]*>', html)
    assert field, name
    field_id = re.search(r'id="([^"]+)"', field.group(0)).group(1)
    assert f'<label for="{field_id}">' in html, name
    return "autofocus" in field.group(0)


def test_login_page_labels_every_field_and_starts_in_the_first(client):
    html = client.get(reverse("login")).content.decode()
    assert labelled(html, "username") is True
    assert labelled(html, "password") is False


def test_signup_page_labels_every_field_and_starts_in_the_first(client):
    html = client.get(reverse("signup")).content.decode()
    assert labelled(html, "username") is True
    assert labelled(html, "password1") is False and labelled(html, "password2") is False


def test_a_wrong_password_is_explained_in_plain_words(client, alice):
    response = client.post(reverse("login"), {"username": "alice", "password": "not-it"})
    html = response.content.decode()
    assert response.status_code == 200
    assert "That username and password don&#x27;t match. Check them and try again." in html
    assert 'role="alert"' in html


def test_mismatched_passwords_are_explained_in_plain_words(client):
    form = {"username": "newbie", "password1": "a-long-pass-phrase-1", "password2": "a-long-pass-phrase-2"}
    html = client.post(reverse("signup"), form).content.decode()
    assert "The two passwords don&#x27;t match." in html
    assert re.search(r'<input [^>]*name="password2"[^>]*aria-invalid="true"', html)


def test_logging_out_lands_on_the_room_list_which_says_so(client, alice):
    client.force_login(alice)
    response = client.post(reverse("logout"))
    assert response.status_code == 302 and response["Location"] == reverse("chat:room_list")
    assert "_auth_user_id" not in client.session
    assert "You have logged out." in client.get(response["Location"]).content.decode()
    assert "You have logged out." not in client.get(response["Location"]).content.decode()


def test_logout_stays_a_post(client, alice):
    client.force_login(alice)
    assert client.get(reverse("logout")).status_code == 405
    assert "_auth_user_id" in client.session
