"""The database side of the store: blocking Django ORM calls, run only in thread pools.

Each function is one short transaction; nothing here may be called on the reactor thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, connection, models, transaction

from chat.models import Ban, ChatRoom, Message

from ..events import EDITED, MESSAGE, SYSTEM, ChatMessage
from .interfaces import CachedWindow, NoSuchMessage, RoomInfo, UnknownRoom


@dataclass(frozen=True, slots=True)
class RoomSnapshot:
    last_id: int
    recent: list[ChatMessage]
    # Every message with an id >= this is in ``recent`` (0: all of them are).
    complete_from: int = 0


@dataclass(frozen=True, slots=True)
class Stored:
    """Write outcome: the message is in the database under this id."""

    message_id: int


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Write outcome: the (room, user, nonce) was already stored under this id."""

    message_id: int


Outcome = Stored | Duplicate | UnknownRoom | NoSuchMessage

# The kinds of entry that are messages, rather than changes to one.
SHOWN = (MESSAGE, SYSTEM)


def _to_chat_message(row: Message) -> ChatMessage:
    return ChatMessage(
        room=row.room_id,
        id=row.seq,
        ts=row.ts,
        user=row.username,
        text=row.text,
        user_id=row.user_id,
        nonce=row.nonce,
        kind=row.kind,
        target=row.target,
        edited=row.edited,
    )


_FIELDS = ("room_id", "seq", "ts", "username", "text", "user_id", "nonce", "kind", "target", "edited")


def load_room_info(room_id: int) -> RoomInfo:
    try:
        room = ChatRoom.objects.get(pk=room_id)
    except ChatRoom.DoesNotExist:
        raise UnknownRoom(room_id) from None
    members = frozenset(room.members.values_list("pk", flat=True)) if room.is_private else frozenset()
    banned = Ban.objects.filter(models.Q(room=room) | models.Q(room=None)).values_list("user_id", flat=True)
    return RoomInfo(room.pk, room.name, room.is_private, members, room.is_closed, frozenset(banned))


def read_message(room_id: int, message_id: int) -> ChatMessage | None:
    """A message (not a change) as it is now, or None if there is none under that id."""
    row = Message.objects.filter(room_id=room_id, seq=message_id, kind__in=SHOWN).only(*_FIELDS).first()
    return None if row is None else _to_chat_message(row)


def load_room(room_id: int, window: int, cached: CachedWindow | None = None) -> RoomSnapshot:
    """What the message log needs to serve a room: its newest id and recent messages.

    With what a shared cache (Redis) holds, only what it lacks is read here, so a room
    that cache knows costs one primary-key lookup.
    """
    high_water = ChatRoom.objects.filter(pk=room_id).values_list("last_message_id", flat=True).first()
    if high_water is None:
        raise UnknownRoom(room_id)
    if cached is not None and cached.first_id > 0:
        known = max((m.id for m in cached.messages), default=cached.first_id - 1)
        if known <= high_water:
            missing = read_between(room_id, known, high_water) if known < high_water else []
            recent = [*cached.messages, *missing]
            first = cached.first_id
            if len(recent) > window:
                recent = recent[-window:]
                first = recent[0].id
            return RoomSnapshot(high_water, recent, first if first > 1 else 0)
    rows = Message.objects.filter(room_id=room_id).order_by("-seq").only(*_FIELDS)[:window]
    recent = [_to_chat_message(row) for row in reversed(rows)]
    complete_from = recent[0].id if len(recent) >= window else 0
    return RoomSnapshot(max(high_water, recent[-1].id if recent else 0), recent, complete_from)


def read_after(room_id: int, since: int, limit: int) -> list[ChatMessage]:
    rows = Message.objects.filter(room_id=room_id, seq__gt=since).order_by("seq").only(*_FIELDS)
    return [_to_chat_message(row) for row in rows[:limit]]


def read_latest(room_id: int, limit: int) -> list[ChatMessage]:
    """The newest messages, as they are now (edited text; deleted ones are gone)."""
    rows = Message.objects.filter(room_id=room_id, kind__in=SHOWN).order_by("-seq").only(*_FIELDS)[:limit]
    return [_to_chat_message(row) for row in reversed(rows)]


def read_between(room_id: int, after: int, until: int) -> list[ChatMessage]:
    """Committed messages with after < id <= until: what a gap in a room's sequence held."""
    rows = Message.objects.filter(room_id=room_id, seq__gt=after, seq__lte=until).order_by("seq")
    return [_to_chat_message(row) for row in rows.only(*_FIELDS)]


def high_waters(room_ids: Sequence[int]) -> dict[int, int]:
    """The newest id given out in each room (rooms that no longer exist are left out)."""
    rows = ChatRoom.objects.filter(pk__in=room_ids).values_list("pk", "last_message_id")
    return dict(rows)


def write_batch(messages: Sequence[ChatMessage]) -> list[Outcome]:
    """Write a batch in one transaction (the group commit), giving each message its id.

    The rooms' rows are locked first (SQLite's IMMEDIATE transaction holds the whole
    database), so whichever process commits, a room's ids are dense and grow in commit
    order: every id below a committed one is committed too (or was deleted later). A
    room deleted meanwhile is seen here rather than failing the batch on a foreign key.
    Every statement is plain parameterised SQL: this runs once per commit, and building
    ORM querysets cost more than the commit itself, on a thread that holds the GIL the
    reactor needs.
    """
    room_ids = sorted({m.room for m in messages})
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_lock_rooms_sql(len(room_ids)), room_ids)
        high_water = dict(cursor.fetchall())
        gone = _changes_of_nothing(cursor, messages)
        outcomes = _number(messages, dict(high_water), gone)
        pairs = zip(messages, outcomes, strict=True)
        rows = [_to_params(m, o.message_id) for m, o in pairs if isinstance(o, Stored)]
        try:
            with transaction.atomic():
                cursor.executemany(_INSERT, rows)
        except IntegrityError:
            # A nonce stored before this process remembered it (perhaps by another
            # process): write one by one to find it, and number the rest again.
            outcomes = _write_one_by_one(cursor, messages, dict(high_water), gone)
        _apply_changes(cursor, messages, outcomes)
        newest = dict(high_water)
        for message, outcome in zip(messages, outcomes, strict=True):
            if isinstance(outcome, Stored):
                newest[message.room] = max(newest[message.room], outcome.message_id)
        raised = [(seq, room) for room, seq in newest.items() if seq > high_water[room]]
        cursor.executemany(_SET_HIGH_WATER, raised)
    return outcomes


def _changes_of_nothing(cursor: Any, entries: Sequence[ChatMessage]) -> set[int]:
    """The edits (by position in ``entries``) whose message is not there, or is deleted
    earlier in the same batch: they are refused, and take no id. A deletion is always
    logged: its message may already be gone from the database (an admin deleted the row)."""
    changes = [(i, e) for i, e in enumerate(entries) if e.is_change]
    if not changes:
        return set()
    wanted = {(e.room, e.target) for _, e in changes}
    cursor.execute(_existing_sql(len(wanted)), [*SHOWN, *(v for pair in wanted for v in pair)])
    existing = {(room, seq) for room, seq in cursor.fetchall()}
    refused: set[int] = set()
    for index, entry in changes:
        key = (entry.room, entry.target)
        if entry.kind != EDITED:
            existing.discard(key)
        elif key not in existing:
            refused.add(index)
    return refused


def _apply_changes(cursor: Any, entries: Sequence[ChatMessage], outcomes: Sequence[Outcome]) -> None:
    """Make the stored edits and deletions true of the messages themselves, so history
    read later shows the new text, and a deleted text is gone from the database."""
    for entry, outcome in zip(entries, outcomes, strict=True):
        if entry.is_change and isinstance(outcome, Stored):
            if entry.kind == EDITED:
                cursor.execute(_EDIT, (entry.text, entry.ts, entry.room, entry.target))
            else:
                cursor.execute(_DELETE, (entry.room, entry.target))


def _number(messages: Sequence[ChatMessage], next_id: dict[int, int], gone: set[int]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for index, message in enumerate(messages):
        if message.room not in next_id:
            outcomes.append(UnknownRoom(message.room))
        elif index in gone:
            outcomes.append(NoSuchMessage(message.room, message.target))
        else:
            next_id[message.room] += 1
            outcomes.append(Stored(next_id[message.room]))
    return outcomes


def _write_one_by_one(
    cursor: Any, messages: Sequence[ChatMessage], next_id: dict[int, int], gone: set[int]
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for index, message in enumerate(messages):
        if message.room not in next_id:
            outcomes.append(UnknownRoom(message.room))
            continue
        if index in gone:
            outcomes.append(NoSuchMessage(message.room, message.target))
            continue
        try:
            with transaction.atomic():
                cursor.execute(_INSERT, _to_params(message, next_id[message.room] + 1))
        except IntegrityError:
            existing = (
                Message.objects.filter(room_id=message.room, user_id=message.user_id, nonce=message.nonce)
                .values_list("seq", flat=True)
                .first()
            )
            if existing is None or not message.nonce:
                raise
            outcomes.append(Duplicate(existing))
        else:
            next_id[message.room] += 1
            outcomes.append(Stored(next_id[message.room]))
    return outcomes


_ROOMS = connection.ops.quote_name(ChatRoom._meta.db_table)
_MESSAGES = connection.ops.quote_name(Message._meta.db_table)
# One parameterised INSERT for the whole batch: the ORM's bulk_create spends far more
# Python per row.
_INSERT = (
    f"INSERT INTO {_MESSAGES} (room_id, seq, ts, username, text, user_id, nonce, kind, target) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_EDIT = f"UPDATE {_MESSAGES} SET text = %s, edited = %s WHERE room_id = %s AND seq = %s"
_DELETE = f"DELETE FROM {_MESSAGES} WHERE room_id = %s AND seq = %s"


def _existing_sql(count: int) -> str:
    pairs = " OR ".join(["(room_id = %s AND seq = %s)"] * count)
    return f"SELECT room_id, seq FROM {_MESSAGES} WHERE kind IN (%s, %s) AND ({pairs})"


_SET_HIGH_WATER = f"UPDATE {_ROOMS} SET last_message_id = %s WHERE id = %s"


def _lock_rooms_sql(count: int) -> str:
    sql = f"SELECT id, last_message_id FROM {_ROOMS} WHERE id IN ({', '.join(['%s'] * count)}) ORDER BY id"
    # PostgreSQL locks the rows; SQLite's IMMEDIATE transaction already holds the write lock.
    return sql + " FOR UPDATE" if connection.features.has_select_for_update else sql


def _to_params(message: ChatMessage, seq: int) -> tuple[object, ...]:
    return (message.room, seq, *message.stored())


def ping() -> None:
    """Raise if the database does not answer."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
