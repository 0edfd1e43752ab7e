"""The Redis broker: one node of a cluster whose nodes share one Redis or one Redis Cluster.

:class:`RedisBroker` is the :class:`~triows._brokers.seam.Broker` the server talks to. It holds
no policy of its own: it builds the parts, gives each what it needs, and hands the seam's calls
and the listener thread's events to the part that owns them.

- :mod:`.publisher`: publications, from the outage buffer to Redis's numbered answer.
- :mod:`.feeds`: the channels followed in Redis and their in-order, exactly-once delivery.
- :mod:`.resume`: what a subscribe with ``since`` missed, read from the channel's stream;
  :mod:`.reads` sends the reads of all resumes in flight together.
- :mod:`.watchdog`: pings through the node's control channel, repairs a silent pub/sub link,
  keeps keys alive; and the wake-up that makes the listener apply (un)subscribes at once.
- :mod:`.link`: which parts of the link are down (``up``, ``since``, ``reconnects``) and the
  retrying call; :mod:`.tasks`: where background tasks run and restart.
- :mod:`.bridge`: the threads (one call per hop, the pub/sub listener) below all of them.

Outage: clients stay connected; publications wait in the buffer; the listener reconnects with
backoff and subscribes again, and each channel catches up from its stream. Streams keep what
nodes need for that whatever the history size: an entry goes only once it is beyond the
history size and older than ``redis_retention``, and a node whose link was down trims
nothing for ``redis_retention`` after it is back (``docs/design.md``, stream retention).
"""

from __future__ import annotations

import functools
import itertools
import logging
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

import redis
import trio

from ..._config import Config
from ..._core import presence
from ..._core import redis_format as fmt
from ..._core.history import rewind_since
from ..._core.hub import Hub, Resume, SubscriptionLimitError
from ..._core.latency import histogram
from ..fanout import FanOut, StepBudget, Subscriber
from ..seam import (
    Broker,
    BrokerStatistics,
    BrokerUnavailableError,
    HistoryPage,
    OutcomeUnknownError,
    Publication,
    Subscribed,
    WallClockMs,
)
from .bridge import LINK_ERRORS, Confirmed, Event, LinkDown, Message, PubSubListener, RedisBridge
from .commands import read_numbering
from .control import ClusterControl, load_revocations, store_revocation
from .feeds import ChannelFeeds
from .history_read import read_history
from .link import Link
from .publisher import Publisher
from .reads import ResumeReads
from .resume import Resumer
from .tasks import BackgroundTasks
from .watchdog import ListenerWaker, Watchdog

log = logging.getLogger("triows.redis")

T = TypeVar("T")


class RedisBroker(Broker):
    hands_back_blocked = False  # the feeds wait for block subscribers (triows._brokers.redis.feeds)

    def __init__(
        self, config: Config, fanout: FanOut, wall_clock_ms: WallClockMs, url: str
    ) -> None:
        self._fanout = fanout
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
        #: Set by presence (triows._brokers.presence): other nodes' joins and leaves go there,
        #: and each confirmation of their channel (again after a break: some were lost).
        self.on_presence: Callable[[bytes], None] | None = None
        self.on_presence_resync: Callable[[], None] | None = None
        #: A batch from the listener is being delivered (the watchdog waits for its pings).
        self._dispatching = False
        #: Pub/sub messages on triows' channels that could not be parsed, skipped.
        self.malformed = 0

        self._tasks = BackgroundTasks()
        self._link = Link(
            config,
            self._bridge,
            # For the outage log lines only, read once every part below exists.
            connections=lambda: len(fanout),
            held_publications=lambda: len(self._publisher.buffer),
            followed_channels=lambda: len(self._feeds.channels),
        )
        self.up = self._link.up
        self._publisher = Publisher(config, self.node_id, self._link, self._tasks, self._new_epoch)
        self._publisher.publish_command = lambda: (
            fmt.SPUBLISH if self._bridge.cluster else fmt.PUBLISH
        )
        self._waker = ListenerWaker(self._bridge, self._control, self._tasks)
        self._feeds = ChannelFeeds(
            config,
            self.hub,
            fanout,
            self._link,
            self._tasks,
            self._listener,
            wake=self._waker.wake,
            came_back=self._publisher.came_back,
            new_epoch=self._new_epoch,
            now_ms=wall_clock_ms,
            delivery_lag=self.delivery_lag,
        )
        self.resume_reads = ResumeReads(self._bridge, config.redis_timeout)
        self._resumer = Resumer(config, self.resume_reads, wall_clock_ms)
        self._now_ms = wall_clock_ms
        self._cluster = ClusterControl(self._bridge, self._tasks, self.node_id)
        self._watchdog = Watchdog(
            config,
            self._bridge,
            self._link,
            self._listener,
            self._waker,
            self._control,
            followed=self._feeds.followed,
            dispatching=lambda: self._dispatching,
        )

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
                self._cluster.handler = self.on_control
                for channel in self._cluster.channels():
                    self._listener.subscribe(channel)
                nursery.start_soon(self._listen)
                self._tasks.start_restarting("publisher", self._publisher.run)
                self._tasks.start_restarting("watchdog", self._watchdog.run)
                self._tasks.start_restarting("resume reads", self.resume_reads.run)
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

    async def call(self, fn: Callable[[redis.Redis], T]) -> T:
        """One call in a Redis thread (presence uses it); errors are the caller's."""
        return await self._bridge.call(fn)

    # -- publishing -----------------------------------------------------------------------------

    def publish(self, pub: Publication) -> list[Subscriber]:
        self._publisher.publish(pub)
        return []

    def publish_nowait(self, pub: Publication) -> int:
        raise RuntimeError(
            "publish_nowait() needs the in-process broker: with Redis the seq is only known "
            "once Redis answered; use 'await server.publish()'"
        )

    # The seam's counters, kept by the publisher (setters: the seam declares them writable).
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
        self,
        member: Subscriber,
        channel: str,
        since: int | None,
        epoch: str | None,
        rewind: int | None = None,
    ) -> Subscribed:
        hub = self.hub
        self._check_limit(member, channel)
        with self._feeds.joining(channel) as ch:
            with trio.move_on_after(2 * self._config.redis_timeout):
                await ch.ready.wait()
            if not ch.ready.is_set():
                raise BrokerUnavailableError(
                    f"{self._link.state()}; cannot join a new channel now"
                    if self._link.down
                    else "Redis did not confirm the subscription in time"
                )
            rewound: int | None = None
            if since is None and rewind:
                # The same rule as in process: a resume from the last ``rewind`` messages.
                start = rewind_since(ch.feed.seq, rewind)
                rewind_resume = await self._resumer.resume(ch, start, ch.feed.epoch)
                rewound = len(rewind_resume.replay)
                resume: Resume | None = rewind_resume
            else:
                resume = None if since is None else await self._resumer.resume(ch, since, epoch)
                rewound = None if rewind is None or since is not None else 0
            state = hub.subscribe(member, channel)
        feed = ch.feed
        assert feed.epoch is not None
        state.seq, state.epoch = feed.seq, feed.epoch
        if resume is not None and resume.numbering is not None:
            # A node behind a restart of the numbering answers in the client's epoch.
            seq, epoch = resume.numbering
            return Subscribed(seq=seq, epoch=epoch, resume=resume)
        return Subscribed(seq=feed.seq, epoch=feed.epoch, resume=resume, rewound=rewound)

    # -- reading and control --------------------------------------------------------------------

    async def history(
        self, channel: str, *, since: int | None, limit: int, reverse: bool, max_bytes: int
    ) -> HistoryPage:
        return await read_history(
            self._config,
            self._bridge,
            self._now_ms,
            channel,
            since=since,
            limit=limit,
            reverse=reverse,
            max_bytes=max_bytes,
        )

    async def numbering(self, channel: str) -> tuple[int, str | None]:
        try:
            return await self._bridge.call(functools.partial(read_numbering, channel))
        except LINK_ERRORS:
            raise BrokerUnavailableError("Redis is unreachable; try again") from None

    async def control(self, request: dict[str, Any], answer_within: float) -> list[dict[str, Any]]:
        return await self._cluster.request(request, answer_within)

    async def share_revocation(self, user: str, before: float, ttl: float) -> None:
        try:
            await self._bridge.call(functools.partial(store_revocation, user, before, ttl))
        except redis.TimeoutError:  # it may have run: kept, taken by every node at link-up
            raise OutcomeUnknownError("Redis did not answer; it may be revoked: retry") from None
        except LINK_ERRORS:
            raise BrokerUnavailableError("Redis is unreachable; nothing was revoked") from None

    async def shared_revocations(self) -> list[tuple[str, float]]:
        try:
            return await self._bridge.call(load_revocations)
        except LINK_ERRORS:
            raise BrokerUnavailableError("Redis is unreachable") from None

    def _check_limit(self, member: Subscriber, channel: str) -> None:
        hub = self.hub
        if channel not in hub.channels_of(member) and hub.subscriptions(member) >= (
            self._config.max_subscriptions
        ):
            raise SubscriptionLimitError(
                f"subscription limit of {self._config.max_subscriptions} channels reached"
            )

    def subscribes_now(self, channel: str, since: int | None, rewind: int | None = None) -> bool:
        ch = self._feeds.channels.get(channel)
        return since is None and rewind is None and ch is not None and ch.ready.is_set()

    def subscribe_nowait(
        self,
        member: Subscriber,
        channel: str,
        since: int | None,
        epoch: str | None,
        rewind: int | None = None,
    ) -> Subscribed:
        """A subscribe without ``since`` or ``rewind`` (both read the stream) to a channel
        this node follows with its baseline: what :meth:`subscribe` does then, with nothing to
        wait for, in one step."""
        hub = self.hub
        self._check_limit(member, channel)
        ch = self._feeds.channels.get(channel)
        if not self.subscribes_now(channel, since, rewind) or ch is None:
            raise RuntimeError("subscribe_nowait() needs a followed channel (subscribes_now)")
        state = hub.subscribe(member, channel)
        feed = ch.feed
        assert feed.epoch is not None
        state.seq, state.epoch = feed.seq, feed.epoch
        return Subscribed(seq=feed.seq, epoch=feed.epoch)

    def unsubscribe(self, member: Subscriber, channel: str) -> bool:
        left = self.hub.unsubscribe(member, channel)
        self._feeds.release(channel)
        return left

    def remove_member(self, member: Subscriber) -> None:
        channels = self.hub.channels_of(member)
        self.hub.remove_member(member)
        for name in channels:
            self._feeds.release(name)

    # -- receiving ------------------------------------------------------------------------------

    async def _dispatch(self, events: list[Event]) -> None:
        """A batch from the listener thread, which waits for this (its backpressure). Each
        event goes to its owner: a channel's message straight to the feeds (the delivery hot
        path gains no layer here), presence events to presence, the control channel's to the
        watchdog, confirmations and losses of the pub/sub link to the link and the feeds. It
        never waits for a ``block`` subscriber: that channel alone waits (see :mod:`.feeds`)."""
        self._dispatching = True
        budget = StepBudget(self._fanout)
        receive = self._feeds.receive
        try:
            for event in events:
                if budget.spend():  # a batch of 1000 to many subscribers must not stall all
                    await trio.lowlevel.checkpoint()
                    budget.reset()
                if isinstance(event, Message):
                    try:
                        if event.channel == presence.EVENTS_CHANNEL:
                            if self.on_presence is not None:
                                self.on_presence(event.data)
                        elif event.channel == self._control:
                            self._watchdog.heard(event.data)
                        elif event.channel in self._cluster.channels():
                            self._cluster.heard(event.channel, event.data)
                        else:
                            receive(event)
                    except fmt.MalformedError as exc:
                        # Not ours (or not intact): skip it, keep the rest of the batch.
                        self.malformed += 1
                        log.warning("skipped a malformed message on %s: %s", event.channel, exc)
                elif isinstance(event, Confirmed):
                    if event.channel == self._control:
                        self._link.part_up("pubsub")
                    elif event.channel in self._cluster.channels():
                        pass
                    elif event.channel != presence.EVENTS_CHANNEL:
                        self._feeds.confirmed(event.channel)
                    elif self.on_presence_resync is not None:
                        self.on_presence_resync()
                elif isinstance(event, LinkDown):
                    self._link.part_down("pubsub", event.reason)
        finally:
            self._dispatching = False

    # -- statistics -----------------------------------------------------------------------------

    def expire(self, now: float) -> bool:
        return False  # Redis expires history (stream caps, key ttl) and dedupe keys itself

    def statistics(self) -> BrokerStatistics:
        return BrokerStatistics(
            kind="redis",
            state="down" if self._link.down else "up",
            reason=self._link.state(),
            since=self._link.since,
            buffered=len(self._publisher.buffer),
            refused=self._publisher.refused,
            reconnects=self._link.reconnects,
            repairs=self._watchdog.repairs,
            filled=self._feeds.filled,
            malformed=self.malformed,
            task_failures=self._tasks.failures,
        )


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest
