"""The channels this node follows in Redis, and what it delivers of them, in order.

The node subscribes to a channel's Redis pub/sub channel while it has local members (first
join subscribes, last leave unsubscribes, the listener thread is woken at once). Each
followed channel has a :class:`~triows._core.feed.Feed`, which keeps its messages in seq order,
drops duplicates and asks for what pub/sub missed to be read from the stream (a fill, read here
in bounded steps), so delivery is exactly once and complete as long as the stream holds it.
After Redis confirms a subscription, the join script gives the feed its baseline
``(seq, epoch)``. What the feed gives is handed to the fan-out at once: this is the delivery
hot path (pub/sub message -> feed -> ``FanOut.deliver``), kept to one call per layer.

A channel with a ``block`` subscriber out of room waits alone: its later inputs are held (not
yet fed) until the subscriber has room or is dropped, while the other channels and the pub/sub
thread go on.

Separate from the broker because this is the one part that owns per-channel state and the
delivery order; the publisher, resume and the watchdog only read it (see :class:`Channel`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence

import attrs
import redis
import trio

from ..._config import Config
from ..._core import protocol
from ..._core import redis_format as fmt
from ..._core.feed import Deliver, Entry, Feed, Fill, Restart
from ..._core.frames import text_frame
from ..._core.hub import Hub
from ..._core.latency import LatencyHistogram
from ..fanout import DELIVERIES_PER_STEP, FanOut, StepBudget, Subscriber
from ..seam import WallClockMs
from .bridge import Message, PubSubListener
from .commands import read_stream
from .link import Link, NotWanted
from .tasks import BackgroundTasks

log = logging.getLogger("triows.redis")

#: Stream entries read (and delivered) per step of a node's catch-up: a node far behind
#: catches up in bounded steps instead of one huge read and one long synchronous delivery.
FILL_CHUNK = 1000

#: What the feed does with one input (a message, a fill, a baseline): its actions.
_Step = Callable[[], Sequence[Deliver | Fill | Restart]]


@attrs.define(eq=False)
class Channel:
    """A channel this node follows in Redis. The feeds change it; a subscribe waits for
    ``ready`` (the feed has its baseline), and a resume reads ``feed`` and waits on ``moved``."""

    name: str
    feed: Feed = attrs.field(factory=Feed)
    ready: trio.Event = attrs.field(factory=trio.Event)
    confirmed: bool = False
    #: Subscribes in progress; the channel is kept while any is.
    joiners: int = 0
    syncing: bool = False
    sync_again: bool = False
    #: A ``block`` subscriber of this channel ran out of room: the channel's later inputs wait
    #: in ``held`` (not yet fed: the feed's seq stays what its members were handed) until it
    #: has room. Only this channel waits; the others, and the pub/sub thread, go on.
    waiting: bool = False
    #: Inputs held, with the bytes of the messages among them (what they cost in memory).
    held: deque[tuple[_Step, int]] = attrs.field(factory=deque)
    held_bytes: int = 0
    #: Cancels the wait at once: ``held`` grew past its bound.
    hurry: trio.CancelScope | None = None
    #: Set when the channel stops waiting (a catch-up reads no more meanwhile).
    flowing: trio.Event | None = None
    #: Set (and dropped) whenever the feed may have moved, while a resume waits for it.
    moved: trio.Event | None = None


class ChannelFeeds:
    def __init__(
        self,
        config: Config,
        hub: Hub[Subscriber],
        fanout: FanOut,
        link: Link,
        tasks: BackgroundTasks,
        listener: PubSubListener,
        *,
        wake: Callable[[], None],
        came_back: Callable[[Entry], None],
        new_epoch: Callable[[], str],
        now_ms: WallClockMs,
        delivery_lag: LatencyHistogram,
    ) -> None:
        self._config = config
        self._hub = hub
        self._fanout = fanout
        self._link = link
        self._tasks = tasks
        self._listener = listener
        #: Wakes the listener thread, so that it applies an (un)subscribe at once.
        self._wake = wake
        #: Tells the publisher a message came back (its own publications are settled then).
        self._came_back = came_back
        #: The epoch a channel gets if this node's join is the one that starts its numbering.
        self._new_epoch = new_epoch
        self._now_ms = now_ms
        self._delivery_lag = delivery_lag
        #: The channels followed, by name.
        self.channels: dict[str, Channel] = {}
        #: Messages read back from streams to fill what pub/sub missed.
        self.filled = 0

    def followed(self) -> list[str]:
        return list(self.channels)

    @contextlib.contextmanager
    def joining(self, name: str) -> Iterator[Channel]:
        """Follow the channel while a subscribe to it is in progress (and after, while it has
        local members)."""
        ch = self._follow(name)
        ch.joiners += 1
        try:
            yield ch
        finally:
            ch.joiners -= 1
            self._unfollow_if_unused(ch)

    def release(self, name: str) -> None:
        """The channel lost a local member: stop following it if that was the last."""
        ch = self.channels.get(name)
        if ch is not None:
            self._unfollow_if_unused(ch)

    def receive(self, message: Message) -> None:
        """A message on a followed channel's pub/sub channel (others are skipped). Raises
        :class:`~triows._core.redis_format.MalformedError` if it is not intact."""
        name = fmt.channel_of(message.channel)
        ch = None if name is None else self.channels.get(name)
        if ch is None:
            return
        entry = fmt.parse_published(message.data)
        self._came_back(entry)  # the publisher's ack does not wait for the channel
        self._feed(ch, functools.partial(ch.feed.receive, entry), len(entry.payload))

    def _follow(self, name: str) -> Channel:
        ch = self.channels.get(name)
        if ch is None:
            ch = self.channels[name] = Channel(name)
            self._listener.subscribe(fmt.pubsub_channel(name))
            self._wake()
        return ch

    def _unfollow_if_unused(self, ch: Channel) -> None:
        if ch.joiners or self._hub.channel(ch.name) is not None:
            return
        if self.channels.get(ch.name) is ch:
            del self.channels[ch.name]
            self._listener.unsubscribe(fmt.pubsub_channel(ch.name))
            self._wake()

    def confirmed(self, pubsub_channel: str) -> None:
        """Redis confirmed our subscription to ``pubsub_channel``: everything published there
        from now on reaches us. The feed's baseline is read (again, when the link was rebuilt:
        the feed then catches up on what it missed meanwhile)."""
        name = fmt.channel_of(pubsub_channel)
        ch = None if name is None else self.channels.get(name)
        if ch is None:
            return
        if ch.confirmed:
            ch.feed.resync()  # confirmed again: the link was rebuilt, catch up
        ch.confirmed = True
        if ch.syncing:
            ch.sync_again = True
        elif self._tasks.running:
            ch.syncing = True
            self._tasks.start_restarting(f"sync {ch.name}", functools.partial(self._sync, ch))

    def _feed(self, ch: Channel, step: _Step, size: int = 0) -> None:
        """Feed one input to the channel and deliver what it gives, at once, unless the
        channel waits for a ``block`` subscriber: then it waits its turn in ``held``, bounded
        as one subscriber's outbox is (``outbox_size`` inputs, ``outbox_max_bytes`` bytes);
        beyond, the subscribers still full are disconnected now, as a ``block`` publisher's
        would be at its timeout."""
        if ch.waiting:
            ch.held.append((step, size))
            ch.held_bytes += size
            config = self._config
            over = len(ch.held) > config.outbox_size or ch.held_bytes > config.outbox_max_bytes
            if over and ch.hurry is not None:
                ch.hurry.cancel()
            return
        blocked = self._apply(ch, step())
        if blocked and self._tasks.running:
            ch.waiting = True
            self._tasks.start_soon(self._wait_for_room, ch, blocked)

    async def _wait_for_room(self, ch: Channel, blocked: list[Subscriber]) -> None:
        """Wait for a channel's ``block`` subscribers (at most ``block_timeout``), then feed
        what the channel held meanwhile, in order. A bug here must cost neither the server
        nor the held messages: it is logged, and what is held is fed without waiting."""
        try:
            await self._drain_held(ch, blocked)
        except Exception:
            self._tasks.failures += 1
            log.exception("waiting for block subscribers of %r failed", ch.name)
            ch.waiting, ch.hurry = False, None
            while ch.held and not ch.waiting:
                step, size = ch.held.popleft()
                ch.held_bytes -= size
                self._feed(ch, step, size)

    async def _drain_held(self, ch: Channel, blocked: list[Subscriber]) -> None:
        try:
            while blocked:
                with trio.CancelScope() as ch.hurry:
                    await self._fanout.wait_for_blocked(blocked)
                ch.hurry = None
                for member in blocked:  # hurried: still full now is too slow
                    if not member.outbox.has_room and member.close_code is None:
                        self._fanout.slow_consumer(member, "Slow consumer")
                blocked = []
                budget = StepBudget(self._fanout)
                while ch.held and not blocked:
                    step, size = ch.held.popleft()
                    ch.held_bytes -= size
                    blocked = self._apply(ch, step())
                    if budget.spend():
                        await trio.lowlevel.checkpoint()
                        budget.reset()
        finally:
            ch.waiting = False
            ch.hurry = None
            if ch.flowing is not None:
                ch.flowing.set()
                ch.flowing = None

    def _apply(self, ch: Channel, actions: Sequence[Deliver | Fill | Restart]) -> list[Subscriber]:
        blocked: list[Subscriber] = []
        now_ms = self._now_ms()
        for action in actions:
            state = self._hub.channel(ch.name)
            if isinstance(action, Deliver):
                entry = action.entry
                stamped = protocol.timestamp_of(entry.payload)
                if stamped is not None:
                    self._delivery_lag.observe(max(0, now_ms - stamped) / 1000)
                self._came_back(entry)
                if state is not None:
                    state.seq, state.epoch = entry.seq, entry.epoch
                    state.published += 1
                    blocked += self._fanout.deliver(state, text_frame(entry.payload), entry.sender)
            elif isinstance(action, Fill):
                fill = functools.partial(self._fill, ch, action)
                self._tasks.start_restarting(f"fill {ch.name}", fill)
            elif state is not None:  # Restart: the numbering began again
                state.seq, state.epoch = 0, action.epoch
                log.warning("channel %r restarted its numbering (epoch %s)", ch.name, action.epoch)
                notice = {"type": "subscribed", "channel": ch.name, "seq": 0}
                for member in state.members:
                    member.reply_nowait({**notice, "epoch": action.epoch, "recovered": False})
        if ch.moved is not None:  # a resume waits for the feed (Resumer)
            ch.moved.set()
            ch.moved = None
        return blocked

    async def _sync(self, ch: Channel) -> None:
        """Read the channel's ``(seq, epoch)`` after a subscription was confirmed: the feed's
        baseline. Retried until it works or the channel is no longer followed."""
        ch.syncing = True  # again, when restarted after a failure
        try:
            while True:
                ch.sync_again = False
                delivered = (ch.feed.epoch or "", ch.feed.seq)  # read here, in trio
                join = functools.partial(self._join_script, ch.name, delivered, self._new_epoch())
                seq, epoch = await self._link.call_with_retries(
                    "commands", join, lambda: self._follows(ch)
                )
                self._feed(ch, functools.partial(ch.feed.baseline, seq, epoch))
                ch.ready.set()
                if not ch.sync_again:
                    break
        except NotWanted:
            pass
        finally:
            ch.syncing = False

    def _follows(self, ch: Channel) -> bool:
        return self.channels.get(ch.name) is ch

    def _join_script(
        self, name: str, delivered: tuple[str, int], new_epoch: str, client: redis.Redis
    ) -> tuple[int, str]:
        """In a thread: the channel's ``(seq, epoch)``, never below what this node delivered
        in that epoch (:data:`~triows._core.redis_format.JOIN_SCRIPT`)."""
        keys = (fmt.numbering_key(name), fmt.stream_key(name))
        args = (new_epoch, int(self._config.redis_key_ttl * 1000), *delivered)
        seq, epoch = client.eval(fmt.JOIN_SCRIPT, 2, *keys, *args)
        return int(seq), epoch.decode()

    async def _fill(self, ch: Channel, fill: Fill) -> None:
        """Catch the channel up from its stream, :data:`FILL_CHUNK` entries per step. A
        channel that waits for a ``block`` subscriber reads no more until it flows again."""
        after = fill.after
        while after < fill.upto:
            await self._flowing(ch)
            if ch.feed.filling is not fill:
                return  # done, or superseded (the numbering restarted meanwhile)
            through = min(fill.upto, after + FILL_CHUNK)
            read = functools.partial(read_stream, ch.name, after, through)
            try:
                found, _ = await self._link.call_with_retries(
                    "commands", read, lambda: self._follows(ch)
                )
            except NotWanted:
                return
            self.filled += len(found)
            await self._feed_filled(ch, fill, [entry for entry, _ in found], through)
            after = through

    async def _feed_filled(
        self, ch: Channel, fill: Fill, entries: list[Entry], through: int
    ) -> None:
        """Hand a fill's entries to the feed in parts of about ``DELIVERIES_PER_STEP``
        deliveries, with a checkpoint between parts: after an outage every followed channel
        catches up at once, and a thousand entries to a thousand members are a million."""
        state = self._hub.channel(ch.name)
        per_step = max(1, DELIVERIES_PER_STEP // max(1, len(state.members) if state else 0))
        start = 0
        while True:
            part = entries[start : start + per_step]
            start += per_step
            last = start >= len(entries)
            upto = through if last else part[-1].seq
            size = sum(len(entry.payload) for entry in part)
            self._feed(ch, functools.partial(ch.feed.filled, part, fill=fill, through=upto), size)
            if last:
                return
            await trio.lowlevel.checkpoint()

    @staticmethod
    async def _flowing(ch: Channel) -> None:
        """Until the channel no longer waits for a ``block`` subscriber."""
        while ch.waiting:
            if ch.flowing is None:
                ch.flowing = trio.Event()
            await ch.flowing.wait()
