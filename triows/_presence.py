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
from collections import deque
from typing import TYPE_CHECKING, Any

import trio

from ._core import presence as core
from ._core.frames import text_frame
from ._core.presence import Member, PresenceMode
from ._core.protocol import encode
from ._redis_broker import RedisBroker

if TYPE_CHECKING:
    import redis

    from ._connection import Connection
    from ._server import Server

log = logging.getLogger("triows.presence")

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

    def local_answer(self, channel: str) -> dict[str, Any]:
        """The ``presence`` reply's fields from this process's members: ``count`` and
        ``members`` (None when counts only). Complete with the in-process broker."""
        return self._reply(channel, self._local_members(channel))

    async def answer(self, channel: str) -> dict[str, Any]:
        """:meth:`local_answer`, with every node's members when there is Redis."""
        if self._redis is None:
            return self.local_answer(channel)
        members = self._local_members(channel)
        entries = await self._redis.call(functools.partial(_hgetall, core.key(channel)))
        for member in core.live_members(entries, self._server.now_ms()):
            members.setdefault(member.client_id, member)
        self._known[channel] = len(members)
        return self._reply(channel, members)

    def _local_members(self, channel: str) -> dict[str, Member]:
        state = self._server.hub.channel(channel)
        return {
            c.client_id: Member(c.client_id, c.principal.user_id)
            for c in (state.members if state is not None else ())
        }

    def _reply(self, channel: str, members: dict[str, Member]) -> dict[str, Any]:
        count = len(members)
        if self.mode(channel) is PresenceMode.COUNTS or count > self._max_members:
            return {"count": count, "members": None}
        listed = sorted(members.values(), key=lambda m: m.client_id)
        return {"count": count, "members": [m.as_json() for m in listed]}

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
