"""WSGI entry point; chatserver.tac mounts it in Twisted at the site root."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_twisted_chat.settings")

application = get_wsgi_application()
