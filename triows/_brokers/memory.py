"""The in-process broker (the default): numbering, history and dedupe in this process.

One node only: a restart loses history and dedupe windows, and clients learn it from the new
epoch. A publication is numbered, framed once, handed to every local subscriber and kept in
history in one synchronous step, so every subscriber receives a channel's messages in
sequence order whoever publishes them.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import trio
import trio_util

from .._config import Config
from .._core.dedupe import DedupeWindow
from .._core.envelopes import framed_message, framed_message_size, message_head, sender_json
from .._core.frames import text_payload
from .._core.history import Unframed, page, rewind_since
from .._core.hub import Hub, Resume
from .._core.latency import histogram
from .._core.outbox import SlowConsumerPolicy
from .._core.protocol import RequestId
from .fanout import FanOut, Subscriber
from .seam import Broker, BrokerStatistics, HistoryPage, Publication, Subscribed

#: Senders whose JSON id the broker remembers (a cache: emptied when full).
SENDERS_KEPT = 4096
#: Tokens of the dedupe window's log one call of :meth:`MemoryBroker.expire` takes at most
#: (a fraction of a millisecond): the rest after the others ran (``Broker.expire``).
EXPIRE_SLICE = 2048


class MemoryBroker(Broker):
    """Everything in this process: numbering, history, dedupe. One node only."""

    def __init__(self, config: Config, fanout: FanOut, *, epoch_prefix: str) -> None:
        self._fanout = fanout
        self.delivery_lag = histogram(config.metrics)
        self.round_trips = histogram(config.metrics)
        self.hub = Hub(
            epoch_prefix=epoch_prefix,
            max_subscriptions=config.max_subscriptions,
            policy_for=config.policy_for,
            history_for=config.history_for,
            max_idle_channels=config.max_idle_channels,
            channel_history_bytes=config.history_max_bytes,
            max_history_bytes=config.history_total_bytes,
        )
        self.up = trio_util.AsyncBool(True)
        rule = config.dedupe_rule()
        self._dedupe = DedupeWindow(
            size=rule.size,
            ttl=rule.ttl,
            max_principals=config.dedupe_max_principals,
            max_entries=rule.max_entries,
        )
        #: The JSON of recent senders' ids (:meth:`_sender_json`).
        self._senders: dict[str | None, bytes] = {}

    def _sender_json(self, sender_id: str | None) -> bytes:
        """``sender_id``'s JSON, remembered (a bounded cache, emptied when full: senders are
        the connections publishing, made once per sender rather than per message)."""
        senders = self._senders
        if len(senders) >= SENDERS_KEPT:
            senders.clear()
        found = senders[sender_id] = sender_json(sender_id)
        return found

    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()

    def publish(self, pub: Publication) -> list[Subscriber]:
        principal, publish_id = pub.dedupe if pub.dedupe is not None else (None, None)
        seq, pub.epoch, blocked = self.publish_at_once(
            pub.channel,
            pub.data_json,
            pub.sender_id,
            pub.timestamp_ms,
            pub.echo,
            principal,
            publish_id,
        )
        pub.seq = seq
        if pub.numbered is not None:
            pub.numbered(seq)
        return blocked

    def publish_at_once(
        self,
        channel: str,
        data_json: bytes,
        sender_id: str | None,
        timestamp_ms: int,
        echo: bool,
        principal: Hashable,
        publish_id: RequestId | None,
        now: float | None = None,
    ) -> tuple[int, str, list[Subscriber]]:
        """Dedupe, number, frame once, hand over, keep in history: one synchronous step, so
        every subscriber receives a channel's messages in sequence order. Returns the seq,
        the epoch it was numbered in and the ``block`` subscribers to wait for.

        Only the work somebody asked for: the dedupe window is read and written only for a
        publication with an id (``publish_id``), the clock is read (once, unless the caller
        did) only for the history or that window, and no frame is made when nobody receives
        or keeps it."""
        dedupe = self._dedupe
        keyed = publish_id is not None and dedupe.enabled
        hub = self.hub
        if keyed:
            if now is None:
                now = trio.current_time()
            seq = dedupe.lookup(principal, channel, publish_id, now)  # type: ignore[arg-type]
            if seq is not None:
                self.deduplicated += 1
                state = hub.channel(channel)
                return seq, state.epoch if state is not None else "", []
        state, seq = hub.publish(channel)
        blocked: list[Subscriber] = []
        members = state.members
        kept = state.history.enabled
        frame: bytes | Unframed = b""  # nobody receives it, nothing keeps it
        size = 0
        if members or kept:
            # The frame from parts made once per channel and per sender.
            parts = state.frame_parts
            if parts is None:
                parts = state.frame_parts = (message_head(channel), state.epoch.encode("ascii"))
            sender = self._senders.get(sender_id)
            if sender is None:
                sender = self._sender_json(sender_id)
            if members:
                frame = framed_message(parts[0], data_json, sender, timestamp_ms, seq, parts[1])
                size = len(frame)
                blocked = self._fanout.deliver(state, frame, None if echo else sender_id)
            else:  # kept, not sent: framed if ever replayed (history.py)
                frame = (data_json, sender, timestamp_ms)
                size = framed_message_size(parts[0], data_json, sender, timestamp_ms, seq, parts[1])
        self.published += 1
        if now is None:  # the history's clock, read only if it keeps the message
            now = trio.current_time() if kept else 0.0
        hub.record(state, seq, frame, now, size)
        if keyed:
            dedupe.record(principal, channel, publish_id, seq, now)  # type: ignore[arg-type]
        return seq, state.epoch, blocked

    def publish_nowait(self, pub: Publication) -> int:
        state = self.hub.channel(pub.channel)
        if (
            state is not None
            and state.policy is SlowConsumerPolicy.BLOCK
            and any(not member.outbox.has_room for member in state.members)
        ):
            raise trio.WouldBlock
        self.publish(pub)
        return pub.seq

    subscribes_at_once = True
    numbers_at_once = True

    async def subscribe(
        self,
        member: Subscriber,
        channel: str,
        since: int | None,
        epoch: str | None,
        rewind: int | None = None,
    ) -> Subscribed:
        return self.subscribe_nowait(member, channel, since, epoch, rewind)

    def subscribe_nowait(
        self,
        member: Subscriber,
        channel: str,
        since: int | None,
        epoch: str | None,
        rewind: int | None = None,
    ) -> Subscribed:
        state = self.hub.subscribe(member, channel)
        now = trio.current_time()
        if since is not None:
            resume = self.hub.resume(state, since, epoch, now)
            return Subscribed(seq=state.seq, epoch=state.epoch, resume=resume)
        if rewind:
            start = rewind_since(state.seq, rewind)
            replay = self.hub.resume(state, start, state.epoch, now).replay
            return Subscribed(
                seq=state.seq,
                epoch=state.epoch,
                resume=Resume(recovered=True, replay=replay),
                rewound=len(replay),
            )
        return Subscribed(seq=state.seq, epoch=state.epoch, rewound=None if rewind is None else 0)

    async def history(
        self, channel: str, *, since: int | None, limit: int, reverse: bool, max_bytes: int
    ) -> HistoryPage:
        state = self.hub.channel(channel)
        if state is None:
            return HistoryPage(epoch=None, seq=0, payloads=[])
        held = [(seq, text_payload(f)) for seq, f in self.hub.held(state, trio.current_time())]
        chosen = page(held, since=since, limit=limit, reverse=reverse, max_bytes=max_bytes)
        return HistoryPage(
            epoch=state.epoch, seq=state.seq, payloads=[payload for _, payload in chosen]
        )

    async def numbering(self, channel: str) -> tuple[int, str | None]:
        state = self.hub.channel(channel)
        return (0, None) if state is None else (state.seq, state.epoch)

    async def control(self, request: dict[str, Any], answer_within: float) -> list[dict[str, Any]]:
        assert self.on_control is not None, "the server sets on_control"
        return [await self.on_control(request)]

    def expire(self, now: float) -> bool:
        self.hub.expire(now)
        return self._dedupe.expire(now, EXPIRE_SLICE)

    def forget_publisher(self, key: object) -> None:
        self._dedupe.forget(key)

    def statistics(self) -> BrokerStatistics:
        return BrokerStatistics(kind="memory")

    @property
    def dedupe_entries(self) -> int:
        return self._dedupe.entries

    @property
    def dedupe_principals(self) -> int:
        return self._dedupe.principals
