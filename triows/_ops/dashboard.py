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
connections: address, subscriptions, traffic, and the server that holds each. It is a control
request (``Broker.control``, as ``/api/disconnect`` is): in process this node answers, with
Redis every node (and every ``--workers`` process) answers for the connections it holds, found
through the server's index by user or client id, never by a scan. Each node lists at most
:data:`MAX_LISTED` (``total`` counts them all).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._brokers.seam import BrokerUnavailableError
from .._core.handshake import HttpRequest
from .._core.ids import IdError, check_id
from .answers import Handler, HttpError, Response, json_response
from .api import object_body
from .static import static_file
from .view import Connected, ConnectionStatistics, ServerView

#: Connections a lookup lists (``total`` counts them all).
MAX_LISTED = 100
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
        payload = object_body(body, required=(), optional=("user", "client"))
        if len(payload) != 1:
            raise HttpError(400, "give either 'user' or 'client'")
        (field, wanted), *_ = payload.items()
        try:
            check_id(wanted, field, MAX_ID)
        except IdError as exc:
            raise HttpError(400, str(exc)) from None
        view = self._view
        lookup = {"op": CONNECTIONS, field: wanted}
        try:
            answers = await view.broker.control(lookup, view.config.handshake_timeout / 2)
        except BrokerUnavailableError as exc:
            raise HttpError(503, str(exc)) from None
        found: list[dict[str, Any]] = []
        total = 0
        for answer in answers:
            found += answer.get("connections") or []
            total += int(answer.get("total") or 0)
        found.sort(key=lambda c: (str(c.get("server_id")), -float(c.get("connected_for") or 0)))
        return json_response(
            200,
            {
                "connections": found[:MAX_LISTED],
                "total": total,
                "nodes": len(answers),
                "server_id": view.server_id,
            },
        )


#: The control request's operation (served on every node by :func:`connections_answer`).
CONNECTIONS = "connections"


def connections_answer(found: Sequence[Connected], now: float) -> dict[str, Any]:
    """One node's answer to a lookup: its connections of the user (or client) asked for."""
    return {
        "connections": [describe(conn.statistics(now)) for conn in found[:MAX_LISTED]],
        "total": len(found),
    }


def describe(stats: ConnectionStatistics) -> dict[str, Any]:
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
        "server_id": stats.server_id,
        "transport": stats.transport,
    }
