"""One Server-Sent Events stream: a one-way subscriber with the WebSocket connection's write
path, limits and slow-consumer policies.

Task tree (all in the stream's own nursery, as a connection's)::

    reader      the nursery's body: subscribes to the stream's channels (in order, each with
                its position from ``Last-Event-ID``), then reads until the client leaves
                (what a client sends after its request is thrown away, within a bound)
    keep-alive  a comment every ``sse_keepalive`` seconds while nothing else is queued
    expiry      (with auth) closes the stream when its token expires
    writer      only while the socket refuses bytes (``triows._server.outbound``)

Every frame fan-out hands this subscriber (framed once per broadcast for WebSocket clients) is
turned into an event here: its text payload is the event's ``data``, and a triows client's
delivery rules (``triows._core.tracking``) decide what is delivered, what is a duplicate and
which gap to report; every event that moves a channel carries the stream's position in all of
them as its ``id`` (``triows._core.sse``). The goodbye, whatever ended the stream, is an
``event: close`` with the close code and reason and a new ``retry:`` hint.
"""

from __future__ import annotations

import logging
import random

import trio

from .._brokers.seam import BrokerUnavailableError
from .._core import protocol, sse
from .._core.auth import Principal
from .._core.close_codes import ABNORMAL, POLICY
from .._core.hub import SubscriptionLimitError
from .._core.outbox import DropCounter, SlowConsumerPolicy
from .._core.sse_skips import SkipCounter, Skips
from .._core.tracking import MESSAGES_SKIPPED, Gap, Message, Tracked, Tracker
from .._net.websocket import WebSocket
from .._ops.view import ConnectionStatistics
from .channels import subscribed_reply
from .goodbye import Goodbye
from .host import ConnectionHost

log = logging.getLogger("triows.sse")

#: Bytes a client may send after its request (an EventSource sends none); more ends the stream.
MAX_CLIENT_BYTES = 64 * 1024
_DROPPABLE = (SlowConsumerPolicy.DROP_OLDEST, SlowConsumerPolicy.DROP_NEWEST)


class SharedEvents:
    """The events the last stream made of a broadcast frame.

    Fan-out hands one frame to every subscriber in a row. A stream that follows the same
    channels and stands at the same position (its id is the same) makes the same events of it
    and moves to the same position: it takes them as they are, and a broadcast to many streams
    of one channel is turned into events about once, as it is framed once for WebSockets.
    One per server; it holds one frame and one set of events at most.
    """

    __slots__ = ("after", "before", "channels", "data", "frame")

    def __init__(self) -> None:
        self.frame: bytes | None = None
        self.channels: list[str] = []
        self.before = ""
        self.after: sse.Position = None
        self.data = b""

    def remember(
        self, frame: bytes, channels: list[str], before: str, after: sse.Position, data: bytes
    ) -> None:
        self.frame, self.channels, self.before, self.after, self.data = (
            frame,
            channels,
            before,
            after,
            data,
        )


class SseStream(Goodbye):
    __slots__ = (
        "_channels",
        "_ids",
        "_positions",
        "_shared",
        "_skips",
        "_span",
        "_tracker",
        "client_id",
        "connected_at",
        "frames_in",
        "ip",
        "last_activity",
        "principal",
        "remote",
    )

    def __init__(
        self,
        *,
        host: ConnectionHost,
        ws: WebSocket,
        principal: Principal,
        client_id: str,
        channels: list[str],
        positions: list[sse.Position],
        remote: str = "",
        ip: str = "",
        shared: SharedEvents | None = None,
    ) -> None:
        super().__init__(host, ws)
        self._shared = shared if shared is not None else SharedEvents()
        self.principal = principal
        self.client_id = client_id
        self.remote = remote
        self.ip = ip
        self._channels = channels
        #: Positions from ``Last-Event-ID``, each used by its channel's subscribe.
        self._positions = positions
        self._tracker = Tracker()
        #: What the last message event made moved over: ``(channel, first, last)`` seq.
        self._span: tuple[str, int, int] | None = None
        #: Ranges a ``drop_*`` policy dropped, to be told as gaps (``triows._core.sse_skips``).
        self._skips = Skips()
        self._ids = sse.IdWriter(channels, positions)
        for channel, position in zip(channels, positions, strict=True):
            if position is None:
                self._tracker.track(channel)
            else:
                self._tracker.restore(channel, *position)
        self.connected_at = self.last_activity = trio.current_time()
        self.frames_in = 0

    @property
    def dedupe_key(self) -> object:
        """An event stream publishes nothing: no publish ids of its own."""
        return ("connection", self.client_id)

    def __repr__(self) -> str:
        return f"<SseStream {self.client_id} user={self.principal.user_id!r} {self.remote}>"

    def statistics(self, now: float) -> ConnectionStatistics:
        outbox = self.outbox
        return ConnectionStatistics(
            client_id=self.client_id,
            user_id=self.principal.user_id,
            remote=self.remote,
            connected_for=now - self.connected_at,
            subscriptions=tuple(self._host.broker.hub.channels_of(self)),
            frames_in=0,
            frames_out=self.frames_out,
            queued_frames=len(outbox),
            queued_bytes=outbox.queued_bytes,
            dropped=outbox.dropped,
            server_id=self._host.server_id,
            transport="sse",
        )

    # -- the task tree --------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._ending:  # closed before it ran (a shutdown that raced it)
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._keep_alive)
                if self._host.access.enabled:
                    nursery.start_soon(self._watch_expiry)
                try:
                    await self._subscribe_all()
                    await self._read()
                finally:
                    self._end()
        except* Exception as group:
            # A bug here costs this client its stream, never the server.
            log.error("SSE stream %s failed", self.client_id, exc_info=group)
            self.close(1011, "Internal error")
        finally:
            self._nursery = None
            self._host.broker.remove_member(self)
            await self._say_goodbye()

    async def _subscribe_all(self) -> None:
        """Each channel as a WebSocket ``subscribe`` (with ``since``/``epoch`` when the stream
        holds a position for it); its reply and replay are turned into events in the step
        that made it a member, so that live messages can only come after them."""
        broker = self._host.broker
        for channel, position in zip(self._channels, self._positions, strict=True):
            since, epoch = (None, None) if position is None else (position[1], position[0])
            try:
                if broker.subscribes_at_once:
                    # No checkpoint before its reply is queued: a message published meanwhile
                    # would reach the tracker before its ``subscribed`` and be lost.
                    subscribed = broker.subscribe_nowait(self, channel, since, epoch)
                else:
                    with trio.fail_after(self._host.config.handshake_timeout):
                        subscribed = await broker.subscribe(self, channel, since, epoch)
            except (SubscriptionLimitError, BrokerUnavailableError, trio.TooSlowError) as exc:
                # Redis away or slow: worth coming back (a bug goes on, to 1011).
                log.info("SSE %s could not subscribe to %r: %r", self.client_id, channel, exc)
                self.close(1013, f"cannot subscribe to '{channel}' now; try again")
                return
            reply, replay = subscribed_reply(channel, subscribed)
            events = self._reply_events(reply)
            for frame in replay:
                events += self._frame_events(frame)
            if self._queue(events):
                await self.settle()
            if broker.subscribes_at_once:
                await trio.lowlevel.checkpoint()  # many channels must not stall the others

    async def _read(self) -> None:
        """Until the client leaves; what it sends is not ours to read, and bounded."""
        received = len(self.ws.leftover)
        self.ws.leftover = b""
        while received <= MAX_CLIENT_BYTES:
            data = await self.ws.receive()
            if not data:
                self._peer_left(ABNORMAL, "")
                return
            received += len(data)
        self.close(POLICY, "an event stream takes no request body")

    async def _keep_alive(self) -> None:
        interval = self._host.config.sse_keepalive
        while True:
            await trio.sleep(interval)
            if self._skips:
                self._report_skips()
            if not self.outbox:  # bytes queued are moving, or the writer's timeout acts
                self._send(sse.comment())

    async def _watch_expiry(self) -> None:
        expires_at = self.principal.expires_at
        if expires_at is None:
            return
        await trio.sleep_until(trio.current_time() + (expires_at - self._host.wall_clock()))
        self.close(POLICY, "Token expired")

    # -- what fan-out hands this subscriber -----------------------------------------------------

    def deliver(self, frame: bytes, policy: SlowConsumerPolicy, counter: DropCounter) -> bool:
        # Called by the publisher's task: a bug in turning a frame into events must cost this
        # stream, never the publisher or the other subscribers.
        try:
            data = self._frame_events(frame)
        except Exception:
            log.exception("SSE stream %s could not make events of a frame", self.client_id)
            self.close(1011, "Internal error")
            return True
        if not data:
            return True  # a duplicate, or not for this stream
        if self._skips:
            self._report_skips()
        if policy in _DROPPABLE and self._span is not None:
            counter = SkipCounter(counter, self._skips, *self._span)
        return super().deliver(data, policy, counter)

    async def _write_batch(self, max_bytes: int) -> None:
        await super()._write_batch(max_bytes)
        if self._skips:  # room again, maybe: the gaps first
            self._report_skips()

    def _report_skips(self) -> None:
        """The gaps of what the outbox dropped, once it has room for them (never dropped)."""
        if self.close_code is not None:
            return
        if self._skips.overflowed:
            self._host.fanout.slow_consumer(self, "Slow consumer: too many gaps to tell")
        elif self.outbox.has_room:
            gaps: list[Tracked] = [
                Gap(channel=channel, first=first, last=last, reason=MESSAGES_SKIPPED)
                for channel, first, last in self._skips.take()
            ]
            self._queue(self._events(self._gaps(gaps)))

    def reply_nowait(self, frame: dict[str, object]) -> None:
        """A notice from the broker (a numbering that restarted, an error): an event that is
        never dropped, like a WebSocket reply."""
        try:
            data = self._reply_events(frame)
        except Exception:
            log.exception("SSE stream %s could not make events of a notice", self.client_id)
            self.close(1011, "Internal error")
            return
        if self._queue(data):
            self._close_not_reading()

    def _queue(self, data: bytes) -> bool:
        """Queue events that must not be dropped; True when the outbox went over capacity."""
        return bool(data) and self.queue_reply(data)

    def _frame_events(self, frame: bytes) -> bytes:
        self._span = None
        start = sse.payload_start(frame)
        if start < 0:
            return b""
        fields = sse.message_fields(frame, start)
        if fields is None:
            kind = sse.frame_type(frame, start)  # join, leave
            return sse.event(frame[start:], name=kind) if kind else b""
        channel, message_id, seq = fields
        shared = self._shared
        before = self._ids.text()
        prior = self._tracker.resume_from(channel)
        if shared.frame is frame and shared.before == before and shared.channels == self._channels:
            # The stream before this one stood where this one stands: the same events, and
            # the same move (the rules read nothing else of an SSE stream).
            if shared.after is not None:
                self._tracker.restore(channel, *shared.after)
                self._ids.move(channel, shared.after)
                self._note_span(channel, prior, shared.after)
            return shared.data
        tracked = self._tracker.on_message({"channel": channel, "seq": seq, "id": message_id})
        if len(tracked) == 1 and isinstance(tracked[0], Message):  # the common case
            after = self._moved(channel)
            data = sse.message_event(frame, start, self._ids.text())
        else:
            parts = self._gaps(tracked)
            if any(isinstance(item, Message) for item in tracked):
                parts.append((frame[start:], None))
            after = self._moved(channel)
            data = self._events(parts)
        shared.remember(frame, self._channels, before, after, data)
        self._note_span(channel, prior, after)
        return data

    def _note_span(self, channel: str, prior: tuple[int, str] | None, after: sse.Position) -> None:
        if prior is not None and after is not None and after[1] > prior[0]:
            self._span = (channel, prior[0] + 1, after[1])

    def _moved(self, channel: str) -> sse.Position:
        """Bring the id to the tracker's cursor of ``channel``; returns that position."""
        found = self._tracker.resume_from(channel)
        position = None if found is None else (found[1], found[0])
        self._ids.move(channel, position)
        return position

    def _reply_events(self, frame: dict[str, object]) -> bytes:
        data = protocol.encode(frame)
        kind = frame.get("type")
        if kind != "subscribed":
            return sse.event(data, name=str(kind))
        tracked = self._tracker.on_subscribed(frame)
        channel = frame.get("channel")
        if isinstance(channel, str):
            self._moved(channel)
        return self._events([(data, "subscribed"), *self._gaps(tracked)])

    @staticmethod
    def _gaps(tracked: list[Tracked]) -> list[tuple[bytes, str | None]]:
        return [
            (
                protocol.encode(
                    {
                        "channel": item.channel,
                        "first": item.first,
                        "last": item.last,
                        "reason": item.reason,
                    }
                ),
                "gap",
            )
            for item in tracked
            if isinstance(item, Gap)
        ]

    def _events(self, parts: list[tuple[bytes, str | None]]) -> bytes:
        """Events in order; the last one carries the stream's id, the position after them all
        (an event without ``id:`` leaves the client's last id as it was, so a client that
        received only the first ones resumes before them)."""
        if not parts:
            return b""
        out = [sse.event(data, name=name) for data, name in parts[:-1]]
        data, name = parts[-1]
        out.append(sse.event(data, name=name, event_id=self._ids.text()))
        return b"".join(out)

    # -- the goodbye ----------------------------------------------------------------------------

    def _close_frame(self) -> bytes:
        """The goodbye's last bytes (:meth:`Goodbye._say_goodbye`): the close event, when the
        server ends the stream."""
        return self.close_event() if self.closed_by_server else b""

    async def _after_close_frame(self) -> None:
        """An event stream has no close frame to wait for: end our side and read until the
        client closes (bounded by the goodbye's deadline)."""
        stream = self.ws.stream
        if self.closed_by_server and isinstance(stream, trio.SocketStream):
            try:
                await stream.send_eof()
                while await self.ws.receive():
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    def close_event(self) -> bytes:
        """The last event: why the stream ends, and when to come back."""
        code = self.close_code
        data = protocol.encode({"code": code, "reason": self.close_reason})
        retry = sse.retry_with_jitter(self._host.config.sse_retry, random.random())
        return sse.retry_field(retry)[:-1] + sse.event(data, name="close")
