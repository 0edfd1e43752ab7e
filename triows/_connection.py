"""One client connection: its task tree, its outbox and what it asks of the server.

Task tree (all in the connection's own nursery; the first to end cancels the rest)::

    reader     drains the socket into a bounded inbox, always (see _transport.LIBRARY_QUEUE)
    requests   serves the inbox in order: subscribe, publish, ... (may wait: hooks, backpressure)
    writer     the only task that *waits* to send data; sends queued frames in batches
    heartbeat  pings every interval; no pong within the timeout closes with 1011
    expiry     (with auth) closes with 1008 when the token expires, unless refreshed

Data frames reach the socket two ways, never out of order: :meth:`Connection.deliver` writes a
ready frame at once when nothing is queued and the socket has room (no task switch, no copy),
and otherwise queues it for the writer. Whatever ends the connection, ``run()`` leaves the hub
clean and says goodbye with a close code, within a deadline.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from ._broker import BrokerUnavailableError
from ._core import protocol
from ._core.auth import Action, AuthError, Principal
from ._core.frames import text_frame
from ._core.hub import SubscriptionLimitError
from ._core.outbox import DropCounter, Outbox, SlowConsumerPolicy, Verdict
from ._core.protocol import ProtocolError
from ._core.ratelimit import TokenBucket
from ._transport import Closed, WebSocket

if TYPE_CHECKING:
    from ._server import Server

log = logging.getLogger("triows.connection")

#: Publications one connection may have waiting for the broker (with Redis: for Redis to
#: accept them); more get error 429. In process every publication is numbered at once.
MAX_UNACKED = 1000
#: Largest single write of queued frames; keeps one slow socket from pinning a huge buffer.
WRITE_BATCH = 64 * 1024
#: Without ``Server.aclose()`` (plain cancellation) a connection still gets this long to say 1001.
CANCELLED_GOODBYE = 1.0

NORMAL = 1000
GOING_AWAY = 1001
POLICY = 1008
TOO_BIG = 1009
INTERNAL_ERROR = 1011


class Connection:
    __slots__ = (
        "_acks_over",
        "_close_deadline",
        "_drain",
        "_expiry_scope",
        "_inbox_recv",
        "_inbox_send",
        "_publish_bucket",
        "_room",
        "_scope",
        "_send_scope",
        "_server",
        "_subscribe_bucket",
        "_unacked",
        "_writer_wakeup",
        "client_id",
        "close_code",
        "close_reason",
        "closed_by_server",
        "connected_at",
        "frames_in",
        "frames_out",
        "ip",
        "last_activity",
        "outbox",
        "principal",
        "remote",
        "ws",
    )

    def __init__(
        self,
        *,
        server: Server,
        ws: WebSocket,
        principal: Principal,
        remote: str,
        client_id: str,
        ip: str = "",
    ) -> None:
        config = server.config
        self._server = server
        self.ws = ws
        self.principal = principal
        self.remote = remote
        self.ip = ip
        self.client_id = client_id
        self.outbox = Outbox(config.outbox_size, config.outbox_max_bytes)
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[protocol.Request](
            config.inbox_size
        )
        self._writer_wakeup = trio.Event()
        self._room: trio.Event | None = None
        self._scope = trio.CancelScope()
        self._send_scope: trio.CancelScope | None = None  # the writer's write in progress
        self._expiry_scope: trio.CancelScope | None = None
        self._drain = False
        self._acks_over = False  # an ack went over the outbox's capacity: settle
        self._unacked = 0  # publications handed to the broker, not yet numbered or failed
        self._close_deadline: float | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed_by_server = False
        now = trio.current_time()
        self._publish_bucket = TokenBucket(config.publish_rate, 2 * config.publish_rate, now)
        self._subscribe_bucket = TokenBucket(config.subscribe_rate, 2 * config.subscribe_rate, now)
        self.connected_at = now
        self.last_activity = now
        self.frames_in = 0
        self.frames_out = 0

    @property
    def dedupe_key(self) -> object:
        """Whose publish ids these are: the user, across reconnects; else this connection."""
        user = self.principal.user_id
        return ("user", user) if user is not None else ("connection", self.client_id)

    def __repr__(self) -> str:
        return f"<Connection {self.client_id} user={self.principal.user_id!r} {self.remote}>"

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        config = self._server.config
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    for task in (self._read, self._serve_requests, self._write, self._heartbeat):
                        nursery.start_soon(self._until_first_ends, task)
                    if self._server.auth_enabled:
                        nursery.start_soon(self._until_first_ends, self._watch_expiry)
                    await self.reply(
                        protocol.welcome_frame(
                            self.client_id,
                            self._server.now_ms(),
                            self._server.server_id,
                            config.heartbeat_interval,
                        )
                    )
        except* Exception as group:
            # A bug in our request handling must cost this client its connection, never the
            # server. Cancelled is a BaseException and passes.
            log.error("connection %s failed", self.client_id, exc_info=group)
            self.close(INTERNAL_ERROR, "Internal error")
        finally:
            # Leave the channels at once (no more deliveries), but stay registered until the
            # goodbye is done: Server.aclose() waits for the registry to empty before it
            # cancels the tasks the closing handshake still needs.
            self._server.broker.remove_member(self)
            try:
                await self._say_goodbye()
            finally:
                self._server.forget(self)

    async def _until_first_ends(self, task: Callable[[], Awaitable[None]]) -> None:
        try:
            await task()
        finally:
            self._scope.cancel()

    def close(
        self, code: int, reason: str, *, drain: bool = False, deadline: float | None = None
    ) -> None:
        """Ask the connection to end with ``code``; the first reason given wins."""
        if self.close_code is None:
            self.close_code, self.close_reason, self._drain = code, reason, drain
            self.closed_by_server = True
            self._close_deadline = (
                deadline
                if deadline is not None
                else trio.current_time() + self._server.config.close_timeout
            )
            self._server.count_close(code)
            send = self._send_scope
            if send is not None and drain:
                # Let a write in progress finish: cutting it would leave half a frame on the
                # wire and nothing more could be sent, not even the close frame.
                send.shield = True
                send.deadline = min(send.deadline, self._close_deadline)
        self._scope.cancel()

    async def _say_goodbye(self) -> None:
        # Shielded, because a cancelled server still owes its clients a close frame; bounded,
        # because a peer that does not answer must not hold shutdown up.
        deadline = self._close_deadline
        if deadline is None:  # cancelled from outside, or the peer left first
            deadline = trio.current_time() + CANCELLED_GOODBYE
        with trio.move_on_at(deadline) as scope:
            scope.shield = True
            try:
                if self._drain:
                    while self.ws.is_open and await self.ws.send_queued(self.outbox, WRITE_BATCH):
                        pass
                code = self.close_code if self.close_code is not None else GOING_AWAY
                reason = self.close_reason or "Server shutting down"
                await self.ws.close(code, reason)
            except Closed:
                pass
        self.outbox.clear()
        if self._room is not None:
            self._room.set()

    # -- sending: the hot path -------------------------------------------------------------------

    def deliver(self, frame: bytes, policy: SlowConsumerPolicy, counter: DropCounter) -> bool:
        """Hand a broadcast frame to this subscriber without waiting.

        Returns False only under the ``block`` policy when the outbox went over capacity: the
        publisher must then wait in :meth:`wait_for_room`.
        """
        if self.close_code is not None:
            return True
        self.frames_out += 1
        if self._write_direct(frame):
            return True
        verdict = self.outbox.offer(frame, policy, counter)
        if verdict is Verdict.QUEUED:
            self._writer_wakeup.set()
            return True
        if verdict is Verdict.OVER:
            self._writer_wakeup.set()
            return False
        if verdict is Verdict.DISCONNECT:
            self._server.fanout.slow_consumer(self, "Slow consumer")
        return True

    def _write_direct(self, frame: bytes) -> bool:
        """Write ``frame`` straight into the socket if nothing is queued before it.

        True when it is handled: fully written, or written in part with the tail queued first
        (a tail cannot be dropped). False when the caller must queue the whole frame.
        """
        if self.outbox:
            return False
        written = self.ws.write_nowait(frame)
        if written == len(frame):
            return True
        if written:
            self.outbox.push_front(memoryview(frame)[written:])
            self._writer_wakeup.set()
            return True
        return False

    def _send_reply_nowait(self, frame: bytes) -> Verdict:
        if self._write_direct(frame):
            return Verdict.QUEUED
        verdict = self.outbox.offer_reply(frame)
        self._writer_wakeup.set()
        return verdict

    def queue_reply(self, frame: dict[str, object] | bytes) -> bool:
        """Queue a reply (or a ready frame) without waiting; never dropped.

        Returns True when the outbox went over capacity: the caller must then
        ``await self.settle()`` before serving the next request.
        """
        if self.close_code is not None:
            return False
        self.frames_out += 1
        data = frame if isinstance(frame, bytes) else text_frame(protocol.encode(frame))
        return self._send_reply_nowait(data) is Verdict.OVER

    async def settle(self) -> None:
        """Wait (boundedly) for the outbox to be below capacity again."""
        with trio.move_on_after(self._server.config.block_timeout) as scope:
            await self.wait_for_room()
        if scope.cancelled_caught:
            self._close_not_reading()

    def _close_not_reading(self) -> None:
        self._server.fanout.slow_consumer(self, "Slow consumer: replies are not being read")

    async def reply(self, frame: dict[str, object]) -> None:
        """Send a reply to this client, waiting (boundedly) while its outbox is over capacity."""
        if self.queue_reply(frame):
            await self.settle()

    def reply_nowait(self, frame: dict[str, object]) -> None:
        """A reply from the reader, which must never wait; a client that lets its replies pile
        up beyond its outbox while sending more is not reading and is closed with 1013."""
        if self.queue_reply(frame):
            self._close_not_reading()

    def _acknowledge(self, request_id: protocol.RequestId | None, seq: int) -> None:
        self._unacked -= 1
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

    async def wait_for_room(self) -> None:
        while not self.outbox.has_room and self.close_code is None:
            if self._room is None:
                self._room = trio.Event()
            await self._room.wait()

    async def _write(self) -> None:
        config = self._server.config
        write_timeout = config.heartbeat_interval + config.heartbeat_timeout
        outbox = self.outbox
        while True:
            if not outbox:
                self._writer_wakeup = trio.Event()
                await self._writer_wakeup.wait()
                continue
            with trio.CancelScope(deadline=trio.current_time() + write_timeout) as scope:
                self._send_scope = scope
                try:
                    await self.ws.send_queued(outbox, WRITE_BATCH)
                except Closed:
                    return
                finally:
                    self._send_scope = None
            if scope.cancelled_caught:
                if self.close_code is None:
                    self._server.fanout.slow_consumer(self, "Slow consumer: write timed out")
                return
            if self._room is not None and outbox.has_room:
                self._room.set()
                self._room = None

    # -- receiving ------------------------------------------------------------------------------

    async def _read(self) -> None:
        while True:
            try:
                raw = await self.ws.receive()
            except Closed as closed:
                if closed.code == TOO_BIG:  # trio-websocket closed it for us
                    self.close(TOO_BIG, closed.reason or "Message too big")
                elif self.close_code is None:
                    self.close_code = closed.code if closed.code is not None else 1006
                    self.close_reason = closed.reason or ""
                return
            self.frames_in += 1
            self.last_activity = trio.current_time()
            try:
                request = protocol.parse_request(raw)
            except ProtocolError as exc:
                self.reply_nowait(protocol.error_frame(exc.code, exc.message, exc.request_id))
                continue
            try:
                self._inbox_send.send_nowait(request)
            except trio.WouldBlock:
                self.reply_nowait(
                    protocol.error_frame(
                        protocol.TOO_MANY,
                        "too many requests in flight; wait for replies",
                        request.id,
                    )
                )

    async def _serve_requests(self) -> None:
        async for request in self._inbox_recv:
            try:
                await self._serve(request)
            except ProtocolError as exc:
                await self.reply(protocol.error_frame(exc.code, exc.message, exc.request_id))
            except Exception:
                log.exception("request %s from %s failed", type(request).__name__, self.client_id)
                await self.reply(
                    protocol.error_frame(protocol.INTERNAL, "internal error", request.id)
                )

    async def _serve(self, request: protocol.Request) -> None:
        server = self._server
        match request:
            case protocol.Publish(channel=channel, data=data, id=request_id):
                server.check_rate(self, Action.PUBLISH, self._publish_bucket, request_id)
                await server.authorize(self.principal, Action.PUBLISH, channel, request_id)
                if self._unacked >= MAX_UNACKED:
                    # One client must not take a cluster node's whole outage buffer.
                    raise ProtocolError(
                        protocol.TOO_MANY,
                        f"{self._unacked} publications are waiting for their ack",
                        request_id,
                    )
                # The broker calls back with the seq before any later message of the channel
                # reaches this client (in process: in this very step), which is how a client
                # tells its own publications from gaps.
                self._unacked += 1
                try:
                    blocked = server.publish_from(
                        self,
                        channel,
                        data,
                        request_id,
                        numbered=functools.partial(self._acknowledge, request_id),
                        failed=functools.partial(self._publish_failed, request_id),
                    )
                except ProtocolError:
                    self._unacked -= 1  # refused at once: neither callback will come
                    raise
                await server.fanout.wait_for_blocked(blocked)
                if self._acks_over:
                    self._acks_over = False
                    await self.settle()
            case protocol.Subscribe(channel=channel, id=request_id):
                server.check_rate(self, Action.SUBSCRIBE, self._subscribe_bucket, request_id)
                await server.authorize(self.principal, Action.SUBSCRIBE, channel, request_id)
                try:
                    subscribed = await server.broker.subscribe(
                        self, channel, request.since, request.epoch
                    )
                except SubscriptionLimitError as exc:
                    raise ProtocolError(protocol.TOO_MANY, str(exc), request_id) from None
                except BrokerUnavailableError as exc:
                    raise ProtocolError(protocol.UNAVAILABLE, str(exc), request_id) from None
                reply: dict[str, object] = {
                    "type": "subscribed",
                    "channel": channel,
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
                # Membership, reply and replay in one synchronous step: live messages can
                # only come after the replay, and none is missing between the two.
                over = self.queue_reply(protocol.with_id(reply, request_id))
                for frame in replay:
                    over = self.queue_reply(frame) or over
                if over:
                    await self.settle()
            case protocol.Unsubscribe(channel=channel, id=request_id):
                server.broker.unsubscribe(self, channel)
                await self.reply(
                    protocol.with_id({"type": "unsubscribed", "channel": channel}, request_id)
                )
            case protocol.Ping(id=request_id):
                await self.reply(
                    protocol.with_id(
                        {
                            "type": "pong",
                            "serverTime": server.now_ms(),
                            "serverId": server.server_id,
                        },
                        request_id,
                    )
                )
            case protocol.Refresh(token=token, id=request_id):
                await self._refresh(token, request_id)

    # -- liveness and expiry --------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        config = self._server.config
        pings = 0
        while True:
            await trio.sleep(config.heartbeat_interval)
            pings += 1
            try:
                with trio.fail_after(config.heartbeat_timeout):
                    # trio-websocket never wakes a ping when the connection closes: the
                    # timeout is what ends this wait in that case too.
                    await self.ws.ping(pings.to_bytes(8, "big"))
            except trio.TooSlowError:
                self.close(INTERNAL_ERROR, "Heartbeat timeout")
                return
            except Closed:
                return

    def _expiry_deadline(self) -> float:
        expires_at = self.principal.expires_at
        if expires_at is None:
            return float("inf")
        return trio.current_time() + (expires_at - self._server.wall_clock())

    async def _watch_expiry(self) -> None:
        with trio.CancelScope(deadline=self._expiry_deadline()) as self._expiry_scope:
            await trio.sleep_forever()
        self.close(POLICY, "Token expired")

    async def _refresh(self, token: str, request_id: protocol.RequestId | None) -> None:
        secret = self._server.config.jwt_secret
        if secret is None:
            raise ProtocolError(protocol.BAD_REQUEST, "token refresh needs JWT auth", request_id)
        try:
            principal = self._server.verify_token(token)
        except AuthError as exc:
            raise ProtocolError(protocol.UNAUTHORIZED, str(exc), request_id) from None
        if principal.user_id != self.principal.user_id:
            raise ProtocolError(protocol.UNAUTHORIZED, "token is for another user", request_id)
        self.principal = principal
        if self._expiry_scope is not None:
            self._expiry_scope.deadline = self._expiry_deadline()
        await self.reply(
            protocol.with_id({"type": "refreshed", "exp": principal.expires_at}, request_id)
        )
        # A token may narrow what the client can read: leave what it (or the application's
        # authorize hook, asked again for the new principal) no longer allows.
        broker = self._server.broker
        for channel in broker.hub.channels_of(self):
            try:
                await self._server.authorize(principal, Action.SUBSCRIBE, channel, None)
            except ProtocolError:
                broker.unsubscribe(self, channel)
                await self.reply(
                    {
                        "type": "unsubscribed",
                        "channel": channel,
                        "reason": "the refreshed token does not allow this channel",
                    }
                )
