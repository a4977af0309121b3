from django.contrib.auth import login
from django.contrib.auth.forms import UserCreationForm
from django.shortcuts import get_object_or_404, redirect, render

from .models import ChatRoom


def room_list(request):
    return render(request, "chat/room_list.html", {"rooms": ChatRoom.objects.all()})


def room(request, room_id: int):
    return render(request, "chat/room.html", {"room": get_object_or_404(ChatRoom, pk=room_id), "transport": "websocket"})


def long_poll_room(request, room_id: int):
    return render(request, "chat/room.html", {"room": get_object_or_404(ChatRoom, pk=room_id), "transport": "longpoll"})


def signup(request):
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        login(request, form.save())
        return redirect("chat:room_list")
    return render(request, "registration/signup.html", {"form": form})
