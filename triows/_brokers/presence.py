"""Presence: join/leave frames to subscribers, ``presence`` answers, and the members other
nodes hold, behind a :class:`~triows._brokers.presence_store.PresenceStore` (rules in
:mod:`triows._core.presence`).

In process, a channel's members are its subscribers (the hub knows them), so the store holds
nothing. With Redis (``triows._brokers.redis.presence_store``), every join and leave is
written to the channel's hash and announced to the other nodes (both from one background
task, in order, so the subscribe path never waits for Redis), and every ``presence_ttl / 3``
seconds the node refreshes its members' expiry and sweeps expired members (a crashed node's)
out of the channels it follows. A ``presence`` request reads the hash and adds this node's own
members, whose writes may not have reached Redis yet. The store is chosen with the broker
(``triows._brokers.factory``).

Announcements are pub/sub messages, and pub/sub loses what is published while a link is down.
So the subscribers of a ``full`` channel hear what this node told them (:class:`~triows._core.
presence.Announced`), kept true against the hashes: when the announcements are followed again
after a break, and at every refresh, the node reads the hashes of the channels it follows and
tells its subscribers the difference (a join at once; a leave once reads have missed the
member for more than a refresh period). A leave this node could not write is written again.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable

import trio

from .._config import Config
from .._core import presence as core
from .._core.backoff import full_jitter
from .._core.frames import text_frame
from .._core.hub import Hub
from .._core.presence import Member, PresenceMode
from .._core.protocol import RequestId, encode
from .fanout import FanOut, Subscriber
from .presence_answers import PresenceAnswers, local_members
from .presence_store import Change, Found, PresenceStore

log = logging.getLogger("triows.presence")

#: Members listed for a refresh between two checkpoints (the refresh must not stall the loop).
MEMBERS_PER_STEP = 1000
#: Refresh periods a member told of must be missing from the hash before it is told gone.
MISSED_PERIODS = 1.5


class Presence:
    def __init__(
        self,
        config: Config,
        hub: Hub[Subscriber],
        fanout: FanOut,
        now_ms: Callable[[], int],
        store: PresenceStore,
    ) -> None:
        self._hub = hub
        self._fanout = fanout
        self._now_ms = now_ms
        self._store = store
        self._full = config.presence
        self._counts = config.presence_counts
        self.enabled = bool(self._full or self._counts)
        self._max_members = config.presence_max_members
        self._ttl = config.presence_ttl
        #: Writes waiting for the background task: ``(kind, channel, member)``.
        self._writes: deque[Change] = deque()
        self._wake = trio.Event()
        #: With Redis: what this node's subscribers were told, kept true against the hashes;
        #: the announcements were followed again (their pub/sub link came back).
        self._announced = core.Announced()
        self._resync_due = False
        #: With Redis: when the background task may try Redis again after a failure.
        self._retry_at = -math.inf
        self._failures = 0
        self._answers = PresenceAnswers(hub, store, now_ms, self.mode, self._max_members)
        if store.shared and self.enabled:
            store.listen(self._on_event, self._on_resync)

    def mode(self, channel: str) -> PresenceMode | None:
        if not self.enabled:
            return None
        return core.mode_for(self._full, self._counts, channel)

    def count(self, channel: str) -> int:
        state = self._hub.channel(channel)
        local = len(state.members) if state is not None else 0
        return max(local, self._answers.known.get(channel, 0))

    # -- membership changes (sync: called from the subscribe path) ------------------------------

    def joined(self, conn: Subscriber, channel: str) -> None:
        self._changed("join", conn, channel)

    def left(self, conn: Subscriber, channel: str) -> None:
        self._changed("leave", conn, channel)

    def left_all(self, conn: Subscriber) -> None:
        """Before a closed connection leaves its channels."""
        if self.enabled:
            for channel in self._hub.channels_of(conn):
                self._changed("leave", conn, channel)

    def _changed(self, kind: str, conn: Subscriber, channel: str) -> None:
        mode = self.mode(channel)
        if mode is None:
            return
        self._answers.forget(channel)
        member = Member(conn.client_id, conn.principal.user_id, conn.principal.info)
        if not self._store.shared:
            if mode is PresenceMode.FULL:
                self._notify(kind, channel, member)
            return
        if mode is PresenceMode.FULL:
            announced = self._announced
            state = self._hub.channel(channel)
            if kind == "join" and (
                not announced.follows(channel) or (state is not None and len(state.members) == 1)
            ):
                # Its first member here: what its subscribers know starts now, settled by the
                # background task's first read of the hash.
                announced.follow(channel, [])
                self._wake.set()
            news = announced.joined if kind == "join" else announced.left
            # A member a sweep announced as gone, leaving for real now, is not news.
            if news(channel, member):
                self._notify(kind, channel, member)
        self._writes.append((kind, channel, member))
        self._wake.set()

    def _notify(self, kind: str, channel: str, member: Member) -> None:
        """Tell this node's subscribers of ``channel`` (but the member itself)."""
        state = self._hub.channel(channel)
        if state is None or self.count(channel) > self._max_members:
            return
        data = text_frame(encode(core.frame(kind, channel, member)))
        for subscriber in list(state.members):
            if subscriber.client_id != member.client_id:
                subscriber.deliver(data, state.policy, state)

    def _on_event(self, data: bytes) -> None:
        """A join or leave announced on Redis pub/sub (by any node, this one too)."""
        try:
            kind, channel, member, node = core.decode_event(data)
        except (ValueError, KeyError, TypeError):
            log.warning("skipped a malformed presence event: %r", data[:80])
            return
        self._answers.forget(channel)
        if self.mode(channel) is not PresenceMode.FULL:
            return
        announced = self._announced
        if node == self._store.node_id:
            # Our own announcement: our subscribers heard it from us first. Except a join our
            # refresh wrote back after a sweep had announced the member gone: they heard that
            # leave too (the sweeper's, on the same pub/sub channel, before this join).
            if (
                kind == "join"
                and self._is_here(channel, member)
                and not announced.knows(channel, member.client_id)
            ):
                announced.joined(channel, member)
                self._notify(kind, channel, member)
            return
        news = announced.joined if kind == "join" else announced.left
        if news(channel, member):
            self._notify(kind, channel, member)

    def _on_resync(self) -> None:
        """The announcements are followed again: what was announced while the link was down
        is lost. The background task reads the hashes and tells what changed."""
        self._resync_due = True
        self._wake.set()

    def _is_here(self, channel: str, member: Member) -> bool:
        conn = self._fanout.by_id(member.client_id)
        return conn is not None and self._hub.is_member(conn, channel)

    # -- answering ``presence`` (triows._brokers.presence_answers) ------------------------------

    def local_frame(self, channel: str, request_id: RequestId | None) -> bytes:
        """The ``presence`` reply from this process's members (complete in process)."""
        return self._answers.local_frame(channel, request_id)

    async def frame(self, channel: str, request_id: RequestId | None) -> bytes:
        """The ``presence`` reply, with every node's members when there is Redis."""
        return await self._answers.frame(channel, request_id)

    # -- Redis: writes, refreshes, sweeps, and what subscribers were told ----------------------

    async def run(self) -> None:
        """The supervisor task (Redis only): keep the shared hashes, and what this node's
        subscribers were told, true."""
        if not self._store.shared or not self.enabled:
            return
        period = self._ttl / 3
        next_refresh = trio.current_time()
        while True:
            with trio.move_on_at(next_refresh):
                await self._work_due()
            if self._writes and trio.current_time() >= self._retry_at:
                await self._flush_writes()
            if trio.current_time() >= next_refresh:
                next_refresh = trio.current_time() + period
                self._resync_due = False  # the refresh reads every channel followed
                await self._refresh_and_sweep()
            elif self._reads_due():
                await self._read_and_settle()

    def _reads_due(self) -> bool:
        return (self._resync_due or bool(self._announced.unsettled())) and (
            trio.current_time() >= self._retry_at
        )

    async def _work_due(self) -> None:
        """Until writes or reads are due (not before a failed attempt's retry time)."""
        while not ((self._writes and trio.current_time() >= self._retry_at) or self._reads_due()):
            self._wake = trio.Event()
            waiting = self._writes or self._resync_due or self._announced.unsettled()
            # Work held back by a failure waits for its retry time; else for news.
            with trio.move_on_at(self._retry_at if waiting else math.inf):
                await self._wake.wait()

    def _failed(self, what: str, exc: Exception) -> None:
        self._failures += 1
        delay = full_jitter(self._failures, 0.1, self._ttl / 3)
        self._retry_at = trio.current_time() + delay
        log.warning("presence: %s failed (%s); trying again in %.1fs", what, exc, delay)

    def _worked(self) -> None:
        self._failures = 0
        self._retry_at = -math.inf

    async def _flush_writes(self) -> None:
        batch = list(self._writes)
        self._writes.clear()
        expires = self._now_ms() + int(self._ttl * 1000)
        try:
            await self._store.write(batch, expires, self._ttl)
        except Exception as exc:
            # Redis away. A join is written again by the next refresh (if the member is still
            # here); a leave would be lost: it goes back, first, to be written when Redis is.
            leaves = [change for change in batch if change[0] == "leave"]
            self._writes.extendleft(reversed(leaves))
            self._failed(f"writing {len(batch)} change(s)", exc)
            return
        self._worked()

    async def _mine(self) -> tuple[list[tuple[str, Member]], list[str]]:
        """This node's members of presence channels, by channel: listed in steps."""
        mine: list[tuple[str, Member]] = []
        channels = []
        listed = 0
        for state in list(self._hub.channels()):
            if self.mode(state.name) is None or not state.members:
                continue
            channels.append(state.name)
            for conn in list(state.members):
                mine.append(
                    (
                        state.name,
                        Member(conn.client_id, conn.principal.user_id, conn.principal.info),
                    )
                )
                listed += 1
                if listed % MEMBERS_PER_STEP == 0:
                    await trio.lowlevel.checkpoint()
        return mine, channels

    async def _refresh_and_sweep(self) -> None:
        mine, channels = await self._mine()
        for channel in self._announced.channels():
            if channel not in channels:
                self._announced.forget(channel)  # no subscriber here any more
        if not channels:
            return
        now = self._now_ms()
        expires = now + int(self._ttl * 1000)
        touched = self._announced.begin_read()
        try:
            found, announced = await self._store.refresh_and_sweep(
                mine, channels, now, expires, self._ttl
            )
        except Exception as exc:
            self._failed("refresh", exc)
            return
        finally:
            self._announced.end_read(touched)
        self._worked()
        self._answers.known = {channel: len(members) for channel, members in found.items()}
        self._settle(found, touched)
        if announced:
            log.warning(
                "presence: %d member(s) of this node were missing from Redis (swept while this "
                "node missed its refreshes for presence_ttl, or lost by Redis): announced "
                "again with join",
                announced,
            )

    async def _read_and_settle(self) -> None:
        """Read the hashes of the channels whose subscribers' view is unsettled (or all, when
        the announcements were followed again) and tell the difference."""
        resync = self._resync_due
        channels = self._announced.channels() if resync else self._announced.unsettled()
        self._resync_due = False
        if not channels:
            return
        touched = self._announced.begin_read()
        try:
            found = await self._store.read(channels, self._now_ms())
        except Exception as exc:
            self._resync_due = resync
            self._failed("reading members", exc)
            return
        finally:
            self._announced.end_read(touched)
        self._worked()
        self._settle(found, touched)

    def _settle(self, found: Found, touched: set[tuple[str, str]]) -> None:
        node = self._store.node_id
        # Every live node writes its members back within a refresh period (after a Redis that
        # lost them): missed for longer, with a margin, a member is gone.
        wait = MISSED_PERIODS * self._ttl / 3
        for channel, entries in found.items():
            if not self._announced.follows(channel):
                continue
            # This node's own entries are what it wrote (a leave may not be written yet): its
            # members are the ones here.
            members = {m.client_id: m for m, at in entries if at != node}
            members.update(local_members(self._hub, channel))
            joins, leaves = self._announced.settle(
                channel, members, touched, now=trio.current_time(), wait=wait
            )
            for member in joins:
                self._notify("join", channel, member)
            for member in leaves:
                self._notify("leave", channel, member)
            if joins or leaves:
                self._answers.forget(channel)
