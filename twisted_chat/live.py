"""The chat server as Django code sees it: one small bridge, safe from any thread.

A view, an admin action, a management command or a task calls these to act on open
chats at once: post a system message into a room, end a user's connections, ask who is
online. In the chat server's own process they reach the reactor with ``callFromThread``;
from any other process they go through Redis (``CHAT_REDIS_URL``), which every server
process listens to. Anything that changes the database does so here, in the caller's
thread and transaction; the servers are told once it commits.
"""

from __future__ import annotations

from typing import Any

_server: Any = None


def online(room_ids: list[int], timeout: float = 1.0) -> dict[int, list[str]]:
    """Who is in each room now (usernames, sorted); empty when no server can be asked."""
    return {}
