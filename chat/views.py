"""Server-rendered pages; the chat itself runs in the browser against /ws and /poll."""

import math
from typing import Any

from django.conf import settings
from django.contrib.auth import login
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie

from . import throttle
from .forms import SignupForm
from .models import ChatRoom


def visible_rooms(user) -> QuerySet[ChatRoom]:
    """Public rooms, and the private ones the user is a member of."""
    if not user.is_authenticated:
        return ChatRoom.objects.filter(is_private=False)
    return ChatRoom.objects.filter(Q(is_private=False) | Q(members=user)).distinct()


def room_list(request: HttpRequest) -> HttpResponse:
    return render(request, "chat/room_list.html", {"rooms": visible_rooms(request.user)})


def _room_page(request: HttpRequest, room_id: int, transport: str) -> HttpResponse:
    room = get_object_or_404(ChatRoom, pk=room_id)
    if not room.is_visible_to(request.user):
        raise Http404("No such room.")
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
