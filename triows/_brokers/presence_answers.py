"""``presence`` answers (:class:`PresenceAnswers`): made once per change of a channel's
members, and with Redis read from the store (one read per channel at a time, kept for
:data:`ANSWER_TTL`) and completed with this node's own members, whose writes may not have
reached Redis yet. Part of :mod:`triows._brokers.presence`, which tells it of changes."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import trio

from .._core import presence as core
from .._core.frames import text_frame
from .._core.hub import Hub
from .._core.presence import Member, PresenceMode
from .._core.protocol import RequestId, encode
from .fanout import Subscriber
from .presence_store import PresenceStore

#: Seconds a ``presence`` answer read from Redis is reused (joins and leaves announced by
#: other nodes make it anew at once; this bounds what a crashed node's members cost).
ANSWER_TTL = 1.0
#: Channels whose answer is kept, the least recently made forgotten first.
ANSWERS_KEPT = 1024


def local_members(hub: Hub[Subscriber], channel: str) -> dict[str, Member]:
    """The members of ``channel`` on this node, by client id."""
    state = hub.channel(channel)
    return {
        c.client_id: Member(c.client_id, c.principal.user_id, c.principal.info)
        for c in (state.members if state is not None else ())
    }


class PresenceAnswers:
    def __init__(
        self,
        hub: Hub[Subscriber],
        store: PresenceStore,
        now_ms: Callable[[], int],
        mode: Callable[[str], PresenceMode | None],
        max_members: int,
    ) -> None:
        self._hub = hub
        self._store = store
        self._now_ms = now_ms
        self.mode = mode
        self._max_members = max_members
        #: With Redis: live members per channel, every node's, as last read.
        self.known: dict[str, int] = {}
        #: Encoded answers per channel (the part after ``"channel"``), until its members
        #: change; with Redis also when each was read, and the reads in progress.
        self._answers: OrderedDict[str, bytes] = OrderedDict()
        self._answered_at: dict[str, float] = {}
        self._reading: dict[str, trio.Event] = {}

    def local_frame(self, channel: str, request_id: RequestId | None) -> bytes:
        """The ``presence`` reply, from this process's members: complete with the in-process
        broker. Made once per change of the channel's members, not once per request."""
        body = self._answers.get(channel)
        if body is None:
            state = self._hub.channel(channel)
            members = state.members if state is not None else {}
            body = self._body(channel, len(members), lambda: local_members(self._hub, channel))
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
            members = local_members(self._hub, channel)
            for member in core.live_members(entries, self._now_ms()):
                members.setdefault(member.client_id, member)
            body = self._body(channel, len(members), lambda: members)
            count = len(members)
        self.known[channel] = count
        self._remember(channel, body)
        self._answered_at[channel] = trio.current_time()
        return body

    def _local_count(self, channel: str) -> int:
        state = self._hub.channel(channel)
        return len(state.members) if state is not None else 0

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

    def forget(self, channel: str) -> None:
        """The channel's members changed: its next ``presence`` answer is made anew."""
        self._answers.pop(channel, None)
        self._answered_at.pop(channel, None)
