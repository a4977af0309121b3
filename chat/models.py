"""Chat rooms and their messages.

The chat server (twisted_chat) owns message ids: each message has a per-room ``seq``,
strictly increasing in order of acceptance, which is the ``id`` clients see on the wire.
"""

from datetime import UTC, datetime
from typing import TypeAlias

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.db import models
from django.db.models import Q
from django.urls import reverse

AnyUser: TypeAlias = AbstractBaseUser | AnonymousUser


def room_readable(
    is_private: bool, is_member: bool, *, is_closed: bool = False, is_banned: bool = False
) -> bool:
    """Who may read (and so see, and post in) a room: the one rule for pages and chat.

    ``is_closed`` and ``is_banned`` are keywords so that a caller which weighs them on its
    own (the chat server answers each with its own error) can leave them out.
    """
    return not is_closed and not is_banned and (not is_private or is_member)


def datetime_from_ms(ms: int) -> datetime:
    """A ``ts`` or ``edited`` value (ms since the epoch, as on the wire) as a datetime to show."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class ChatRoom(models.Model):
    name = models.CharField(max_length=100, unique=True)
    description = models.CharField(max_length=300, blank=True)
    is_private = models.BooleanField(
        default=False, help_text="Only members can read, post and see this room."
    )
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="chat_rooms")
    is_closed = models.BooleanField(
        default=False,
        help_text="A closed room keeps its history but nobody can open it: open chats are ended.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # High-water mark of ids handed out, so that ids are never reused even after the
    # newest messages are deleted and the server restarts.
    last_message_id = models.PositiveBigIntegerField(default=0, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("chat:room", args=[self.pk])

    def has_member(self, user: AnyUser) -> bool:
        """Whether ``user`` is a member of this private room (False for a public one, where
        membership grants nothing and is not looked up)."""
        return self.is_private and user.is_authenticated and self.members.filter(pk=user.pk).exists()

    def has_banned(self, user: AnyUser) -> bool:
        """Whether ``user`` is banned from this room, or from every room."""
        return user.is_authenticated and Ban.objects.filter(Q(room=self) | Q(room=None), user=user).exists()

    def is_visible_to(self, user: AnyUser) -> bool:
        return room_readable(
            self.is_private,
            self.has_member(user),
            is_closed=self.is_closed,
            is_banned=self.has_banned(user),
        )


class Message(models.Model):
    """One entry of a room's log: a message, or a change to an earlier one.

    Edits and deletions take their own place in the room's sequence, so that a client
    resuming after id N learns of every change made since, in order, with the new messages.
    """

    MESSAGE = "message"
    SYSTEM = "system"
    EDITED = "edited"
    DELETED = "deleted"
    KINDS = [
        (MESSAGE, "message"),
        (SYSTEM, "system message"),
        (EDITED, "edit of an earlier message"),
        (DELETED, "deletion of an earlier message"),
    ]

    room = models.ForeignKey(ChatRoom, on_delete=models.CASCADE, related_name="messages")
    seq = models.PositiveBigIntegerField(help_text="Per-room id, as clients see it.")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="chat_messages",
    )
    # Kept with the message so history shows the author as they were named at the time.
    username = models.CharField(max_length=150)
    text = models.TextField()
    ts = models.BigIntegerField(help_text="Server time of acceptance, ms since the epoch.")
    nonce = models.CharField(max_length=64, blank=True, default="")
    kind = models.CharField(max_length=8, choices=KINDS, default=MESSAGE)
    target = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="For an edit or deletion: the id of the message it changed."
    )
    edited = models.BigIntegerField(
        null=True, blank=True, help_text="When the text was last edited, ms since the epoch."
    )

    class Meta:
        ordering = ["room", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["room", "seq"], name="chat_message_room_seq"),
            models.UniqueConstraint(
                fields=["room", "user", "nonce"],
                condition=~models.Q(nonce=""),
                name="chat_message_room_user_nonce",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.room} #{self.seq} {self.username}: {self.text[:40]}"


class Ban(models.Model):
    """A user who may not read or post in a room, or (with no room) anywhere."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_bans")
    room = models.ForeignKey(
        ChatRoom,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="bans",
        help_text="Leave empty to ban from every room.",
    )
    reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "room"], name="chat_ban_user_room"),
            models.UniqueConstraint(
                fields=["user"], condition=models.Q(room=None), name="chat_ban_user_everywhere"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} banned from {self.room or 'every room'}"
