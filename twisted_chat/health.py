"""``/healthz``: 200 when the database answers, 503 when it does not.

On the public port that is all it says. On the operators' port (``stats`` given) it also
says why it is unhealthy and counts open connections, which tests and operators wait on.
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
        self,
        reactor: Any,
        run_query: Any,
        stats: Callable[[], dict[str, int]] | None = None,
        timeout: float = 5.0,
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
        stats = self._stats() if self._stats is not None else {}
        _respond(request, json_body(request, {"status": "ok", **stats}))

    def _unhealthy(self, failure: Failure, request: Request) -> None:
        body = {"status": "unavailable"}
        if self._stats is not None:
            what = failure.getErrorMessage() or getattr(failure.type, "__name__", "error")
            body["reason"] = f"database: {what}"
        _respond(request, json_body(request, body, 503))


def _respond(request: Request, body: bytes) -> None:
    if can_answer(request):
        request.write(body)
        request.finish()
