"""Throttles on logins and signups (docs/security.md).

Failed logins are counted by django-axes; the helpers here are what it is configured with.
Signups are counted here, in Django's cache, per client address and clock hour.
"""

import logging
import time
from typing import Any

from axes.helpers import get_client_ip_address
from axes.utils import reset
from django.conf import settings
from django.core.cache import BaseCache, cache, caches
from django.http import HttpRequest

HOUR = 3600

log = logging.getLogger(__name__)


def client_address(request: HttpRequest) -> str:
    """The address every throttle counts: the one axes uses (REMOTE_ADDR unless configured)."""
    return get_client_ip_address(request) or ""


def login_username(request: HttpRequest, credentials: dict[str, Any] | None) -> str | None:
    """The name axes counts failures against (AXES_USERNAME_CALLABLE), lowercased.

    Lowercase so that `Alice` and `ALICE` share alice's counter instead of each starting one.
    """
    source = credentials if credentials else request.POST
    username = source.get("username")
    return username.lower() if isinstance(username, str) else None


def forget_login_failures(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """On a successful login, forget that account's failures, from every address.

    Not the address's failures for other accounts, which axes' AXES_RESET_ON_SUCCESS would
    also forget: then anyone could guess at an account and wipe the count by logging in to
    their own in between.
    """
    if settings.AXES_ENABLED:
        reset(username=user.get_username().lower())


def _signup_window(request: HttpRequest) -> tuple[str, int]:
    """This address's counter for the current clock hour, and the seconds left in that hour."""
    hour, elapsed = divmod(int(time.time()), HOUR)
    return f"chat:signups:{hour}:{client_address(request)}", HOUR - elapsed


def _counts() -> BaseCache:
    """The shared cache, or this process's own while the shared one does not answer."""
    try:
        cache.get("chat:ping")
    except Exception as error:  # the cache backend's own errors (redis-py's, Memcached's)
        log.warning("the shared cache does not answer (%s): counting signups in this process", error)
        return caches["local"]
    return cache


def signup_wait(request: HttpRequest) -> int:
    """Seconds until this address may sign up again; 0 if it may now."""
    key, left = _signup_window(request)
    limit = settings.CHAT_SIGNUPS_PER_HOUR
    return left if limit and _counts().get(key, 0) >= limit else 0


def take_signup(request: HttpRequest) -> int:
    """Count one signup for this address, atomically; 0 if it is allowed, else seconds to wait.

    add() then incr() is atomic in the local-memory, Memcached and Redis caches, so two
    signups racing for the last slot cannot both get it.
    """
    limit = settings.CHAT_SIGNUPS_PER_HOUR
    if not limit:
        return 0
    key, left = _signup_window(request)
    counts = _counts()
    counts.add(key, 0, timeout=left)
    try:
        count = counts.incr(key)
    except ValueError:  # the entry expired or was evicted between add() and incr()
        return take_signup(request)
    return 0 if count <= limit else left
