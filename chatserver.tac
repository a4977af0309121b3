# Run with: twistd -n -y chatserver.tac   (CHAT_PORT and CHAT_INTERFACE choose the address;
# CHAT_WORKERS=N serves the port from N processes, which needs CHAT_REDIS_URL)
import os
import sys

# twistd does not put the project on the path; the .tac knows where it lives.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_twisted_chat.settings")
django.setup()

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from twisted.application import service
from twisted.internet import reactor

from twisted_chat.server import ChatServer
from twisted_chat.workers import WorkerSupervisor

port = int(os.environ.get("CHAT_PORT", "8000"))
interface = os.environ.get("CHAT_INTERFACE", "127.0.0.1")
application = service.Application("django-twisted-chat")
if "CHAT_WORKER_FD" in os.environ:  # one of a supervisor's workers
    ChatServer(
        reactor,
        port,
        interface,
        listen_fd=int(os.environ["CHAT_WORKER_FD"]),
        worker=int(os.environ.get("CHAT_WORKER_INDEX", "0")),
    ).setServiceParent(application)
elif settings.CHAT_WORKERS > 1:
    if not settings.CHAT_REDIS_URL:
        raise ImproperlyConfigured(
            f"CHAT_WORKERS={settings.CHAT_WORKERS} needs CHAT_REDIS_URL: without Redis, processes "
            "cannot share rooms. Set CHAT_REDIS_URL=redis://host:port/0, or CHAT_WORKERS=1."
        )
    WorkerSupervisor(reactor, port, interface, settings.CHAT_WORKERS, os.path.abspath(__file__)).setServiceParent(
        application
    )
else:
    ChatServer(reactor, port, interface).setServiceParent(application)
