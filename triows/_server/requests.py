"""Serving a connection's requests: what a client may ask, and the order of the answers.

Requests that need no waiting are served by the reader, inline, in one step. A request that
may wait (an application ``authorize`` hook, a subscribe that goes to Redis, a ``block``
publish, a full outbox) starts a requests task; later requests queue behind it in order, up to
``inbox_size`` requests and ``inbox_max_bytes``, and the reader goes on reading and answering
pings meanwhile. Both paths answer failures the same way (:meth:`Requests._failed`).

What each request does on channels is :mod:`triows._server.channels`; the token's expiry
lives here, since a ``refresh`` moves it.
"""

from __future__ import annotations

import functools
import logging
from collections import deque

import attrs
import trio

from .._brokers.fanout import StepBudget
from .._core import protocol
from .._core.auth import Action, Principal
from .._core.close_codes import POLICY
from .._core.frames import text_frame
from .._core.history_frames import history_reply
from .._core.protocol import ProtocolError
from .._net.websocket import WebSocket
from .access import token_errors
from .channels import Channels, subscribe_errors
from .host import ConnectionHost
from .outbound import Wait

log = logging.getLogger("triows.connection")


@attrs.frozen
class ServerSubscribe:
    """A subscription the application makes for this connection (not a client frame)."""

    channel: str
    id: None = None


Request = protocol.Request | ServerSubscribe


class Requests(Channels):
    __slots__ = (
        "_backlog",
        "_backlog_bytes",
        "_busy",
        "_expiry_scope",
        "_publishes_now",
        "frames_in",
        "last_activity",
    )

    def __init__(
        self, host: ConnectionHost, ws: WebSocket, principal: Principal, client_id: str
    ) -> None:
        super().__init__(host, ws, principal, client_id)
        #: Requests read while one waits, with their sizes (at most ``inbox_size`` of them and
        #: ``inbox_max_bytes``); made on need.
        self._backlog: deque[tuple[Request, int]] | None = None
        self._backlog_bytes = 0
        self._busy = False  # a requests task is serving; later requests queue behind it
        #: A publish needs no waiting here (no ``authorize`` hook, a broker that numbers at
        #: once): the reader serves it in its step, by :meth:`_publish_now`.
        self._publishes_now = host.config.authorize is None and host.broker.numbers_at_once
        self._expiry_scope: trio.CancelScope | None = None
        self.last_activity = trio.current_time()
        self.frames_in = 0

    # -- dispatch -------------------------------------------------------------------------------

    def _on_message(self, raw: str | bytes) -> None:
        self.frames_in += 1
        self._traffic.received += 1
        try:
            request = protocol.read_request(raw)
        except ProtocolError as exc:
            self.reply_nowait(exc.frame())
            return
        if isinstance(request, tuple):  # the common publish, as its fields
            channel, data, request_id, echo = request
            if self._publishes_now and not self._busy:
                # Served in this step, with no request object and no general dispatch (on
                # the clock of the read when the reader serves it).
                try:
                    wait = self._publish_now(channel, data, request_id, echo, False)
                except Exception as exc:
                    publish = protocol.Publish(channel=channel, data=data, id=request_id, echo=echo)
                    wait = self._failed(publish, exc)
                if wait is not None:
                    self._serve_in_task(wait)
                return
            request = protocol.Publish(channel=channel, data=data, id=request_id, echo=echo)
        if self._busy:  # behind a request that waits: keep the order
            config = self._host.config
            if self._backlog is None:
                self._backlog = deque()
            if (
                len(self._backlog) < config.inbox_size
                and self._backlog_bytes + len(raw) <= config.inbox_max_bytes
            ):
                self._backlog.append((request, len(raw)))
                self._backlog_bytes += len(raw)
            else:
                self.reply_nowait(
                    protocol.error_frame(
                        protocol.TOO_MANY,
                        "too many requests in flight; wait for replies",
                        request.id,
                    )
                )
            return
        if type(request) is protocol.Publish and self._host.config.authorize is None:
            # A publish to a broker that numbers later (Redis): no general dispatch either.
            try:
                wait = self._serve_publish(request)
            except Exception as exc:
                wait = self._failed(request, exc)
        elif self._may_wait(request):
            self._serve_in_task(functools.partial(self._serve_waiting, request))
            return
        else:
            wait = self._serve_safely(request)
        if wait is not None:
            self._serve_in_task(wait)

    def _serve_in_task(self, first: Wait) -> None:
        assert self._nursery is not None
        self._busy = True
        self._nursery.start_soon(self._serve_backlog, first)

    async def _serve_backlog(self, first: Wait) -> None:
        try:
            budget = StepBudget(self._host.fanout)
            await first()
            while self._backlog:
                if budget.spend():  # a hook that answers without awaiting never yields
                    await trio.lowlevel.checkpoint()
                    budget.reset()
                request, size = self._backlog.popleft()
                self._backlog_bytes -= size
                if self._may_wait(request):
                    await self._serve_waiting(request)
                else:
                    wait = self._serve_safely(request)
                    if wait is not None:
                        await wait()
            self._backlog = None
        finally:
            self._busy = False

    def _may_wait(self, request: Request) -> bool:
        """Whether serving ``request`` may need to wait before its reply is known: an
        application ``authorize`` hook (it may be async), a broker that subscribes over the
        network, a history read, a subscription the server makes. Everything else is served
        by the reader, inline."""
        if type(request) is protocol.Publish:  # the common request first
            return self._host.config.authorize is not None
        if isinstance(request, protocol.Ping | protocol.Unsubscribe):
            return False
        if isinstance(request, protocol.HistoryQuery | ServerSubscribe):
            return True
        if isinstance(request, protocol.Refresh) and self._host.access.keys_may_wait:
            return True  # its key may have to be fetched
        if self._host.config.authorize is not None:
            return True
        broker = self._host.broker
        if isinstance(request, protocol.Subscribe):
            # A channel the node follows already: served inline, no task, no Redis.
            return not broker.subscribes_now(request.channel, request.since, request.rewind)
        return isinstance(request, protocol.PresenceQuery) and not broker.subscribes_at_once

    def _serve_safely(self, request: Request) -> Wait | None:
        try:
            return self._serve_now(request)
        except Exception as exc:
            return self._failed(request, exc)

    def _failed(self, request: Request, exc: Exception) -> Wait | None:
        """Answer a request that failed: its error, or a plain 500 for a bug (logged)."""
        if isinstance(exc, ProtocolError):
            return self._reply(exc.frame())
        log.error("request %s from %s failed", type(request).__name__, self.client_id, exc_info=exc)
        return self._reply(protocol.error_frame(protocol.INTERNAL, "internal error", request.id))

    def _serve_now(self, request: Request) -> Wait | None:
        """Serve a request that needs no waiting; returns what is left to wait for, if any."""
        host = self._host
        match request:
            case protocol.Publish():
                return self._serve_publish(request)
            case protocol.Subscribe(channel=channel, id=request_id):
                self._check_rate(Action.SUBSCRIBE, request_id)
                host.access.check_allowed(self.principal, Action.SUBSCRIBE, channel, request_id)
                joining = self._joining(channel)
                with subscribe_errors(request_id):
                    subscribed = host.broker.subscribe_nowait(
                        self, channel, request.since, request.epoch, request.rewind
                    )
                return self._subscribed(request, subscribed, joining)
            case protocol.PresenceQuery(channel=channel, id=request_id):
                self._check_presence(channel, request_id)
                return self._reply(host.presence.local_frame(channel, request_id))
            case protocol.Unsubscribe(channel=channel, id=request_id):
                self._unsubscribe(channel)
                return self._reply(
                    protocol.with_id({"type": "unsubscribed", "channel": channel}, request_id)
                )
            case protocol.Ping(id=request_id):
                return self._reply(
                    protocol.with_id(
                        {
                            "type": "pong",
                            "serverTime": host.now_ms(),
                            "serverId": host.server_id,
                        },
                        request_id,
                    )
                )
            case protocol.Refresh(token=token, id=request_id):
                with token_errors(host.config, request_id):
                    principal = host.access.verify_token_nowait(token)
                wait = self._refreshed(principal, request_id)
                broker = host.broker
                for channel in broker.hub.channels_of(self):
                    if not self.principal.may(Action.SUBSCRIBE, channel):
                        wait = self._leave_refused(channel) or wait
                return wait
        raise AssertionError(f"unknown request {request!r}")  # pragma: no cover

    def _serve_publish(self, request: protocol.Publish) -> Wait | None:
        """A publish, once no hook has to be asked: its rates, what the token allows, then
        the publication."""
        request_id = request.id
        self._check_rate(Action.PUBLISH, request_id)
        self._host.access.check_allowed(self.principal, Action.PUBLISH, request.channel, request_id)
        return self._publish(request)

    async def _serve_waiting(self, request: Request) -> None:
        """Serve a request that may wait; in the requests task, errors answered here."""
        host = self._host
        try:
            match request:
                case protocol.Publish(channel=channel, id=request_id):
                    self._check_rate(Action.PUBLISH, request_id)
                    await host.access.authorize(self.principal, Action.PUBLISH, channel, request_id)
                    wait = self._publish(request)
                case protocol.Subscribe(channel=channel, id=request_id):
                    self._check_rate(Action.SUBSCRIBE, request_id)
                    await host.access.authorize(
                        self.principal, Action.SUBSCRIBE, channel, request_id
                    )
                    joining = self._joining(channel)
                    with subscribe_errors(request_id):
                        subscribed = await host.broker.subscribe(
                            self, channel, request.since, request.epoch, request.rewind
                        )
                    wait = self._subscribed(request, subscribed, joining)
                case protocol.HistoryQuery(channel=channel, id=request_id):
                    self._check_rate(Action.SUBSCRIBE, request_id)
                    await host.access.authorize(
                        self.principal, Action.SUBSCRIBE, channel, request_id
                    )
                    with subscribe_errors(request_id):
                        wait = self._reply(await self._history(request))
                case ServerSubscribe(channel=channel):
                    wait = None
                    if not host.broker.hub.is_member(self, channel):
                        joining = self._joining(channel)
                        with subscribe_errors(None):
                            subscribed = await host.broker.subscribe(self, channel, None, None)
                        wait = self._subscribed(
                            protocol.Subscribe(channel=channel), subscribed, joining, server=True
                        )
                case protocol.PresenceQuery(channel=channel, id=request_id):
                    self._check_presence(channel, request_id)
                    await host.access.authorize(
                        self.principal, Action.SUBSCRIBE, channel, request_id
                    )
                    with subscribe_errors(request_id):  # Redis away: 503, as a subscribe
                        wait = self._reply(await host.presence.frame(channel, request_id))
                case protocol.Refresh(token=token, id=request_id):
                    with token_errors(host.config, request_id):
                        principal = await host.access.verify_token(token)
                    wait = self._refreshed(principal, request_id)
                    if wait is not None:
                        await wait()
                    wait = None
                    # One deadline for them all: a hook that stops answering must not hold
                    # this connection's requests for every channel it follows in turn.
                    with trio.move_on_after(host.config.handshake_timeout) as scope:
                        for channel in self._host.broker.hub.channels_of(self):
                            if await self._still_allowed(channel) is False:
                                wait = self._leave_refused(channel) or wait
                    if scope.cancelled_caught:
                        log.warning(
                            "authorize did not answer for %s after a refresh within %gs: "
                            "the subscriptions it was not asked about are kept",
                            self.client_id,
                            host.config.handshake_timeout,
                        )
                case _:
                    wait = self._serve_now(request)
        except Exception as exc:
            wait = self._failed(request, exc)
        if wait is not None:
            await wait()

    async def _history(self, request: protocol.HistoryQuery) -> bytes:
        found = await self._host.broker.history(
            request.channel,
            since=request.since,
            limit=request.limit,
            reverse=request.reverse,
            max_bytes=self._host.config.max_message_size,
        )
        return text_frame(
            history_reply(request.channel, found.epoch, found.seq, found.payloads, request.id)
        )

    def subscribe_by_server(self, channel: str) -> bool:
        """The application subscribes this connection (``Server.subscribe``): served in
        order with its own requests; the client gets ``subscribed`` (``"server": true``) and
        then the channel's messages. False when it follows the channel already, its inbox is
        full or it is closing."""
        if (
            self.close_code is not None
            or self._nursery is None
            or self._host.broker.hub.is_member(self, channel)
        ):
            return False
        request = ServerSubscribe(channel=channel)
        if self._busy:
            if self._backlog is None:
                self._backlog = deque()
            if len(self._backlog) >= self._host.config.inbox_size:
                return False
            self._backlog.append((request, 0))
            return True
        self._serve_in_task(functools.partial(self._serve_waiting, request))
        return True

    # -- the token: expiry and refresh ----------------------------------------------------------

    async def _still_allowed(self, channel: str) -> bool | None:
        """Ask again, after a token refresh, whether this connection may follow ``channel``:
        False only on a clear "no". A hook that timed out or failed said nothing: the
        subscription is kept (and asked about again at the next refresh)."""
        try:
            await self._host.access.authorize(self.principal, Action.SUBSCRIBE, channel, None)
        except ProtocolError as exc:
            if exc.code == protocol.FORBIDDEN:
                return False
            log.warning(
                "authorize gave no answer for %s on %r after a refresh (%s): subscription kept",
                self.client_id,
                channel,
                exc.message,
            )
            return None
        except Exception:
            log.exception(
                "authorize failed for %s on %r after a refresh: subscription kept",
                self.client_id,
                channel,
            )
            return None
        return True

    def _expiry_deadline(self) -> float:
        expires_at = self.principal.expires_at
        if expires_at is None:
            return float("inf")
        return trio.current_time() + (expires_at - self._host.wall_clock())

    async def _watch_expiry(self) -> None:
        with trio.CancelScope(deadline=self._expiry_deadline()) as self._expiry_scope:
            await trio.sleep_forever()
        self.close(POLICY, "Token expired")

    def _refreshed(
        self, principal: Principal, request_id: protocol.RequestId | None
    ) -> Wait | None:
        """Take a new token's principal for this connection's user; its reply is queued."""
        if principal.user_id != self.principal.user_id:
            raise ProtocolError(protocol.UNAUTHORIZED, "token is for another user", request_id)
        if self._host.access.is_revoked(principal):
            raise ProtocolError(protocol.UNAUTHORIZED, "token revoked", request_id)
        self.principal = principal
        if self._expiry_scope is not None:
            self._expiry_scope.deadline = self._expiry_deadline()
        return self._reply(
            protocol.with_id({"type": "refreshed", "exp": principal.expires_at}, request_id)
        )

    def _leave_refused(self, channel: str) -> Wait | None:
        """A refreshed token (or the ``authorize`` hook, asked again) no longer allows
        ``channel``: leave it and say why."""
        self._unsubscribe(channel)
        return self._reply(
            {
                "type": "unsubscribed",
                "channel": channel,
                "reason": "the refreshed token does not allow this channel",
            }
        )
