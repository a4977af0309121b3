"""People and rooms the Django tests share."""

import pytest
from django.contrib.auth.models import User

from chat.models import ChatRoom

PASSWORD = "pw-a-long-one-123456"


@pytest.fixture
def alice(db):
    return User.objects.create_user("alice", password="pw-alice-123456")


@pytest.fixture
def bob(db):
    return User.objects.create_user("bob", password=PASSWORD)


@pytest.fixture
def staff(db):
    return User.objects.create_user("stella", password=PASSWORD, is_staff=True)


@pytest.fixture
def lobby(db):
    return ChatRoom.objects.get(name="Lobby")


@pytest.fixture
def private_room(alice):
    room = ChatRoom.objects.create(name="Secret", is_private=True)
    room.members.add(alice)
    return room
