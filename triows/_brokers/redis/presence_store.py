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
from typing import Any, TypeVar

import redis

from ..._core import presence as core
from ..._core.presence import Member
from ..presence_store import Change, Found
from ..seam import BrokerUnavailableError
from .bridge import LINK_ERRORS
from .broker import RedisBroker
from .commands import pipe_eval

#: Members written by one script call of a refresh.
PUT_CHUNK = 500

T = TypeVar("T")


class RedisPresenceStore:
    shared = True

    def __init__(self, broker: RedisBroker) -> None:
        self._broker = broker
        self.node_id = broker.node_id

    def listen(self, on_event: Callable[[bytes], None], on_resync: Callable[[], None]) -> None:
        self._broker.on_presence = on_event
        self._broker.on_presence_resync = on_resync

    async def write(self, changes: list[Change], expires_ms: int, ttl: float) -> None:
        await self._broker.call(functools.partial(_write, changes, self.node_id, expires_ms, ttl))

    async def refresh_and_sweep(
        self,
        mine: list[tuple[str, Member]],
        channels: list[str],
        now_ms: int,
        expires_ms: int,
        ttl: float,
    ) -> tuple[Found, int]:
        return await self._broker.call(
            functools.partial(
                _refresh_and_sweep, mine, channels, self.node_id, now_ms, expires_ms, ttl
            )
        )

    async def read(self, channels: list[str], now_ms: int) -> Found:
        return await self._broker.call(functools.partial(_read, channels, now_ms))

    async def count(self, channel: str) -> int:
        return await self._answer(functools.partial(_hlen, core.key(channel)))

    async def entries(self, channel: str) -> Mapping[Any, Any]:
        return await self._answer(functools.partial(_hgetall, core.key(channel)))

    async def _answer(self, read: Callable[[redis.Redis], T]) -> T:
        """A read for a client's ``presence`` request: Redis away is error 503 for it, not a
        failure of ours (500)."""
        try:
            return await self._broker.call(read)
        except LINK_ERRORS as exc:
            raise BrokerUnavailableError(
                "Redis is unreachable; cannot read the channel's members now"
            ) from exc


def _read(channels: list[str], now: int, client: redis.Redis) -> Found:
    pipe = client.pipeline(transaction=False)
    for channel in channels:
        pipe.hgetall(core.key(channel))
    return {
        channel: core.live_entries(entries, now)
        for channel, entries in zip(channels, pipe.execute(), strict=True)
    }


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
        entry = core.encode_entry(expires, node, member.user_id, member.info)
        args += [member.client_id, entry, core.encode_event("join", channel, member, node)]
    pipe_eval(pipe, core.PUT_SCRIPT, 1, core.key(channel), *args)


def _write(
    batch: list[tuple[str, str, Member]], node: str, expires: int, ttl: float, client: redis.Redis
) -> None:
    pipe = client.pipeline(transaction=False)
    for kind, channel, member in batch:
        if kind == "join":
            _put(pipe, channel, [member], node, expires, ttl)
        else:
            event = core.encode_event(kind, channel, member, node)
            pipe_eval(
                pipe,
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
) -> tuple[Found, int]:
    """Refresh this node's members (announcing those that were swept meanwhile); remove (and
    announce) expired ones; the live members, and how many of ours were announced again."""
    by_channel: dict[str, list[Member]] = {channel: [] for channel in channels}
    for channel, member in mine:
        by_channel[channel].append(member)
    pipe = client.pipeline(transaction=False)
    for channel, members in by_channel.items():
        for start in range(0, len(members), PUT_CHUNK):  # a bounded script each
            _put(pipe, channel, members[start : start + PUT_CHUNK], node, expires, ttl)
    announced = sum(int(n) for n in pipe.execute())
    found: Found = {}
    for channel in channels:
        entries = client.hgetall(core.key(channel))
        found[channel] = core.live_entries(entries, now)
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
    return found, announced
