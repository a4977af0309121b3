"""Tell the store what Django changed behind its back (admin deletes and edits).

Signals fire in whichever thread ran the ORM call (a WSGI thread for the admin); the store
lives on the reactor thread, so every notice crosses with ``callFromThread``.
"""

from __future__ import annotations

from typing import Any

from django.db.models.signals import m2m_changed, post_delete, post_save

from chat.models import ChatRoom, Message

from .store import MessageStore


def connect(reactor: Any, store: MessageStore) -> None:
    def message_deleted(sender: Any, instance: Message, **kwargs: Any) -> None:
        reactor.callFromThread(store.remove, instance.room_id, instance.seq)

    def room_changed(sender: Any, instance: ChatRoom, **kwargs: Any) -> None:
        reactor.callFromThread(store.room_changed, instance.pk)

    def members_changed(
        sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any
    ) -> None:
        if reverse:  # a user's rooms changed
            if action == "pre_clear":
                rooms = list(instance.chat_rooms.values_list("pk", flat=True))
            elif action in ("post_add", "post_remove"):
                rooms = list(pk_set or ())
            else:
                return
        elif action in ("post_add", "post_remove", "post_clear"):
            rooms = [instance.pk]
        else:
            return
        for room_id in rooms:
            reactor.callFromThread(store.room_changed, room_id)

    post_delete.connect(message_deleted, sender=Message, weak=False, dispatch_uid="chat-store-message")
    post_save.connect(room_changed, sender=ChatRoom, weak=False, dispatch_uid="chat-store-room-save")
    post_delete.connect(room_changed, sender=ChatRoom, weak=False, dispatch_uid="chat-store-room-delete")
    m2m_changed.connect(
        members_changed, sender=ChatRoom.members.through, weak=False, dispatch_uid="chat-store-members"
    )
