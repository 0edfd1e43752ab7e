"""Control requests between the nodes of a cluster, and history read from the streams.

A control request (disconnect a user, drop or add a subscription, revoke, list channels) must
reach the node that holds the connection, whichever node the application asked. The asking
node publishes it on :data:`CONTROL_CHANNEL`, which every node's listener holds; Redis answers
the PUBLISH with how many nodes received it (bounded by the channel's own subscribers: pattern
subscribers, such as an operator's ``psubscribe '*'``, never answer), and each answers on
the asking node's reply channel with what it did. The asking node waits (bounded) for that
many answers: the application learns the cluster's total, or how many nodes did not answer in time.

History pages are read from the channel's stream (its newest ``history size`` entries within
the ttl: what a resume could replay) and cut by the same rule as in process
(``triows._core.history.page``).
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
from typing import Any, Final

import redis
import trio

from ..._config import Config
from ..._core import redis_format as fmt
from ..._core.history import page
from ..seam import BrokerUnavailableError, ControlHandler, HistoryPage, WallClockMs
from .bridge import LINK_ERRORS, RedisBridge
from .commands import _as_dict
from .tasks import BackgroundTasks

log = logging.getLogger("triows.redis")

#: Every node listens here for control requests.
CONTROL_CHANNEL: Final = "triows:control"
#: Control answers a node waits for at once; more requests wait for a place.
MAX_PENDING = 256


def reply_channel(node_id: str) -> str:
    return f"triows:ctl-reply:{node_id}"


class ClusterControl:
    def __init__(self, bridge: RedisBridge, tasks: BackgroundTasks, node_id: str) -> None:
        self._bridge = bridge
        self._tasks = tasks
        self._node_id = node_id
        self.reply_channel = reply_channel(node_id)
        self.handler: ControlHandler | None = None
        #: request id -> (answers so far, still encoded; set when all came; how many to wait for)
        self._pending: dict[str, tuple[list[bytes], trio.Event, list[int]]] = {}
        self._places = trio.Semaphore(MAX_PENDING)

    def channels(self) -> tuple[str, str]:
        return CONTROL_CHANNEL, self.reply_channel

    async def request(self, request: dict[str, Any], answer_within: float) -> list[dict[str, Any]]:
        """Every node's answer to ``request``, this node's included; those that did not answer
        within ``answer_within`` seconds are missing (and logged)."""
        async with self._places:
            request_id = secrets.token_hex(8)
            answers: list[bytes] = []
            done = trio.Event()
            expected = [-1]
            self._pending[request_id] = (answers, done, expected)
            message = json.dumps(
                {"id": request_id, "from": self._node_id, "req": request}, separators=(",", ":")
            ).encode()
            try:
                try:
                    receivers = await self._bridge.call(functools.partial(_ask, message))
                except LINK_ERRORS:
                    raise BrokerUnavailableError("Redis is unreachable; try again") from None
                expected[0] = receivers
                if len(answers) >= receivers:
                    done.set()
                with trio.move_on_after(answer_within):
                    await done.wait()
                if len(answers) < receivers:
                    log.warning(
                        "control request %s: %d of %d nodes answered in %gs",
                        request.get("op"),
                        len(answers),
                        receivers,
                        answer_within,
                    )
                got = list(answers)
            finally:
                del self._pending[request_id]
        # A listing of many channels is megabytes of JSON: read it off the event loop.
        return await trio.to_thread.run_sync(_decode_answers, got)

    def heard(self, channel: str, data: bytes) -> None:
        """A message on the control channel (a request: answer it in a task) or on this
        node's reply channel (an answer: ``<request id> <JSON>``, kept encoded: the asking
        task decodes it, off the event loop). Malformed ones raise ``fmt.MalformedError``."""
        if channel == self.reply_channel:
            head, _, answer = data.partition(b" ")
            pending = self._pending.get(head.decode("ascii", errors="replace"))
            if pending is not None and answer:
                answers, done, expected = pending
                answers.append(answer)
                if expected[0] >= 0 and len(answers) >= expected[0]:
                    done.set()
            return
        try:
            message = json.loads(data)
            request_id = message["id"]
        except (ValueError, KeyError, TypeError):
            request_id = None
        if not isinstance(request_id, str):  # anything may publish here: a list id is no key
            raise fmt.MalformedError(f"not a control message: {data[:80]!r}")
        origin, request = message.get("from"), message.get("req")
        if not isinstance(origin, str) or not isinstance(request, dict):
            raise fmt.MalformedError(f"not a control request: {data[:80]!r}")
        self._tasks.start_soon(self._answer, request_id, origin, request)

    async def _answer(self, request_id: str, origin: str, request: dict[str, Any]) -> None:
        if self.handler is None:
            return
        try:
            answer = await self.handler(request)
        except Exception:
            log.exception("control request %r failed on this node", request.get("op"))
            answer = {"error": "internal error"}
        # Encoded off the event loop too (a node's listing of many channels).
        encoded = await trio.to_thread.run_sync(_encode_answer, answer)
        message = request_id.encode() + b" " + encoded
        try:
            await self._bridge.call(functools.partial(_publish, reply_channel(origin), message))
        except LINK_ERRORS:
            log.warning("could not answer control request %r: Redis unreachable", request_id)


def _encode_answer(answer: dict[str, Any]) -> bytes:
    return json.dumps(answer, separators=(",", ":")).encode()


def _decode_answers(answers: list[bytes]) -> list[dict[str, Any]]:
    """The answers that are JSON objects (anything else on a reply channel is not ours)."""
    decoded = []
    for answer in answers:
        try:
            value = json.loads(answer)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            decoded.append(value)
    return decoded


def _ask(data: bytes, client: redis.Redis) -> int:
    """Publish a request; how many nodes got it. PUBLISH also counts pattern subscribers (an
    operator's ``psubscribe '*'``), which never answer: the channel's own subscribers, read
    in the same transaction, bound it."""
    if isinstance(client, redis.RedisCluster):
        # A cluster's transactions take keyed commands only: its PUBLISH count alone, as
        # before the bound (a pattern watcher there still makes a request wait).
        return _publish(CONTROL_CHANNEL, data, client)
    pipe = client.pipeline(transaction=True)
    pipe.publish(CONTROL_CHANNEL, data)
    pipe.pubsub_numsub(CONTROL_CHANNEL)
    received, [(_, subscribers)] = pipe.execute()
    return min(int(received), int(subscribers))


def _publish(channel: str, data: bytes, client: redis.Redis) -> int:
    return int(client.publish(channel, data))


async def read_history(
    config: Config,
    bridge: RedisBridge,
    now_ms: WallClockMs,
    channel: str,
    *,
    since: int | None,
    limit: int,
    reverse: bool,
    max_bytes: int,
) -> HistoryPage:
    """A page of ``channel``'s history from its stream."""
    size, ttl = config.history_for(channel)
    try:
        seq, epoch, entries = await bridge.call(functools.partial(_read_held, channel, size))
    except LINK_ERRORS:
        raise BrokerUnavailableError("Redis is unreachable; cannot read history now") from None
    cutoff = now_ms() - ttl * 1000
    held = [(number, payload) for number, payload, at in entries if at >= cutoff and ttl > 0]
    chosen = page(held, since=since, limit=limit, reverse=reverse, max_bytes=max_bytes)
    return HistoryPage(epoch=epoch, seq=seq, payloads=[payload for _, payload in chosen])


def _read_held(
    name: str, size: int, client: redis.Redis
) -> tuple[int, str | None, list[tuple[int, bytes, int]]]:
    """The channel's numbering and its newest ``size`` stream entries, oldest first, read
    together; entries of another epoch than the numbering's are none."""
    pipe = client.pipeline(transaction=True)
    pipe.hmget(fmt.numbering_key(name), "seq", "epoch")
    if size > 0:
        pipe.xrevrange(fmt.stream_key(name), "+", "-", count=size)
    (seq, epoch), *raw = pipe.execute()
    if epoch is None:
        return 0, None, []
    text = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
    found = []
    for entry_id, fields in reversed(raw[0] if raw else []):
        # A cluster client's transaction leaves the fields a flat list.
        entry, at = fmt.parse_stream_entry(entry_id, _as_dict(fields), text)
        found.append((entry.seq, entry.payload, at))
    return int(seq or 0), text, found


#: A revocation (``Server.revoke``) kept for nodes started later: its value is ``before``.
REVOKED_PREFIX: Final = "triows:revoked:"
#: Revocation keys read per SCAN step at a node's start.
_SCAN_COUNT = 1000


def store_revocation(user: str, before: float, ttl: float, client: redis.Redis) -> None:
    """Keep ``user``'s revocation until it expires (``ttl`` seconds from now); a later one
    that reaches further replaces it (the script keeps the larger ``before``)."""
    client.eval(_STORE_SCRIPT, 1, REVOKED_PREFIX + user, repr(before), max(1, int(ttl * 1000)))


_STORE_SCRIPT = """
local held = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
"""


def load_revocations(client: redis.Redis) -> list[tuple[str, float]]:
    """Every revocation kept, ``(user, before)``."""
    found: list[tuple[str, float]] = []
    keys = list(client.scan_iter(match=REVOKED_PREFIX + "*", count=_SCAN_COUNT))
    for start in range(0, len(keys), _SCAN_COUNT):
        chunk = keys[start : start + _SCAN_COUNT]
        for key, value in zip(chunk, client.mget(chunk), strict=True):
            if value is None:
                continue  # expired meanwhile
            name = key.decode() if isinstance(key, bytes) else str(key)
            try:
                found.append((name[len(REVOKED_PREFIX) :], float(value)))
            except ValueError:
                continue  # not ours
    return found
