"""Server-rendered pages and the room page's JSON; the chat itself runs against /ws, /stream and /poll."""

import functools
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.staticfiles import finders
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef, Q, QuerySet, Subquery
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import cache_control, never_cache
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_POST, require_safe

from twisted_chat import live
from twisted_chat.events import ChatMessage

from . import throttle
from .forms import RoomForm, SignupForm
from .models import AnyUser, Ban, ChatRoom, Message, datetime_from_ms, room_readable

# The kinds of log entry that are messages to show; the others record changes to them.
SHOWN_KINDS = (Message.MESSAGE, Message.SYSTEM)


@cache_control(public=True, max_age=86400)
def favicon(request: HttpRequest) -> HttpResponse:
    """The site's icon as an .ico, the one format every browser and bookmark tool reads at
    /favicon.ico; pages also link the SVG, which browsers that can show it prefer."""
    return HttpResponse(_favicon_bytes(), content_type="image/x-icon")


@functools.cache
def _favicon_bytes() -> bytes:
    with open(finders.find("favicon.ico"), "rb") as icon:
        return icon.read()


class Banned(Exception):
    """The user could read this room but for a ban (on it, or on every room)."""


def visible_rooms(user: AnyUser, *, include_closed: bool = False) -> QuerySet[ChatRoom]:
    """The rooms ``user`` may read, in SQL: the same rule as ``room_readable``.

    ``include_closed`` adds the closed rooms the user could read were they open (for staff).
    """
    rooms = ChatRoom.objects.all() if include_closed else ChatRoom.objects.filter(is_closed=False)
    if not user.is_authenticated:
        return rooms.filter(is_private=False)
    membership = ChatRoom.members.through.objects.filter(chatroom=OuterRef("pk"), user=user)
    bans = Ban.objects.filter(Q(room=OuterRef("pk")) | Q(room=None), user=user)
    return rooms.filter(Q(is_private=False) | Exists(membership)).exclude(Exists(bans))


def readable_room(user: AnyUser, room_id: int) -> ChatRoom:
    """The room, if ``user`` may read it (``room_readable``).

    Raises Http404 for a room that is missing, closed or private to others, all alike so
    that none is given away; Banned for one the user would see but is banned from.
    """
    room = ChatRoom.objects.filter(pk=room_id).first()
    if room is None or not room_readable(room.is_private, room.has_member(user), is_closed=room.is_closed):
        raise Http404("No such room.")
    if room.has_banned(user):
        raise Banned
    return room


# --- The room list --------------------------------------------------------------------------

# Names listed per room before "and N more".
ONLINE_SHOWN = 8


@dataclass(frozen=True)
class RoomEntry:
    """One line of the room list."""

    room: ChatRoom
    last_message_at: datetime | None
    online: list[str]

    @property
    def last_message_iso(self) -> str:
        return self.last_message_at.isoformat(timespec="seconds") if self.last_message_at else ""

    @property
    def online_shown(self) -> list[str]:
        return self.online[:ONLINE_SHOWN]

    @property
    def online_more(self) -> int:
        return max(0, len(self.online) - ONLINE_SHOWN)


def _room_entries(user: AnyUser) -> list[RoomEntry]:
    """The rooms to list, each with its last message's time and who is in it now."""
    last_ts = Message.objects.filter(room=OuterRef("pk"), kind__in=SHOWN_KINDS).order_by("-seq").values("ts")
    rooms = list(visible_rooms(user, include_closed=user.is_staff).annotate(last_ts=Subquery(last_ts[:1])))
    online = live.online([room.pk for room in rooms])
    return [
        RoomEntry(
            room=room,
            last_message_at=datetime_from_ms(room.last_ts) if room.last_ts is not None else None,
            online=online.get(room.pk, []),
        )
        for room in rooms
    ]


def _room_list_page(request: HttpRequest, form: RoomForm | None = None) -> HttpResponse:
    user = request.user
    context = {
        "entries": _room_entries(user),
        "form": (form or RoomForm()) if user.is_staff else None,
        "banned_everywhere": user.is_authenticated and Ban.objects.filter(user=user, room=None).exists(),
    }
    return render(request, "chat/room_list.html", context)


def room_list(request: HttpRequest) -> HttpResponse:
    return _room_list_page(request)


@require_POST
def create_room(request: HttpRequest) -> HttpResponse:
    """Staff create a room from the room list; a private one has them as its first member,
    or nobody could open it."""
    if not request.user.is_staff:
        raise PermissionDenied("Only staff can create rooms.")
    form = RoomForm(request.POST)
    if not form.is_valid():
        return _room_list_page(request, form)
    room = form.save()
    if room.is_private:
        room.members.add(request.user)
    return redirect(room)


# --- Room pages -----------------------------------------------------------------------------


def _room_page(request: HttpRequest, room_id: int, transport: str) -> HttpResponse:
    try:
        room = readable_room(request.user, room_id)
    except Banned:
        return render(request, "chat/banned.html", status=403)
    context = {"room": room, "transport": transport, "max_length": settings.CHAT_MAX_TEXT_LENGTH}
    return render(request, "chat/room.html", context)


# What the room page's client may be told to use: the best that works, or one only.
TRANSPORTS = ("auto", "websocket", "stream", "longpoll")


@ensure_csrf_cookie
def room(request: HttpRequest, room_id: int) -> HttpResponse:
    """The room over the best transport that works here (``?transport=`` forces one)."""
    transport = request.GET.get("transport", "auto")
    return _room_page(request, room_id, transport if transport in TRANSPORTS else "auto")


@ensure_csrf_cookie
def long_poll_room(request: HttpRequest, room_id: int) -> HttpResponse:
    return _room_page(request, room_id, "longpoll")


# --- JSON for the room page -----------------------------------------------------------------

HISTORY_PAGE = 50
HISTORY_MAX_PAGE = 100
# Ids are JSON numbers: beyond this, JavaScript cannot hold them exactly.
MAX_ID = 2**53 - 1
_DIGITS = re.compile(r"[0-9]{1,16}")


def _json_error(code: str, message: str, status: int) -> JsonResponse:
    """An error in the wire protocol's shape (docs/protocol.md), none of them retryable."""
    response = JsonResponse({"error": {"code": code, "message": message, "retryable": False}}, status=status)
    response["Cache-Control"] = "no-store"
    return response


def _whole_number(request: HttpRequest, name: str, low: int) -> int | None:
    """The query parameter ``name`` as an integer from ``low`` to MAX_ID; None when absent."""
    value = request.GET.get(name)
    if value is None:
        return None
    if not _DIGITS.fullmatch(value) or not low <= int(value) <= MAX_ID:
        raise ValueError(f"{name} must be a whole number from {low} to {MAX_ID}")
    return int(value)


@require_safe
def history(request: HttpRequest, room_id: int) -> JsonResponse:
    """Older messages for a room page scrolling back: the newest ``limit`` before id ``before``
    (or the newest of all), oldest first, and whether there are older ones still."""
    try:
        before = _whole_number(request, "before", low=0)
        limit = min(_whole_number(request, "limit", low=1) or HISTORY_PAGE, HISTORY_MAX_PAGE)
    except ValueError as error:
        return _json_error("bad_request", str(error), 400)
    try:
        room = readable_room(request.user, room_id)
    except Http404:
        return _json_error("unknown_room", "no such room", 404)
    except Banned:
        return _json_error("banned", "you are banned from this room", 403)
    rows = Message.objects.filter(room=room, kind__in=SHOWN_KINDS)
    if before is not None:
        rows = rows.filter(seq__lt=before)
    fields = ("seq", "ts", "username", "text", "kind", "edited")
    page = list(rows.order_by("-seq").values_list(*fields)[: limit + 1])
    body = {
        "room": room.pk,
        # As the chat server sends each message live: the page shows both the same way.
        "messages": [
            ChatMessage(
                room=room.pk, id=seq, ts=ts, user=username, text=text, kind=kind, edited=edited
            ).wire()
            for seq, ts, username, text, kind, edited in reversed(page[:limit])
        ],
        "more": len(page) > limit,
    }
    response = JsonResponse(body)
    response["Cache-Control"] = "no-store"
    return response


@never_cache
@require_safe
def rooms_json(request: HttpRequest) -> JsonResponse:
    """The rooms this browser's user may open, for a page that lists them without a reload."""
    rooms = [
        {
            "id": room.pk,
            "name": room.name,
            "description": room.description,
            "url": room.get_absolute_url(),
            "last_id": room.last_message_id,
            "is_private": room.is_private,
        }
        for room in visible_rooms(request.user)
    ]
    return JsonResponse({"rooms": rooms})


# --- Accounts -------------------------------------------------------------------------------


def _in_minutes(seconds: int) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    return f"{minutes} minute{'s' if minutes > 1 else ''}"


def signup(request: HttpRequest) -> HttpResponse:
    """Sign up and log in; at most CHAT_SIGNUPS_PER_HOUR accounts per address per hour."""
    form = SignupForm(request.POST or None)
    wait = 0
    if request.method == "POST":
        wait = throttle.signup_wait(request)
        if not wait and form.is_valid():
            wait = throttle.take_signup(request)  # only a valid form takes a slot
            if not wait:
                login(request, form.save(), backend="django.contrib.auth.backends.ModelBackend")
                return redirect("chat:room_list")
    if not wait:
        return render(request, "registration/signup.html", {"form": form})
    error = f"Too many accounts were created from your address. Try again in {_in_minutes(wait)}."
    response = render(request, "registration/signup.html", {"form": form, "error": error}, status=429)
    response["Retry-After"] = str(wait)
    return response


class LogoutView(auth_views.LogoutView):
    """Django's logout, and a word on the next page that it happened."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = super().post(request, *args, **kwargs)
        messages.success(request, "You have logged out.")
        return response


def locked_out(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: Any = None
) -> HttpResponse:
    """django-axes' answer to a login refused for too many failures (AXES_LOCKOUT_CALLABLE).

    429 with the wait: a page, or JSON for a client that prefers it. Each failure restarts
    the cool-off, and this answers one, so the wait is the whole cool-off.
    """
    wait = math.ceil(settings.AXES_COOLOFF_TIME.total_seconds())
    message = (
        f"Too many failed logins for this account or from your address. Try again in {_in_minutes(wait)}."
    )
    response: HttpResponse
    if request.get_preferred_type(["text/html", "application/json"]) == "application/json":
        body = {"error": {"code": "rate_limited", "message": message, "retryable": True, "retry_after": wait}}
        response = JsonResponse(body, status=429)
        response["Cache-Control"] = "no-store"
    else:
        response = render(request, "registration/locked_out.html", {"message": message}, status=429)
    response["Retry-After"] = str(wait)
    return response


@never_cache
def session_state(request: HttpRequest) -> JsonResponse:
    """Who this browser is now: an open page asks after its session changed elsewhere."""
    user = request.user.get_username() if request.user.is_authenticated else None
    return JsonResponse({"user": user})
