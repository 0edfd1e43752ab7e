"""What a connection does on channels: publish, subscribe, leave, and the rates it may.

The layer of :class:`~triows._server.connection.Connection` between its write path and its
request dispatch. A publish's ack comes from the broker's ``numbered`` callback, always
before a later message of the channel reaches this client: that is how a client tells its
own publications from gaps. A subscribe's reply and replay are queued in the same step as
the membership is added, so live messages can only come after them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator

import trio

from .._brokers.fanout import Subscriber
from .._brokers.seam import BrokerUnavailableError, Subscribed
from .._core import protocol
from .._core.auth import Action, Principal
from .._core.envelopes import ack_frame, encode_parsed
from .._core.hub import SubscriptionLimitError
from .._core.protocol import ProtocolError
from .._core.ratelimit import TokenBucket
from .._net.websocket import WebSocket
from .goodbye import Goodbye
from .host import ConnectionHost
from .outbound import Wait

log = logging.getLogger("triows.connection")

#: Publications one connection may have waiting for the broker (with Redis: for Redis to
#: accept them); more get error 429. In process every publication is numbered at once.
MAX_UNACKED = 1000


@contextlib.contextmanager
def subscribe_errors(request_id: protocol.RequestId | None) -> Iterator[None]:
    """A broker's refusal to subscribe, as the error the client gets."""
    try:
        yield
    except SubscriptionLimitError as exc:
        raise ProtocolError(
            protocol.TOO_MANY, str(exc), request_id, limit=protocol.SUBSCRIPTIONS_LIMIT
        ) from None
    except BrokerUnavailableError as exc:
        raise ProtocolError(protocol.UNAVAILABLE, str(exc), request_id) from None


def subscribed_reply(
    channel: str, subscribed: Subscribed, *, server: bool = False
) -> tuple[dict[str, object], tuple[bytes, ...]]:
    """The ``subscribed`` reply to a subscribe, and the frames its resume (``since``) or its
    rewind replays after it (every transport answers a subscribe so). ``server``: a
    subscription the application made (``Server.subscribe``)."""
    reply: dict[str, object] = {
        "type": "subscribed",
        "channel": channel,
        "seq": subscribed.seq,
        "epoch": subscribed.epoch,
    }
    if server:
        reply["server"] = True
    resume = subscribed.resume
    if subscribed.rewound is not None:
        reply["rewound"] = subscribed.rewound
        return reply, resume.replay if resume is not None else ()
    if resume is None:
        return reply, ()
    reply["recovered"] = resume.recovered
    if resume.gap is not None:
        reply["gap"] = list(resume.gap)
    return reply, resume.replay


class Channels(Goodbye):
    __slots__ = (
        "_acks_over",
        "_dedupe_key",
        "_publish_bucket",
        "_publish_limited",
        "_subscribe_bucket",
        "_unacked",
        "client_id",
        "principal",
    )

    def __init__(
        self, host: ConnectionHost, ws: WebSocket, principal: Principal, client_id: str
    ) -> None:
        super().__init__(host, ws)
        self.principal = principal
        self.client_id = client_id
        # Whose publish ids these are: the user, across reconnects; else this connection. A
        # refreshed token is the same user's, so the key is made once.
        user = principal.user_id
        self._dedupe_key = ("user", user) if user is not None else ("connection", client_id)
        self._acks_over = False  # an ack went over the outbox's capacity: settle
        self._unacked = 0  # publications handed to the broker, not yet numbered or failed
        # Made at first use: a bucket made then is full, as one made now would be by then.
        self._publish_bucket: TokenBucket | None = None
        self._subscribe_bucket: TokenBucket | None = None
        self._publish_limited = host.access.publish_limited(principal)

    @property
    def dedupe_key(self) -> object:
        """Whose publish ids these are: the user, across reconnects; else this connection."""
        return self._dedupe_key

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

    def _check_rate(self, action: Action, request_id: protocol.RequestId | None) -> None:
        self._host.access.check_rate(self.principal, action, self._bucket(action), request_id)

    # -- publishing -----------------------------------------------------------------------------

    def _publish(self, request: protocol.Publish) -> Wait | None:
        request_id = request.id
        host = self._host
        if host.broker.numbers_at_once:
            data, echo = request.data, request.echo
            return self._publish_now(request.channel, data, request_id, echo, True)
        if self._unacked >= MAX_UNACKED:
            # One client must not take a cluster node's whole outage buffer.
            raise ProtocolError(
                protocol.TOO_MANY,
                f"{self._unacked} publications are waiting for their ack",
                request_id,
            )
        publishing = host.publishing
        # The broker calls back with the seq before any later message of the channel reaches
        # this client, which is how a client tells its own publications from gaps.
        self._unacked += 1
        started = trio.current_time()
        try:
            blocked = publishing.publish_from_client(
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

    def _publish_now(
        self,
        channel: str,
        data: object,
        request_id: protocol.RequestId | None,
        echo: bool,
        checked: bool,
    ) -> Wait | None:
        """A publish served in this step by a broker that numbers at once: unless
        ``checked`` already, its rates and what the token allows (the checks of
        :meth:`_serve_publish`, in its order), then the publication and its ack.

        The clocks are the read's (the host's ``read_clock``) when a reader serves it in its
        step, and read here otherwise (``read_clock.at`` is None in any other step).
        Positional, and the client's publication rule (``data`` encoded once, the 413 of
        :class:`~triows._server.publishing.Publishing`) applied here rather than through a
        call: this runs once per request."""
        host = self._host
        clock = host.read_clock
        now = clock.at
        # Not in a reader's step (``now`` None): the clocks of this moment.
        now_ms = host.now_ms() if now is None else clock.ms
        if not checked:  # no authorize hook to ask: the token's patterns are the answer
            principal = self.principal
            if self._publish_limited:
                if now is None:
                    now = trio.current_time()
                bucket = self._publish_bucket or self._bucket(Action.PUBLISH)
                host.access.take(principal, Action.PUBLISH, bucket, now, request_id)
            if principal.publish is not None:
                host.access.check_allowed(principal, Action.PUBLISH, channel, request_id)
        publishing = host.publishing
        data_json = encode_parsed(data)
        if len(data_json) > publishing.max_data:
            raise publishing.data_too_large(request_id)
        # Numbered, delivered and kept in this very step, so the ack is written now, before
        # any later message of the channel can reach this client; no callback (observed as
        # 0 s).
        try:
            seq, _, blocked = host.broker.publish_at_once(
                channel,
                data_json,
                self.client_id,
                now_ms,
                echo,
                self._dedupe_key,
                request_id,
                now,
            )
        except BrokerUnavailableError as exc:
            raise ProtocolError(protocol.UNAVAILABLE, str(exc), request_id) from None
        host.ack_latency.zeros += 1  # observed as 0 s (LatencyHistogram.zeros)
        if request_id is not None and self.queue_reply(ack_frame(request_id, seq)):
            self._acks_over = True
        if blocked or self._acks_over:
            return functools.partial(self._after_publish, blocked)
        return None

    async def _after_publish(self, blocked: list[Subscriber]) -> None:
        await self._host.fanout.wait_for_blocked(blocked)
        if self._acks_over:
            self._acks_over = False
            await self.settle()

    def _acknowledge(self, request_id: protocol.RequestId | None, started: float, seq: int) -> None:
        self._unacked -= 1
        self._host.ack_latency.observe(trio.current_time() - started)
        if request_id is not None and self.queue_reply(ack_frame(request_id, seq)):
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

    def _unsubscribe(self, channel: str) -> bool:
        if self._host.broker.unsubscribe(self, channel):
            self._host.presence.left(self, channel)
            return True
        return False

    def unsubscribe_by_server(self, channel: str, reason: str) -> bool:
        """The application drops this subscription (``Server.unsubscribe``): the client gets
        ``unsubscribed`` with the reason; False when it did not follow ``channel``."""
        if self.close_code is not None or not self._unsubscribe(channel):
            return False
        self.reply_nowait({"type": "unsubscribed", "channel": channel, "reason": reason})
        return True

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
        self,
        request: protocol.Subscribe,
        subscribed: Subscribed,
        joining: bool = False,
        *,
        server: bool = False,
    ) -> Wait | None:
        reply, replay = subscribed_reply(request.channel, subscribed, server=server)
        # Membership, reply and replay in one synchronous step: live messages can only come
        # after the replay, and none is missing between the two.
        over = self.queue_reply(protocol.with_id(reply, request.id))
        for replayed in replay:
            over = self.queue_reply(replayed) or over
        if joining:
            self._host.presence.joined(self, request.channel)
        return self.settle if over else None
