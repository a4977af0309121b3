"""Fixtures for end-to-end tests: a migrated database template and real twistd servers."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from .browser import CHROMIUM_ARGS
from .server import PASSWORD, ChatServerProcess, base_env, manage

USERS = ("alice", "bob", "carol", "admin")


@pytest.fixture(scope="session")
def database_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file with the demo room and test users, copied for each server."""
    path = tmp_path_factory.mktemp("template") / "db.sqlite3"
    fill_template(base_env(f"sqlite:///{path}"))
    return path


def fill_template(env: dict[str, str]) -> None:
    """Migrate, and add the test users and rooms."""
    manage(env, "migrate", "--noinput", "-v0")
    manage(
        env,
        "shell",
        "-c",
        "from django.contrib.auth.models import User\n"
        + "".join(f"User.objects.create_user({name!r}, password={PASSWORD!r})\n" for name in USERS[:-1])
        + f"User.objects.create_superuser('admin', password={PASSWORD!r})\n"
        + "from chat.models import ChatRoom\nChatRoom.objects.create(name='Second')\n"
        + "private = ChatRoom.objects.create(name='Private', is_private=True)\n"
        + "private.members.add(User.objects.get(username='alice'))\n",
    )


@pytest.fixture
def server_factory(database_template: Path, tmp_path: Path) -> Iterator:
    """Start servers on fresh copies of the template; all are stopped at the end.

    The send rate limit is off unless a test asks for it: most tests send in bursts.
    """
    started: list[ChatServerProcess] = []

    def start(
        env: dict[str, str] | None = None,
        database: Path | str | None = None,
        nofile: tuple[int, int] | None = None,
    ) -> ChatServerProcess:
        """``database``: a SQLite file or a database URL; by default a fresh copy."""
        if database is None:
            database = tmp_path / f"db{len(started)}.sqlite3"
            shutil.copy(database_template, database)
        url = database if isinstance(database, str) else f"sqlite:///{database}"
        env = {"CHAT_SEND_RATE": "0", **(env or {})}
        log = tmp_path / f"server{len(started)}.log"
        server = ChatServerProcess(url, log, env, nofile)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop(timeout=20)


@pytest.fixture
def server(server_factory) -> ChatServerProcess:
    return server_factory()


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str | None]:
    """With DATABASE_URL=postgres://..., a migrated database like the SQLite template."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        yield None
        return
    name = f"chat_e2e_template_{os.getpid()}"
    with _postgres_admin(url) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    template_url = _with_database(url, name)
    fill_template(base_env(template_url))
    yield name
    with _postgres_admin(url) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def shared_database(
    database_template: Path, postgres_template: str | None, tmp_path: Path
) -> Iterator[Path | str]:
    """One database for several servers: a SQLite file, or a fresh PostgreSQL database when
    the tests run with DATABASE_URL=postgres://..."""
    if postgres_template is None:
        path = tmp_path / "shared.sqlite3"
        shutil.copy(database_template, path)
        yield path
        return
    url = os.environ["DATABASE_URL"]
    name = f"chat_e2e_{os.getpid()}_{next(_databases)}"
    with _postgres_admin(url) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"')
    yield _with_database(url, name)
    with _postgres_admin(url) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_databases = itertools.count()


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _postgres_admin(url: str) -> psycopg.Connection:
    return psycopg.connect(
        _with_database(url, "postgres").replace("postgres://", "postgresql://", 1), autocommit=True
    )


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Debian's Chromium, driven by Playwright (which cannot download its own here)."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is required: apt-get install chromium (make test does it)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def redis_server() -> Iterator:
    """A private redis-server on a free port (never the shared one), gone at the end.

    Starting one takes some 15 ms, so each test gets a fresh, empty server.
    """
    from .redis_server import RedisServer

    with RedisServer() as server:
        yield server


@pytest.fixture
def connections(redis_server) -> Iterator:
    """Open connections to the test's redis-server, one per "process"; closed at the end."""
    from .reactor_wait import wait_for
    from .redis_server import connect, wait_connected

    opened: list = []

    def open_one():
        connection = connect(redis_server)
        opened.append(connection)
        wait_connected(connection)
        return connection

    yield open_one
    for connection in opened:
        wait_for(connection.disconnect())
