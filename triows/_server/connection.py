"""One client connection: its task tree, its outbox and what it asks of the server.

Task tree (all in the connection's own nursery)::

    reader     the connection's own task (the nursery's body): reads the socket, parses
               frames, answers pings, and serves every request that needs no waiting inline
    heartbeat  pings every interval; no pong within the timeout closes with 1011
    expiry     (with auth) closes with 1008 when the token expires, unless refreshed
    writer     started only while the socket refuses bytes; ends when the outbox is empty
    requests   started only while a request waits (an async hook, ``block`` backpressure,
               Redis, a full outbox); later requests queue behind it, in order, up to
               ``inbox_size``, and the reader goes on reading and answering pings meanwhile

An idle connection is two tasks. Every byte reaches the socket through one ordered path:
:meth:`Connection._send` writes a frame at once when nothing is queued before it and the socket
has room, and otherwise queues it (a partly written frame's tail first) for the writer. Pongs,
pings and the close frame take that path too, so no frame can land inside another. Whatever
ends the connection, ``run()`` leaves the hub clean and says goodbye with a close code, within
a deadline.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

import trio

from .._brokers.fanout import StepBudget, Subscriber
from .._brokers.seam import BrokerUnavailableError, Subscribed
from .._core import protocol
from .._core.auth import Action, AuthError, Principal
from .._core.frame_parser import NO_STATUS, Close, Failure, FrameParser, Message, Ping, Pong
from .._core.frames import PING, PONG, close_frame, frame, text_frame
from .._core.hub import SubscriptionLimitError
from .._core.outbox import DropCounter, Outbox, SlowConsumerPolicy, Verdict
from .._core.protocol import ProtocolError
from .._core.ratelimit import TokenBucket
from .._net.websocket import Closed, WebSocket

if TYPE_CHECKING:
    from .server import Server

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
#: What a connection that ended without a close frame counts as (RFC 6455 §7.1.5).
ABNORMAL = 1006


def _cancelled() -> bool:
    """Whether the calling task is cancelled (from outside too): a write started now would be
    cut at its first checkpoint, leaving the stream unusable for the close frame."""
    return trio.current_effective_deadline() == float("-inf")


@contextlib.contextmanager
def _subscribe_errors(request_id: protocol.RequestId | None) -> Iterator[None]:
    """A broker's refusal to subscribe, as the error the client gets."""
    try:
        yield
    except SubscriptionLimitError as exc:
        raise ProtocolError(protocol.TOO_MANY, str(exc), request_id) from None
    except BrokerUnavailableError as exc:
        raise ProtocolError(protocol.UNAVAILABLE, str(exc), request_id) from None


#: Something a request still has to wait for once its synchronous part is done.
Wait = Callable[[], Awaitable[None]]


class Connection:
    __slots__ = (
        "_acks_over",
        "_backlog",
        "_backlog_bytes",
        "_beat",
        "_busy",
        "_close_deadline",
        "_drain",
        "_ending",
        "_expiry_scope",
        "_next_ping",
        "_nursery",
        "_peer_closed",
        "_ping_payload",
        "_publish_bucket",
        "_room",
        "_send_scope",
        "_server",
        "_subscribe_bucket",
        "_tail_queued",
        "_traffic",
        "_unacked",
        "_writer_running",
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
        self.outbox = Outbox(config.outbox_size, config.outbox_max_bytes, server.outbox_totals)
        self._traffic = server.traffic
        self._nursery: trio.Nursery | None = None
        #: Requests read while one waits, with their sizes (at most ``inbox_size`` of them and
        #: ``inbox_max_bytes``); made on need.
        self._backlog: deque[tuple[protocol.Request, int]] | None = None
        self._backlog_bytes = 0
        self._busy = False  # a requests task is serving; later requests queue behind it
        self._writer_running = False
        self._tail_queued = False  # the outbox starts with the unwritten tail of a frame
        self._ping_payload: bytes | None = None  # the heartbeat ping not answered yet
        self._peer_closed = False  # the peer sent its close frame (valid or not)
        self._beat: trio.CancelScope | None = None  # the heartbeat's sleep
        self._next_ping = 0.0
        self._room: trio.Event | None = None
        #: The connection is ending: its tasks are cancelled (or will be once they start).
        self._ending = False
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
        # Made at first use: a bucket made then is full, as one made now would be by then.
        self._publish_bucket: TokenBucket | None = None
        self._subscribe_bucket: TokenBucket | None = None
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
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._ending:  # closed before it ran (a shutdown that raced it)
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._heartbeat)
                if self._server.auth_enabled:
                    nursery.start_soon(self._watch_expiry)
                self._greet()
                try:
                    await self._read()
                finally:
                    self._end()
        except* Exception as group:
            # A bug in our request handling must cost this client its connection, never the
            # server. Cancelled is a BaseException and passes.
            log.error("connection %s failed", self.client_id, exc_info=group)
            self.close(INTERNAL_ERROR, "Internal error")
        finally:
            self._nursery = None
            # Leave the channels at once (no more deliveries), but stay registered until the
            # goodbye is done: Server.aclose() waits for the registry to empty before it
            # cancels the tasks the closing handshake still needs.
            self._server.presence.left_all(self)
            self._server.broker.remove_member(self)
            try:
                await self._say_goodbye()
            finally:
                self._server.forget(self)

    def _greet(self) -> None:
        config = self._server.config
        self.queue_reply(
            protocol.welcome_frame(
                self.client_id,
                self._server.now_ms(),
                self._server.server_id,
                config.heartbeat_interval,
            )
        )

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
            if send is not None:
                # Let a write in progress finish: cutting it would leave half a frame on the
                # wire and nothing more could be sent, not even the close frame.
                send.shield = True
                send.deadline = min(send.deadline, self._close_deadline)
        self._end()

    def _end(self) -> None:
        """Stop every task of this connection; run() then says goodbye."""
        self._ending = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _peer_left(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason

    async def _say_goodbye(self) -> None:
        # Shielded, because a cancelled server still owes its clients a close frame; bounded,
        # because a peer that does not answer must not hold shutdown up.
        deadline = self._close_deadline
        if deadline is None:  # cancelled from outside, or the peer left first
            deadline = trio.current_time() + CANCELLED_GOODBYE
        if self.close_code is None:  # cancelled from outside: still a 1001 goodbye
            self.close(GOING_AWAY, "Server shutting down", deadline=deadline)
        ws = self.ws
        with trio.move_on_at(deadline) as scope:
            scope.shield = True
            try:
                if self._drain:
                    while self.outbox:
                        await self._write_batch(WRITE_BATCH)
                elif self._tail_queued:  # a frame is half on the wire: finish it first
                    await self._write_batch(0)
                if self.closed_by_server:
                    await ws.write(close_frame(self.close_code, self.close_reason))
                    if not self._peer_closed:
                        await self._wait_for_peer_close()
                elif self._peer_closed:  # the peer's close: answer it
                    echo = None if self.close_code == NO_STATUS else self.close_code
                    await ws.write(close_frame(echo))
            except Closed:
                pass
        self.outbox.clear()
        if self._room is not None:
            self._room.set()
        ws.close_now()

    async def _wait_for_peer_close(self) -> None:
        """Read (and ignore) until the peer's close frame or the end of the stream."""
        ws = self.ws
        # After a protocol error the old parser is done; the peer's answer comes in a segment
        # of its own, so a fresh parser finds it.
        parser = FrameParser(ws.parser.max_message) if ws.parser.done else ws.parser
        while True:
            data = await ws.receive()
            if not data:
                return
            for event in parser.feed(data):
                if isinstance(event, Close | Failure):
                    return

    # -- sending: one ordered path ---------------------------------------------------------------

    def deliver(self, frame: bytes, policy: SlowConsumerPolicy, counter: DropCounter) -> bool:
        """Hand a broadcast frame to this subscriber without waiting.

        Returns False only under the ``block`` policy when the outbox went over capacity: the
        publisher must then wait in :meth:`wait_for_room`.
        """
        if self.close_code is not None:
            return True
        self.frames_out += 1
        self._traffic.sent += 1
        if self._write_now(frame):
            return True
        verdict = self.outbox.offer(frame, policy, counter)
        if verdict is Verdict.QUEUED:
            self._start_writer()
            return True
        if verdict is Verdict.OVER:
            self._start_writer()
            return False
        if verdict is Verdict.DISCONNECT:
            self._server.fanout.slow_consumer(self, "Slow consumer")
        return True

    def _write_now(self, frame: bytes) -> bool:
        """Write ``frame`` straight into the socket if nothing is queued before it.

        True when it is handled: fully written, or written in part with the tail queued first
        (a tail cannot be dropped). False when the caller must queue the whole frame.
        """
        if self.outbox:  # queued frames, or frames being written: they go first
            return False
        written = self.ws.write_nowait(frame)
        if written == len(frame):
            return True
        if written:
            self.outbox.push_front(memoryview(frame)[written:])
            self._tail_queued = True
            self._start_writer()
            return True
        return False

    def _send(self, frame: bytes) -> Verdict:
        """A frame that must not be dropped (reply, ping, pong): now, or queued in order."""
        if self._write_now(frame):
            return Verdict.QUEUED
        verdict = self.outbox.offer_reply(frame)
        self._start_writer()
        return verdict

    def _start_writer(self) -> None:
        if self._writer_running or self._ending:
            return  # the goodbye sends what is left, if anything is owed
        nursery = self._nursery
        if nursery is not None:
            self._writer_running = True
            nursery.start_soon(self._write)

    async def _write(self) -> None:
        config = self._server.config
        write_timeout = config.heartbeat_interval + config.heartbeat_timeout
        try:
            # Not once the connection is ending: a new write would be cut at its first
            # checkpoint, and the goodbye sends what is still owed.
            while self.outbox and not self._ending and not _cancelled():
                with trio.CancelScope(deadline=trio.current_time() + write_timeout) as scope:
                    self._send_scope = scope
                    try:
                        await self._write_batch(WRITE_BATCH)
                    except Closed:
                        self._peer_left(ABNORMAL, "")
                        self._end()
                        return
                    finally:
                        self._send_scope = None
                if scope.cancelled_caught:
                    if self.close_code is None:
                        self._server.fanout.slow_consumer(self, "Slow consumer: write timed out")
                    return
                if self._room is not None and self.outbox.has_room:
                    self._room.set()
                    self._room = None
        finally:
            self._writer_running = False

    async def _write_batch(self, max_bytes: int) -> None:
        """Send queued frames, oldest first, as one write (``max_bytes=0``: just the first)."""
        frames = self.outbox.take(max_bytes)
        self._tail_queued = False
        await self.ws.write(frames[0] if len(frames) == 1 else b"".join(frames))
        self.outbox.written(frames)

    def queue_reply(self, frame: dict[str, object] | bytes) -> bool:
        """Queue a reply (or a ready frame) without waiting; never dropped.

        Returns True when the outbox went over capacity: the caller must then
        ``await self.settle()`` before serving the next request.
        """
        if self.close_code is not None:
            return False
        self.frames_out += 1
        self._traffic.sent += 1
        data = frame if isinstance(frame, bytes) else text_frame(protocol.encode(frame))
        return self._send(data) is Verdict.OVER

    def _reply(self, frame: dict[str, object] | bytes) -> Wait | None:
        return self.settle if self.queue_reply(frame) else None

    async def settle(self) -> None:
        """Wait (boundedly) for the outbox to be below capacity again."""
        with trio.move_on_after(self._server.config.block_timeout) as scope:
            await self.wait_for_room()
        if scope.cancelled_caught:
            self._close_not_reading()

    def _close_not_reading(self) -> None:
        self._server.fanout.slow_consumer(self, "Slow consumer: replies are not being read")

    def reply_nowait(self, frame: dict[str, object]) -> None:
        """A reply that cannot wait; a client that lets its replies pile up beyond its outbox
        while sending more is not reading and is closed with 1013."""
        if self.queue_reply(frame):
            self._close_not_reading()

    def _acknowledge(
        self, request_id: protocol.RequestId | None, started: float | None, seq: int
    ) -> None:
        self._unacked -= 1
        self._server.ack_latency.observe(0.0 if started is None else trio.current_time() - started)
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

    # -- receiving ------------------------------------------------------------------------------

    async def _read(self) -> None:
        ws = self.ws
        parser = ws.parser
        budget = StepBudget(self._server.fanout)
        data, ws.leftover = ws.leftover, b""
        while True:
            if data:
                budget.reset()
                for event in parser.feed(data):
                    if isinstance(event, Message):
                        self._on_message(event.data)
                    elif isinstance(event, Ping):
                        if self._send(frame(PONG, event.payload)) is Verdict.OVER:
                            self._close_not_reading()
                    elif isinstance(event, Pong):
                        self._pong(event.payload)
                    elif isinstance(event, Close):
                        self._peer_closed = True
                        self._peer_left(event.code, event.reason)
                        return
                    else:
                        self.close(event.code, event.reason)
                        self._peer_closed = event.in_close
                        return
                    if self.close_code is not None:
                        return
                    if budget.spend():
                        # Let every other connection run before serving more of this read.
                        await trio.lowlevel.checkpoint()
                        budget.reset()
            data = await ws.receive()
            if not data:
                self._peer_left(ABNORMAL, "")
                return

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
            config = self._server.config
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
            budget = StepBudget(self._server.fanout)
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
        config = self._server.config
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
        if self._server.config.authorize is not None:
            return True
        return (
            isinstance(request, protocol.Subscribe | protocol.PresenceQuery)
            and not self._server.broker.subscribes_at_once
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
        self._server.check_rate(self, action, self._bucket(action), request_id)

    def _serve_now(self, request: protocol.Request) -> Wait | None:
        """Serve a request that needs no waiting; returns what is left to wait for, if any."""
        server = self._server
        match request:
            case protocol.Publish(channel=channel, id=request_id):
                self._check_rate(Action.PUBLISH, request_id)
                server.check_allowed(self.principal, Action.PUBLISH, channel, request_id)
                return self._publish(request)
            case protocol.Subscribe(channel=channel, id=request_id):
                self._check_rate(Action.SUBSCRIBE, request_id)
                server.check_allowed(self.principal, Action.SUBSCRIBE, channel, request_id)
                joining = self._joining(channel)
                with _subscribe_errors(request_id):
                    subscribed = server.broker.subscribe_nowait(
                        self, channel, request.since, request.epoch
                    )
                return self._subscribed(request, subscribed, joining)
            case protocol.PresenceQuery(channel=channel, id=request_id):
                self._check_presence(channel, request_id)
                return self._reply(server.presence.local_frame(channel, request_id))
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
                            "serverTime": server.now_ms(),
                            "serverId": server.server_id,
                        },
                        request_id,
                    )
                )
            case protocol.Refresh(token=token, id=request_id):
                wait = self._refreshed(token, request_id)
                broker = server.broker
                for channel in broker.hub.channels_of(self):
                    if not self.principal.may(Action.SUBSCRIBE, channel):
                        wait = self._leave_refused(channel) or wait
                return wait
        raise AssertionError(f"unknown request {request!r}")  # pragma: no cover

    async def _serve_waiting(self, request: protocol.Request) -> None:
        """Serve a request that may wait; in the requests task, errors answered here."""
        server = self._server
        try:
            match request:
                case protocol.Publish(channel=channel, id=request_id):
                    self._check_rate(Action.PUBLISH, request_id)
                    await server.authorize(self.principal, Action.PUBLISH, channel, request_id)
                    wait = self._publish(request)
                case protocol.Subscribe(channel=channel, id=request_id):
                    self._check_rate(Action.SUBSCRIBE, request_id)
                    await server.authorize(self.principal, Action.SUBSCRIBE, channel, request_id)
                    joining = self._joining(channel)
                    with _subscribe_errors(request_id):
                        subscribed = await server.broker.subscribe(
                            self, channel, request.since, request.epoch
                        )
                    wait = self._subscribed(request, subscribed, joining)
                case protocol.PresenceQuery(channel=channel, id=request_id):
                    self._check_presence(channel, request_id)
                    await server.authorize(self.principal, Action.SUBSCRIBE, channel, request_id)
                    wait = self._reply(await server.presence.frame(channel, request_id))
                case protocol.Refresh(token=token, id=request_id):
                    wait = self._refreshed(token, request_id)
                    if wait is not None:
                        await wait()
                    wait = None
                    # One deadline for them all: a hook that stops answering must not hold
                    # this connection's requests for every channel it follows in turn.
                    with trio.move_on_after(server.config.handshake_timeout) as scope:
                        for channel in self._server.broker.hub.channels_of(self):
                            if await self._still_allowed(channel) is False:
                                wait = self._leave_refused(channel) or wait
                    if scope.cancelled_caught:
                        log.warning(
                            "authorize did not answer for %s after a refresh within %gs: "
                            "the subscriptions it was not asked about are kept",
                            self.client_id,
                            server.config.handshake_timeout,
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
            await self._server.authorize(self.principal, Action.SUBSCRIBE, channel, None)
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
        server = self._server
        # In process the ack is written in this very step: observed as 0 s, with no clock read.
        started = None if server.broker.numbers_at_once else trio.current_time()
        try:
            blocked = server.publish_from(
                self,
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
        await self._server.fanout.wait_for_blocked(blocked)
        if self._acks_over:
            self._acks_over = False
            await self.settle()

    def _joining(self, channel: str) -> bool:
        """Whether a subscribe to ``channel`` would be a presence join (a new membership)."""
        presence = self._server.presence
        return presence.enabled and not self._server.hub.is_member(self, channel)

    def _unsubscribe(self, channel: str) -> None:
        if self._server.broker.unsubscribe(self, channel):
            self._server.presence.left(self, channel)

    def _check_presence(self, channel: str, request_id: protocol.RequestId | None) -> None:
        # A presence answer costs what a subscribe does (more with Redis): the same rates.
        self._check_rate(Action.SUBSCRIBE, request_id)
        if self._server.presence.mode(channel) is None:
            raise ProtocolError(
                protocol.BAD_REQUEST,
                f"presence is off for '{channel}' (the server's --presence patterns)",
                request_id,
            )
        self._server.check_allowed(self.principal, Action.SUBSCRIBE, channel, request_id)

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
            self._server.presence.joined(self, request.channel)
        return self.settle if over else None

    # -- liveness and expiry --------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """A ping every ``heartbeat_interval``; 1011 when one is not answered within
        ``heartbeat_timeout``. After a ping this task sleeps until the pong deadline; the
        reader, seeing the pong, moves that wake-up to the next ping. One wake-up per ping,
        no event, no extra task."""
        config = self._server.config
        pings = 0
        wake = trio.current_time() + config.heartbeat_interval
        while True:
            with trio.CancelScope(deadline=wake) as self._beat:
                await trio.sleep_forever()
            if self._ping_payload is not None:  # woken at the pong deadline: none came
                self.close(INTERNAL_ERROR, "Heartbeat timeout")
                return
            now = trio.current_time()
            pings += 1
            self._ping_payload = pings.to_bytes(8, "big")
            self._send(frame(PING, self._ping_payload))
            self._next_ping = now + config.heartbeat_interval
            wake = now + config.heartbeat_timeout

    def _pong(self, payload: bytes) -> None:
        if payload == self._ping_payload:
            self._ping_payload = None
            beat = self._beat
            if beat is not None:
                beat.deadline = self._next_ping

    def _expiry_deadline(self) -> float:
        expires_at = self.principal.expires_at
        if expires_at is None:
            return float("inf")
        return trio.current_time() + (expires_at - self._server.wall_clock())

    async def _watch_expiry(self) -> None:
        with trio.CancelScope(deadline=self._expiry_deadline()) as self._expiry_scope:
            await trio.sleep_forever()
        self.close(POLICY, "Token expired")

    def _refreshed(self, token: str, request_id: protocol.RequestId | None) -> Wait | None:
        """Take a new token for this connection's user; its reply is queued."""
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
