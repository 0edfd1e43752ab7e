"""One client connection: its task tree, its reader and its heartbeat.

Task tree (all in the connection's own nursery)::

    reader     the connection's own task (the nursery's body): reads the socket, parses
               frames, answers pings, and serves every request that needs no waiting inline
               (triows._server.requests), a bounded amount of work per step
    heartbeat  pings every interval; closes with 1011 when nothing at all (no pong, no frame,
               no byte) arrived within the timeout after a ping, stretched by the loop's lag
    expiry     (with auth) closes with 1008 when the token expires, unless refreshed
    writer     started only while the socket refuses bytes (triows._server.outbound)
    requests   started only while a request waits (triows._server.requests)

An idle connection is two tasks. Whatever ends the connection, ``run()`` leaves the hub clean
and says goodbye with a close code, within a deadline. It knows its server only as a
:class:`~triows._server.host.ConnectionHost`.
"""

from __future__ import annotations

import logging

import trio

from .._brokers.fanout import StepBudget
from .._core import protocol
from .._core.auth import Principal
from .._core.close_codes import ABNORMAL, GOING_AWAY, INTERNAL_ERROR
from .._core.frame_parser import Close, Event, Message, Ping, Pong
from .._core.frames import PING, PONG, frame, text_frame
from .._core.outbox import Verdict
from .._net.websocket import WebSocket
from .._ops.view import ConnectionStatistics
from .host import ConnectionHost
from .requests import Requests

__all__ = ["GOING_AWAY", "Connection"]

log = logging.getLogger("triows.connection")

#: Event-loop lag (seconds) below which a server counts as on time. A healthy loop wakes a
#: task a millisecond or so late; a heartbeat deadline moves only for lag above this.
LAG_FLOOR = 0.05
#: However long the lag lasts, a ping's deadline moves by at most this many times
#: ``heartbeat_timeout``: a loop that lags for good (or a lag measure gone wrong) must not
#: keep a silent peer for ever.
MAX_STRETCH = 4


#: The heartbeat task's name (given, so that trio does not format one per connection).
HEARTBEAT_TASK = "triows.connection.heartbeat"


def _woken_by_deadline(_: object) -> trio.lowlevel.Abort:
    """The heartbeat's sleep ends only by its cancel scope's deadline (or a cancellation)."""
    return trio.lowlevel.Abort.SUCCEEDED


class Connection(Requests):
    DEFERS = True  # its replies, pings and deliveries go out in the flusher's batch

    __slots__ = (
        "_beat",
        "_heard",
        "_next_ping",
        "_ping_payload",
        "connected_at",
        "ip",
        "remote",
    )

    def __init__(
        self,
        *,
        host: ConnectionHost,
        ws: WebSocket,
        principal: Principal,
        remote: str,
        client_id: str,
        ip: str = "",
        greeted: bool = False,
    ) -> None:
        super().__init__(host, ws, principal, client_id)
        if greeted:  # the server wrote our welcome with the 101 (``welcome``)
            self.frames_out += 1
            self._traffic.sent += 1
        self.remote = remote
        self.ip = ip
        self._ping_payload: bytes | None = None  # the heartbeat ping not answered yet
        self._beat: trio.CancelScope | None = None  # the heartbeat's sleep
        self._next_ping = 0.0
        #: Bytes arrived since the last heartbeat ping (set by the reader, one store per read:
        #: no clock is read on the hot path).
        self._heard = False
        self.connected_at = trio.current_time()

    def statistics(self, now: float) -> ConnectionStatistics:
        outbox = self.outbox
        return ConnectionStatistics(
            client_id=self.client_id,
            user_id=self.principal.user_id,
            remote=self.remote,
            connected_for=now - self.connected_at,
            subscriptions=tuple(self._host.broker.hub.channels_of(self)),
            frames_in=self.frames_in,
            frames_out=self.frames_out,
            queued_frames=len(outbox),
            queued_bytes=outbox.queued_bytes,
            dropped=outbox.dropped,
            server_id=self._host.server_id,
        )

    def __repr__(self) -> str:
        return f"<Connection {self.client_id} user={self.principal.user_id!r} {self.remote}>"

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._ending:  # closed before it ran (a shutdown that raced it)
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._heartbeat, name=HEARTBEAT_TASK)
                if self._host.access.enabled:
                    nursery.start_soon(self._watch_expiry)
                if not self.frames_out:  # the welcome is the first frame, if not sent yet
                    self._greet()
                try:
                    await self._read()
                finally:
                    self._host.read_clock.at = None  # left mid-read: no stale clock for anyone
                    self._end()
        except* Exception as group:
            # A bug in our request handling must cost this client its connection, never the
            # server. Cancelled is a BaseException and passes.
            log.error("connection %s failed", self.client_id, exc_info=group)
            self.close(INTERNAL_ERROR, "Internal error")
        finally:
            self._nursery = None
            # Leave the channels at once (no more deliveries). The server forgets this
            # connection only at the end, after the goodbye: Server.aclose() waits for that,
            # and must not cancel the tasks the closing handshake still needs.
            try:
                self._host.presence.left_all(self)
                self._host.broker.remove_member(self)
                await self._say_goodbye()
            finally:
                self._host.forget(self)

    @classmethod
    def welcome(cls, host: ConnectionHost, client_id: str) -> bytes:
        """The framed welcome a connection's client gets first (the server writes it with the
        101, before the connection runs)."""
        return text_frame(
            protocol.encode(
                protocol.welcome_frame(
                    client_id, host.now_ms(), host.server_id, host.config.heartbeat_interval
                )
            )
        )

    def _greet(self) -> None:
        self.queue_reply(self.welcome(self._host, self.client_id))

    # -- receiving ------------------------------------------------------------------------------

    async def _read(self) -> None:
        ws = self.ws
        parser = ws.parser
        budget = StepBudget(self._host.fanout)
        data, ws.leftover = ws.leftover, b""
        event: Event | None = None
        clock = self._host.read_clock
        while True:
            if data or parser.pending:
                budget.reset()
                messages = 0
                # The clocks once per read, for every request it holds (rates, history,
                # dedupe, timestamps), and its activity stamp.
                clock.at = trio.current_time()
                clock.ms = self._host.now_ms()
                for event in parser.feed(data):
                    if isinstance(event, Message):
                        messages += 1
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
                        # Let every other connection run before serving more of this read
                        # (its clock is not theirs to use, and is read again after).
                        clock.at = None
                        await trio.lowlevel.checkpoint()
                        budget.reset()
                        clock.at = trio.current_time()
                        clock.ms = self._host.now_ms()
                # Waiting for the next read holds neither this one nor its last message.
                data, event = b"", None
                if messages:  # activity is messages (not pongs): the clock once per read
                    self.last_activity = clock.at
                clock.at = None
                if parser.pending:
                    # The read inflated past one step: the rest of it after the others ran.
                    await trio.lowlevel.checkpoint()
                    continue
            data = await ws.receive()
            if not data:
                self._peer_left(ABNORMAL, "")
                return
            self._heard = True

    # -- liveness -------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """A ping every ``heartbeat_interval``; 1011 when nothing arrived within
        ``heartbeat_timeout`` of one.

        A peer is alive when anything arrives, not only the pong: a client busy sending (or
        one whose pong waits behind its own frames) is not dead. The reader marks every read
        with one attribute store (``_heard``) and this task looks at it only at the deadline,
        so liveness costs nothing per frame. At the deadline, bytes already in the kernel's
        buffer that the reader has not taken yet also count (a saturated loop runs readers
        late). And when this server itself runs late (its event loop lags, as the monitor
        measures it and as this task feels it waking late), the deadline moves by that lag,
        again while the lag lasts (up to ``MAX_STRETCH`` timeouts): a busy server never blames
        its clients for its own delay, and a lag that never ends never keeps a dead peer.

        After a ping this task sleeps until the deadline; the reader, seeing the pong, moves
        that wake-up to the next ping. One wake-up per ping, no event, no extra task.
        """
        config = self._host.config
        pings = 0
        wake = trio.current_time() + config.heartbeat_interval
        limit = wake  # the latest a deadline may move to (set with each ping)
        while True:
            with trio.CancelScope(deadline=wake) as self._beat:
                # trio.sleep_forever() without its frame and its lambda: what an idle
                # connection's heartbeat holds while it sleeps.
                await trio.lowlevel.wait_task_rescheduled(_woken_by_deadline)
            now = trio.current_time()
            if self._ping_payload is not None:  # woken at the deadline: no pong came
                if not (self._heard or self.ws.has_unread_bytes()):
                    lag = max(self._host.loop_lag(), now - wake)
                    if lag < LAG_FLOOR or now >= limit:
                        self.close(INTERNAL_ERROR, "Heartbeat timeout")
                        return
                    # The server was behind: give the peer that time too, within the bound.
                    wake = min(now + lag, limit)
                    continue
                # Something arrived since the ping: alive, whether or not the pong did.
                if now < self._next_ping:
                    self._ping_payload = None
                    wake = self._next_ping
                    continue
            pings += 1
            self._ping_payload = pings.to_bytes(8, "big")
            self._heard = False
            self._send(frame(PING, self._ping_payload))
            self._next_ping = now + config.heartbeat_interval
            wake = now + config.heartbeat_timeout
            limit = wake + MAX_STRETCH * config.heartbeat_timeout

    def _pong(self, payload: bytes) -> None:
        if payload == self._ping_payload:
            self._ping_payload = None
            beat = self._beat
            if beat is not None:
                beat.deadline = self._next_ping
