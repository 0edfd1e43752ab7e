"""Serving a connection's requests: what a client may ask, and the order of the answers.

Requests that need no waiting are served by the reader, inline, in one step. A request that
may wait (an application ``authorize`` hook, a subscribe that goes to Redis, a ``block``
publish, a full outbox) starts a requests task; later requests queue behind it in order, up to
``inbox_size`` requests and ``inbox_max_bytes``, and the reader goes on reading and answering
pings meanwhile. Both paths answer failures the same way (:meth:`Requests._failed`).

A publish's ack comes from the broker's ``numbered`` callback, always before a later message
of the channel reaches this client: that is how a client tells its own publications from gaps.
The token's expiry lives here too, since a ``refresh`` moves it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import deque
from collections.abc import Iterator

import trio

from .._brokers.fanout import StepBudget, Subscriber
from .._brokers.seam import BrokerUnavailableError, Subscribed
from .._core import protocol
from .._core.auth import Action, AuthError, Principal
from .._core.hub import SubscriptionLimitError
from .._core.protocol import ProtocolError
from .._core.ratelimit import TokenBucket
from .._net.websocket import WebSocket
from .host import ConnectionHost
from .outbound import POLICY, Outbound, Wait

log = logging.getLogger("triows.connection")

#: Publications one connection may have waiting for the broker (with Redis: for Redis to
#: accept them); more get error 429. In process every publication is numbered at once.
MAX_UNACKED = 1000


@contextlib.contextmanager
def _subscribe_errors(request_id: protocol.RequestId | None) -> Iterator[None]:
    """A broker's refusal to subscribe, as the error the client gets."""
    try:
        yield
    except SubscriptionLimitError as exc:
        raise ProtocolError(protocol.TOO_MANY, str(exc), request_id) from None
    except BrokerUnavailableError as exc:
        raise ProtocolError(protocol.UNAVAILABLE, str(exc), request_id) from None


class Requests(Outbound):
    __slots__ = (
        "_acks_over",
        "_backlog",
        "_backlog_bytes",
        "_busy",
        "_expiry_scope",
        "_publish_bucket",
        "_subscribe_bucket",
        "_unacked",
        "client_id",
        "frames_in",
        "last_activity",
        "principal",
    )

    def __init__(
        self, host: ConnectionHost, ws: WebSocket, principal: Principal, client_id: str
    ) -> None:
        super().__init__(host, ws)
        self.principal = principal
        self.client_id = client_id
        #: Requests read while one waits, with their sizes (at most ``inbox_size`` of them and
        #: ``inbox_max_bytes``); made on need.
        self._backlog: deque[tuple[protocol.Request, int]] | None = None
        self._backlog_bytes = 0
        self._busy = False  # a requests task is serving; later requests queue behind it
        self._expiry_scope: trio.CancelScope | None = None
        self._acks_over = False  # an ack went over the outbox's capacity: settle
        self._unacked = 0  # publications handed to the broker, not yet numbered or failed
        # Made at first use: a bucket made then is full, as one made now would be by then.
        self._publish_bucket: TokenBucket | None = None
        self._subscribe_bucket: TokenBucket | None = None
        self.last_activity = trio.current_time()
        self.frames_in = 0

    @property
    def dedupe_key(self) -> object:
        """Whose publish ids these are: the user, across reconnects; else this connection."""
        user = self.principal.user_id
        return ("user", user) if user is not None else ("connection", self.client_id)

    # -- dispatch -------------------------------------------------------------------------------

    def _on_message(self, raw: str | bytes) -> None:
        self.frames_in += 1
        self._traffic.received += 1
        self.last_activity = trio.current_time()
        try:
            request = protocol.parse_request(raw)
        except ProtocolError as exc:
            self.reply_nowait(protocol.error_frame(exc.code, exc.message, exc.request_id))
            return
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
        if self._may_wait(request):
            self._serve_in_task(functools.partial(self._serve_waiting, request))
            return
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

    def _bucket(self, action: Action) -> TokenBucket:
        """This connection's rate bucket for ``action``, made at its first use."""
        config = self._host.config
        if action is Action.PUBLISH:
            if self._publish_bucket is None:
                rate = config.publish_rate
                self._publish_bucket = TokenBucket(rate, 2 * rate, trio.current_time())
            return self._publish_bucket
        if self._subscribe_bucket is None:
            rate = config.subscribe_rate
            self._subscribe_bucket = TokenBucket(rate, 2 * rate, trio.current_time())
        return self._subscribe_bucket

    def _may_wait(self, request: protocol.Request) -> bool:
        """Whether serving ``request`` may need to wait before its reply is known: an
        application ``authorize`` hook (it may be async) or a broker that subscribes over the
        network. Everything else is served by the reader, inline."""
        if isinstance(request, protocol.Ping | protocol.Unsubscribe):
            return False
        if self._host.config.authorize is not None:
            return True
        return (
            isinstance(request, protocol.Subscribe | protocol.PresenceQuery)
            and not self._host.broker.subscribes_at_once
        )

    def _serve_safely(self, request: protocol.Request) -> Wait | None:
        try:
            return self._serve_now(request)
        except Exception as exc:
            return self._failed(request, exc)

    def _failed(self, request: protocol.Request, exc: Exception) -> Wait | None:
        """Answer a request that failed: its error, or a plain 500 for a bug (logged)."""
        if isinstance(exc, ProtocolError):
            return self._reply(protocol.error_frame(exc.code, exc.message, exc.request_id))
        log.error("request %s from %s failed", type(request).__name__, self.client_id, exc_info=exc)
        return self._reply(protocol.error_frame(protocol.INTERNAL, "internal error", request.id))

    def _check_rate(self, action: Action, request_id: protocol.RequestId | None) -> None:
        self._host.access.check_rate(self.principal, action, self._bucket(action), request_id)

    def _serve_now(self, request: protocol.Request) -> Wait | None:
        """Serve a request that needs no waiting; returns what is left to wait for, if any."""
        host = self._host
        match request:
            case protocol.Publish(channel=channel, id=request_id):
                self._check_rate(Action.PUBLISH, request_id)
                host.access.check_allowed(self.principal, Action.PUBLISH, channel, request_id)
                return self._publish(request)
            case protocol.Subscribe(channel=channel, id=request_id):
                self._check_rate(Action.SUBSCRIBE, request_id)
                host.access.check_allowed(self.principal, Action.SUBSCRIBE, channel, request_id)
                joining = self._joining(channel)
                with _subscribe_errors(request_id):
                    subscribed = host.broker.subscribe_nowait(
                        self, channel, request.since, request.epoch
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
                wait = self._refreshed(token, request_id)
                broker = host.broker
                for channel in broker.hub.channels_of(self):
                    if not self.principal.may(Action.SUBSCRIBE, channel):
                        wait = self._leave_refused(channel) or wait
                return wait
        raise AssertionError(f"unknown request {request!r}")  # pragma: no cover

    async def _serve_waiting(self, request: protocol.Request) -> None:
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
                    with _subscribe_errors(request_id):
                        subscribed = await host.broker.subscribe(
                            self, channel, request.since, request.epoch
                        )
                    wait = self._subscribed(request, subscribed, joining)
                case protocol.PresenceQuery(channel=channel, id=request_id):
                    self._check_presence(channel, request_id)
                    await host.access.authorize(
                        self.principal, Action.SUBSCRIBE, channel, request_id
                    )
                    wait = self._reply(await host.presence.frame(channel, request_id))
                case protocol.Refresh(token=token, id=request_id):
                    wait = self._refreshed(token, request_id)
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

    # -- publishing -----------------------------------------------------------------------------

    def _publish(self, request: protocol.Publish) -> Wait | None:
        request_id = request.id
        if self._unacked >= MAX_UNACKED:
            # One client must not take a cluster node's whole outage buffer.
            raise ProtocolError(
                protocol.TOO_MANY,
                f"{self._unacked} publications are waiting for their ack",
                request_id,
            )
        # The broker calls back with the seq before any later message of the channel reaches
        # this client (in process: in this very step), which is how a client tells its own
        # publications from gaps.
        self._unacked += 1
        host = self._host
        # In process the ack is written in this very step: observed as 0 s, with no clock read.
        started = None if host.broker.numbers_at_once else trio.current_time()
        try:
            blocked = host.publishing.publish_from_client(
                self.client_id,
                self.dedupe_key,
                request.channel,
                request.data,
                request_id,
                numbered=functools.partial(self._acknowledge, request_id, started),
                echo=request.echo,
                failed=functools.partial(self._publish_failed, request_id),
            )
        except ProtocolError:
            self._unacked -= 1  # refused at once: neither callback will come
            raise
        if blocked or self._acks_over:
            return functools.partial(self._after_publish, blocked)
        return None

    async def _after_publish(self, blocked: list[Subscriber]) -> None:
        await self._host.fanout.wait_for_blocked(blocked)
        if self._acks_over:
            self._acks_over = False
            await self.settle()

    def _acknowledge(
        self, request_id: protocol.RequestId | None, started: float | None, seq: int
    ) -> None:
        self._unacked -= 1
        self._host.ack_latency.observe(0.0 if started is None else trio.current_time() - started)
        if request_id is not None and self.queue_reply(
            {"type": "ack", "id": request_id, "seq": seq}
        ):
            self._acks_over = True

    def _publish_failed(self, request_id: protocol.RequestId | None, exc: Exception) -> None:
        self._unacked -= 1
        if isinstance(exc, BrokerUnavailableError):
            frame = protocol.error_frame(protocol.UNAVAILABLE, str(exc), request_id)
        else:  # the reason is in the server's log; it may hold details clients must not see
            frame = protocol.error_frame(protocol.INTERNAL, "internal error", request_id)
        self.reply_nowait(frame)

    # -- subscriptions and presence -------------------------------------------------------------

    def _joining(self, channel: str) -> bool:
        """Whether a subscribe to ``channel`` would be a presence join (a new membership)."""
        presence = self._host.presence
        return presence.enabled and not self._host.broker.hub.is_member(self, channel)

    def _unsubscribe(self, channel: str) -> None:
        if self._host.broker.unsubscribe(self, channel):
            self._host.presence.left(self, channel)

    def _check_presence(self, channel: str, request_id: protocol.RequestId | None) -> None:
        # A presence answer costs what a subscribe does (more with Redis): the same rates.
        self._check_rate(Action.SUBSCRIBE, request_id)
        if self._host.presence.mode(channel) is None:
            raise ProtocolError(
                protocol.BAD_REQUEST,
                f"presence is off for '{channel}' (the server's --presence patterns)",
                request_id,
            )
        self._host.access.check_allowed(self.principal, Action.SUBSCRIBE, channel, request_id)

    def _subscribed(
        self, request: protocol.Subscribe, subscribed: Subscribed, joining: bool = False
    ) -> Wait | None:
        reply: dict[str, object] = {
            "type": "subscribed",
            "channel": request.channel,
            "seq": subscribed.seq,
            "epoch": subscribed.epoch,
        }
        replay: tuple[bytes, ...] = ()
        resume = subscribed.resume
        if resume is not None:
            reply["recovered"] = resume.recovered
            if resume.gap is not None:
                reply["gap"] = list(resume.gap)
            replay = resume.replay
        # Membership, reply and replay in one synchronous step: live messages can only come
        # after the replay, and none is missing between the two.
        over = self.queue_reply(protocol.with_id(reply, request.id))
        for replayed in replay:
            over = self.queue_reply(replayed) or over
        if joining:
            self._host.presence.joined(self, request.channel)
        return self.settle if over else None

    # -- the token: expiry and refresh ----------------------------------------------------------

    def _expiry_deadline(self) -> float:
        expires_at = self.principal.expires_at
        if expires_at is None:
            return float("inf")
        return trio.current_time() + (expires_at - self._host.wall_clock())

    async def _watch_expiry(self) -> None:
        with trio.CancelScope(deadline=self._expiry_deadline()) as self._expiry_scope:
            await trio.sleep_forever()
        self.close(POLICY, "Token expired")

    def _refreshed(self, token: str, request_id: protocol.RequestId | None) -> Wait | None:
        """Take a new token for this connection's user; its reply is queued."""
        secret = self._host.config.jwt_secret
        if secret is None:
            raise ProtocolError(protocol.BAD_REQUEST, "token refresh needs JWT auth", request_id)
        try:
            principal = self._host.access.verify_token(token)
        except AuthError as exc:
            raise ProtocolError(protocol.UNAUTHORIZED, str(exc), request_id) from None
        if principal.user_id != self.principal.user_id:
            raise ProtocolError(protocol.UNAUTHORIZED, "token is for another user", request_id)
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
