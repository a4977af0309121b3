"""Server-rendered pages; the chat itself runs in the browser against /ws and /poll."""

from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.forms import UserCreationForm
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie

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


@ensure_csrf_cookie
def room(request: HttpRequest, room_id: int) -> HttpResponse:
    return _room_page(request, room_id, "websocket")


@ensure_csrf_cookie
def long_poll_room(request: HttpRequest, room_id: int) -> HttpResponse:
    return _room_page(request, room_id, "longpoll")


def signup(request: HttpRequest) -> HttpResponse:
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        login(request, form.save())
        return redirect("chat:room_list")
    return render(request, "registration/signup.html", {"form": form})


@never_cache
def session_state(request: HttpRequest) -> JsonResponse:
    """Who this browser is now: an open page asks after its session changed elsewhere."""
    user = request.user.get_username() if request.user.is_authenticated else None
    return JsonResponse({"user": user})
