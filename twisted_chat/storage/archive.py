"""The database side of the store: blocking Django ORM calls, run only in thread pools.

Each function is one short transaction; nothing here may be called on the reactor thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.db import IntegrityError, connection, transaction
from django.db.models import Max

from chat.models import ChatRoom, Message

from ..events import ChatMessage
from .interfaces import RoomInfo, UnknownRoom


@dataclass(frozen=True, slots=True)
class RoomSnapshot:
    last_id: int
    recent: list[ChatMessage]


class Stored:
    """Write outcome: the message is in the database under its own id."""


class Duplicate:
    """Write outcome: the (room, user, nonce) was already stored under another id."""

    def __init__(self, message_id: int):
        self.message_id = message_id


STORED = Stored()


def _to_chat_message(row: Message) -> ChatMessage:
    return ChatMessage(
        room=row.room_id,
        id=row.seq,
        ts=row.ts,
        user=row.username,
        text=row.text,
        user_id=row.user_id,
        nonce=row.nonce,
    )


_FIELDS = ("room_id", "seq", "ts", "username", "text", "user_id", "nonce")


def load_room_info(room_id: int) -> RoomInfo:
    try:
        room = ChatRoom.objects.get(pk=room_id)
    except ChatRoom.DoesNotExist:
        raise UnknownRoom(room_id) from None
    members = frozenset(room.members.values_list("pk", flat=True)) if room.is_private else frozenset()
    return RoomInfo(room.pk, room.name, room.is_private, members)


def load_room(room_id: int, window: int) -> RoomSnapshot:
    """What the message log needs to serve a room: its newest id and recent messages."""
    high_water = ChatRoom.objects.filter(pk=room_id).values_list("last_message_id", flat=True).first()
    if high_water is None:
        raise UnknownRoom(room_id)
    rows = Message.objects.filter(room_id=room_id).order_by("-seq").only(*_FIELDS)[:window]
    recent = [_to_chat_message(row) for row in reversed(rows)]
    newest = Message.objects.filter(room_id=room_id).aggregate(m=Max("seq"))["m"] or 0
    return RoomSnapshot(max(high_water, newest), recent)


def read_after(room_id: int, since: int, limit: int) -> list[ChatMessage]:
    rows = Message.objects.filter(room_id=room_id, seq__gt=since).order_by("seq").only(*_FIELDS)
    return [_to_chat_message(row) for row in rows[:limit]]


def read_latest(room_id: int, limit: int) -> list[ChatMessage]:
    rows = Message.objects.filter(room_id=room_id).order_by("-seq").only(*_FIELDS)[:limit]
    return [_to_chat_message(row) for row in reversed(rows)]


def write_batch(messages: Sequence[ChatMessage]) -> list[Stored | Duplicate | UnknownRoom]:
    """Write a batch in one transaction (the group commit) and say what became of each.

    The rooms are locked first, so a room deleted meanwhile is seen here rather than
    failing the whole batch on a foreign key, and the high-water marks move with the rows.
    Every statement is plain parameterised SQL: this runs once per commit, and building
    ORM querysets cost more than the commit itself, on a thread that holds the GIL the
    reactor needs.
    """
    room_ids = sorted({m.room for m in messages})
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_lock_rooms_sql(len(room_ids)), room_ids)
        alive = {row[0] for row in cursor.fetchall()}
        outcomes: list[Stored | Duplicate | UnknownRoom] = [
            STORED if m.room in alive else UnknownRoom(m.room) for m in messages
        ]
        rows = [_to_params(m) for m, o in zip(messages, outcomes, strict=True) if o is STORED]
        try:
            with transaction.atomic():
                cursor.executemany(_INSERT, rows)
        except IntegrityError:
            # A nonce seen before this process remembered it: write one by one to find it.
            for index, message in enumerate(messages):
                if outcomes[index] is STORED:
                    outcomes[index] = _write_one(message)
        high_water: dict[int, int] = {}
        for message, outcome in zip(messages, outcomes, strict=True):
            if outcome is STORED:
                high_water[message.room] = max(high_water.get(message.room, 0), message.id)
        cursor.executemany(_RAISE_HIGH_WATER, [(seq, room, seq) for room, seq in high_water.items()])
    return outcomes


def _write_one(message: ChatMessage) -> Stored | Duplicate:
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_INSERT, _to_params(message))
        return STORED
    except IntegrityError:
        existing = (
            Message.objects.filter(room_id=message.room, user_id=message.user_id, nonce=message.nonce)
            .values_list("seq", flat=True)
            .first()
        )
        if existing is None or not message.nonce:
            raise
        return Duplicate(existing)


_ROOMS = connection.ops.quote_name(ChatRoom._meta.db_table)
# One parameterised INSERT for the whole batch: the ORM's bulk_create spends far more
# Python per row.
_INSERT = (
    f"INSERT INTO {connection.ops.quote_name(Message._meta.db_table)} "
    "(room_id, seq, ts, username, text, user_id, nonce) VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
_RAISE_HIGH_WATER = f"UPDATE {_ROOMS} SET last_message_id = %s WHERE id = %s AND last_message_id < %s"


def _lock_rooms_sql(count: int) -> str:
    sql = f"SELECT id FROM {_ROOMS} WHERE id IN ({', '.join(['%s'] * count)})"
    # PostgreSQL locks the rows; SQLite's IMMEDIATE transaction already holds the write lock.
    return sql + " FOR UPDATE" if connection.features.has_select_for_update else sql


def _to_params(message: ChatMessage) -> tuple[object, ...]:
    return (message.room, message.id, message.ts, message.user, message.text, message.user_id, message.nonce)


def ping() -> None:
    """Raise if the database does not answer."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
