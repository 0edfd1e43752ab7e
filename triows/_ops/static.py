"""Files shipped in ``triows/static`` (``triows.js``, the demo page), served from memory."""

from __future__ import annotations

import hashlib
from importlib import resources

from .._core.handshake import HttpRequest
from .answers import Handler, Response

STATIC_TYPES = {
    "js": "text/javascript; charset=utf-8",
    "html": "text/html; charset=utf-8",
    "css": "text/css; charset=utf-8",
}


def static_file(
    name: str,
    fill: dict[bytes, str] | None = None,
    *,
    cors: bool = False,
    headers: tuple[tuple[str, str], ...] = (),
) -> Handler:
    """A file shipped in ``triows/static``, read once (``fill`` replaces placeholders),
    with a validator: a browser asks again after ``max-age`` and gets a 304 while the file
    is unchanged. ``cors``: any page may load it (public code, e.g. ``triows.js``
    imported by an application served from another origin); ``headers``: more headers (the
    dashboard's content security policy)."""
    body = resources.files("triows").joinpath("static", name).read_bytes()
    for placeholder, value in (fill or {}).items():
        body = body.replace(placeholder, value.encode())
    etag = '"' + hashlib.sha1(body).hexdigest()[:20] + '"'
    kind = STATIC_TYPES[name.rpartition(".")[2]]
    headers = (("Cache-Control", "public, max-age=300"), ("ETag", etag), *headers)
    if cors:
        headers += (("Access-Control-Allow-Origin", "*"),)

    async def serve(request: HttpRequest, _: bytes) -> Response:
        if request.headers.get("if-none-match") == etag:
            return Response(304, b"", kind, headers)
        return Response(200, body, kind, headers)

    return serve
