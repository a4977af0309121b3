"""Storage for the room core, as four interfaces (``interfaces``) and their backends.

The single-process backend keeps rooms and messages in this process, made durable by the
SQL database: ``LocalRoomDirectory``, ``SqlMessageLog``, ``LocalBroker``, ``LocalPresence``.
``check_backend`` refuses, at start, a setting that asks for a backend this build lacks.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.core.exceptions import ImproperlyConfigured

from .interfaces import Broker, MessageLog, Presence, RoomDirectory


@dataclass(frozen=True)
class Storage:
    directory: RoomDirectory
    log: MessageLog
    broker: Broker
    presence: Presence


def check_backend(redis_url: str) -> None:
    if redis_url:
        raise ImproperlyConfigured(
            "CHAT_REDIS_URL is set, but this server has no Redis backend yet: "
            "unset it to run the single-process store"
        )
