"""Plain HTTP on the WebSocket port: health, metrics, statistics and the publish API.

A request without ``Upgrade: websocket`` lands here (see :mod:`triows._net.streams`). It is
bounded like a handshake: its head by ``MAX_HEAD``, its body by ``max_message_size`` (413),
reading, handling and answering together by ``handshake_timeout``. Every answer closes the
connection (no keep-alive: these are probes, scrapes and backend calls, not page loads).

===================  =======  ==========================================================
path                 method   answer
===================  =======  ==========================================================
``/health``          GET      200 while the process serves (503 while shutting down)
``/ready``           GET      200 when accepting and the broker is up; else 503 + reasons
``/metrics``         GET      Prometheus text (404 with ``metrics`` off)
``/stats``           GET      JSON: statistics, the monitor's samples, top channels, workers
``/api/publish``     POST     ``{"channel", "data", "idempotency_key"?}`` → seq and epoch
``/api/broadcast``   POST     ``{"channels": [...], "data", "idempotency_key"?}``
``/api/channels``    GET      channels with subscriber counts (every node's)
``/api/...``         POST     disconnect, unsubscribe, subscribe, revoke, history, channel,
                              presence (:mod:`triows._ops.control_api`)
``/api/connections`` POST     ``{"user"}`` or ``{"client"}`` → its connections (dashboard)
``/dashboard``       GET      the dashboard page (only with an API key: it uses the API)
===================  =======  ==========================================================

The ``/api/`` paths need ``X-API-Key`` and exist only when ``api_key`` is set (404 otherwise,
so a server without a key does not even say it has an API). Errors are JSON
``{"error": message}`` with the status.

A publication that has its number is published: the publish API never answers as if it had
failed after that, or a retry would publish it twice. It answers as soon as the number is
known (``block`` subscribers that ran out of room are waited for in a background task, not in
the request), and when the request's time runs out first (Redis unreachable: the publication
waits in the outage buffer) it answers 202 with ``"outcome": "unknown"`` and what it did
publish. See ``docs/http.md``.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable

import trio

from .._core.admission import Refused
from .._core.handshake import HandshakeError, HttpRequest, content_length, http_response
from .._net.streams import PlainRequest, answer
from .answers import Handler, HttpError, Response, json_response
from .api import PublishApi
from .control_api import ControlApi
from .dashboard import Dashboard
from .figures import Figures
from .monitor import Monitor
from .static import static_file
from .view import ServerView

log = logging.getLogger("triows.http")


class HttpEndpoints:
    def __init__(self, view: ServerView, monitor: Monitor) -> None:
        self._view = view
        config = view.config
        self.api = PublishApi(view)
        figures = Figures(view, monitor)
        #: path -> (method, handler, needs the API key)
        self.routes: dict[str, tuple[str, Handler, bool]] = {
            "/stats": ("GET", figures.stats, True),
            "/triows.js": ("GET", static_file("triows.js", cors=True), False),
        }
        #: What answers a path that is off, and which flag turns it on.
        self._off: dict[str, str] = {}
        control = ControlApi(view)
        if config.api_key is not None:
            self.routes["/api/publish"] = ("POST", self.api.publish, True)
            self.routes["/api/broadcast"] = ("POST", self.api.broadcast, True)
            self.routes["/api/channels"] = ("GET", control.channels, True)
            for path, handler in control.routes().items():
                self.routes[path] = ("POST", handler, True)
            self.routes.update(Dashboard(view).routes())  # the page speaks through the API
        else:
            for path in ("/dashboard", "/dashboard.js", "/dashboard.css", "/api/connections"):
                self._off[path] = "the dashboard is off: start the server with --api-key"
            for path in ("/api/publish", "/api/broadcast", "/api/channels", *control.routes()):
                self._off[path] = "the HTTP API is off: start the server with --api-key"
        if config.metrics:
            self.routes["/metrics"] = ("GET", figures.metrics, False)
        else:
            self._off["/metrics"] = "metrics are off: start the server with --metrics yes"
        if config.demo:
            # The page connects to the server's WebSocket path (any path when not restricted).
            page = static_file("demo.html", {b"__TRIOWS_PATH__": (config.path or "/")})
            self.routes["/demo"] = ("GET", page, False)
            self.routes["/"] = ("GET", self._to_demo, False)
        else:
            self._off["/demo"] = "the demo page is off: start the server with --demo"
        #: Probes an orchestrator relies on: answered at once, without reading a body and
        #: outside the HTTP pool, so that no client can make a healthy server look dead.
        self.probes: dict[str, Callable[[], Response]] = {
            "/health": self._health,
            "/ready": self._ready,
        }
        #: Requests being served, and the event set when that falls to none.
        self.in_flight = 0
        self._drained = trio.Event()

    async def serve(self, plain: PlainRequest) -> None:
        """Answer one request; the transport closes the stream afterwards. Counted until it
        is answered: the server's shutdown waits for that (:meth:`drained`)."""
        self.in_flight += 1
        try:
            await self._serve(plain)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._drained.set()

    async def drained(self) -> None:
        """Wait until no request is being served (the server stops accepting first)."""
        while self.in_flight:
            self._drained = trio.Event()
            await self._drained.wait()

    def stopping(self, deadline: float) -> None:
        """The server stops by ``deadline``: requests waiting for a publication's number
        answer before it (:meth:`PublishApi.stopping`)."""
        self.api.stopping(deadline)

    async def _serve(self, plain: PlainRequest) -> None:
        request = plain.request
        probe = self.probes.get(request.path)
        if probe is not None and request.method == "GET":
            response: Response | None = self._safely(request, probe)
        else:
            response = await self._pooled(plain)
        if response is None:  # the client left mid-request: nobody to answer
            return
        plain.ticket.closing()  # answered: the pool place is free while the answer goes out
        self._view.http_requests[response.status] += 1
        log.debug("%s %s %s -> %d", plain.remote, request.method, request.path, response.status)
        data = http_response(
            response.status,
            response.body,
            content_type=response.content_type,
            headers=response.headers,
        )
        # The request's deadline bounds the answer too; one that ran out still gets a moment
        # to say so (504) to a client that reads.
        await answer(plain.stream, data, plain.deadline)

    async def _pooled(self, plain: PlainRequest) -> Response | None:
        """A request that counts against the HTTP pool, read and answered by the request's
        deadline; None when the client left before it could be answered.

        The route, the method and the key are checked before the request takes a place, and
        only a request that carries a body (not a GET) waits for one: a client without the
        key, or one announcing a body it never sends to a GET, holds no place."""
        request = plain.request
        response: Response | None = None
        with trio.move_on_at(plain.deadline):
            try:
                handler = self._route(request)
                plain.ticket.http(plain.ip)
                body = b""
                if request.method != "GET":
                    body = await _read_body(plain, self._view.config.max_message_size)
                response = await handler(request, body)
            except _PeerGone:
                log.debug("%s left during %s %s", plain.remote, request.method, request.path)
                return None
            except Refused as exc:
                response = json_response(exc.status, {"error": exc.reason})
            except HttpError as exc:
                response = json_response(exc.status, {"error": exc.message, **exc.extra})
            except HandshakeError as exc:
                response = Response(
                    exc.status,
                    json.dumps({"error": exc.reason}).encode() + b"\n",
                    headers=exc.headers,
                )
            except Exception:
                response = self._failure(request)
        if response is None:
            timeout = self._view.config.handshake_timeout
            response = json_response(504, {"error": f"not answered within {timeout:g}s"})
        return response

    def _safely(self, request: HttpRequest, answer: Callable[[], Response]) -> Response:
        try:
            return answer()
        except Exception:
            return self._failure(request)

    @staticmethod
    def _failure(request: HttpRequest) -> Response:
        # A bug of ours: the client gets a plain 500, the log the details.
        log.exception("%s %s failed", request.method, request.path)
        return json_response(500, {"error": "internal error"})

    def _route(self, request: HttpRequest) -> Handler:
        """The handler of a request, once its path, method and key are right."""
        route = self.routes.get(request.path)
        if request.path in self.probes:
            raise HttpError(405, f"{request.path} takes GET")
        if route is None:
            off = self._off.get(request.path)
            raise HttpError(404, off or f"nothing at {request.path}")
        method, handler, needs_key = route
        if request.method != method:
            raise HttpError(405, f"{request.path} takes {method}") from None
        if needs_key and self._view.config.api_key is not None:
            self._check_key(request)
        return handler

    def _check_key(self, request: HttpRequest) -> None:
        key = self._view.config.api_key
        given = request.headers.get("x-api-key")
        if given is None:
            raise HttpError(401, "missing X-API-Key header")
        assert key is not None
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise HttpError(401, "wrong API key")

    # -- probes ---------------------------------------------------------------------------------

    def _health(self) -> Response:
        view = self._view
        if view.closing:
            return json_response(503, {"status": "shutting down", "server_id": view.server_id})
        return json_response(200, {"status": "ok", "server_id": view.server_id})

    def _ready(self) -> Response:
        reasons = self._view.not_ready()
        if reasons:
            return json_response(503, {"ready": False, "reasons": reasons})
        return json_response(200, {"ready": True})

    async def _to_demo(self, request: HttpRequest, body: bytes) -> Response:
        return Response(302, b"", "text/plain; charset=utf-8", (("Location", "/demo"),))


class _PeerGone(Exception):
    """The client went away while its request was being read."""


async def _read_body(plain: PlainRequest, limit: int) -> bytes:
    length = content_length(plain.request, limit)
    body = bytearray(plain.leftover[:length])
    while len(body) < length:
        try:
            data = await plain.stream.receive_some(min(65536, length - len(body)))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            raise _PeerGone from None
        if not data:
            raise HttpError(400, "request body ended early")
        body += data
    return bytes(body)
