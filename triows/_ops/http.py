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
``/api/channels``    GET      channels with subscriber counts
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

import functools
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import attrs
import trio

from .._brokers.seam import BrokerUnavailableError, OutcomeUnknownError
from .._core import protocol
from .._core.admission import Refused
from .._core.handshake import HandshakeError, HttpRequest, content_length, http_response
from .._core.names import ChannelNameError, validate_channel
from .._core.numbers import ascii_int
from .._net.streams import PlainRequest, answer
from . import metrics as _metrics
from . import shared_stats as _shared_stats

if TYPE_CHECKING:
    from .._brokers.fanout import Subscriber
    from .._server.server import Server

log = logging.getLogger("triows.http")

JSON = "application/json"
STATIC_TYPES = {"js": "text/javascript; charset=utf-8", "html": "text/html; charset=utf-8"}
#: Channels one ``/api/broadcast`` may name.
MAX_BROADCAST_CHANNELS = 1000
#: Longest ``idempotency_key``.
MAX_IDEMPOTENCY_KEY = 256
#: Samples ``/stats`` returns unless ``?history=N`` asks for another number.
DEFAULT_HISTORY = 60
#: Channels ``/api/channels`` lists unless ``?limit=N`` asks for another number.
DEFAULT_CHANNEL_LIMIT = 1000
#: HTTP publications whose ``block`` subscribers are still waited for in the background (each
#: holds at most ``block_timeout``). A subscriber is over capacity by one frame per waiting
#: publication, as with waiting WebSocket publishers; beyond this many a publication is
#: refused (503) before it is published.
MAX_BLOCKED_WAITS = 256
#: How long before the request's deadline a publish stops waiting for its number, to answer
#: "unknown" in time (at most this share of ``handshake_timeout``).
ANSWER_MARGIN = 0.25
ANSWER_MARGIN_SHARE = 0.1


@attrs.frozen
class Response:
    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


class HttpError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.extra = extra


#: The body's marker of a publication whose fate is not known yet (202).
_UNKNOWN = {"outcome": "unknown"}


def _json(status: int, value: Any) -> Response:
    return Response(status, json.dumps(value, separators=(",", ":")).encode() + b"\n")


Handler = Callable[[HttpRequest, bytes], Awaitable[Response]]


class HttpEndpoints:
    def __init__(self, server: Server) -> None:
        self._server = server
        config = server.config
        #: Publications whose ``block`` subscribers are being waited for in the background.
        self.blocked_waits = 0
        #: path -> (method, handler, needs the API key)
        self.routes: dict[str, tuple[str, Handler, bool]] = {
            "/stats": ("GET", self._stats, True),
            "/triows.js": ("GET", self._static("triows.js", cors=True), False),
        }
        #: What answers a path that is off, and which flag turns it on.
        self._off: dict[str, str] = {}
        if config.api_key is not None:
            self.routes["/api/publish"] = ("POST", self._publish, True)
            self.routes["/api/broadcast"] = ("POST", self._broadcast, True)
            self.routes["/api/channels"] = ("GET", self._channels, True)
        else:
            for path in ("/api/publish", "/api/broadcast", "/api/channels"):
                self._off[path] = "the HTTP API is off: start the server with --api-key"
        if config.metrics:
            self.routes["/metrics"] = ("GET", self._metrics, False)
        else:
            self._off["/metrics"] = "metrics are off: start the server with --metrics yes"
        if config.demo:
            # The page connects to the server's WebSocket path (any path when not restricted).
            page = self._static("demo.html", {b"__TRIOWS_PATH__": (config.path or "/")})
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

    async def serve(self, plain: PlainRequest) -> None:
        """Answer one request; the transport closes the stream afterwards."""
        request = plain.request
        probe = self.probes.get(request.path)
        if probe is not None and request.method == "GET":
            response: Response | None = self._safely(request, probe)
        else:
            response = await self._pooled(plain)
        if response is None:  # the client left mid-request: nobody to answer
            return
        plain.ticket.closing()  # answered: the pool place is free while the answer goes out
        self._server.http_requests[response.status] += 1
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
                    body = await _read_body(plain, self._server.config.max_message_size)
                response = await handler(request, body)
            except _PeerGone:
                log.debug("%s left during %s %s", plain.remote, request.method, request.path)
                return None
            except Refused as exc:
                response = _json(exc.status, {"error": exc.reason})
            except HttpError as exc:
                response = _json(exc.status, {"error": exc.message, **exc.extra})
            except HandshakeError as exc:
                response = Response(
                    exc.status,
                    json.dumps({"error": exc.reason}).encode() + b"\n",
                    headers=exc.headers,
                )
            except Exception:
                response = self._failure(request)
        if response is None:
            timeout = self._server.config.handshake_timeout
            response = _json(504, {"error": f"not answered within {timeout:g}s"})
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
        return _json(500, {"error": "internal error"})

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
        if needs_key and self._server.config.api_key is not None:
            self._check_key(request)
        return handler

    def _check_key(self, request: HttpRequest) -> None:
        key = self._server.config.api_key
        given = request.headers.get("x-api-key")
        if given is None:
            raise HttpError(401, "missing X-API-Key header")
        assert key is not None
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise HttpError(401, "wrong API key")

    # -- static files ---------------------------------------------------------------------------

    def _static(
        self, name: str, fill: dict[bytes, str] | None = None, *, cors: bool = False
    ) -> Handler:
        """A file shipped in ``triows/static``, read once (``fill`` replaces placeholders),
        with a validator: a browser asks again after ``max-age`` and gets a 304 while the file
        is unchanged. ``cors``: any page may load it (public code, e.g. ``triows.js``
        imported by an application served from another origin)."""
        body = resources.files("triows").joinpath("static", name).read_bytes()
        for placeholder, value in (fill or {}).items():
            body = body.replace(placeholder, value.encode())
        etag = '"' + hashlib.sha1(body).hexdigest()[:20] + '"'
        kind = STATIC_TYPES[name.rpartition(".")[2]]
        headers: tuple[tuple[str, str], ...] = (
            ("Cache-Control", "public, max-age=300"),
            ("ETag", etag),
        )
        if cors:
            headers += (("Access-Control-Allow-Origin", "*"),)

        async def serve(request: HttpRequest, _: bytes) -> Response:
            if request.headers.get("if-none-match") == etag:
                return Response(304, b"", kind, headers)
            return Response(200, body, kind, headers)

        return serve

    # -- probes and figures ---------------------------------------------------------------------

    def _health(self) -> Response:
        server = self._server
        if server.closing:
            return _json(503, {"status": "shutting down", "server_id": server.server_id})
        return _json(200, {"status": "ok", "server_id": server.server_id})

    def _ready(self) -> Response:
        reasons = self._server.not_ready()
        if reasons:
            return _json(503, {"ready": False, "reasons": reasons})
        return _json(200, {"ready": True})

    async def _to_demo(self, request: HttpRequest, body: bytes) -> Response:
        return Response(302, b"", "text/plain; charset=utf-8", (("Location", "/demo"),))

    async def _metrics(self, request: HttpRequest, body: bytes) -> Response:
        server = self._server
        own = _metrics.collect(server)
        families = [own]
        directory = server.config.shared_stats_dir
        if directory is not None:
            # Under --workers: what this answer says of this worker goes to its file first,
            # so that no later scrape, on any worker, reads less (triows._ops.shared_stats).
            write = functools.partial(_shared_stats.write, directory, own, server.monitor.summary())
            try:
                await trio.to_thread.run_sync(write)
            except OSError as exc:
                log.warning("cannot write shared statistics to %s: %s", directory, exc)
            families += await trio.to_thread.run_sync(
                _shared_stats.read_other_families, directory, server.config.monitor_interval
            )
        text = _metrics.render(_metrics.merge(families))
        return Response(200, text, _metrics.CONTENT_TYPE_LATEST)

    async def _other_workers(self) -> list[dict[str, Any]]:
        """Under ``--workers``: the other workers' latest figures (none otherwise)."""
        config = self._server.config
        if config.shared_stats_dir is None:
            return []
        return await trio.to_thread.run_sync(
            _shared_stats.read_others, config.shared_stats_dir, config.monitor_interval
        )

    async def _stats(self, request: HttpRequest, body: bytes) -> Response:
        server = self._server
        wanted = _int_parameter(request, "history", DEFAULT_HISTORY)
        samples = list(server.monitor.samples)[-wanted:] if wanted else []
        workers = [server.monitor.summary()]
        workers += [record["summary"] for record in await self._other_workers()]
        return _json(
            200,
            {
                "server": attrs.asdict(server.statistics()),
                "monitor": {
                    "interval": server.monitor.interval,
                    "samples": [attrs.asdict(sample) for sample in samples],
                },
                "workers": sorted(workers, key=lambda w: str(w.get("worker"))),
                "total": total(workers),
            },
        )

    # -- the publish API ------------------------------------------------------------------------

    async def _publish(self, request: HttpRequest, body: bytes) -> Response:
        payload = _object(body, required=("channel", "data"), optional=("idempotency_key",))
        channel = _channel(payload["channel"])
        key = _idempotency_key(payload.get("idempotency_key"))
        try:
            with trio.move_on_at(self._answer_deadline()):
                return _json(200, await self._publish_one(channel, payload["data"], key))
        except OutcomeUnknownError:
            pass
        return _json(202, {**_UNKNOWN, "channel": channel, "error": self._unknown_reason()})

    async def _broadcast(self, request: HttpRequest, body: bytes) -> Response:
        payload = _object(body, required=("channels", "data"), optional=("idempotency_key",))
        channels = payload["channels"]
        if not isinstance(channels, list) or not channels:
            raise HttpError(400, "channels must be a non-empty list of channel names")
        if len(channels) > MAX_BROADCAST_CHANNELS:
            raise HttpError(400, f"at most {MAX_BROADCAST_CHANNELS} channels per broadcast")
        names = [_channel(name) for name in channels]
        if len(set(names)) != len(names):
            raise HttpError(400, "channels must not repeat a name")
        key = _idempotency_key(payload.get("idempotency_key"))
        results: list[dict[str, Any]] = []
        with trio.move_on_at(self._answer_deadline()):
            for name in names:
                try:
                    results.append(await self._publish_one(name, payload["data"], key))
                except OutcomeUnknownError:
                    break
                except HttpError as exc:
                    # What was published stays published: say which, so that a retry (with
                    # the same idempotency key) is safe.
                    raise HttpError(
                        exc.status,
                        exc.message,
                        outcome="partial" if results else "not_published",
                        results=results,
                        not_published=names[len(results) :],
                    ) from None
            else:
                return _json(200, {"results": results})
        # Out of time while one channel waited for its number (or the server stopped before
        # it knew): that one may yet be published, the rest were not.
        return _json(
            202,
            {
                **_UNKNOWN,
                "results": results,
                "unknown": [names[len(results)]],
                "not_published": names[len(results) + 1 :],
                "error": self._unknown_reason(),
            },
        )

    def _answer_deadline(self) -> float:
        """When a publish stops waiting for its number: a little before the request's own
        deadline (``serve`` answers 504 at that deadline, which would read as a failure)."""
        timeout = self._server.config.handshake_timeout
        margin = min(ANSWER_MARGIN, timeout * ANSWER_MARGIN_SHARE)
        return trio.current_effective_deadline() - margin

    def _unknown_reason(self) -> str:
        server = self._server
        why = (
            "the server is stopping"
            if server.closing
            else "Redis is unreachable"
            if not server.broker.up.value
            else "the broker is slow"
        )
        return (
            f"not numbered in time ({why}); it may still be published: retry with the same "
            "idempotency_key to learn its seq without publishing it twice"
        )

    async def _publish_one(self, channel: str, data: Any, key: str | None) -> dict[str, Any]:
        """Publish and answer once numbered; the ``block`` subscribers it filled up are waited
        for in the background (a slot of :data:`MAX_BLOCKED_WAITS`, reserved first)."""
        from .._server.server import DataTooLargeError

        if self.blocked_waits >= MAX_BLOCKED_WAITS:
            raise HttpError(
                503,
                f"{self.blocked_waits} publications are waiting for 'block' subscribers to "
                "make room; try again later",
            )
        self.blocked_waits += 1
        waiting = False
        try:
            published, blocked = await self._server.publish_numbered(
                channel, data, idempotency_key=key
            )
            waiting = self._wait_in_background(blocked)
        except DataTooLargeError as exc:
            raise HttpError(413, str(exc)) from None
        except OutcomeUnknownError:
            raise  # not a refusal: the caller answers "unknown"
        except BrokerUnavailableError as exc:
            raise HttpError(503, str(exc)) from None
        except TypeError as exc:  # cannot happen with data decoded from JSON; kept honest
            raise HttpError(400, str(exc)) from None
        finally:
            if not waiting:
                self.blocked_waits -= 1
        return {"channel": published.channel, "seq": published.seq, "epoch": published.epoch}

    def _wait_in_background(self, blocked: list[Subscriber]) -> bool:
        """Start waiting for ``blocked`` in a task of the server's connections nursery (which
        then releases the reserved slot); False when there is nothing to wait for."""
        nursery = self._server._connections_nursery
        if not blocked or nursery is None:
            return False
        nursery.start_soon(self._wait_for_blocked, blocked)
        return True

    async def _wait_for_blocked(self, blocked: list[Subscriber]) -> None:
        try:
            await self._server.fanout.wait_for_blocked(blocked)
        except Exception:  # a bug of ours must not reach the server
            log.exception("waiting for block subscribers after an HTTP publish failed")
        finally:
            self.blocked_waits -= 1

    async def _channels(self, request: HttpRequest, body: bytes) -> Response:
        limit = _int_parameter(request, "limit", DEFAULT_CHANNEL_LIMIT)
        channels = sorted(self._server.channel_statistics(), key=lambda c: (-c.subscribers, c.name))
        listed = [
            {"channel": c.name, "subscribers": c.subscribers, "seq": c.seq, "epoch": c.epoch}
            for c in channels[:limit]
        ]
        return _json(200, {"channels": listed, "total": len(channels)})


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


def _object(body: bytes, *, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, Any]:
    """A JSON object body, decoded and checked as WebSocket frames are (one validation)."""
    try:
        payload = protocol.decode_json(body.decode("utf-8"), unique_keys=True)
    except UnicodeDecodeError:
        raise HttpError(400, "body is not valid JSON: not UTF-8") from None
    except protocol.ProtocolError as exc:
        raise HttpError(400, f"body is {exc.message}") from None
    if not isinstance(payload, dict):
        raise HttpError(400, "body must be a JSON object")
    missing = [name for name in required if name not in payload]
    if missing:
        raise HttpError(400, f"missing field {missing[0]!r}")
    unknown = sorted(set(payload) - set(required) - set(optional))
    if unknown:
        raise HttpError(400, f"unknown field {unknown[0]!r}")
    if "data" in payload:
        try:
            protocol.check_data(payload["data"])
        except protocol.ProtocolError as exc:
            raise HttpError(400, exc.message) from None
    return payload


def _channel(name: Any) -> str:
    if not isinstance(name, str):
        raise HttpError(400, "a channel name must be a string")
    try:
        return validate_channel(name)
    except ChannelNameError as exc:
        raise HttpError(400, str(exc)) from None


def _idempotency_key(key: Any) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        raise HttpError(
            400, f"idempotency_key must be a string of 1 to {MAX_IDEMPOTENCY_KEY} characters"
        )
    return key


def _int_parameter(request: HttpRequest, name: str, default: int) -> int:
    values = dict(parse_qsl(request.query))
    text = values.get(name)
    if text is None:
        return default
    value = ascii_int(text)
    if value is None:
        raise HttpError(400, f"{name} must be a whole number of at most 18 digits")
    return value


#: Summary fields where the whole server's figure is the worst worker's, not the sum.
_WORST = ("loop_lag", "ack_p50", "ack_p95", "ack_p99", "lag_p50", "lag_p95", "lag_p99", "time")
_SUMMED = (
    "cpu",
    "rss",
    "connections",
    "subscriptions",
    "publish_rate",
    "delivery_rate",
    "published",
    "delivered",
    "dropped",
    "slow_consumer_disconnects",
    "queued_bytes",
    "broker_buffered",
)


def total(workers: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary for all workers: sums, the worst latencies, channels added up by name."""
    result: dict[str, Any] = {"workers": len(workers)}
    for name in _SUMMED:
        result[name] = sum(w.get(name) or 0 for w in workers)
    for name in _WORST:
        values = [w[name] for w in workers if w.get(name) is not None]
        result[name] = max(values) if values else None
    states = {w.get("broker_state") for w in workers}
    result["broker"] = workers[0].get("broker") if workers else None
    result["broker_state"] = "up" if states == {"up"} else "down"
    channels: dict[str, list[int]] = {}
    for worker in workers:
        for name, subscribers, published in worker.get("top_channels", []):
            entry = channels.setdefault(name, [0, 0])
            entry[0] += subscribers
            entry[1] = max(entry[1], published)
    ranked = sorted(channels.items(), key=lambda item: (-item[1][0], item[0]))
    result["top_channels"] = [[name, s, p] for name, (s, p) in ranked[:10]]
    return result
