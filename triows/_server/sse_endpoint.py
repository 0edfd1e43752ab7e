"""``GET <sse_path>?channel=A&channel=B``: opening a Server-Sent Events stream.

A request without ``Upgrade`` at the SSE path lands here instead of the HTTP endpoints. It
meets what a WebSocket handshake meets, in the same order and by the same code
(:meth:`Handshakes.admit`): shutdown, the origin, the memory guard, the connection's place in
admission (reserved before the first await: an SSE stream counts as a connection for
``max_connections`` and the per-address and per-user limits), authentication (a token in
``?token=``, since ``EventSource`` cannot set headers, or ``Authorization: Bearer``) and the
user's place; then, per channel, what the token allows, the ``authorize`` hook and the
subscribe rates. All of it before the ``200``.

Refusals: ``EventSource`` gives up for good on any status but 200, so what is worth trying
again later (429, 503: a limit, shutdown, a hook that timed out) is answered ``200`` with a
``retry:`` hint and one ``event: refused`` naming the status and reason, then the end of the
stream, and the browser comes back after the hint; what is not (400, 401, 403, 404, 405) is the
plain HTTP status, which ``curl`` shows and a browser's ``EventSource`` reports as an error.
"""

from __future__ import annotations

import logging
import random
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit

import trio

from .._config import Config, Rejected
from .._core import protocol, sse
from .._core.admission import Refused, Stage
from .._core.auth import Action, Principal
from .._core.close_codes import GOING_AWAY, REVOKED
from .._core.frame_parser import FrameParser
from .._core.handshake import HandshakeRequest, http_response
from .._core.names import ChannelNameError, validate_channel
from .._core.protocol import ProtocolError
from .._core.ratelimit import TokenBucket
from .._net.streams import PlainRequest, answer
from .._net.websocket import WebSocket
from .access import Access
from .handshakes import Handshakes
from .host import ConnectionHost
from .sse import SharedEvents, SseStream

log = logging.getLogger("triows.sse")

#: Statuses a client should try again after (``EventSource`` does, told by a 200 stream).
_TRY_AGAIN = frozenset({429, 503})
_STATUS_OF_ERROR = {protocol.FORBIDDEN: 403, protocol.TOO_MANY: 429, protocol.UNAVAILABLE: 503}


class SseHost(ConnectionHost, Protocol):
    handshakes: Handshakes
    access: Access

    @property
    def closing(self) -> bool: ...

    @property
    def shutdown_deadline(self) -> float | None: ...

    def adopt(self, conn: SseStream) -> None:
        """Register an open stream (shutdown closes it and waits for it)."""

    def forget(self, conn: SseStream) -> None: ...

    def population_changed(self) -> None: ...


class _Refusal(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status, self.reason = status, reason


class SseEndpoint:
    def __init__(self, host: SseHost, fallback: Callable[[PlainRequest], Awaitable[None]]) -> None:
        self._host = host
        self._fallback = fallback
        self._path = host.config.sse_path
        self._shared = SharedEvents()

    async def route(self, plain: PlainRequest) -> None:
        """Every plain HTTP request: an event stream's, or one for the HTTP endpoints."""
        if self._path is not None and plain.request.path == self._path:
            await self.serve(plain)
        else:
            await self._fallback(plain)

    async def serve(self, plain: PlainRequest) -> None:
        host = self._host
        try:
            stream = await self._open(plain)
        except _Refusal as refusal:
            host.handshakes.count_refusal(refusal.status)
            log.info("refused an SSE stream from %s: %d %s", plain.remote, *refusal.args)
            plain.ticket.closing()
            origin = plain.request.headers.get("origin")
            if not host.config.origin_allowed(origin):
                origin = None
            response = _refusal(refusal.status, refusal.reason, host.config, origin)
            await answer(plain.stream, response, plain.deadline)
            return
        finally:
            if plain.ticket.stage is Stage.HANDSHAKE:  # failed midway: it counts no more
                plain.ticket.closing()
            host.population_changed()
        log.debug("SSE stream %r opened", stream)
        del plain
        if host.closing:  # shutdown began while it was opening
            stream.close(GOING_AWAY, "Server shutting down", deadline=host.shutdown_deadline)
        elif host.access.is_revoked(stream.principal):  # revoked while its head was written
            stream.close(REVOKED, "token revoked")
        try:
            await stream.run()
        finally:
            host.forget(stream)

    async def _open(self, plain: PlainRequest) -> SseStream:
        """Admit, authenticate and authorize the stream, then write its head; the stream is
        registered when this returns. Raises :class:`_Refusal`."""
        host = self._host
        config = host.config
        request = plain.request
        if request.method != "GET":
            raise _Refusal(405, f"{request.path} takes GET")
        if host.closing:
            raise _Refusal(503, "server is shutting down")
        target = urlsplit(request.target)
        pairs = parse_qsl(target.query, keep_blank_values=True)
        info = HandshakeRequest(
            path=target.path,
            query=dict(reversed(pairs)),
            headers=request.headers,
            remote=plain.remote,
            ip=plain.ip,
        )
        channels, positions = _channels_and_positions(pairs, info, config)
        origin = info.header("origin")
        if not config.origin_allowed(origin):
            raise _Refusal(403, "origin not allowed")
        try:
            principal = await host.handshakes.admit(info, plain.ticket, plain.deadline)
            with trio.fail_at(plain.deadline):
                await self._authorize(principal, channels)
        except (Rejected, Refused) as refused:
            raise _Refusal(refused.status, refused.reason) from None
        except ProtocolError as error:
            raise _Refusal(_STATUS_OF_ERROR.get(error.code, 400), error.message) from None
        except trio.TooSlowError:
            raise _Refusal(503, "authorization timed out") from None
        except Exception:  # a bug in a hook: the client gets a plain 500, the log the details
            log.exception("authorizing an SSE stream failed")
            raise _Refusal(500, "internal error") from None
        if host.closing:
            raise _Refusal(503, "server is shutting down")
        if host.access.is_revoked(principal):  # revoked while the hook decided: not found then
            raise _Refusal(401, "token revoked")
        retry = sse.retry_with_jitter(config.sse_retry, random.random())
        head = _head(origin) + sse.retry_field(retry)
        with trio.fail_at(plain.deadline):
            await plain.stream.send_all(head)
        plain.ticket.opened()
        _give_up_on_silent_peers(plain.stream, config)
        stream = SseStream(
            host=host,
            ws=WebSocket(plain.stream, FrameParser(125), plain.leftover),
            principal=principal,
            client_id=secrets.token_urlsafe(9),
            channels=channels,
            positions=positions,
            remote=plain.remote,
            ip=plain.ip,
            shared=self._shared,
        )
        host.adopt(stream)
        return stream

    async def _authorize(self, principal: Principal, channels: list[str]) -> None:
        access = self._host.access
        config = self._host.config
        # A stream's subscribes all come at once: its own bucket holds them; its user's does not
        # (a user opening streams in a loop is rate limited as a WebSocket client would be).
        bucket = TokenBucket(
            config.subscribe_rate,
            max(2 * config.subscribe_rate, len(channels)),
            trio.current_time(),
        )
        for channel in channels:
            access.check_rate(principal, Action.SUBSCRIBE, bucket, None)
            await access.authorize(principal, Action.SUBSCRIBE, channel, None)


def _channels_and_positions(
    pairs: list[tuple[str, str]], info: HandshakeRequest, config: Config
) -> tuple[list[str], list[sse.Position]]:
    channels = sse.channels_of([value for key, value in pairs if key == "channel"])
    if not channels:
        raise _Refusal(400, "name at least one channel: ?channel=<name>")
    if len(channels) > config.max_subscriptions:
        raise _Refusal(400, f"at most {config.max_subscriptions} channels per stream")
    for channel in channels:
        try:
            validate_channel(channel)
        except ChannelNameError as exc:
            raise _Refusal(400, f"bad channel {channel[:40]!r}: {exc}") from None
    # The header (an EventSource reconnecting) wins over the query (a page that kept the last
    # id across a reload and opens a new EventSource with it).
    last = info.header("last-event-id")
    if last is None:
        last = info.query.get("last_event_id") or None
    if last is None or not last.strip():
        return channels, [None] * len(channels)
    try:
        return channels, sse.decode_id(last.strip(), channels)
    except sse.LastEventIdError as exc:
        raise _Refusal(400, f"bad Last-Event-ID: {exc}") from None


def _give_up_on_silent_peers(stream: trio.abc.Stream, config: Config) -> None:
    """An event stream has no pong to wait for: a peer that vanished without a reset (a laptop
    closed, a network gone) would hold its place until TCP gave up, many minutes later. With
    ``TCP_USER_TIMEOUT`` (Linux) the kernel gives up once bytes sent (a keep-alive comment at
    the latest) stay unacknowledged for the keep-alive interval plus the heartbeat timeout, and
    the stream's reader sees the end."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is None or not isinstance(stream, trio.SocketStream):
        return
    milliseconds = int((config.sse_keepalive + config.heartbeat_timeout) * 1000)
    try:
        stream.setsockopt(socket.IPPROTO_TCP, option, milliseconds)
    except OSError:  # not TCP after all (a Unix socket), or the peer is gone
        pass


def _cors(origin: str | None) -> tuple[tuple[str, str], ...]:
    """What lets a page of another allowed origin read the stream (or its refusal)."""
    if origin is None:
        return ()
    return (
        ("Access-Control-Allow-Origin", origin.encode("latin-1", "replace").decode("latin-1")),
        ("Access-Control-Allow-Credentials", "true"),
        ("Vary", "Origin"),
    )


def _head(origin: str | None) -> bytes:
    lines = [
        "HTTP/1.1 200 OK",
        "Content-Type: text/event-stream; charset=utf-8",
        "Cache-Control: no-cache, no-transform",
        "Connection: close",
        "X-Accel-Buffering: no",  # nginx: pass events on as they come
        *(f"{name}: {value}" for name, value in _cors(origin)),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


def _refusal(status: int, reason: str, config: Config, origin: str | None) -> bytes:
    if status not in _TRY_AGAIN:
        return http_response(status, reason.encode() + b"\n", headers=_cors(origin))
    retry = sse.retry_with_jitter(config.sse_retry, random.random())
    body = sse.retry_field(retry)[:-1] + sse.event(
        protocol.encode({"status": status, "reason": reason}), name="refused"
    )
    return http_response(
        200, body, content_type="text/event-stream; charset=utf-8", headers=_cors(origin)
    )
