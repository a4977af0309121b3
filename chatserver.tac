# Run with: twistd -n -y chatserver.tac   (CHAT_PORT and CHAT_INTERFACE choose the address)
import os
import sys

# twistd does not put the project on the path; the .tac knows where it lives.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_twisted_chat.settings")
django.setup()

from twisted.application import service
from twisted.internet import reactor

from twisted_chat.server import ChatServer

application = service.Application("django-twisted-chat")
ChatServer(
    reactor,
    port=int(os.environ.get("CHAT_PORT", "8000")),
    interface=os.environ.get("CHAT_INTERFACE", "127.0.0.1"),
).setServiceParent(application)
