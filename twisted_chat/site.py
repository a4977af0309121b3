"""The one ``Site``: Django at the root, the chat's own resources beside it."""

from __future__ import annotations

from autobahn.twisted.resource import WebSocketResource, WSGIRootResource
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.wsgi import WSGIResource


def build_site(
    django: WSGIResource,
    websocket: WebSocketResource,
    longpoll: Resource,
    static: Resource,
    health: Resource,
    extra: dict[bytes, Resource] | None = None,
) -> Site:
    """Every path not claimed here (``/ws``, ``/poll``, ``/static``, ``/healthz``) goes to Django."""
    children: dict[bytes, Resource] = {
        b"ws": websocket,
        b"poll": longpoll,
        b"static": static,
        b"healthz": health,
        **(extra or {}),
    }
    return Site(WSGIRootResource(django, children))
