"""``/healthz``: 200 when the database answers, 503 with the reason when it does not.

The 200 body also counts open connections, which tests and operators wait on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from .http_json import json_body
from .site import can_answer
from .storage import archive


class HealthResource(Resource):
    isLeaf = True

    def __init__(
        self, reactor: Any, run_query: Any, stats: Callable[[], dict[str, int]], timeout: float = 5.0
    ):
        super().__init__()
        self._stats = stats
        self._reactor = reactor
        self._run_query = run_query
        self._timeout = timeout

    def render_GET(self, request: Request) -> int:
        d = self._run_query(archive.ping)
        d.addTimeout(self._timeout, self._reactor)
        d.addCallbacks(self._healthy, self._unhealthy, callbackArgs=(request,), errbackArgs=(request,))
        return NOT_DONE_YET

    def _healthy(self, _: None, request: Request) -> None:
        _respond(request, json_body(request, {"status": "ok", **self._stats()}))

    def _unhealthy(self, failure: Failure, request: Request) -> None:
        what = failure.getErrorMessage() or getattr(failure.type, "__name__", "error")
        reason = f"database: {what}"
        _respond(request, json_body(request, {"status": "unavailable", "reason": reason}, 503))


def _respond(request: Request, body: bytes) -> None:
    if can_answer(request):
        request.write(body)
        request.finish()
