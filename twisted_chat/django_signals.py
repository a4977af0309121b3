"""Tell the room core what Django changed behind its back, so open connections follow at once.

- an admin deleted a message: its deletion is logged (``live.record_deletion``), so the
  room is told and clients that resume later learn of it;
- a user was banned from a room or every room, or let back in: the rooms are re-checked;
- a room was edited or deleted, or its members changed: the directory forgets it, and the
  hub re-checks every client in it;
- a browser logged out or in: its open connections are ended, to come back with the new
  cookie (found by the session key, and by the CSRF cookie for a browser with no session);
- a user was edited (deactivated, password changed) or deleted, or a session was deleted:
  the clients of that user or session are checked again.

Signals fire in whichever thread ran the ORM call (a WSGI thread for the admin and the
login pages), inside its transaction; the hub reads the database again on the reactor
thread's behalf, so every notice waits for the commit, then crosses with
``callFromThread`` to ``notices``, which tells this process and every other one. A login
or logout waits longer: until its response, which carries the browser's new cookie, has
been written. A page told to reconnect any sooner would come back with the old cookie.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.contrib.sessions.models import Session
from django.core.signals import request_finished
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save

from chat.models import Ban, ChatRoom, Message

from . import live
from .notices import Notices

# Notices held until the response of the request being served in this thread is written.
_after_response = threading.local()


def connect(reactor: Any, notices: Notices) -> None:
    def tell(fn: Callable[..., None], *args: Any) -> None:
        transaction.on_commit(lambda: reactor.callFromThread(fn, *args))

    def tell_after_response(fn: Callable[..., None], *args: Any) -> None:
        def hold() -> None:
            if not hasattr(_after_response, "notices"):
                _after_response.notices = []
            _after_response.notices.append((fn, args))

        transaction.on_commit(hold)

    def response_written(sender: Any, **kwargs: Any) -> None:
        notices = getattr(_after_response, "notices", None)
        if notices:
            _after_response.notices = []
            for fn, args in notices:
                reactor.callFromThread(fn, *args)

    def message_deleted(sender: Any, instance: Message, origin: Any = None, **kwargs: Any) -> None:
        if isinstance(origin, ChatRoom) or instance.kind not in (Message.MESSAGE, Message.SYSTEM):
            return  # the room's deletion ends its subscriptions; no event per message first
        live.record_deletion(instance.room_id, instance.seq)

    def bans_changed(sender: Any, instance: Ban, **kwargs: Any) -> None:
        tell(notices.tell, "bans_changed", instance.room_id)

    def room_changed(sender: Any, instance: ChatRoom, **kwargs: Any) -> None:
        tell(notices.room_changed, instance.pk)

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
            tell(notices.room_changed, room_id)

    def browser_changed(sender: Any, request: Any, **kwargs: Any) -> None:
        # The cookies the browser came with: the session and CSRF token it had before.
        session_key = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
        browser_key = request.COOKIES.get(settings.CSRF_COOKIE_NAME)
        tell_after_response(notices.session_ended, session_key, browser_key)

    def user_changed(sender: Any, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
        if update_fields is not None and set(update_fields) <= {"last_login"}:
            return  # every login saves this; the login itself is handled above
        tell(notices.user_changed, instance.pk)

    def session_deleted(sender: Any, instance: Session, **kwargs: Any) -> None:
        tell(notices.session_ended, instance.session_key, None)

    user_model = get_user_model()
    post_delete.connect(message_deleted, sender=Message, weak=False, dispatch_uid="chat-hub-message")
    post_save.connect(room_changed, sender=ChatRoom, weak=False, dispatch_uid="chat-hub-room-save")
    post_delete.connect(room_changed, sender=ChatRoom, weak=False, dispatch_uid="chat-hub-room-delete")
    post_save.connect(bans_changed, sender=Ban, weak=False, dispatch_uid="chat-hub-ban-save")
    post_delete.connect(bans_changed, sender=Ban, weak=False, dispatch_uid="chat-hub-ban-delete")
    m2m_changed.connect(
        members_changed, sender=ChatRoom.members.through, weak=False, dispatch_uid="chat-hub-members"
    )
    request_finished.connect(response_written, weak=False, dispatch_uid="chat-hub-response-written")
    user_logged_out.connect(browser_changed, weak=False, dispatch_uid="chat-hub-logout")
    user_logged_in.connect(browser_changed, weak=False, dispatch_uid="chat-hub-login")
    post_save.connect(user_changed, sender=user_model, weak=False, dispatch_uid="chat-hub-user-save")
    post_delete.connect(user_changed, sender=user_model, weak=False, dispatch_uid="chat-hub-user-delete")
    post_delete.connect(session_deleted, sender=Session, weak=False, dispatch_uid="chat-hub-session")
