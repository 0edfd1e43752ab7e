"""Presence: join/leave frames to subscribers, ``presence`` answers, and the members other
nodes hold, behind a :class:`PresenceStore` (rules in :mod:`triows._core.presence`).

In process, a channel's members are its subscribers (the hub knows them), so the store holds
nothing (:class:`LocalPresenceStore`). With Redis (``triows._brokers.redis.presence_store``),
every join and leave is written to the channel's hash and announced to the other nodes (both
from one background task, in order, so the subscribe path never waits for Redis), and every
``presence_ttl / 3`` seconds the node refreshes its members' expiry and sweeps expired members
(a crashed node's) out of the channels it follows. A ``presence`` request reads the hash and
adds this node's own members, whose writes may not have reached Redis yet. The store is chosen
with the broker (``triows._brokers.factory``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import trio

from .._config import Config
from .._core import presence as core
from .._core.frames import text_frame
from .._core.hub import Hub
from .._core.presence import Member, PresenceMode
from .._core.protocol import RequestId, encode
from .fanout import FanOut, Subscriber

log = logging.getLogger("triows.presence")

#: Seconds a ``presence`` answer read from Redis is reused (joins and leaves announced by
#: other nodes make it anew at once; this bounds what a crashed node's members cost).
ANSWER_TTL = 1.0
#: Channels whose answer is kept, the least recently made forgotten first.
ANSWERS_KEPT = 1024

#: ``(kind, channel, member)``: a join or a leave of this node, to be written to the store.
Change = tuple[str, str, Member]


class PresenceStore(Protocol):
    """Where the members of every node live, and how a node hears of the others' changes."""

    #: Whether other nodes share it (False: nothing to write, read or sweep).
    shared: bool
    #: This node's name in the store (its members' entries, its own announcements).
    node_id: str

    def listen(self, on_event: Callable[[bytes], None]) -> None:
        """Call ``on_event`` with each join or leave announced by any node."""
        ...

    async def write(self, changes: list[Change], expires_ms: int, ttl: float) -> None: ...

    async def refresh_and_sweep(
        self,
        mine: list[tuple[str, Member]],
        channels: list[str],
        now_ms: int,
        expires_ms: int,
        ttl: float,
    ) -> tuple[dict[str, int], int]:
        """Refresh this node's members, sweep expired ones; live counts per channel and how
        many of ours had to be announced again."""
        ...

    async def count(self, channel: str) -> int:
        """Members stored for ``channel`` (every node's; O(1))."""
        ...

    async def entries(self, channel: str) -> Mapping[Any, Any]:
        """The stored entries of ``channel`` (``triows._core.presence`` reads them)."""
        ...


class LocalPresenceStore:
    """One node alone: its subscribers are all the members there are."""

    shared = False
    node_id = "local"

    def listen(self, on_event: Callable[[bytes], None]) -> None:
        pass  # nobody else announces anything

    async def write(self, changes: list[Change], expires_ms: int, ttl: float) -> None:
        raise AssertionError("a local presence store stores nothing")

    async def refresh_and_sweep(
        self,
        mine: list[tuple[str, Member]],
        channels: list[str],
        now_ms: int,
        expires_ms: int,
        ttl: float,
    ) -> tuple[dict[str, int], int]:
        raise AssertionError("a local presence store stores nothing")

    async def count(self, channel: str) -> int:
        return 0

    async def entries(self, channel: str) -> Mapping[Any, Any]:
        return {}


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
        if store.shared and self.enabled:
            store.listen(self._on_event)

    def mode(self, channel: str) -> PresenceMode | None:
        if not self.enabled:
            return None
        return core.mode_for(self._full, self._counts, channel)

    def count(self, channel: str) -> int:
        state = self._hub.channel(channel)
        local = len(state.members) if state is not None else 0
        return max(local, self._known.get(channel, 0))

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
        self._forget_answer(channel)
        member = Member(conn.client_id, conn.principal.user_id)
        swept = (channel, member.client_id) in self._swept
        self._swept.discard((channel, member.client_id))
        # A member a sweep announced as gone, leaving for real now: already told.
        if mode is PresenceMode.FULL and not (kind == "leave" and swept):
            self._notify(kind, channel, member)
        if self._store.shared:
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
        """Another node's join or leave, from Redis pub/sub."""
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
        if node != self._store.node_id:
            self._notify(kind, channel, member)
        elif kind == "join" and key in self._swept:
            # Our refresh put back a member a sweep had announced as gone: our subscribers
            # heard that leave too, so they hear this join (in order: same pub/sub channel).
            self._swept.discard(key)
            self._notify(kind, channel, member)

    def _is_here(self, channel: str, member: Member) -> bool:
        conn = self._fanout.by_id(member.client_id)
        return conn is not None and self._hub.is_member(conn, channel)

    # -- answering ``presence`` -----------------------------------------------------------------

    def local_frame(self, channel: str, request_id: RequestId | None) -> bytes:
        """The ``presence`` reply, from this process's members: complete with the in-process
        broker. Made once per change of the channel's members, not once per request."""
        body = self._answers.get(channel)
        if body is None:
            state = self._hub.channel(channel)
            members = state.members if state is not None else {}
            body = self._body(channel, len(members), lambda: self._local_members(channel))
            self._remember(channel, body)
        return self._frame(channel, body, request_id)

    async def frame(self, channel: str, request_id: RequestId | None) -> bytes:
        """:meth:`local_frame`, with every node's members when there is Redis: one Redis read
        per channel at a time (concurrent requests share it), kept until the channel's
        members change or :data:`ANSWER_TTL` passes; counts only need ``HLEN``."""
        if not self._store.shared:
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
                    await self._read_from_store(channel)
                finally:
                    del self._reading[channel]
                    done.set()
            cached = self._answers.get(channel) or await self._read_from_store(channel)
        return self._frame(channel, cached, request_id)

    async def _read_from_store(self, channel: str) -> bytes:
        if self.mode(channel) is PresenceMode.COUNTS:
            # O(1) in Redis; a crashed node's members count until the next sweep removes them.
            stored = await self._store.count(channel)
            count = max(stored, self._local_count(channel))
            body = self._body(channel, count, dict)
        else:
            entries = await self._store.entries(channel)
            members = self._local_members(channel)
            for member in core.live_members(entries, self._now_ms()):
                members.setdefault(member.client_id, member)
            body = self._body(channel, len(members), lambda: members)
            count = len(members)
        self._known[channel] = count
        self._remember(channel, body)
        self._answered_at[channel] = trio.current_time()
        return body

    def _local_count(self, channel: str) -> int:
        state = self._hub.channel(channel)
        return len(state.members) if state is not None else 0

    def _local_members(self, channel: str) -> dict[str, Member]:
        state = self._hub.channel(channel)
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
        if not self._store.shared or not self.enabled:
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
        batch = list(self._writes)
        self._writes.clear()
        expires = self._now_ms() + int(self._ttl * 1000)
        try:
            await self._store.write(batch, expires, self._ttl)
        except Exception as exc:  # Redis away: the refresh will write them again
            log.warning("presence: could not write %d change(s): %s", len(batch), exc)

    async def _refresh_and_sweep(self) -> None:
        now = self._now_ms()
        expires = now + int(self._ttl * 1000)
        hub = self._hub
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
            counts, announced = await self._store.refresh_and_sweep(
                mine, channels, now, expires, self._ttl
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
