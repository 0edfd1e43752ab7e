"""The Redis broker: one node of a cluster whose nodes share one Redis.

Publishing: a publication is queued in a bounded buffer (full: 503) and a single publisher task
sends what is queued as one pipeline of :data:`PUBLISH_SCRIPT` calls per thread hop. The script
numbers the message, appends it to the channel's stream and publishes it, atomically, so every
node sees the same seq for the same message. The buffer keeps order and survives an outage: a
batch that failed is sent again, and the script's once-key makes a resend whose first attempt
did get through a no-op. ``numbered(seq)`` (the client's ack) is called when Redis answered,
or earlier, when the message itself comes back by pub/sub: in both cases before any later
message of the channel reaches the publisher.

Delivering: the node subscribes to a channel's Redis pub/sub channel while it has local members
(first join subscribes, last leave unsubscribes, the listener thread is woken at once through a
control channel). Messages go through a :class:`~triows._core.feed.Feed`, which keeps them in
seq order, drops duplicates and asks for what pub/sub missed to be read from the stream, so
delivery is exactly once and complete as long as the stream holds it.

Outage: clients stay connected; publications wait in the buffer; the listener reconnects with
backoff and subscribes again, and each channel catches up from its stream. Streams keep what
nodes need for that whatever the history size: an entry goes only once it is beyond the
history size and older than ``redis_retention``, and a node whose link was down trims
nothing for ``redis_retention`` after it is back (``docs/design.md``, stream retention).

A watchdog publishes a ping to the node's control channel every ``redis_timeout`` seconds: if
Redis says nobody received it, or it does not come back, the pub/sub link went silent while
Redis is up, and it is rebuilt (``repairs`` in the statistics).
"""

from __future__ import annotations

import functools
import itertools
import logging
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from typing import TypeVar

import attrs
import redis
import trio

from ..._config import Config
from ..._core import presence, protocol
from ..._core import redis_format as fmt
from ..._core.feed import Deliver, Entry, Feed, Fill, Restart
from ..._core.frames import text_frame
from ..._core.hub import (
    Hub,
    Resume,
    SubscriptionLimitError,
    resume_ahead_of_feed,
    resume_from_history,
    resume_without_history,
)
from ..._core.latency import histogram
from ..fanout import DELIVERIES_PER_STEP, FanOut, StepBudget, Subscriber
from ..seam import (
    Broker,
    BrokerStatistics,
    BrokerUnavailableError,
    Publication,
    Subscribed,
    WallClockMs,
)
from .bridge import (
    LINK_ERRORS,
    Confirmed,
    Event,
    LinkDown,
    Message,
    PubSubListener,
    RedisBridge,
)
from .commands import read_numbering, read_stream
from .link import Link, NotWanted
from .publisher import Publisher
from .tasks import BackgroundTasks
from .watchdog import ListenerWaker, Watchdog

log = logging.getLogger("triows.redis")

T = TypeVar("T")

#: Rounds of stream reads a resume may take to catch up with a busy channel.
RESUME_ROUNDS = 20
#: Stream entries read (and delivered) per step of a node's catch-up: a node far behind
#: catches up in bounded steps instead of one huge read and one long synchronous delivery.
FILL_CHUNK = 1000


#: What the feed does with one input (a message, a fill, a baseline): its actions.
_Step = Callable[[], Sequence[Deliver | Fill | Restart]]
#: Seconds (at most ``redis_timeout``) a resume from beyond this node's feed waits for the
#: feed to get there before asking Redis.
RESUME_LAG_WAIT = 0.5


@attrs.define(eq=False)
class _Channel:
    """A channel this node follows in Redis."""

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


class RedisBroker(Broker):
    def __init__(
        self, config: Config, fanout: FanOut, wall_clock_ms: WallClockMs, url: str
    ) -> None:
        self._fanout = fanout
        self._now_ms = wall_clock_ms
        self._config = config
        self.hub = Hub(
            epoch_prefix="redis",  # unused: the epochs come from Redis
            max_subscriptions=config.max_subscriptions,
            policy_for=config.policy_for,
            history_for=lambda _: (0, 0.0),  # history lives in the streams
            max_idle_channels=0,
        )
        self.node_id = secrets.token_hex(4)
        self._epochs = itertools.count(1)
        self.round_trips = histogram(config.metrics)
        self.delivery_lag = histogram(config.metrics)
        self._bridge = RedisBridge(url, config.redis_timeout, self.round_trips)
        self._control = fmt.control_channel(self.node_id)
        self._listener = PubSubListener(self._bridge, self._control, self._dispatch)
        #: Set by presence (triows._brokers.presence): other nodes' joins and leaves go there.
        self.on_presence: Callable[[bytes], None] | None = None
        self._channels: dict[str, _Channel] = {}
        self._tasks = BackgroundTasks()
        self._dispatching = False
        self._link = Link(
            config,
            self._bridge,
            connections=lambda: len(fanout),
            held_publications=lambda: len(self._publisher.buffer),
            followed_channels=lambda: len(self._channels),
        )
        self.up = self._link.up
        self._publisher = Publisher(config, self.node_id, self._link, self._tasks, self._new_epoch)
        self._waker = ListenerWaker(self._bridge, self._control, self._tasks)
        self._watchdog = Watchdog(
            config,
            self._bridge,
            self._link,
            self._listener,
            self._waker,
            self._control,
            followed=lambda: list(self._channels),
            dispatching=lambda: self._dispatching,
        )
        self.filled = 0
        self.malformed = 0

    def _new_epoch(self) -> str:
        """A new epoch for a channel this node starts numbering (a publication or a join
        that finds no numbering in Redis): one counter for both, so no two are the same."""
        return f"{self.node_id}.{next(self._epochs)}"

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
        log.info(
            "using Redis at %s; this process's node id there is %s (its keys and control "
            "channel; clients see the server id instead)",
            _safe_url(self._bridge.url),
            self.node_id,
        )
        try:
            async with trio.open_nursery() as nursery:
                self._tasks.nursery = nursery
                if self.on_presence is not None:
                    self._listener.subscribe(presence.EVENTS_CHANNEL)
                nursery.start_soon(self._listen)
                self._tasks.start_restarting("publisher", self._publisher.run)
                self._tasks.start_restarting("watchdog", self._watchdog.run)
                # Start serving with Redis ready if it answers soon; without it otherwise
                # (clients are served, publications held, and the link keeps being retried).
                with trio.move_on_after(self._config.redis_timeout):
                    await self.up.wait_value(True)
                if not self.up.value:
                    log.warning(
                        "Redis not reachable yet (%s); serving anyway and retrying",
                        "; ".join(self._link.down.values()),
                    )
                task_status.started()
        finally:
            self._tasks.nursery = None
            self._publisher.fail_held()
            self._bridge.close()

    async def _listen(self) -> None:
        await trio.to_thread.run_sync(self._listener.run, abandon_on_cancel=False)

    # -- publishing -----------------------------------------------------------------------------

    def publish(self, pub: Publication) -> list[Subscriber]:
        self._publisher.publish(pub)
        return []

    def publish_nowait(self, pub: Publication) -> int:
        raise RuntimeError(
            "publish_nowait() needs the in-process broker: with Redis the seq is only known "
            "once Redis answered; use 'await server.publish()'"
        )

    # The publisher counts what it numbered; these are the seam's counters.
    @property
    def published(self) -> int:
        return self._publisher.published

    @published.setter
    def published(self, value: int) -> None:
        self._publisher.published = value

    @property
    def deduplicated(self) -> int:
        return self._publisher.deduplicated

    @deduplicated.setter
    def deduplicated(self, value: int) -> None:
        self._publisher.deduplicated = value

    # -- subscribing ----------------------------------------------------------------------------

    async def subscribe(
        self, member: Subscriber, channel: str, since: int | None, epoch: str | None
    ) -> Subscribed:
        hub = self.hub
        if channel not in hub.channels_of(member) and hub.subscriptions(member) >= (
            self._config.max_subscriptions
        ):
            raise SubscriptionLimitError(
                f"subscription limit of {self._config.max_subscriptions} channels reached"
            )
        ch = self._follow(channel)
        ch.joiners += 1
        try:
            with trio.move_on_after(2 * self._config.redis_timeout):
                await ch.ready.wait()
            if not ch.ready.is_set():
                raise BrokerUnavailableError(
                    "Redis is unreachable; cannot join a new channel now"
                    if self._link.down
                    else "Redis did not confirm the subscription in time"
                )
            resume = None if since is None else await self._resume(ch, since, epoch)
            state = hub.subscribe(member, channel)
        finally:
            ch.joiners -= 1
            self._unfollow_if_unused(ch)
        feed = ch.feed
        assert feed.epoch is not None
        state.seq, state.epoch = feed.seq, feed.epoch
        return Subscribed(seq=feed.seq, epoch=feed.epoch, resume=resume)

    def unsubscribe(self, member: Subscriber, channel: str) -> bool:
        left = self.hub.unsubscribe(member, channel)
        ch = self._channels.get(channel)
        if ch is not None:
            self._unfollow_if_unused(ch)
        return left

    def remove_member(self, member: Subscriber) -> None:
        channels = self.hub.channels_of(member)
        self.hub.remove_member(member)
        for name in channels:
            ch = self._channels.get(name)
            if ch is not None:
                self._unfollow_if_unused(ch)

    def _follow(self, name: str) -> _Channel:
        ch = self._channels.get(name)
        if ch is None:
            ch = self._channels[name] = _Channel(name)
            self._listener.subscribe(fmt.pubsub_channel(name))
            self._waker.wake()
        return ch

    def _unfollow_if_unused(self, ch: _Channel) -> None:
        if ch.joiners or self.hub.channel(ch.name) is not None:
            return
        if self._channels.get(ch.name) is ch:
            del self._channels[ch.name]
            self._listener.unsubscribe(fmt.pubsub_channel(ch.name))
            self._waker.wake()

    async def _resume(self, ch: _Channel, since: int, epoch: str | None) -> Resume:
        """What a client that last saw ``(epoch, since)`` missed, read from the stream.

        Reads until the stream read reaches what local members were last handed (the feed's
        seq), so the replay and live delivery meet without a hole. A client that saw more of
        this epoch elsewhere than this node's feed has delivered (the node lags) missed
        nothing: the feed is given a moment to catch up (then the client gets exactly what
        follows), else Redis's numbering confirms ``since`` (see ``resume_ahead_of_feed``).
        """
        feed = ch.feed
        if epoch == feed.epoch and since > feed.seq and not await self._feed_reaches(ch, since):
            try:
                numbering = functools.partial(read_numbering, ch.name)
                channel_seq, channel_epoch = await self._bridge.call(numbering)
            except LINK_ERRORS:
                raise BrokerUnavailableError("Redis is unreachable; cannot resume now") from None
            if feed.seq < since:
                return resume_ahead_of_feed(since, epoch, channel_epoch, channel_seq)
        known = resume_without_history(since, epoch, feed.epoch, feed.seq)
        if known is not None:
            return known
        found: list[tuple[Entry, int]] = []
        after = since
        size, ttl = self._config.history_for(ch.name)
        for _ in range(RESUME_ROUNDS):
            upto = feed.seq
            try:
                # Only the newest ``size`` can be replayed: the stream may hold many more.
                start = max(after, upto - size)
                read = functools.partial(read_stream, ch.name, start, upto)
                entries, stream_epoch = await self._bridge.call(read)
            except LINK_ERRORS:
                raise BrokerUnavailableError("Redis is unreachable; cannot resume now") from None
            if stream_epoch != epoch or feed.epoch != epoch:
                return Resume(recovered=False)
            found.extend(entries)
            after = upto
            if feed.seq == upto:
                break
        else:
            raise BrokerUnavailableError("channel too busy to resume now; try again")
        cutoff = self._now_ms() - ttl * 1000
        kept = [entry for entry, at in found if at >= cutoff][-size:] if size and ttl else []
        return resume_from_history(
            since, feed.seq, [(entry.seq, text_frame(entry.payload)) for entry in kept]
        )

    async def _feed_reaches(self, ch: _Channel, since: int) -> bool:
        """Wait (bounded) until the feed delivered ``since`` in its epoch; False if it did not."""
        feed, epoch = ch.feed, ch.feed.epoch
        with trio.move_on_after(min(RESUME_LAG_WAIT, self._config.redis_timeout)):
            while feed.epoch == epoch and feed.seq < since:
                if ch.moved is None:
                    ch.moved = trio.Event()
                await ch.moved.wait()
        return feed.epoch != epoch or feed.seq >= since

    # -- receiving ------------------------------------------------------------------------------

    async def _dispatch(self, events: list[Event]) -> None:
        """A batch from the listener thread, which waits for this (its backpressure). It never
        waits for a ``block`` subscriber: that channel alone waits (:meth:`_feed`)."""
        self._dispatching = True
        budget = StepBudget(self._fanout)
        try:
            for event in events:
                if budget.spend():  # a batch of 1000 to many subscribers must not stall all
                    await trio.lowlevel.checkpoint()
                    budget.reset()
                if isinstance(event, Message):
                    try:
                        self._on_message(event)
                    except fmt.MalformedError as exc:
                        # Not ours (or not intact): skip it, keep the rest of the batch.
                        self.malformed += 1
                        log.warning("skipped a malformed message on %s: %s", event.channel, exc)
                elif isinstance(event, Confirmed):
                    self._on_confirmed(event.channel)
                elif isinstance(event, LinkDown):
                    self._link.part_down("pubsub", event.reason)
        finally:
            self._dispatching = False

    async def call(self, fn: Callable[[redis.Redis], T]) -> T:
        """One call in a Redis thread (presence uses it); errors are the caller's."""
        return await self._bridge.call(fn)

    def _on_message(self, message: Message) -> None:
        if message.channel == presence.EVENTS_CHANNEL:
            if self.on_presence is not None:
                self.on_presence(message.data)
            return
        if message.channel == self._control:
            self._watchdog.heard(message.data)
            return
        ch = self._channels.get(message.channel.removeprefix(fmt.PUBSUB_PREFIX))
        if ch is None:
            return
        entry = fmt.parse_published(message.data)
        self._publisher.came_back(entry)  # the publisher's ack does not wait for the channel
        self._feed(ch, functools.partial(ch.feed.receive, entry), len(entry.payload))

    def _feed(self, ch: _Channel, step: _Step, size: int = 0) -> None:
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

    async def _wait_for_room(self, ch: _Channel, blocked: list[Subscriber]) -> None:
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

    async def _drain_held(self, ch: _Channel, blocked: list[Subscriber]) -> None:
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

    def _on_confirmed(self, channel: str) -> None:
        if channel == presence.EVENTS_CHANNEL:
            return
        if channel == self._control:
            self._link.part_up("pubsub")
            return
        ch = self._channels.get(channel.removeprefix(fmt.PUBSUB_PREFIX))
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

    def _apply(self, ch: _Channel, actions: Sequence[Deliver | Fill | Restart]) -> list[Subscriber]:
        blocked: list[Subscriber] = []
        now_ms = self._now_ms()
        for action in actions:
            state = self.hub.channel(ch.name)
            if isinstance(action, Deliver):
                entry = action.entry
                stamped = protocol.timestamp_of(entry.payload)
                if stamped is not None:
                    self.delivery_lag.observe(max(0, now_ms - stamped) / 1000)
                self._publisher.came_back(entry)
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
        if ch.moved is not None:  # a resume waits for the feed (_feed_reaches)
            ch.moved.set()
            ch.moved = None
        return blocked

    async def _sync(self, ch: _Channel) -> None:
        """Read the channel's ``(seq, epoch)`` after a subscription was confirmed: the feed's
        baseline. Retried until it works or the channel is no longer followed."""
        ch.syncing = True  # again, when restarted after a failure
        try:
            while True:
                ch.sync_again = False
                join = functools.partial(self._join_script, ch.name, self._new_epoch())
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

    def _follows(self, ch: _Channel) -> bool:
        return self._channels.get(ch.name) is ch

    def _join_script(self, name: str, new_epoch: str, client: redis.Redis) -> tuple[int, str]:
        keys = (fmt.numbering_key(name), fmt.stream_key(name))
        args = (new_epoch, int(self._config.redis_key_ttl * 1000))
        seq, epoch = client.eval(fmt.JOIN_SCRIPT, 2, *keys, *args)
        return int(seq), epoch.decode()

    async def _fill(self, ch: _Channel, fill: Fill) -> None:
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
        self, ch: _Channel, fill: Fill, entries: list[Entry], through: int
    ) -> None:
        """Hand a fill's entries to the feed in parts of about ``DELIVERIES_PER_STEP``
        deliveries, with a checkpoint between parts: after an outage every followed channel
        catches up at once, and a thousand entries to a thousand members are a million."""
        state = self.hub.channel(ch.name)
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
    async def _flowing(ch: _Channel) -> None:
        """Until the channel no longer waits for a ``block`` subscriber."""
        while ch.waiting:
            if ch.flowing is None:
                ch.flowing = trio.Event()
            await ch.flowing.wait()

    # -- statistics -----------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        pass  # Redis expires history (stream caps, key ttl) and dedupe keys itself

    def statistics(self) -> BrokerStatistics:
        return BrokerStatistics(
            kind="redis",
            state="down" if self._link.down else "up",
            since=self._link.since,
            buffered=len(self._publisher.buffer),
            refused=self._publisher.refused,
            reconnects=self._link.reconnects,
            repairs=self._watchdog.repairs,
            filled=self.filled,
            malformed=self.malformed,
            task_failures=self._tasks.failures,
        )


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest
