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
backoff and subscribes again, and each channel catches up from its stream. A watchdog publishes
a ping to the node's control channel every ``redis_timeout`` seconds: if Redis says nobody
received it, or it does not come back, the pub/sub link went silent while Redis is up, and it is
rebuilt (``repairs`` in the statistics).
"""

from __future__ import annotations

import functools
import itertools
import logging
import secrets
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import redis
import trio
import trio_util

from ._broker import Broker, BrokerStatistics, BrokerUnavailableError, Publication, Subscribed
from ._core import protocol
from ._core import redis_format as fmt
from ._core.feed import Deliver, Entry, Feed, Fill, Restart
from ._core.frames import text_frame
from ._core.hub import Hub, Resume, SubscriptionLimitError
from ._redis_bridge import (
    LINK_ERRORS,
    Confirmed,
    Event,
    LinkDown,
    Message,
    PubSubListener,
    RedisBridge,
    backoff,
)

if TYPE_CHECKING:
    from ._connection import Connection
    from ._server import Server

log = logging.getLogger("triows.redis")

#: Publications sent in one pipeline at most.
PUBLISH_BATCH = 500
#: How long a publication's once-key lives when it has no dedupe id: long enough for a resend
#: after a lost reply.
TOKEN_TTL = 120
#: Rounds of stream reads a resume may take to catch up with a busy channel.
RESUME_ROUNDS = 20


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


@attrs.define(eq=False, slots=True)
class _Pending:
    token: str
    pub: Publication
    keys: tuple[str, str, str]
    args: tuple[Any, ...]


class RedisBroker(Broker):
    def __init__(self, server: Server, url: str) -> None:
        config = server.config
        self._server = server
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
        self._tokens = itertools.count(1)
        self._bridge = RedisBridge(url, config.redis_timeout)
        self._control = fmt.control_channel(self.node_id)
        self._listener = PubSubListener(self._bridge, self._control, self._dispatch)
        self._channels: dict[str, _Channel] = {}
        self._buffer: deque[_Pending] = deque()
        self._in_flight: dict[str, Publication] = {}  # by token, until Redis answered
        self._buffer_changed = trio.Event()
        self._publish_sha: str | None = None
        self._nursery: trio.Nursery | None = None
        self._wake_pending = False
        self._dispatching = False
        self._pings_sent = 0
        self._ping_seen = 0
        # Link state: which parts are down and why; down while any is.
        self._down: dict[str, str] = {"pubsub": "not connected yet"}
        self._ever_up = False
        self.up = trio_util.AsyncBool(False)
        self._since: float | None = None
        self.refused = 0
        self.reconnects = 0
        self.repairs = 0
        self.filled = 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
        log.info("node %s using Redis at %s", self.node_id, _safe_url(self._bridge.url))
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._listen)
                nursery.start_soon(self._publish_loop)
                nursery.start_soon(self._watchdog)
                # Start serving with Redis ready if it answers soon; without it otherwise
                # (clients are served, publications held, and the link keeps being retried).
                with trio.move_on_after(self._config.redis_timeout):
                    await self.up.wait_value(True)
                if not self.up.value:
                    log.warning(
                        "Redis not reachable yet (%s); serving anyway and retrying",
                        "; ".join(self._down.values()),
                    )
                task_status.started()
        finally:
            self._nursery = None
            gone = BrokerUnavailableError("server shut down before Redis accepted the message")
            while self._buffer:
                self._fail(self._buffer.popleft().pub, gone)
            self._bridge.close()

    async def _listen(self) -> None:
        await trio.to_thread.run_sync(self._listener.run, abandon_on_cancel=False)

    # -- link state -----------------------------------------------------------------------------

    def _part_down(self, part: str, reason: str) -> None:
        if not self._down:
            self._since = trio.current_time()
            self.up.value = False
            log.warning(
                "Redis unreachable (%s: %s); keeping %d connection(s), holding publications "
                "(up to %d)",
                part,
                reason,
                len(self._server.connections()),
                self._config.redis_buffer_size,
            )
        self._down[part] = reason  # the latest reason, for the logs

    def _part_up(self, part: str) -> None:
        if self._down.pop(part, None) is None or self._down:
            return
        now = trio.current_time()
        if self._ever_up:
            self.reconnects += 1
            log.warning(
                "Redis reachable again after %.1fs; sending %d held publication(s), "
                "catching up %d channel(s) from their streams",
                now - (self._since or now),
                len(self._buffer),
                len(self._channels),
            )
        else:
            log.info("connected to Redis")
        self._ever_up = True
        self._since = now
        self.up.value = True

    # -- publishing -----------------------------------------------------------------------------

    def publish(self, pub: Publication) -> list[Connection]:
        if len(self._buffer) >= self._config.redis_buffer_size:
            self.refused += 1
            raise BrokerUnavailableError(
                f"{len(self._buffer)} publications are waiting for Redis "
                f"({'unreachable' if self._down else 'slow'}); try again later"
            )
        config = self._config
        token = f"{self.node_id}:{next(self._tokens):x}"
        if pub.dedupe is not None and config.dedupe_size > 0 and config.dedupe_ttl > 0:
            key, request_id = pub.dedupe
            name = f"d:{_principal(key)}:{pub.channel}:{protocol.encode(request_id).decode()}"
            once = fmt.once_key(name)
            once_ttl = max(1, int(config.dedupe_ttl))
        else:
            once, once_ttl = fmt.once_key(f"t:{token}"), TOKEN_TTL
        size, _ = config.history_for(pub.channel)
        sender = pub.sender.client_id if pub.sender is not None else None
        self._buffer.append(
            _Pending(
                token,
                pub,
                (fmt.numbering_key(pub.channel), fmt.stream_key(pub.channel), once),
                (
                    fmt.payload_head(pub.payload(0, "")),
                    f"{self.node_id}.{next(self._epochs)}",
                    fmt.pubsub_channel(pub.channel),
                    size,
                    int(config.redis_key_ttl * 1000),
                    once_ttl,
                    fmt.origin(token, sender),
                    pub.timestamp_ms,
                ),
            )
        )
        self._in_flight[token] = pub
        self._buffer_changed.set()
        return []

    def publish_nowait(self, pub: Publication) -> int:
        raise RuntimeError(
            "publish_nowait() needs the in-process broker: with Redis the seq is only known "
            "once Redis answered; use 'await server.publish()'"
        )

    async def _publish_loop(self) -> None:
        attempt = 0
        while True:
            while not self._buffer:
                self._buffer_changed = trio.Event()
                await self._buffer_changed.wait()
            batch = list(itertools.islice(self._buffer, PUBLISH_BATCH))
            try:
                results = await self._bridge.call(functools.partial(self._send_batch, batch))
            except LINK_ERRORS as exc:
                self._part_down("publish", _describe(exc))
                await trio.sleep(backoff(attempt))
                attempt += 1
                continue
            attempt = 0
            self._part_up("publish")
            for pending, result in zip(batch, results, strict=True):
                if isinstance(result, redis.exceptions.NoScriptError):
                    self._publish_sha = None  # Redis restarted: load it again, resend the rest
                    break
                self._buffer.popleft()
                self._in_flight.pop(pending.token, None)
                if isinstance(result, Exception):
                    log.error("Redis refused a publication to %r: %s", pending.pub.channel, result)
                    self._fail(pending.pub, result)
                    continue
                seq, _, duplicate = result
                if duplicate:
                    self.deduplicated += 1
                    self._settle(pending.pub, int(seq))
                else:
                    self._settle_published(pending.pub, int(seq))

    def _send_batch(self, batch: list[_Pending], client: redis.Redis) -> list[Any]:
        """In a worker thread: one pipeline for the whole batch."""
        if self._publish_sha is None:
            self._publish_sha = str(client.script_load(fmt.PUBLISH_SCRIPT))
        pipe = client.pipeline(transaction=False)
        for pending in batch:
            pipe.evalsha(self._publish_sha, 3, *pending.keys, *pending.args)
        return pipe.execute(raise_on_error=False)

    def _settle(self, pub: Publication, seq: int) -> bool:
        """Tell the publisher its seq, once; False if it was told already."""
        numbered, pub.numbered, pub.failed = pub.numbered, None, None
        if numbered is None:
            return False
        numbered(seq)
        return True

    def _settle_published(self, pub: Publication, seq: int) -> None:
        if self._settle(pub, seq):
            self._server.published += 1

    def _fail(self, pub: Publication, exc: Exception) -> None:
        failed, pub.numbered, pub.failed = pub.failed, None, None
        if failed is not None:
            failed(exc)

    # -- subscribing ----------------------------------------------------------------------------

    async def subscribe(
        self, member: Connection, channel: str, since: int | None, epoch: str | None
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
                    if self._down
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

    def unsubscribe(self, member: Connection, channel: str) -> bool:
        left = self.hub.unsubscribe(member, channel)
        ch = self._channels.get(channel)
        if ch is not None:
            self._unfollow_if_unused(ch)
        return left

    def remove_member(self, member: Connection) -> None:
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
            self._wake_listener()
        return ch

    def _unfollow_if_unused(self, ch: _Channel) -> None:
        if ch.joiners or self.hub.channel(ch.name) is not None:
            return
        if self._channels.get(ch.name) is ch:
            del self._channels[ch.name]
            self._listener.unsubscribe(fmt.pubsub_channel(ch.name))
            self._wake_listener()

    async def _resume(self, ch: _Channel, since: int, epoch: str | None) -> Resume:
        """What a client that last saw ``(epoch, since)`` missed, read from the stream.

        Reads until the stream read reaches what local members were last handed (the feed's
        seq), so the replay and live delivery meet without a hole.
        """
        feed = ch.feed
        if epoch != feed.epoch or since > feed.seq:
            return Resume(recovered=False)
        if since == feed.seq:
            return Resume(recovered=True)
        found: list[tuple[Entry, int]] = []
        after = since
        for _ in range(RESUME_ROUNDS):
            upto = feed.seq
            try:
                entries, stream_epoch = await self._read_stream(ch.name, after, upto)
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
        size, ttl = self._config.history_for(ch.name)
        cutoff = self._server.now_ms() - ttl * 1000
        kept = [entry for entry, at in found if at >= cutoff][-size:] if size and ttl else []
        replay = tuple(text_frame(entry.payload) for entry in kept)
        if not kept:
            return Resume(recovered=False, gap=(since + 1, feed.seq))
        first = kept[0].seq
        if first <= since + 1:
            return Resume(recovered=True, replay=replay)
        return Resume(recovered=False, gap=(since + 1, first - 1), replay=replay)

    async def _read_stream(
        self, name: str, after: int, upto: int
    ) -> tuple[list[tuple[Entry, int]], str | None]:
        """Stream entries ``after < seq <= upto`` and the channel's epoch, read together."""
        if upto <= after:
            raw_epoch: Any = await self._bridge.call(
                lambda r: r.hget(fmt.numbering_key(name), "epoch")
            )
            return [], raw_epoch.decode() if raw_epoch else None

        def read(client: redis.Redis) -> list[Any]:
            pipe = client.pipeline(transaction=True)
            pipe.xrange(fmt.stream_key(name), f"{after + 1}-0", f"{upto}-0")
            pipe.hget(fmt.numbering_key(name), "epoch")
            return pipe.execute()

        raw, epoch_bytes = await self._bridge.call(read)
        if epoch_bytes is None:
            return [], None
        epoch = epoch_bytes.decode()
        return [fmt.parse_stream_entry(i, f, epoch) for i, f in raw], epoch

    # -- receiving ------------------------------------------------------------------------------

    async def _dispatch(self, events: list[Event]) -> None:
        """A batch from the listener thread, which waits for this (its backpressure)."""
        self._dispatching = True
        try:
            blocked: list[Connection] = []
            for event in events:
                if isinstance(event, Message):
                    blocked += self._on_message(event)
                elif isinstance(event, Confirmed):
                    self._on_confirmed(event.channel)
                elif isinstance(event, LinkDown):
                    self._part_down("pubsub", event.reason)
            await self._server.wait_for_blocked(blocked)
        finally:
            self._dispatching = False

    def _on_message(self, message: Message) -> list[Connection]:
        if message.channel == self._control:
            kind, _, number = message.data.partition(b":")
            if kind == b"ping":
                self._ping_seen = max(self._ping_seen, int(number))
            return []
        ch = self._channels.get(message.channel.removeprefix(fmt.PUBSUB_PREFIX))
        if ch is None:
            return []
        entry = fmt.parse_published(message.data)
        self._settle_own(entry)
        return self._apply(ch, ch.feed.receive(entry))

    def _on_confirmed(self, channel: str) -> None:
        if channel == self._control:
            self._part_up("pubsub")
            return
        ch = self._channels.get(channel.removeprefix(fmt.PUBSUB_PREFIX))
        if ch is None:
            return
        if ch.confirmed:
            ch.feed.resync()  # confirmed again: the link was rebuilt, catch up
        ch.confirmed = True
        if ch.syncing:
            ch.sync_again = True
        elif self._nursery is not None:
            ch.syncing = True
            self._nursery.start_soon(self._sync, ch)

    def _settle_own(self, entry: Entry) -> None:
        pub = self._in_flight.get(entry.token)
        if pub is not None:
            self._settle_published(pub, entry.seq)

    def _apply(self, ch: _Channel, actions: Sequence[Deliver | Fill | Restart]) -> list[Connection]:
        blocked: list[Connection] = []
        for action in actions:
            state = self.hub.channel(ch.name)
            if isinstance(action, Deliver):
                entry = action.entry
                self._settle_own(entry)
                if state is not None:
                    state.seq, state.epoch = entry.seq, entry.epoch
                    state.published += 1
                    sender = self._server.connection_by_id(entry.sender)
                    blocked += self._server.fan_out(state, text_frame(entry.payload), sender)
            elif isinstance(action, Fill):
                if self._nursery is not None:
                    self._nursery.start_soon(self._fill, ch, action.after, action.upto)
            elif state is not None:  # Restart: the numbering began again
                state.seq, state.epoch = 0, action.epoch
                log.warning("channel %r restarted its numbering (epoch %s)", ch.name, action.epoch)
                notice = {"type": "subscribed", "channel": ch.name, "seq": 0}
                for member in state.members:
                    member.reply_nowait({**notice, "epoch": action.epoch, "recovered": False})
        return blocked

    async def _sync(self, ch: _Channel) -> None:
        """Read the channel's ``(seq, epoch)`` after a subscription was confirmed: the feed's
        baseline. Retried until it works or the channel is no longer followed."""
        attempt = 0
        while self._channels.get(ch.name) is ch:
            ch.sync_again = False
            join = functools.partial(
                self._join_script, ch.name, f"{self.node_id}.{next(self._epochs)}"
            )
            try:
                seq, epoch = await self._bridge.call(join)
            except LINK_ERRORS as exc:
                self._part_down("commands", _describe(exc))
                await trio.sleep(backoff(attempt))
                attempt += 1
                continue
            self._part_up("commands")
            await self._server.wait_for_blocked(self._apply(ch, ch.feed.baseline(seq, epoch)))
            ch.ready.set()
            if not ch.sync_again:
                break
        ch.syncing = False

    def _join_script(self, name: str, new_epoch: str, client: redis.Redis) -> tuple[int, str]:
        keys = (fmt.numbering_key(name), fmt.stream_key(name))
        args = (new_epoch, int(self._config.redis_key_ttl * 1000))
        seq, epoch = client.eval(fmt.JOIN_SCRIPT, 2, *keys, *args)
        return int(seq), epoch.decode()

    async def _fill(self, ch: _Channel, after: int, upto: int) -> None:
        attempt = 0
        while self._channels.get(ch.name) is ch:
            try:
                found, _ = await self._read_stream(ch.name, after, upto)
            except LINK_ERRORS as exc:
                self._part_down("commands", _describe(exc))
                await trio.sleep(backoff(attempt))
                attempt += 1
                continue
            self.filled += len(found)
            entries = [entry for entry, _ in found]
            await self._server.wait_for_blocked(self._apply(ch, ch.feed.filled(entries)))
            return

    # -- the watchdog ---------------------------------------------------------------------------

    async def _watchdog(self) -> None:
        """Ping our own control channel through Redis; a ping nobody receives, or that does not
        come back, means the pub/sub link went silent although Redis answers."""
        period = self._config.redis_timeout
        refresh_every = max(1, int(min(self._config.redis_key_ttl / 4, 600) / period))
        ticks = 0
        while True:
            await trio.sleep(period)
            ticks += 1
            if self._down:
                continue
            self._pings_sent += 1
            number = self._pings_sent
            try:
                ping = functools.partial(_publish, self._control, b"ping:%d" % number)
                receivers = await self._bridge.call(ping)
                if ticks % refresh_every == 0:
                    await self._refresh_keys()
            except LINK_ERRORS as exc:
                self._part_down("commands", _describe(exc))
                continue
            self._part_up("commands")
            silent = self._ping_seen < number - 2 and not self._dispatching
            if (receivers == 0 or silent) and not self._down:
                self.repairs += 1
                log.warning(
                    "Redis pub/sub link went silent while Redis answers (%s); rebuilding it",
                    "our ping had no receiver" if receivers == 0 else "our pings did not return",
                )
                self._ping_seen = number
                self._listener.reset()
                self._wake_listener()

    async def _refresh_keys(self) -> None:
        """Keep the numbering of channels this node serves alive in Redis (their ttl)."""
        names = list(self._channels)
        if names:
            await self._bridge.call(functools.partial(self._refresh_in_thread, names))

    def _refresh_in_thread(self, names: list[str], client: redis.Redis) -> None:
        ttl = int(self._config.redis_key_ttl * 1000)
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.pexpire(fmt.numbering_key(name), ttl)
            pipe.pexpire(fmt.stream_key(name), ttl)
        pipe.execute()

    def _wake_listener(self) -> None:
        """Publish to the control channel, so the listener thread applies requests at once
        instead of at the end of its read slice."""
        if not self._wake_pending and self._nursery is not None:
            self._wake_pending = True
            self._nursery.start_soon(self._send_wake)

    async def _send_wake(self) -> None:
        self._wake_pending = False
        try:
            await self._bridge.call(functools.partial(_publish, self._control, b"wake"))
        except LINK_ERRORS:
            pass  # the listener is reconnecting and will apply its requests then

    # -- statistics -----------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        pass  # Redis expires history (stream caps, key ttl) and dedupe keys itself

    def statistics(self) -> BrokerStatistics:
        return BrokerStatistics(
            kind="redis",
            state="down" if self._down else "up",
            since=self._since,
            buffered=len(self._buffer),
            refused=self.refused,
            reconnects=self.reconnects,
            repairs=self.repairs,
            filled=self.filled,
        )

    def drop_subscriptions_silently(self) -> None:
        """Testing aid: make the pub/sub link go silent the way a broken proxy would."""
        self._listener.drop_silently()
        self._wake_listener()


def _publish(channel: str, data: bytes, client: redis.Redis) -> int:
    return int(client.publish(channel, data))


def _principal(key: object) -> str:
    kind, name = key if isinstance(key, tuple) else ("key", key)
    return f"{kind}:{name}"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest
