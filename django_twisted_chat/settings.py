"""Settings for the chat site, read from the environment.

Defaults give a working development server (SQLite, in-memory store); production sets
DJANGO_DEBUG=0, DJANGO_SECRET_KEY and DJANGO_ALLOWED_HOSTS.
"""

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", False)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off "
            "(for development, set DJANGO_DEBUG=1, as `make run` and `make superuser` do)."
        )
    SECRET_KEY = "django-insecure-development-only-key-never-use-in-production"

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "chat.middleware.ContentSecurityPolicyMiddleware",
    # Last, as django-axes requires: turns a login refused for lockout into our 429 answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "django_twisted_chat.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "django_twisted_chat.wsgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        conn_max_age=600,
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several threads write (Django pages, the chat's group commit): WAL lets readers run
    # beside the writer, IMMEDIATE takes the write lock up front instead of failing midway.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;",
    }
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / ".test-db.sqlite3")}

# django-axes first: it refuses every authenticate() call (site login, admin login) for an
# account or address that is locked out, before a password is even checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

# Login and signup throttles count in Django's cache (signups) and database (logins). This
# in-process cache is right for the one twistd process; several processes need a shared
# cache (Redis, Memcached), or each would count on its own.
# With several processes the cache (signup counts per address) lives in their Redis; "local"
# is where those counts go while Redis does not answer (chat/throttle.py).
CACHES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "local": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
}
if os.environ.get("CHAT_REDIS_URL"):
    CACHES["default"] = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": os.environ["CHAT_REDIS_URL"],
        "KEY_PREFIX": "django",
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", BASE_DIR / "staticfiles"))

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:room_list"
LOGOUT_REDIRECT_URL = "chat:room_list"

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CONTENT_TYPE_NOSNIFF = True
# Behind a TLS-terminating proxy (which must set X-Forwarded-Proto): secure cookies, HSTS,
# redirects. These are the only warnings `check --deploy` gives without it.
if env_bool("DJANGO_HTTPS", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", "31536000"))
    # Whole-domain choices for the domain's owner (check --deploy W005, W021 until set).
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", False)
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", False)

# No inline script anywhere; styles allow inline because Django's admin uses style attributes.
CHAT_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'self'; form-action 'self'; object-src 'none'"
)

# --- Login and signup throttles (docs/security.md) -----------------------------------------

# Failed logins allowed per account and, separately, per client address within the cool-off;
# the next is refused (429) for CHAT_LOGIN_COOLOFF_SECONDS after the last failure. 0: off.
CHAT_LOGIN_FAILURE_LIMIT = int(os.environ.get("CHAT_LOGIN_FAILURE_LIMIT", "10"))
CHAT_LOGIN_COOLOFF_SECONDS = int(os.environ.get("CHAT_LOGIN_COOLOFF_SECONDS", "900"))
AXES_ENABLED = CHAT_LOGIN_FAILURE_LIMIT > 0
AXES_FAILURE_LIMIT = max(CHAT_LOGIN_FAILURE_LIMIT, 1)
AXES_COOLOFF_TIME = timedelta(seconds=max(CHAT_LOGIN_COOLOFF_SECONDS, 1))
# Either locks: one account from many addresses, or many accounts from one address.
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
# `Alice` and `alice` share one counter.
AXES_USERNAME_CALLABLE = "chat.throttle.login_username"
AXES_LOCKOUT_CALLABLE = "chat.views.locked_out"
# Not axes' own reset on success: with "ip_address" among the parameters it deletes every
# failure from the address, so logging in to one's own account would wipe the counts of the
# accounts one is guessing at. chat.throttle resets the account's own failures instead.
AXES_RESET_ON_SUCCESS = False
# Masked in the failed request axes stores and logs (it masks the password itself).
AXES_SENSITIVE_PARAMETERS = ["username", "ip_address", "csrfmiddlewaretoken"]
# The client address, for logins and signups alike, is REMOTE_ADDR: the TCP peer (axes reads
# it when django-ipware is not installed). Behind a proxy every client has the proxy's.

# Successful signups per client address per clock hour. 0: off.
CHAT_SIGNUPS_PER_HOUR = int(os.environ.get("CHAT_SIGNUPS_PER_HOUR", "5"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("DJANGO_LOG_LEVEL", "INFO")},
}

# --- The chat server (read by twisted_chat) ---------------------------------------------

# Longest message text, in characters.
CHAT_MAX_TEXT_LENGTH = int(os.environ.get("CHAT_MAX_TEXT_LENGTH", "4000"))
# Messages kept in memory per room; older history is read from the database.
CHAT_HISTORY_WINDOW = int(os.environ.get("CHAT_HISTORY_WINDOW", "1000"))
# Rooms whose state stays loaded while nobody listens to them.
CHAT_MAX_IDLE_ROOMS = int(os.environ.get("CHAT_MAX_IDLE_ROOMS", "1000"))
# Messages sent on a subscribe or a poll without `since`.
CHAT_RECENT_COUNT = 50
# Most messages in one long-poll response.
CHAT_POLL_PAGE_SIZE = 500
# Long-poll hold time in seconds: default and ceiling.
CHAT_POLL_TIMEOUT = float(os.environ.get("CHAT_POLL_TIMEOUT", "25"))
CHAT_POLL_MAX_TIMEOUT = float(os.environ.get("CHAT_POLL_MAX_TIMEOUT", "60"))
# Most messages written in one database transaction by the group commit.
CHAT_MAX_BATCH = 500
# Threads for Django pages and for the chat's database work. Pages are Python under the
# GIL, so more page threads add no throughput, only more threads taking the GIL from the
# reactor (bench/README.md); two leave one free while a slow view runs.
CHAT_WSGI_THREADS = int(os.environ.get("CHAT_WSGI_THREADS", "2"))
CHAT_DB_THREADS = int(os.environ.get("CHAT_DB_THREADS", "4"))
# Threads for the requests that hash passwords (login, signup, password change), so that
# a burst of logins cannot take the page threads.
CHAT_PASSWORD_THREADS = int(os.environ.get("CHAT_PASSWORD_THREADS", "1"))
# Jobs that may wait for a thread, per pool; more are refused at once (`unavailable`, 503)
# rather than delaying everyone behind them.
CHAT_MAX_THREAD_QUEUE = int(os.environ.get("CHAT_MAX_THREAD_QUEUE", "100"))
# Redis (redis://host:port/db) lets several processes serve the same rooms; empty means one
# process with the in-memory store. Commands to Redis give up after CHAT_REDIS_TIMEOUT s.
CHAT_REDIS_URL = os.environ.get("CHAT_REDIS_URL", "")
CHAT_REDIS_TIMEOUT = float(os.environ.get("CHAT_REDIS_TIMEOUT", "2"))
# Worker processes sharing the port: 1 without Redis (more are refused), the cores with it.
CHAT_WORKERS = int(os.environ.get("CHAT_WORKERS", "0")) or ((os.cpu_count() or 1) if CHAT_REDIS_URL else 1)
# Origins besides the site's own that may open the WebSocket (e.g. "https://chat.example.com").
CHAT_ALLOWED_ORIGINS = env_list("CHAT_ALLOWED_ORIGINS")
# Abuse limits (docs/security.md). 0 turns a limit off.
CHAT_SEND_RATE = float(os.environ.get("CHAT_SEND_RATE", "5"))  # messages per second per user
CHAT_SEND_BURST = int(os.environ.get("CHAT_SEND_BURST", "20"))
CHAT_MAX_CONNECTIONS_PER_USER = int(os.environ.get("CHAT_MAX_CONNECTIONS_PER_USER", "20"))
CHAT_MAX_CONNECTIONS_PER_IP = int(os.environ.get("CHAT_MAX_CONNECTIONS_PER_IP", "200"))
CHAT_MAX_ROOMS_PER_CONNECTION = int(os.environ.get("CHAT_MAX_ROOMS_PER_CONNECTION", "50"))
# Subscribes and unsubscribes per second per WebSocket, in bursts of up to the burst.
CHAT_COMMAND_RATE = float(os.environ.get("CHAT_COMMAND_RATE", "10"))
CHAT_COMMAND_BURST = int(os.environ.get("CHAT_COMMAND_BURST", "60"))
# Descriptors kept free below the process's limit (raised to the hard limit at start) for
# the database, logs and refusals: connections beyond are answered 503 and closed.
CHAT_FD_RESERVE = int(os.environ.get("CHAT_FD_RESERVE", "100"))
# Seconds for a request's head and body to arrive once its first byte has; seconds an
# idle keep-alive connection is kept.
CHAT_REQUEST_TIMEOUT = float(os.environ.get("CHAT_REQUEST_TIMEOUT", "10"))
CHAT_IDLE_TIMEOUT = float(os.environ.get("CHAT_IDLE_TIMEOUT", "30"))
# How long "no such room" is remembered (rooms created meanwhile are known at once).
CHAT_UNKNOWN_ROOM_SECONDS = float(os.environ.get("CHAT_UNKNOWN_ROOM_SECONDS", "60"))
# /metrics and the detailed /healthz are served here only (empty: not at all); the public
# port's /healthz says "ok" or "unavailable" and nothing more.
CHAT_OPS_PORT = os.environ.get("CHAT_OPS_PORT", "8001")
CHAT_OPS_INTERFACE = os.environ.get("CHAT_OPS_INTERFACE", "127.0.0.1")
# Largest WebSocket frame or message, and largest HTTP request body, in bytes.
CHAT_MAX_WS_MESSAGE_BYTES = int(os.environ.get("CHAT_MAX_WS_MESSAGE_BYTES", str(64 * 1024)))
CHAT_MAX_REQUEST_BODY_BYTES = int(os.environ.get("CHAT_MAX_REQUEST_BODY_BYTES", str(4 * 1024 * 1024)))
# How long a session's user is trusted before a WebSocket send checks it again.
CHAT_SESSION_RECHECK_SECONDS = float(os.environ.get("CHAT_SESSION_RECHECK_SECONDS", "5"))
# JSONP on GET /poll (public rooms only). Off: it lets any site read public rooms.
CHAT_JSONP = env_bool("CHAT_JSONP", False)
# A WebSocket or stream further behind than this (bytes queued after its send buffer
# filled) is dropped (WebSocket close code 4008); it reconnects and resumes with `since`.
CHAT_MAX_WS_BACKLOG_BYTES = int(os.environ.get("CHAT_MAX_WS_BACKLOG_BYTES", str(1024 * 1024)))
# Long-poll responses are cut to about this many characters (always at least one message).
CHAT_MAX_POLL_RESPONSE_CHARS = int(os.environ.get("CHAT_MAX_POLL_RESPONSE_CHARS", str(1024 * 1024)))
# Server-Sent Events (/stream): a stream ends after this many bytes and the browser comes
# back from its last id, so that a buffering proxy cannot hold one response forever; a
# comment every CHAT_STREAM_HEARTBEAT seconds keeps idle proxies from closing it; the
# browser waits CHAT_STREAM_RETRY_MS before reconnecting after a drop.
CHAT_STREAM_MAX_BYTES = int(os.environ.get("CHAT_STREAM_MAX_BYTES", str(256 * 1024)))
CHAT_STREAM_HEARTBEAT = float(os.environ.get("CHAT_STREAM_HEARTBEAT", "15"))
CHAT_STREAM_RETRY_MS = int(os.environ.get("CHAT_STREAM_RETRY_MS", "2000"))
# Presence: a long-poll user stays in a room this many seconds after their last poll, and
# the users of a process that died leave within it.
CHAT_PRESENCE_GRACE = float(os.environ.get("CHAT_PRESENCE_GRACE", "30"))
# Authors may edit or delete their messages for this many seconds (staff: always).
CHAT_EDIT_WINDOW = float(os.environ.get("CHAT_EDIT_WINDOW", "900"))
# Heartbeats: ping every interval; drop a peer that does not answer within the timeout.
CHAT_WS_PING_INTERVAL = float(os.environ.get("CHAT_WS_PING_INTERVAL", "20"))
CHAT_WS_PING_TIMEOUT = float(os.environ.get("CHAT_WS_PING_TIMEOUT", "20"))
# Seconds a thread may hold the GIL before another gets it (Python's default is 0.005).
CHAT_GIL_SWITCH_INTERVAL = float(os.environ.get("CHAT_GIL_SWITCH_INTERVAL", "0.0001"))
