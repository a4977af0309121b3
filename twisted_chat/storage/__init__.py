"""Storage for the room core, as four interfaces (``interfaces``) and their backends.

The single-process backend keeps rooms and messages in this process, made durable by the
SQL database: ``LocalRoomDirectory``, ``SqlMessageLog``, ``LocalBroker``, ``LocalPresence``.
With ``CHAT_REDIS_URL``, the log also takes a ``RedisMessageFeed`` and the processes share
rooms through Redis (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from .interfaces import Broker, MessageLog, Presence, RoomDirectory


@dataclass(frozen=True)
class Storage:
    directory: RoomDirectory
    log: MessageLog
    broker: Broker
    presence: Presence
