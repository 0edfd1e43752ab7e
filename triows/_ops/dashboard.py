"""The dashboard: ``GET /dashboard`` and its lookup of connections, ``POST /api/connections``.

The page (``triows/static/dashboard.html``, ``.js``, ``.css``: plain files, no build step) is
served only when the HTTP API has a key, since everything it shows comes through that API:
``/stats`` once a second for the charts (the monitor's ring at start, then its newest samples),
``/api/channels`` and the channel endpoints, ``/api/publish``, and the server API's
``/api/disconnect`` and ``/api/unsubscribe``. The page asks for the key and keeps it in the
tab's ``sessionStorage``; it never goes around the API. Polling, not a stream: each request is
admitted and bounded like every other HTTP client's, costs one small JSON answer a second, and
needs no task that outlives it (see ``docs/dashboard.md``).

``POST /api/connections {"user": U}`` or ``{"client": ID}`` lists that user's (or client's)
connections to this process: address, subscriptions, traffic. It scans the connections in
steps (a checkpoint every :data:`SCAN_STEP`), so that a lookup among 100,000 connections never
stalls the others, and lists at most :data:`MAX_LISTED` of them (``total`` says how many).
"""

from __future__ import annotations

from typing import Any

import trio

from .._core.handshake import HttpRequest
from .answers import Handler, HttpError, Response, json_response
from .api import _object
from .static import static_file
from .view import Connected, ServerView

#: Connections a lookup lists (``total`` counts them all).
MAX_LISTED = 100
#: Connections looked at between two checkpoints.
SCAN_STEP = 1000
#: Longest user or client id a lookup takes.
MAX_ID = 256

#: The page talks to its own origin only, runs only its own script, and cannot be framed (its
#: buttons disconnect clients: no clickjacking).
PAGE_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)


class Dashboard:
    def __init__(self, view: ServerView) -> None:
        self._view = view

    def routes(self) -> dict[str, tuple[str, Handler, bool]]:
        """path -> (method, handler, needs the API key): the page and its files are public
        code (the key is asked for by the page), the lookup needs the key."""
        return {
            "/dashboard": ("GET", static_file("dashboard.html", headers=PAGE_HEADERS), False),
            "/dashboard.js": ("GET", static_file("dashboard.js", headers=PAGE_HEADERS), False),
            "/dashboard.css": ("GET", static_file("dashboard.css", headers=PAGE_HEADERS), False),
            "/api/connections": ("POST", self.connections, True),
        }

    async def connections(self, request: HttpRequest, body: bytes) -> Response:
        payload = _object(body, required=(), optional=("user", "client"))
        if len(payload) != 1:
            raise HttpError(400, "give either 'user' or 'client'")
        (field, wanted), *_ = payload.items()
        if not isinstance(wanted, str) or not 1 <= len(wanted) <= MAX_ID:
            raise HttpError(400, f"{field} must be a string of 1 to {MAX_ID} characters")
        found, total = await self._find(field, wanted)
        now = trio.current_time()
        server_id = self._view.server_id
        return json_response(
            200,
            {
                "connections": [_describe(conn, now, server_id) for conn in found],
                "total": total,
                "scope": "process",
                "server_id": server_id,
            },
        )

    async def _find(self, field: str, wanted: str) -> tuple[list[Connected], int]:
        found: list[Connected] = []
        total = 0
        for index, conn in enumerate(self._view.connections()):
            if index % SCAN_STEP == SCAN_STEP - 1:
                await trio.lowlevel.checkpoint()
            key = conn.client_id if field == "client" else conn.principal.user_id
            if key == wanted:
                total += 1
                if len(found) < MAX_LISTED:
                    found.append(conn)
                if field == "client":
                    break  # client ids are unique
        return found, total


def _describe(conn: Connected, now: float, server_id: str) -> dict[str, Any]:
    stats = conn.statistics(now)
    return {
        "client": stats.client_id,
        "user": stats.user_id,
        "remote": stats.remote,
        "connected_for": round(stats.connected_for, 3),
        "subscriptions": sorted(stats.subscriptions),
        "frames_in": stats.frames_in,
        "frames_out": stats.frames_out,
        "queued_frames": stats.queued_frames,
        "queued_bytes": stats.queued_bytes,
        "dropped": stats.dropped,
        "server_id": server_id,
    }
