"""Presence in the shell: join/leave frames to subscribers, ``presence`` answers, and with
Redis the shared member hashes (rules in :mod:`triows._core.presence`).

In process, a channel's members are its subscribers (the hub knows them), so nothing is
stored. With Redis, every join and leave is written to the channel's hash and announced on
:data:`EVENTS_CHANNEL` (both from one background task, in order, so the subscribe path never
waits for Redis), and every ``presence_ttl / 3`` seconds the node refreshes its members'
expiry and sweeps expired members (a crashed node's) out of the channels it follows. A
``presence`` request reads the hash and adds this node's own members, whose writes may not
have reached Redis yet.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from .._core import presence as core
from .._core.frames import text_frame
from .._core.presence import Member, PresenceMode
from .._core.protocol import RequestId, encode
from .redis.broker import RedisBroker

if TYPE_CHECKING:
    import redis

    from .._server.connection import Connection
    from .._server.server import Server

log = logging.getLogger("triows.presence")

#: Seconds a ``presence`` answer read from Redis is reused (joins and leaves announced by
#: other nodes make it anew at once; this bounds what a crashed node's members cost).
ANSWER_TTL = 1.0
#: Channels whose answer is kept, the least recently made forgotten first.
ANSWERS_KEPT = 1024

#: Members written by one script call of a refresh.
PUT_CHUNK = 500


class Presence:
    def __init__(self, server: Server) -> None:
        config = server.config
        self._server = server
        self._full = config.presence
        self._counts = config.presence_counts
        self.enabled = bool(self._full or self._counts)
        self._max_members = config.presence_max_members
        self._ttl = config.presence_ttl
        broker = server.broker
        self._redis: RedisBroker | None = broker if isinstance(broker, RedisBroker) else None
        #: Writes waiting for the background task: ``(kind, channel, member)``.
        self._writes: deque[tuple[str, str, Member]] = deque()
        self._wake = trio.Event()
        #: With Redis: live members per channel at the last sweep (all nodes).
        self._known: dict[str, int] = {}
        #: With Redis: ``(channel, client id)`` of members of this node that a sweep announced
        #: as gone (this node missed its refreshes) while they are still here. When this
        #: node's refresh brings them back, its own subscribers are told too.
        self._swept: set[tuple[str, str]] = set()
        #: Encoded answers per channel (the part after ``"channel"``), until its members
        #: change; with Redis also when each was read, and the reads in progress.
        self._answers: OrderedDict[str, bytes] = OrderedDict()
        self._answered_at: dict[str, float] = {}
        self._reading: dict[str, trio.Event] = {}
        if self._redis is not None and self.enabled:
            self._redis.on_presence = self._on_event

    def mode(self, channel: str) -> PresenceMode | None:
        if not self.enabled:
            return None
        return core.mode_for(self._full, self._counts, channel)

    def count(self, channel: str) -> int:
        state = self._server.hub.channel(channel)
        local = len(state.members) if state is not None else 0
        return max(local, self._known.get(channel, 0))

    # -- membership changes (sync: called from the subscribe path) ------------------------------

    def joined(self, conn: Connection, channel: str) -> None:
        self._changed("join", conn, channel)

    def left(self, conn: Connection, channel: str) -> None:
        self._changed("leave", conn, channel)

    def left_all(self, conn: Connection) -> None:
        """Before a closed connection leaves its channels."""
        if self.enabled:
            for channel in self._server.hub.channels_of(conn):
                self._changed("leave", conn, channel)

    def _changed(self, kind: str, conn: Connection, channel: str) -> None:
        mode = self.mode(channel)
        if mode is None:
            return
        self._forget_answer(channel)
        member = Member(conn.client_id, conn.principal.user_id)
        swept = (channel, member.client_id) in self._swept
        self._swept.discard((channel, member.client_id))
        # A member a sweep announced as gone, leaving for real now: already told.
        if mode is PresenceMode.FULL and not (kind == "leave" and swept):
            self._notify(kind, channel, member)
        if self._redis is not None:
            self._writes.append((kind, channel, member))
            self._wake.set()

    def _notify(self, kind: str, channel: str, member: Member) -> None:
        """Tell this node's subscribers of ``channel`` (but the member itself)."""
        state = self._server.hub.channel(channel)
        if state is None or self.count(channel) > self._max_members:
            return
        data = text_frame(encode(core.frame(kind, channel, member)))
        for subscriber in list(state.members):
            if subscriber.client_id != member.client_id:
                subscriber.deliver(data, state.policy, state)

    def _on_event(self, data: bytes) -> None:
        """Another node's join or leave, from Redis pub/sub."""
        assert self._redis is not None
        try:
            kind, channel, member, node = core.decode_event(data)
        except (ValueError, KeyError, TypeError):
            log.warning("skipped a malformed presence event: %r", data[:80])
            return
        self._forget_answer(channel)
        if self.mode(channel) is not PresenceMode.FULL:
            return
        key = (channel, member.client_id)
        if node == core.SWEEPER and kind == "leave" and self._is_here(channel, member):
            self._swept.add(key)  # every node tells its subscribers, this one too
        if node != self._redis.node_id:
            self._notify(kind, channel, member)
        elif kind == "join" and key in self._swept:
            # Our refresh put back a member a sweep had announced as gone: our subscribers
            # heard that leave too, so they hear this join (in order: same pub/sub channel).
            self._swept.discard(key)
            self._notify(kind, channel, member)

    def _is_here(self, channel: str, member: Member) -> bool:
        conn = self._server.fanout.by_id(member.client_id)
        return conn is not None and self._server.hub.is_member(conn, channel)

    # -- answering ``presence`` -----------------------------------------------------------------

    def local_frame(self, channel: str, request_id: RequestId | None) -> bytes:
        """The ``presence`` reply, from this process's members: complete with the in-process
        broker. Made once per change of the channel's members, not once per request."""
        body = self._answers.get(channel)
        if body is None:
            state = self._server.hub.channel(channel)
            members = state.members if state is not None else {}
            body = self._body(channel, len(members), lambda: self._local_members(channel))
            self._remember(channel, body)
        return self._frame(channel, body, request_id)

    async def frame(self, channel: str, request_id: RequestId | None) -> bytes:
        """:meth:`local_frame`, with every node's members when there is Redis: one Redis read
        per channel at a time (concurrent requests share it), kept until the channel's
        members change or :data:`ANSWER_TTL` passes; counts only need ``HLEN``."""
        if self._redis is None:
            return self.local_frame(channel, request_id)
        cached = self._answers.get(channel)
        now = trio.current_time()
        if cached is None or now - self._answered_at.get(channel, -ANSWER_TTL) >= ANSWER_TTL:
            reading = self._reading.get(channel)
            if reading is not None:
                await reading.wait()  # another request is reading it: share its answer
            else:
                self._reading[channel] = done = trio.Event()
                try:
                    await self._read_from_redis(channel)
                finally:
                    del self._reading[channel]
                    done.set()
            cached = self._answers.get(channel) or await self._read_from_redis(channel)
        return self._frame(channel, cached, request_id)

    async def _read_from_redis(self, channel: str) -> bytes:
        assert self._redis is not None
        key = core.key(channel)
        if self.mode(channel) is PresenceMode.COUNTS:
            # O(1) in Redis; a crashed node's members count until the next sweep removes them.
            stored = await self._redis.call(functools.partial(_hlen, key))
            count = max(stored, self._local_count(channel))
            body = self._body(channel, count, dict)
        else:
            entries = await self._redis.call(functools.partial(_hgetall, key))
            members = self._local_members(channel)
            for member in core.live_members(entries, self._server.now_ms()):
                members.setdefault(member.client_id, member)
            body = self._body(channel, len(members), lambda: members)
            count = len(members)
        self._known[channel] = count
        self._remember(channel, body)
        self._answered_at[channel] = trio.current_time()
        return body

    def _local_count(self, channel: str) -> int:
        state = self._server.hub.channel(channel)
        return len(state.members) if state is not None else 0

    def _local_members(self, channel: str) -> dict[str, Member]:
        state = self._server.hub.channel(channel)
        return {
            c.client_id: Member(c.client_id, c.principal.user_id)
            for c in (state.members if state is not None else ())
        }

    def _body(self, channel: str, count: int, members: Callable[[], dict[str, Member]]) -> bytes:
        """The reply's ``"count":N,"members":...`` part; the member list is only built (and
        only asked for) when it is shown: counts only, or over the limit, is O(1)."""
        if self.mode(channel) is PresenceMode.COUNTS or count > self._max_members:
            return b'"count":%d,"members":null' % count
        listed = sorted(members().values(), key=lambda m: m.client_id)
        return b'"count":%d,"members":%s' % (len(listed), encode([m.as_json() for m in listed]))

    @staticmethod
    def _frame(channel: str, body: bytes, request_id: RequestId | None) -> bytes:
        """``{"type":"presence","channel":C,<body>,"id":...}`` (channel names are ASCII)."""
        tail = b"}" if request_id is None else b',"id":' + encode(request_id) + b"}"
        return text_frame(
            b'{"type":"presence","channel":"' + channel.encode("ascii") + b'",' + body + tail
        )

    def _remember(self, channel: str, body: bytes) -> None:
        answers = self._answers
        answers[channel] = body
        answers.move_to_end(channel)
        while len(answers) > ANSWERS_KEPT:
            oldest, _ = answers.popitem(last=False)
            self._answered_at.pop(oldest, None)

    def _forget_answer(self, channel: str) -> None:
        """The channel's members changed: its next ``presence`` answer is made anew."""
        self._answers.pop(channel, None)
        self._answered_at.pop(channel, None)

    # -- Redis: writes, refreshes, sweeps -------------------------------------------------------

    async def run(self) -> None:
        """The supervisor task (Redis only): keep the shared hashes true."""
        if self._redis is None or not self.enabled:
            return
        period = self._ttl / 3
        next_refresh = trio.current_time()
        while True:
            with trio.move_on_at(next_refresh):
                while not self._writes:
                    self._wake = trio.Event()
                    await self._wake.wait()
            if self._writes:
                await self._flush_writes()
            if trio.current_time() >= next_refresh:
                next_refresh = trio.current_time() + period
                await self._refresh_and_sweep()

    async def _flush_writes(self) -> None:
        assert self._redis is not None
        batch = list(self._writes)
        self._writes.clear()
        node = self._redis.node_id
        expires = self._server.now_ms() + int(self._ttl * 1000)
        try:
            await self._redis.call(functools.partial(_write, batch, node, expires, self._ttl))
        except Exception as exc:  # Redis away: the refresh will write them again
            log.warning("presence: could not write %d change(s): %s", len(batch), exc)

    async def _refresh_and_sweep(self) -> None:
        assert self._redis is not None
        node = self._redis.node_id
        now = self._server.now_ms()
        expires = now + int(self._ttl * 1000)
        hub = self._server.hub
        mine: list[tuple[str, Member]] = []
        channels = []
        for state in hub.channels():
            if self.mode(state.name) is None or not state.members:
                continue
            channels.append(state.name)
            mine += [(state.name, Member(c.client_id, c.principal.user_id)) for c in state.members]
        if not channels:
            return
        try:
            counts, announced = await self._redis.call(
                functools.partial(_refresh_and_sweep, mine, channels, node, now, expires, self._ttl)
            )
        except Exception as exc:
            log.warning("presence: refresh failed: %s", exc)
            return
        self._known = counts
        if announced:
            log.warning(
                "presence: %d member(s) of this node were missing from Redis (swept while this "
                "node missed its refreshes for presence_ttl, or never written): announced "
                "again with join",
                announced,
            )


def _hlen(name: str, client: redis.Redis) -> int:
    return int(client.hlen(name))  # type: ignore[arg-type, unused-ignore]


def _hgetall(name: str, client: redis.Redis) -> dict[bytes, bytes]:
    return client.hgetall(name)  # type: ignore[return-value, unused-ignore]


def _put(
    pipe: Any, channel: str, members: list[Member], node: str, expires: int, ttl: float
) -> None:
    """Queue :data:`~triows._core.presence.PUT_SCRIPT` for ``members`` of ``channel``: written,
    and announced (``join``) when they were not in the hash."""
    args: list[Any] = [core.EVENTS_CHANNEL, int(ttl * 3000)]
    for member in members:
        entry = core.encode_entry(expires, node, member.user_id)
        args += [member.client_id, entry, core.encode_event("join", channel, member, node)]
    pipe.eval(core.PUT_SCRIPT, 1, core.key(channel), *args)


def _write(
    batch: list[tuple[str, str, Member]], node: str, expires: int, ttl: float, client: redis.Redis
) -> None:
    pipe = client.pipeline(transaction=False)
    for kind, channel, member in batch:
        if kind == "join":
            _put(pipe, channel, [member], node, expires, ttl)
        else:
            event = core.encode_event(kind, channel, member, node)
            pipe.eval(
                core.LEAVE_SCRIPT,
                1,
                core.key(channel),
                member.client_id,
                core.EVENTS_CHANNEL,
                event,
            )
    pipe.execute()


def _refresh_and_sweep(
    mine: list[tuple[str, Member]],
    channels: list[str],
    node: str,
    now: int,
    expires: int,
    ttl: float,
    client: redis.Redis,
) -> tuple[dict[str, int], int]:
    """Refresh this node's members (announcing those that were swept meanwhile); remove (and
    announce) expired ones; live counts, and how many of ours were announced again."""
    by_channel: dict[str, list[Member]] = {channel: [] for channel in channels}
    for channel, member in mine:
        by_channel[channel].append(member)
    pipe = client.pipeline(transaction=False)
    for channel, members in by_channel.items():
        for start in range(0, len(members), PUT_CHUNK):  # a bounded script each
            _put(pipe, channel, members[start : start + PUT_CHUNK], node, expires, ttl)
    announced = sum(int(n) for n in pipe.execute())
    counts: dict[str, int] = {}
    for channel in channels:
        entries = client.hgetall(core.key(channel))
        counts[channel] = len(core.live_members(entries, now))
        for member in core.expired(entries, now):
            # Announced as nobody's: every node tells its subscribers, this one too.
            event = core.encode_event("leave", channel, member, core.SWEEPER)
            client.eval(
                core.LEAVE_SCRIPT,
                1,
                core.key(channel),
                member.client_id,
                core.EVENTS_CHANNEL,
                event,
            )
    return counts, announced
