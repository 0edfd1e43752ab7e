"""Presence across nodes, in Redis: one hash of members per channel, events on one channel.

The :class:`~triows._brokers.presence.PresenceStore` of a Redis broker. Members live in
``triows:p:<channel>`` hashes (field: client id; value: expiry, node, user); joins and leaves
are announced on :data:`~triows._core.presence.EVENTS_CHANNEL`, which the broker's pub/sub
listener follows for it. Scripts (``triows._core.presence``) make "announce once" atomic: a
member is announced when a write put it back, and a leave by whoever removed it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import redis

from ..._core import presence as core
from ..._core.presence import Member
from ..presence import Change
from .broker import RedisBroker

#: Members written by one script call of a refresh.
PUT_CHUNK = 500


class RedisPresenceStore:
    shared = True

    def __init__(self, broker: RedisBroker) -> None:
        self._broker = broker
        self.node_id = broker.node_id

    def listen(self, on_event: Callable[[bytes], None]) -> None:
        self._broker.on_presence = on_event

    async def write(self, changes: list[Change], expires_ms: int, ttl: float) -> None:
        await self._broker.call(functools.partial(_write, changes, self.node_id, expires_ms, ttl))

    async def refresh_and_sweep(
        self,
        mine: list[tuple[str, Member]],
        channels: list[str],
        now_ms: int,
        expires_ms: int,
        ttl: float,
    ) -> tuple[dict[str, int], int]:
        return await self._broker.call(
            functools.partial(
                _refresh_and_sweep, mine, channels, self.node_id, now_ms, expires_ms, ttl
            )
        )

    async def count(self, channel: str) -> int:
        return await self._broker.call(functools.partial(_hlen, core.key(channel)))

    async def entries(self, channel: str) -> Mapping[Any, Any]:
        return await self._broker.call(functools.partial(_hgetall, core.key(channel)))


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
