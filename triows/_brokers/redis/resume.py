"""Resume: what a client that subscribes with ``since``/``epoch`` missed, read from the stream.

The rules of a resume (recovered or not, the gap) are the hub's, shared with the in-process
broker; what is Redis-specific is where the history comes from and how it meets live delivery.
The stream is read up to what this node's feed has handed its members, in rounds while the
channel moves, so the replay and live delivery meet without a hole or a duplicate. A client
that saw more elsewhere than this node has delivered (this node lags, also behind a restart of
the channel's numbering) waits a moment for the feed, else Redis's numbering vouches for
``since``.

Separate from the feeds because it only reads a channel (its feed and stream) on behalf of one
subscribe, and never delivers: the feeds stay the one writer of a channel's state.
"""

from __future__ import annotations

import trio

from ..._config import Config
from ..._core.feed import Entry
from ..._core.frames import text_frame
from ..._core.hub import (
    Resume,
    resume_ahead_of_feed,
    resume_behind_restart,
    resume_from_history,
    resume_without_history,
)
from ..seam import BrokerUnavailableError, WallClockMs
from .feeds import Channel
from .reads import ResumeReads

#: Rounds of stream reads a resume may take to catch up with a busy channel.
RESUME_ROUNDS = 20
#: Seconds (at most ``redis_timeout``) a resume from beyond this node's feed waits for the
#: feed to get there before asking Redis.
RESUME_LAG_WAIT = 0.5


class Resumer:
    def __init__(self, config: Config, reads: ResumeReads, now_ms: WallClockMs) -> None:
        self._config = config
        #: Reads of every resume in flight go to Redis together (one pipeline per hop).
        self._reads = reads
        self._now_ms = now_ms

    async def resume(self, ch: Channel, since: int, epoch: str | None) -> Resume:
        """What a client that last saw ``(epoch, since)`` missed, read from the stream.

        Reads until the stream read reaches what local members were last handed (the feed's
        seq), so the replay and live delivery meet without a hole. A client that saw more of
        this epoch elsewhere than this node's feed has delivered (the node lags) missed
        nothing: the feed is given a moment to catch up (then the client gets exactly what
        follows), else Redis's numbering confirms ``since`` (see ``resume_ahead_of_feed``).
        The same holds when the client saw a restart of the numbering that this node has not
        seen yet (``resume_behind_restart``).
        """
        feed = ch.feed
        if epoch is not None and epoch != feed.epoch:
            # Another epoch than the feed's: the client's numbers are stale, or this node has
            # not seen the numbering restart yet. Redis's numbering tells which; a lag gets the
            # moment the feed may need to catch up.
            channel_seq, channel_epoch = await self._numbering(ch)
            lag = resume_behind_restart(since, epoch, channel_epoch, channel_seq)
            if lag is not None and not await self._feed_reaches(ch, epoch, since):
                return lag
        elif (
            epoch is not None
            and since > feed.seq
            and not await self._feed_reaches(ch, epoch, since)
        ):
            channel_seq, channel_epoch = await self._numbering(ch)
            if feed.seq < since:
                return resume_ahead_of_feed(since, epoch, channel_epoch, channel_seq)
        known = resume_without_history(since, epoch, feed.epoch, feed.seq)
        if known is not None:
            return known
        found: list[tuple[Entry, int]] = []
        after = since
        size, ttl = self._config.history_for(ch.name)
        for _ in range(RESUME_ROUNDS):
            upto = feed.seq
            # Only the newest ``size`` can be replayed: the stream may hold many more.
            start = max(after, upto - size)
            entries, stream_epoch = await self._reads.stream(ch.name, start, upto)
            if stream_epoch != epoch or feed.epoch != epoch:
                return Resume(recovered=False)
            found.extend(entries)
            after = upto
            if feed.seq == upto:
                break
        else:
            raise BrokerUnavailableError("channel too busy to resume now; try again")
        cutoff = self._now_ms() - ttl * 1000
        kept = [entry for entry, at in found if at >= cutoff][-size:] if size and ttl else []
        return resume_from_history(
            since, feed.seq, [(entry.seq, text_frame(entry.payload)) for entry in kept]
        )

    async def _numbering(self, ch: Channel) -> tuple[int, str | None]:
        """The channel's ``(seq, epoch)`` as Redis numbers it now."""
        return await self._reads.numbering(ch.name)

    async def _feed_reaches(self, ch: Channel, epoch: str, since: int) -> bool:
        """Wait (bounded) until the feed delivered ``since`` in ``epoch``; False if it did not
        (also when it moved on to yet another epoch meanwhile)."""
        feed, started = ch.feed, ch.feed.epoch

        def reached() -> bool:
            return feed.epoch == epoch and feed.seq >= since

        with trio.move_on_after(min(RESUME_LAG_WAIT, self._config.redis_timeout)):
            while not reached() and feed.epoch in (started, epoch):
                if ch.moved is None:
                    ch.moved = trio.Event()
                await ch.moved.wait()
        return reached()
