"""The publisher: this node's publications, from the outage buffer to Redis's answer.

A publication is queued in a bounded buffer (full: 503) and one task sends what is queued as
one pipeline of :data:`~triows._core.redis_format.PUBLISH_SCRIPT` calls per thread hop. The
script numbers the message, appends it to the channel's stream and publishes it, atomically, so
every node sees the same seq for the same message. The buffer keeps order and survives an
outage: a batch that failed is sent again, and the script's once-key makes a resend whose first
attempt did get through a no-op. Each publication also has a field in the node's pending hash
until its answer arrived. ``numbered(seq)`` (the client's ack) is called when Redis answered, or
earlier, when the message itself comes back (:meth:`Publisher.came_back`): in both cases before
any later message of the channel reaches the publisher.

It is separate from the feeds because the two share nothing but that "came back" call: the
publisher never delivers, and the feeds never send.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
import redis
import trio

from ..._config import Config
from ..._core import protocol
from ..._core import redis_format as fmt
from ..._core.feed import Entry
from ..seam import BrokerUnavailableError, OutcomeUnknownError, Publication
from .bridge import backoff
from .commands import as_text, pipe_eval
from .link import Link, describe
from .tasks import BackgroundTasks

log = logging.getLogger("triows.redis")

#: Publications sent in one pipeline at most.
PUBLISH_BATCH = 500
#: Seconds the pending field of a publication sent in an attempt that failed on the link is
#: kept after its answer: a copy of that attempt can still run later (bytes a stopped Redis
#: reads when it resumes, a closed socket's data the kernel still retransmits), and finds its
#: field then: a no-op, not a second publication. Other fields go with the next batch.
LINGERING_COPY_GRACE = 300.0
#: Redis error replies that mean "not now" (out of memory, a read-only replica, loading a
#: dataset, a busy script, ...): the publication is kept and sent again with backoff, like
#: during an outage, instead of failing. redis-py turns the known codes into classes and
#: leaves the others' code at the start of the message.
TRANSIENT_REPLIES: tuple[type[Exception], ...] = (
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.MasterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.RedisClusterException,  # a slot not covered while a failover is under way
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
TRANSIENT_CODES = ("BUSY", "MISCONF", "NOREPLICAS")
#: What Redis refuses, in a few words, by the refusal (the link's state shows it: "Redis
#: refuses writes (out of memory)", not "unreachable", while Redis answers).
REFUSALS: tuple[tuple[type[Exception] | str, str], ...] = (
    (redis.exceptions.OutOfMemoryError, "writes (out of memory)"),
    (redis.exceptions.ReadOnlyError, "writes (a read-only replica)"),
    (redis.exceptions.BusyLoadingError, "commands (loading its data)"),
    (redis.exceptions.MasterDownError, "commands (its master is down)"),
    (redis.exceptions.TryAgainError, "publications for now"),
    ("BUSY", "commands (a script is running)"),
    ("MISCONF", "writes (it cannot persist)"),
    ("NOREPLICAS", "writes (not enough replicas)"),
)


@attrs.define(eq=False, slots=True)
class _Pending:
    token: str
    #: The token's own number: the publication's field in the node's pending hash.
    number: str
    pub: Publication
    keys: tuple[str, str, str, str]
    args: tuple[Any, ...]
    #: The message itself came back (pub/sub or a stream read): Redis has it, whatever
    #: became of its reply. It is not sent again: a Redis that lost its data (no persistence)
    #: would otherwise publish it a second time, in its new epoch.
    echoed: bool = False
    #: It was handed to Redis at least once: until an answer, Redis may have run it.
    sent: bool = False
    #: It went out in an attempt that failed on the link (a timeout, a reset): that copy may
    #: still reach Redis and run later (a Redis that was stopped reads it when it resumes).
    lingering: bool = False


def refusal(result: Exception) -> str | None:
    """What a refusal for now refuses, in a few words; None for a connection error."""
    for kind, words in REFUSALS:
        if isinstance(kind, str) and str(result).startswith(kind):
            return words
        if not isinstance(kind, str) and isinstance(result, kind):
            return words
    return None


class PublishRefusedError(Exception):
    """Redis refused a publication for good (the reason is logged, not shown to clients)."""

    def __init__(self) -> None:
        super().__init__("internal error")


class Publisher:
    def __init__(
        self,
        config: Config,
        node_id: str,
        link: Link,
        tasks: BackgroundTasks,
        new_epoch: Callable[[], str],
    ) -> None:
        self._config = config
        self._dedupe = config.dedupe_rule()
        self.node_id = node_id
        self._link = link
        self._tasks = tasks
        #: The epoch a channel gets if this publication is the one that starts its numbering.
        self._new_epoch = new_epoch
        self._tokens = itertools.count(1)
        #: Publications whose answer arrived, as ``(channel, token number)``: their pending
        #: fields are deleted with the next batch; those of publications that may have a
        #: lingering copy, later (``(when, (channel, number))``).
        self._answered: list[tuple[str, str]] = []
        self._answered_later: deque[tuple[float, tuple[str, str]]] = deque()
        #: The publish command the scripts use: ``SPUBLISH`` on a cluster (set by the broker
        #: once it knows what it talks to), ``PUBLISH`` on one Redis.
        self.publish_command: Callable[[], str] = lambda: fmt.PUBLISH
        #: Publications not answered yet, in order (the outage buffer).
        self.buffer: deque[_Pending] = deque()
        self._in_flight: dict[str, _Pending] = {}  # by token, until Redis answered
        self._buffer_changed = trio.Event()
        self._publish_sha: str | None = None
        #: Publications refused with 503 (the broker stopped, or the buffer was full).
        self.refused = 0
        #: Publications numbered (each once, even when Redis sent it back).
        self.published = 0
        #: Publications Redis answered from its once-keys instead of publishing them again.
        self.deduplicated = 0

    def publish(self, pub: Publication) -> None:
        """Queue ``pub`` for the next batch; raises :class:`BrokerUnavailableError` when the
        broker stopped or the buffer is full."""
        if not self._tasks.running:
            self.refused += 1
            raise BrokerUnavailableError("the Redis broker is not running (server stopping)")
        if len(self.buffer) >= self._config.redis_buffer_size:
            self.refused += 1
            raise BrokerUnavailableError(
                f"{len(self.buffer)} publications are waiting for Redis "
                f"({self._link.state() or 'Redis is slow'}); try again later"
            )
        config = self._config
        number = f"{next(self._tokens):x}"
        token = f"{self.node_id}:{number}"
        if pub.dedupe is not None and self._dedupe.enabled:
            # The same rule as in process (triows._core.dedupe): remembered for the ttl,
            # which Redis applies; no count (Redis' maxmemory bounds the keys).
            key, request_id = pub.dedupe
            kind, name = key if isinstance(key, tuple) else ("key", key)
            request = protocol.encode(request_id).decode()
            once = fmt.dedupe_key(pub.channel, str(kind), str(name), request)
            once_ttl = self._dedupe.ttl_ms
        else:
            once, once_ttl = fmt.dedupe_key(pub.channel), 0
        keep, _ = config.history_for(pub.channel)  # the scripts keep at least this many
        pending = _Pending(
            token,
            number,
            pub,
            (
                fmt.numbering_key(pub.channel),
                fmt.stream_key(pub.channel),
                once,
                fmt.pending_key(self.node_id, pub.channel),
            ),
            (
                fmt.payload_head(pub.payload(0, "")),
                self._new_epoch(),
                fmt.pubsub_channel(pub.channel),
                keep,
                int(config.redis_key_ttl * 1000),
                once_ttl,
                fmt.origin(token, pub.excluded),
                pub.timestamp_ms,
                number,
            ),
        )
        self.buffer.append(pending)
        self._in_flight[token] = pending
        self._buffer_changed.set()

    async def run(self) -> None:
        """Send what is buffered, a batch per thread hop, until cancelled."""
        attempt = 0
        while True:
            while not self.buffer:
                self._buffer_changed = trio.Event()
                await self._buffer_changed.wait()
            batch = list(itertools.islice(self.buffer, PUBLISH_BATCH))
            for pending in batch:
                # Set here, in trio, before the thread starts: cancelled meanwhile (the server
                # stops), trio abandons the thread, which may still send the batch, and
                # fail_held() must then say "unknown", not "not sent".
                pending.sent = pending.sent or not pending.echoed
            later, now = self._answered_later, trio.current_time()
            while later and later[0][0] <= now:
                self._answered.append(later.popleft()[1])
            answered = self._answered
            self._answered = []
            attempts: list[None] = []  # one per thread call (each retry is one)
            send = functools.partial(self._attempt, batch, answered, attempts)
            try:
                sent, results = await self._link.call_with_retries("publish", send, mark_up=False)
            except BaseException:
                self._answered = answered + self._answered  # still to delete
                raise
            if len(attempts) > 1:  # an attempt failed on the link: its copies may still run
                for pending in sent:
                    pending.lingering = True
            retry = self._take_results(batch, sent, results)
            if retry is None:
                attempt = 0
                self._link.part_up("publish")
            else:
                reason, refused = retry
                self._link.part_down("publish", reason, refusing=refused)
                out_of_memory = isinstance(refused, str) and "out of memory" in refused
                # Not while a reconnect holds trimming back (Link.trim_after), as for any trim.
                if out_of_memory and trio.current_time() >= self._link.trim_after:
                    await self._trim_for_memory(batch)
                await trio.sleep(backoff(attempt))
                attempt += 1

    def came_back(self, entry: Entry) -> None:
        """A message came back from Redis (pub/sub or a stream read): if it is one of this
        node's publications still waiting for its answer, its publisher learns the seq now,
        and it is never sent again."""
        pending = self._in_flight.get(entry.token)
        if pending is not None:
            pending.echoed = True
            pending.pub.epoch = entry.epoch
            self._settle_published(pending.pub, entry.seq)

    def fail_held(self) -> None:
        """The broker stopped: every publication still held gets its outcome, "not sent" or,
        once handed to Redis without an answer, "unknown" (it may have been published)."""
        unsent = BrokerUnavailableError("server shut down before it sent the message to Redis")
        unknown = OutcomeUnknownError(
            "server shut down before Redis answered; the message may have been published"
        )
        while self.buffer:
            pending = self.buffer.popleft()
            self._fail(pending.pub, unknown if pending.sent else unsent)

    def _take_results(
        self, batch: list[_Pending], sent: list[_Pending], results: list[Any]
    ) -> tuple[str, str | None] | None:
        """Settle what Redis answered, in order; stops at the first publication to send again
        and returns why, and what Redis refuses if it answered (None when the whole batch is
        done). Publications of the batch that were not ``sent`` had come back already: they
        are done. Those after the one to send again may have run (a pipeline is no
        transaction): they are sent again too, and found done, or refused until their
        predecessor ran (:data:`~triows._core.redis_format.OUT_OF_ORDER`)."""
        answers = dict(zip(map(id, sent), results, strict=True))
        for pending in batch:
            if id(pending) not in answers:
                self._done(pending)
                continue
            result = answers[id(pending)]
            if isinstance(result, redis.exceptions.NoScriptError):
                self._publish_sha = None  # Redis restarted: load it again, resend the rest
                return "the publish script was gone (Redis restarted)", None
            if isinstance(result, TRANSIENT_REPLIES) or (
                isinstance(result, Exception) and str(result).startswith(TRANSIENT_CODES)
            ):
                why = f"Redis refused a publication for now: {describe(result)}"
                return why, refusal(result)
            self._done(pending)
            if isinstance(result, Exception):
                # A script error is a bug or a Redis we cannot work with: the reason goes to
                # the log; the client gets a plain 500.
                log.error("Redis refused a publication to %r: %s", pending.pub.channel, result)
                self._fail(pending.pub, PublishRefusedError())
                continue
            seq, epoch, duplicate = result
            pending.pub.epoch = as_text(epoch)
            if duplicate:
                self.deduplicated += 1
                self._settle(pending.pub, int(seq))
            else:
                self._settle_published(pending.pub, int(seq))
        return None

    def _done(self, pending: _Pending) -> None:
        """``pending``, first in the buffer, has its answer: out of the buffer; its pending
        field is deleted with the next batch, or after :data:`LINGERING_COPY_GRACE`."""
        self.buffer.popleft()
        self._in_flight.pop(pending.token, None)
        if pending.lingering:
            due = trio.current_time() + LINGERING_COPY_GRACE
            self._answered_later.append((due, (pending.pub.channel, pending.number)))
        else:
            self._answered.append((pending.pub.channel, pending.number))

    def _attempt(
        self,
        batch: list[_Pending],
        answered: list[tuple[str, str]],
        attempts: list[None],
        client: redis.Redis,
    ) -> tuple[list[_Pending], list[Any]]:
        attempts.append(None)
        return self._send_batch(batch, answered, client)

    def _send_batch(
        self, batch: list[_Pending], answered: list[tuple[str, str]], client: redis.Redis
    ) -> tuple[list[_Pending], list[Any]]:
        """In a worker thread: one pipeline for the publications of the batch that did not
        come back yet (``echoed`` is read here, at send time: a batch resent after an outage
        leaves out what came back meanwhile), after deleting the pending fields of
        publications answered before (their answer arrived: no resend can come). Returns what
        was sent and Redis' answers.

        The scripts trim each stream to what is both beyond the channel's history size and
        older than ``redis_retention`` (:data:`~triows._core.redis_format.TRIM`), except while
        this node's link is or was recently down (:attr:`Link.may_trim` is read here, at send
        time, so that the batch resent after an outage does not trim): after an outage every
        node flushes what it held, and the others must still be able to catch up from the
        streams what they had not received before it, however long it was."""
        if self._publish_sha is None:
            self._publish_sha = str(client.script_load(fmt.PUBLISH_SCRIPT))
        retention = int(self._config.redis_retention * 1000) if self._link.may_trim else -1
        pipe = client.pipeline(transaction=False)
        # One HDEL per channel: a channel's pending hash is in its slot (one command, one slot).
        by_channel: dict[str, list[str]] = {}
        for channel, number in answered:
            by_channel.setdefault(channel, []).append(number)
        for channel, numbers in by_channel.items():
            pipe.hdel(fmt.pending_key(self.node_id, channel), *numbers)
        command = self.publish_command()
        sent = [pending for pending in batch if not pending.echoed]
        #: Per channel, the pending field of the publication sent just before in this batch:
        #: the script refuses one whose predecessor did not run (order kept, see the script).
        previous: dict[str, str] = {}
        for pending in sent:
            keys, args = pending.keys, pending.args
            after = previous.get(pending.pub.channel, "")
            previous[pending.pub.channel] = pending.number
            pipe.evalsha(self._publish_sha, len(keys), *keys, *args, retention, after, command)
        results = pipe.execute(raise_on_error=False)
        return sent, results[len(by_channel) :]

    async def _trim_for_memory(self, batch: list[_Pending]) -> None:
        """Redis refused publications for lack of memory: trim the streams of the batch's
        channels by the usual rule (beyond the history size and older than
        ``redis_retention``), which the publish script cannot do now (its first write is
        refused). Without it a stream full of old entries would hold Redis full for good."""
        channels = sorted({pending.pub.channel for pending in batch})
        trim = functools.partial(self._trim_in_thread, channels)
        trimmed = await self._link.call_with_retries("publish", trim, mark_up=False)
        if trimmed:
            log.warning(
                "Redis is out of memory: trimmed %d old stream entries of %d channel(s)",
                trimmed,
                len(channels),
            )

    def _trim_in_thread(self, channels: list[str], client: redis.Redis) -> int:
        retention = int(self._config.redis_retention * 1000)
        pipe = client.pipeline(transaction=False)
        for channel in channels:
            keep, _ = self._config.history_for(channel)
            pipe_eval(
                pipe,
                fmt.TRIM_SCRIPT,
                2,
                fmt.numbering_key(channel),
                fmt.stream_key(channel),
                keep,
                retention,
                fmt.TRIM_COUNT,
            )
        return sum(n for n in pipe.execute(raise_on_error=False) if isinstance(n, int))

    def _settle(self, pub: Publication, seq: int) -> bool:
        """Tell the publisher its seq, once; False if it was told already."""
        numbered, pub.numbered, pub.failed = pub.numbered, None, None
        if numbered is None:
            return False
        numbered(seq)
        return True

    def _settle_published(self, pub: Publication, seq: int) -> None:
        if self._settle(pub, seq):
            self.published += 1

    def _fail(self, pub: Publication, exc: Exception) -> None:
        failed, pub.numbered, pub.failed = pub.failed, None, None
        if failed is not None:
            failed(exc)
