"""Fixtures for end-to-end tests: a migrated database template and real twistd servers."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .server import PASSWORD, ChatServerProcess, base_env, manage

USERS = ("alice", "bob", "carol", "admin")


@pytest.fixture(scope="session")
def database_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file with the demo room and test users, copied for each server."""
    path = tmp_path_factory.mktemp("template") / "db.sqlite3"
    env = base_env(f"sqlite:///{path}")
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
    return path


@pytest.fixture
def server_factory(database_template: Path, tmp_path: Path) -> Iterator:
    """Start servers on fresh copies of the template; all are stopped at the end.

    The send rate limit is off unless a test asks for it: most tests send in bursts.
    """
    started: list[ChatServerProcess] = []

    def start(
        env: dict[str, str] | None = None,
        database: Path | None = None,
        nofile: tuple[int, int] | None = None,
    ) -> ChatServerProcess:
        if database is None:
            database = tmp_path / f"db{len(started)}.sqlite3"
            shutil.copy(database_template, database)
        env = {"CHAT_SEND_RATE": "0", **(env or {})}
        log = tmp_path / f"server{len(started)}.log"
        server = ChatServerProcess(f"sqlite:///{database}", log, env, nofile)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop(timeout=20)


@pytest.fixture
def server(server_factory) -> ChatServerProcess:
    return server_factory()
