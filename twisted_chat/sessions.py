"""Django sessions and CSRF for requests that do not go through Django's views.

Both run Django's own code (session store, ``auth.get_user``, ``CsrfViewMiddleware``) so
the rules are exactly a Django form's; both block, so they run in a database thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib import auth
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.exceptions import DisallowedHost
from django.core.handlers.wsgi import WSGIRequest
from django.http import HttpRequest, HttpResponse
from django.http.cookie import parse_cookie
from django.middleware.csrf import CsrfViewMiddleware
from twisted.internet.defer import Deferred, succeed

from .messages import Author


def _no_response(request: HttpRequest) -> HttpResponse:
    raise AssertionError("only the middleware's checks run here")


def _author(user: Any) -> Author | None:
    if user is None or not user.is_authenticated or not user.is_active:
        return None
    return Author(user.pk, user.get_username())


def session_key_from_cookies(cookie_header: str) -> str | None:
    return parse_cookie(cookie_header).get(settings.SESSION_COOKIE_NAME) or None


def author_for_session(session_key: str) -> Author | None:
    """The logged-in user of a session, checked as Django checks it (hash included)."""
    request = HttpRequest()
    engine = import_module(settings.SESSION_ENGINE)
    request.session = engine.SessionStore(session_key)
    return _author(auth.get_user(request))


class CsrfRejected(Exception):
    pass


def authenticate_form_post(environ: dict[str, Any]) -> tuple[Author | None, WSGIRequest]:
    """Run a POST through Django's session and CSRF middleware; raise CsrfRejected."""
    request = WSGIRequest(environ)
    try:
        request.get_host()
    except DisallowedHost as error:
        raise CsrfRejected(str(error)) from None
    SessionMiddleware(_no_response).process_request(request)
    csrf = CsrfViewMiddleware(_no_response)
    csrf.process_request(request)
    if csrf.process_view(request, _no_response, (), {}) is not None:
        raise CsrfRejected("CSRF verification failed: send the csrftoken cookie's value in X-CSRFToken")
    return _author(auth.get_user(request)), request


class SessionCache:
    """Remembers who a session belongs to for a few seconds.

    A WebSocket re-checks its session on every send, so a logout in another tab stops it
    posting within ``ttl`` seconds, without a database query per message.
    """

    def __init__(
        self,
        run_query: Callable[..., Deferred[Any]],
        ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 100_000,
    ):
        self._run_query = run_query
        self._ttl = ttl
        self._clock = clock
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, Author | None]] = {}

    def author(self, session_key: str | None) -> Deferred[Author | None]:
        if not session_key:
            return succeed(None)
        entry = self._entries.get(session_key)
        if entry is not None and entry[0] > self._clock():
            return succeed(entry[1])
        return self._run_query(author_for_session, session_key).addCallback(self._remember, session_key)

    def _remember(self, author: Author | None, session_key: str) -> Author | None:
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[session_key] = (self._clock() + self._ttl, author)
        return author
