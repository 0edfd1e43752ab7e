"""The reads resumes make, batched: one pipeline per hop however many subscribes wait.

A reconnect storm is thousands of subscribes with ``since`` to channels the node already
follows. Each needs a slice of its channel's stream (or, from another epoch, the channel's
numbering), and one thread hop per subscribe put them in series behind the bridge's few
threads. Here every read asked for while a pipeline is out waits for the next one, and that
next one carries them all:

- reads of the same channel are *coalesced*: one ``XRANGE`` from the lowest ``after`` to the
  highest ``upto``, each subscribe taking its own slice, and one numbering read shared;
- a read only ever joins one that has not been sent yet, so whatever it returns was read
  after it was asked for (a resume never sees Redis as it was before the subscribe);
- a stream slice is read between two reads of the channel's epoch; when they differ (the
  numbering restarted meanwhile) that read goes again in the next pipeline, so entries are
  never labelled with an epoch they do not belong to.

Commands are one key each (no ``MULTI`` across channels), so a pipeline of many channels
suits a Redis Cluster too.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import attrs
import redis
import trio

from ..._core import redis_format as fmt
from ..._core.feed import Entry
from ..seam import BrokerUnavailableError
from .bridge import LINK_ERRORS, RedisBridge
from .commands import as_text

#: A stream slice with its epoch: entries ``after < seq <= upto`` and their ms timestamps.
Slice = tuple[list[tuple[Entry, int]], str | None]
#: Channels read in one pipeline at most (the rest go in the next one).
MAX_READS = 500


@attrs.define(eq=False)
class _Read:
    """One read of a channel waiting for (or in) a pipeline, and everyone who waits for it."""

    name: str
    after: int = 0
    upto: int = 0
    #: Whether a stream slice is wanted (else only the numbering).
    stream: bool = False
    numbering: bool = False
    done: trio.Event = attrs.field(factory=trio.Event)
    entries: list[tuple[Entry, int]] = attrs.field(factory=list)
    epoch: str | None = None
    seq: int = 0
    numbering_epoch: str | None = None
    failed: bool = False
    #: Read again as part of this one (see ``_again``).
    merged_into: _Read | None = None


class ResumeReads:
    def __init__(self, bridge: RedisBridge, timeout: float) -> None:
        self._bridge = bridge
        self._timeout = timeout
        #: Reads not sent yet, by channel: a new read of the channel joins the one here.
        self._queued: dict[str, _Read] = {}
        self._wake = trio.Event()
        #: Pipelines sent, and reads they carried (statistics for tests and benchmarks).
        self.pipelines = 0
        self.reads = 0

    async def stream(self, name: str, after: int, upto: int) -> Slice:
        """The channel's stream entries ``after < seq <= upto`` and its epoch, read together
        (no epoch: the channel has no numbering in Redis now)."""
        read = self._queue(name)
        if read.stream:
            read.after, read.upto = min(read.after, after), max(read.upto, upto)
        else:
            read.stream, read.after, read.upto = True, after, upto
        read = await self._wait(read)
        return [e for e in read.entries if after < e[0].seq <= upto], read.epoch

    async def numbering(self, name: str) -> tuple[int, str | None]:
        """The channel's ``(seq, epoch)`` as Redis numbers it now."""
        read = self._queue(name)
        read.numbering = True
        read = await self._wait(read)
        return read.seq, read.numbering_epoch

    def _queue(self, name: str) -> _Read:
        read = self._queued.get(name)
        if read is None:
            read = self._queued[name] = _Read(name)
            self._wake.set()
        return read

    async def _wait(self, read: _Read) -> _Read:
        """Until ``read`` (or the read it was merged into) is answered; that read."""
        # Bounded: the pipeline out now, then ours, each within the bridge's socket timeout.
        with trio.move_on_after(2 * self._timeout + 1):
            while True:
                await read.done.wait()
                if read.merged_into is None:
                    break
                read = read.merged_into
        if read.failed or not read.done.is_set():
            raise BrokerUnavailableError("Redis is unreachable; cannot resume now")
        return read

    async def run(self) -> None:
        """Send what is queued, one pipeline at a time, for as long as the broker runs."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._queued:
                names = list(self._queued)[:MAX_READS]
                batch = [self._queued.pop(name) for name in names]
                await self._send(batch)

    async def _send(self, batch: list[_Read]) -> None:
        requests = [(r.name, r.after, r.upto, r.stream, r.numbering) for r in batch]
        try:
            answers = await self._bridge.call(functools.partial(read_many, requests))
        except LINK_ERRORS:
            answers = None
        except BaseException:
            # A bug, or the broker stopping: nobody waits for an answer that cannot come.
            for read in batch:
                read.failed = True
                read.done.set()
            raise
        self.pipelines += 1
        self.reads += len(batch)
        for read, answer in zip(batch, answers or [None] * len(batch), strict=True):
            if answers is None:
                read.failed = True
            elif answer is None:  # the numbering restarted while the slice was read
                self._again(read)
                continue
            else:
                (read.entries, read.epoch), (read.seq, read.numbering_epoch) = answer
            read.done.set()

    def _again(self, read: _Read) -> None:
        """Send ``read`` again in the next pipeline; merged into a read of the same channel
        queued meanwhile, whose answer then serves both."""
        queued = self._queued.get(read.name)
        if queued is None:
            self._queued[read.name] = read
            self._wake.set()
            return
        if read.stream:
            if queued.stream:
                queued.after = min(queued.after, read.after)
                queued.upto = max(queued.upto, read.upto)
            else:
                queued.stream, queued.after, queued.upto = True, read.after, read.upto
        queued.numbering = queued.numbering or read.numbering
        read.merged_into = queued
        read.done.set()


Request = tuple[str, int, int, bool, bool]
Answer = tuple[Slice, tuple[int, str | None]] | None


def read_many(requests: Sequence[Request], client: redis.Redis) -> list[Answer]:
    """In one pipeline: for each ``(channel, after, upto, stream, numbering)``, its stream
    slice between two reads of its epoch, and/or its numbering. ``None`` for a channel whose
    epoch changed between the two reads (read it again)."""
    pipe = client.pipeline(transaction=False)
    for name, after, upto, stream, numbering in requests:
        key = fmt.numbering_key(name)
        if stream:
            pipe.hget(key, "epoch")
            if upto > after:
                pipe.xrange(fmt.stream_key(name), f"{after + 1}-0", f"{upto}-0")
            pipe.hget(key, "epoch")
        if numbering:
            pipe.hmget(key, "seq", "epoch")
    replies = iter(pipe.execute())
    answers: list[Answer] = []
    for _, after, upto, stream, numbering in requests:
        entries: Slice = ([], None)
        changed = False
        if stream:
            before = next(replies)
            raw = next(replies) if upto > after else []
            changed = next(replies) != before
            if before is not None:
                epoch = as_text(before)
                entries = ([fmt.parse_stream_entry(i, f, epoch) for i, f in raw], epoch)
        position: tuple[int, str | None] = (0, None)
        if numbering:
            seq, epoch_bytes = next(replies)
            position = (int(seq or 0), None if epoch_bytes is None else as_text(epoch_bytes))
        answers.append(None if changed else (entries, position))
    return answers
