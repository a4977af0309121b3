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
from twisted.python.failure import Failure

from .events import Author
from .storage.interfaces import StoreUnavailable


def _no_response(request: HttpRequest) -> HttpResponse:
    raise AssertionError("only the middleware's checks run here")


def _author(user: Any) -> Author | None:
    if user is None or not user.is_authenticated or not user.is_active:
        return None
    return Author(user.pk, user.get_username(), user.is_staff)


def keys_from_cookies(cookie_header: str) -> tuple[str | None, str | None]:
    """The session key, and the CSRF cookie that names the browser even without a session."""
    if not cookie_header:
        return None, None
    cookies = parse_cookie(cookie_header)
    return cookies.get(settings.SESSION_COOKIE_NAME) or None, cookies.get(settings.CSRF_COOKIE_NAME) or None


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

    A WebSocket re-checks its session on every send without a database query per message.
    Logouts and user changes are forgotten at once (``forget``, ``forget_user``); ``ttl``
    bounds how long a session that simply expired is still trusted.
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
        d = self._run_query(author_for_session, session_key)
        return d.addCallbacks(self._remember, _unavailable, callbackArgs=(session_key,))

    def _remember(self, author: Author | None, session_key: str) -> Author | None:
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[session_key] = (self._clock() + self._ttl, author)
        return author

    def forget(self, session_key: str) -> None:
        self._entries.pop(session_key, None)

    def clear(self) -> None:
        self._entries.clear()

    def forget_user(self, user_id: int) -> None:
        stale = [
            key for key, (_, author) in self._entries.items() if author is not None and author.id == user_id
        ]
        for key in stale:
            del self._entries[key]


def _unavailable(failure: Failure) -> Failure:
    return Failure(StoreUnavailable(f"sessions could not be read: {failure.getErrorMessage()}"))
