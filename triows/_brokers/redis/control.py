"""Control requests between the nodes of a cluster, and history read from the streams.

A control request (disconnect a user, drop or add a subscription, revoke, list channels) must
reach the node that holds the connection, whichever node the application asked. The asking
node publishes it on :data:`CONTROL_CHANNEL`, which every node's listener holds; Redis answers
the PUBLISH with how many nodes received it (bounded by the channel's own subscribers: pattern
subscribers, such as an operator's ``psubscribe '*'``, never answer; a cluster's node counts
only its own subscribers: there every Redis node is asked, see :func:`_publish_counted`), and
each answers on the asking node's reply channel with what it did. The asking node waits
(bounded) for that many answers: the application learns the cluster's total, or how many nodes
did not answer in time.

History pages are read by :mod:`.history_read`.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
from typing import Any, Final

import redis
import trio
from redis.cluster import RedisCluster

from ..._core import redis_format as fmt
from ..seam import BrokerUnavailableError, ControlHandler, OutcomeUnknownError
from .bridge import LINK_ERRORS, RedisBridge
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
                except redis.TimeoutError:  # the PUBLISH may have run: the nodes may have acted
                    raise OutcomeUnknownError(
                        "Redis did not answer in time: the nodes may have done it"
                    ) from None
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
    in the same transaction, bound it. On a Redis Cluster: :func:`_publish_counted`."""
    if isinstance(client, RedisCluster):
        return _publish_counted(CONTROL_CHANNEL, data, client)
    pipe = client.pipeline(transaction=True)
    pipe.publish(CONTROL_CHANNEL, data)
    pipe.pubsub_numsub(CONTROL_CHANNEL)
    received, [(_, subscribers)] = pipe.execute()
    return min(int(received), int(subscribers))


def _publish(channel: str, data: bytes, client: redis.Redis) -> int:
    return int(client.publish(channel, data))


def _publish_counted(channel: str, data: bytes, client: redis.Redis) -> int:
    """Publish, and how many listeners the message goes to. One Redis says so in PUBLISH's
    reply; a cluster's node counts only its own subscribers there (the cluster bus carries the
    message to the others), so the subscribers of every node, masters and replicas, are
    counted first. A node that does not answer is left out: a listener connected there does
    not get the message either (its answer, if it comes, is still taken)."""
    if not isinstance(client, RedisCluster):
        return _publish(channel, data, client)
    # redis-py's cluster API is untyped: Any, at this one place.
    cluster: Any = client
    receivers = 0
    for node in cluster.get_nodes():
        try:
            counted = cluster.pubsub_numsub(channel, target_nodes=node)
        except LINK_ERRORS:
            continue
        receivers += sum(int(count) for _, count in counted)
    client.publish(channel, data)
    return receivers


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
    # On a cluster SCAN goes to every master (redis-py's scan_iter), and the keys are in
    # many slots: MGET may not cross slots, so they are read a slot at a time (pipelined).
    cluster: Any = client if isinstance(client, RedisCluster) else None
    keys = list(client.scan_iter(match=REVOKED_PREFIX + "*", count=_SCAN_COUNT))
    for start in range(0, len(keys), _SCAN_COUNT):
        chunk = keys[start : start + _SCAN_COUNT]
        values = client.mget(chunk) if cluster is None else cluster.mget_nonatomic(chunk)
        for key, value in zip(chunk, values, strict=True):
            if value is None:
                continue  # expired meanwhile
            name = key.decode() if isinstance(key, bytes) else str(key)
            try:
                found.append((name[len(REVOKED_PREFIX) :], float(value)))
            except ValueError:
                continue  # not ours
    return found
