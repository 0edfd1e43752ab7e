"""Listening to a Redis Cluster: one pub/sub connection per shard, sharded pub/sub.

A channel's messages are published with ``SPUBLISH`` on its own slot (``triows:{c}:m``), so
they travel only to the shard that owns the channel and to the nodes that follow it there. The
listener thread holds one connection per master it follows channels on (bounded by the number
of shards, not the number of channels) and one classic connection, to any node, for the
node-wide channels (its control channel and presence events, which the cluster carries to
every node). Subscriptions are sent in batches: one ``SSUBSCRIBE`` per slot (a command may not
cross slots), written back to back on the shard's connection without waiting for replies.

When a slot moves (resharding) or its master is demoted (a failover), Redis unsubscribes the
channels of that slot on the old owner (an ``sunsubscribe`` we did not ask for): the session
refreshes the cluster's slot map and subscribes them on the new owner; the confirmation that
follows is a confirmation "again", so the channel's feed catches up from its stream (nothing
published meanwhile is lost, nothing is delivered twice). A connection that breaks (a master
killed) ends the session: the listener reports the link down, starts a new session with a
fresh slot map after a backoff, and every channel catches up the same way.
"""

from __future__ import annotations

import select
import time
from collections.abc import Iterable
from typing import Any

import redis

from ..._core import redis_format as fmt
from .clients import Clients
from .events import Confirmed, Event, Message

#: Events read in one batch at most (the listener hands them to trio together).
MAX_BATCH = 1000
#: Seconds between two reads of the slot map while channels wait for their new master.
PLACE_AGAIN_EVERY = 0.1
#: Seconds after which a channel is subscribed again on the master that dropped it, when the
#: slot map still names that master.
SAME_MASTER_AFTER = 0.5


class ShardedSession:
    """One session of the listener thread on a cluster; only that thread uses it."""

    def __init__(self, clients: Clients, cluster: redis.Redis) -> None:
        self._clients = clients
        # redis-py's cluster API is untyped: Any, at this one place.
        self._cluster: Any = cluster
        self._classic: Any = None
        #: Per master (its ``host:port`` name), the pub/sub connection to it.
        self._shards: dict[str, Any] = {}
        #: Per sharded channel followed, the master it is subscribed on.
        self._owner: dict[str, str] = {}
        #: Channels a master unsubscribed us from (their slot moved, or it is no longer a
        #: master): channel -> that master and when it did.
        self._moved: dict[str, tuple[str, float]] = {}
        self._placed_at = 0.0
        #: Per master, when the ping we are waiting for the answer of was sent; and when the
        #: masters were last pinged.
        self._ping_sent: dict[str, float] = {}
        self._pinged_at = time.monotonic()
        #: Masters whose connection the last read left unfinished (a full batch).
        self._unread: set[str] = set()

    def open(self, channels: Iterable[str]) -> None:
        # A new session follows the cluster as it is now (after a failover, say).
        self._cluster.nodes_manager.initialize()
        self.subscribe(list(channels))

    def subscribe(self, channels: list[str]) -> None:
        classic = [name for name in channels if fmt.channel_of(name) is None]
        if classic:
            self._classic_pubsub().subscribe(*classic)
        groups: dict[str, dict[int, list[str]]] = {}
        for name in channels:
            if fmt.channel_of(name) is None:
                continue
            slot = self._cluster.keyslot(name)
            node = self._cluster.nodes_manager.get_node_from_slot(slot)
            self._owner[name] = node.name
            self._moved.pop(name, None)
            groups.setdefault(node.name, {}).setdefault(slot, []).append(name)
        for node_name, slots in groups.items():
            pubsub = self._shard(node_name)
            for names in slots.values():
                pubsub.ssubscribe(*names)

    def unsubscribe(self, channels: list[str]) -> None:
        classic = [name for name in channels if fmt.channel_of(name) is None]
        if classic and self._classic is not None:
            self._classic.unsubscribe(*classic)
        groups: dict[str, dict[int, list[str]]] = {}
        for name in channels:
            self._moved.pop(name, None)
            node_name = self._owner.pop(name, None)
            if node_name is not None:
                slot = self._cluster.keyslot(name)
                groups.setdefault(node_name, {}).setdefault(slot, []).append(name)
        for node_name, slots in groups.items():
            pubsub = self._shards.get(node_name)
            if pubsub is not None:
                for names in slots.values():
                    pubsub.sunsubscribe(*names)

    def read(self, timeout: float) -> list[Event]:
        """What arrived on any connection, waiting up to ``timeout`` when nothing had."""
        events = self._drain()
        if not events:
            sockets = [sock for sock in map(_socket, self._pubsubs()) if sock is not None]
            if sockets:
                select.select(sockets, [], [], timeout)
            else:
                time.sleep(timeout)  # nothing to read from yet: no busy loop
            events = self._drain()
        self._check_liveness()
        if self._moved and time.monotonic() - self._placed_at >= PLACE_AGAIN_EVERY:
            self._placed_at = time.monotonic()
            self._place_moved()
        return events

    def close(self) -> None:
        for pubsub in self._pubsubs():
            _close_quietly(pubsub)
        self._shards.clear()
        self._classic = None

    # -- inside ---------------------------------------------------------------------------------

    def _pubsubs(self) -> list[Any]:
        found = list(self._shards.values())
        if self._classic is not None:
            found.append(self._classic)
        return found

    def _classic_pubsub(self) -> Any:
        if self._classic is None:
            node = self._cluster.get_default_node()
            self._classic = self._clients.node(node.host, node.port).pubsub()
        return self._classic

    def _shard(self, node_name: str) -> Any:
        pubsub = self._shards.get(node_name)
        if pubsub is None:
            host, _, port = node_name.rpartition(":")
            pubsub = self._shards[node_name] = self._clients.node(host, int(port)).pubsub()
        return pubsub

    def _drain(self) -> list[Event]:
        events: list[Event] = []
        for node_name, pubsub in [*self._shards.items(), ("", self._classic)]:
            if pubsub is None:
                continue
            while True:
                if len(events) >= MAX_BATCH:
                    # Not read to the end: its ping's answer may still be waiting behind.
                    self._unread.add(node_name)
                    break
                message = pubsub.get_message(timeout=0)
                if message is None:
                    self._unread.discard(node_name)
                    break
                event = self._event(node_name, message)
                if event is not None:
                    events.append(event)
        return events

    def _event(self, node_name: str, message: dict[str, Any]) -> Event | None:
        kind = message["type"]
        if kind == "pong":
            self._ping_sent.pop(node_name, None)
            return None
        if message["channel"] is None:
            return None
        channel = message["channel"].decode()
        if kind in ("smessage", "message"):
            return Message(channel, message["data"])
        if kind in ("ssubscribe", "subscribe"):
            return Confirmed(channel)
        if kind == "sunsubscribe" and node_name and self._owner.get(channel) == node_name:
            # Not asked for: the slot moved away from this master, or it became a replica.
            del self._owner[channel]
            self._moved[channel] = (node_name, time.monotonic())
        return None

    def _check_liveness(self) -> None:
        """Ping each master's connection every ``timeout`` (the client's ``redis_timeout``);
        one that has not answered its ping for twice that went silent (a master stopped, a
        network that drops without a reset) and ends the session, as a broken one does: the
        next session finds the slot map as it is then (a replica promoted), and every channel
        catches up from its stream. The classic connection is watched by the watchdog."""
        now = time.monotonic()
        period = self._clients.timeout
        for node_name, sent in list(self._ping_sent.items()):
            if not self._shards[node_name].subscribed:
                # It holds no channel now (its answer is no longer read): nothing to watch.
                del self._ping_sent[node_name]
            elif now - sent > 2 * period and node_name not in self._unread:
                raise redis.ConnectionError(
                    f"{node_name} did not answer a ping for {now - sent:.1f}s"
                )
        if now - self._pinged_at < period:
            return
        self._pinged_at = now
        for node_name, pubsub in self._shards.items():
            if pubsub.subscribed and node_name not in self._ping_sent:
                self._ping_sent[node_name] = now
                pubsub.ping()

    def _place_moved(self) -> None:
        """Subscribe channels whose slot moved on their new master. While the slot map still
        names the master that dropped them, it may not have heard of the move yet: try again
        at the next read, for up to :data:`SAME_MASTER_AFTER`; then subscribe there anyway (a
        master drops a slot's subscribers also when told again that it owns the slot; one
        that does not own it answers MOVED, and the session starts over)."""
        self._cluster.nodes_manager.initialize()
        ready = []
        now = time.monotonic()
        for name, (old, when) in list(self._moved.items()):
            slot = self._cluster.keyslot(name)
            owner = self._cluster.nodes_manager.get_node_from_slot(slot).name
            if owner != old or now - when >= SAME_MASTER_AFTER:
                ready.append(name)
        if ready:
            self.subscribe(ready)


def _socket(pubsub: Any) -> Any:
    """The socket a pub/sub connection reads from, None before it connected or once it
    holds no subscription (nothing more can arrive then)."""
    connection = pubsub.connection
    if connection is None or not pubsub.subscribed:
        return None
    return getattr(connection, "_sock", None)


def _close_quietly(pubsub: Any) -> None:
    try:
        pubsub.close()
    except Exception:  # a broken connection: nothing more to release
        pass
