"""Django over WSGI, on two thread pools: one for pages, one for requests that hash passwords.

Hashing a password takes a core for a good fraction of a second by design; sixteen
logins at once would otherwise fill every page thread, and every visitor would wait.
Each pool's queue is bounded: past it, a request is answered 503 at once.
"""

from __future__ import annotations

import re
from typing import Any, cast

from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.wsgi import WSGIResource

from .errors import ProtocolError
from .http_json import error_body
from .threads import ThreadPoolService

# The POSTs that check or set a password: Django's login and password forms, ours, the admin's.
_HASHES_PASSWORDS = re.compile(rb"^/(accounts/|admin/(login|password_change)/)")


class DjangoResource(Resource):
    isLeaf = True

    def __init__(
        self, reactor: Any, application: Any, pages: ThreadPoolService, passwords: ThreadPoolService
    ):
        super().__init__()
        self._pools = {
            pool: WSGIResource(reactor, cast(ThreadPool, pool), application) for pool in (pages, passwords)
        }
        self._pages = pages
        self._passwords = passwords

    def render(self, request: Request) -> bytes | int:
        pool = self._pages
        if request.method == b"POST" and _HASHES_PASSWORDS.match(request.path):
            pool = self._passwords
        if pool.full:
            pool.refused += 1
            request.setHeader(b"retry-after", b"5")
            return error_body(request, ProtocolError("unavailable", "the server is busy: try again shortly"))
        return self._pools[pool].render(request)
