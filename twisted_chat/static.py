"""Static files served by Twisted itself, from where Django's staticfiles would find them.

``static.File`` lists directories and sends no caching headers; these subclasses answer
404 for directories and let browsers cache (for a year when names carry a content hash).
"""

from __future__ import annotations

import re
from pathlib import Path

from django.conf import settings
from django.contrib.staticfiles import finders
from twisted.web import pages, resource, static
from twisted.web.server import Request

_HASHED_NAME = re.compile(rb"\.[0-9a-f]{12}\.[A-Za-z0-9]+$")


class StaticFile(static.File):
    def directoryListing(self) -> resource.Resource:
        return pages.notFound()

    def render_GET(self, request: Request) -> bytes | int:
        if _HASHED_NAME.search(request.path):
            request.setHeader(b"cache-control", b"public, max-age=31536000, immutable")
        else:
            request.setHeader(b"cache-control", b"public, max-age=300")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return super().render_GET(request)


class StaticFilesResource(resource.Resource):
    """Serves ``collectstatic`` output when present, else what the staticfiles finders find."""

    def __init__(self, root: Path | None = None):
        super().__init__()
        self._root = root

    def getChild(self, path: bytes, request: Request) -> resource.Resource:
        rest = request.postpath or []
        parts = [path, *rest]
        request.prepath = [*(request.prepath or []), *rest]
        request.postpath = []
        try:
            relative = "/".join(part.decode("utf-8") for part in parts)
        except UnicodeDecodeError:
            return pages.notFound()
        if not relative or any(part in ("", ".", "..") for part in relative.split("/")):
            return pages.notFound()
        candidate: Path | None
        if self._root is not None:
            candidate = self._root / relative
        else:
            found = finders.find(relative)
            candidate = Path(found) if isinstance(found, str) else None
        if candidate is None or not candidate.is_file():
            return pages.notFound()
        return StaticFile(str(candidate))


def static_resource() -> StaticFilesResource:
    root = Path(settings.STATIC_ROOT)
    collected = (root / "staticfiles.json").exists() or (root.is_dir() and not settings.DEBUG)
    return StaticFilesResource(root if collected else None)
