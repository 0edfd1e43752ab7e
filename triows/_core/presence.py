"""Presence: which clients are subscribed to a channel, as plain data (no I/O here).

Presence is opt-in per channel pattern: ``full`` channels answer ``presence`` requests with
their members and send ``join`` / ``leave`` frames to their subscribers; ``counts`` channels
answer with the count only and send nothing (a channel of 100,000 subscribers would otherwise
send 100,000 frames for every arrival). A ``full`` channel over ``presence_max_members``
behaves as ``counts`` until it is back under the limit.

With Redis, members live in a hash per channel (``triows:{<channel>}:p``, in the channel's
cluster slot): field client id,
value ``<expiry ms> <node> <user id>``. Each node refreshes its own members' expiry, so a
crashed node's members stop counting once their expiry passes, and the first node to delete
an expired field (an atomic HDEL) announces its ``leave``, so exactly one does.

A node that only paused (a GC pause, SIGSTOP, a saturated loop) for longer than the ttl is
swept like a crashed one while its members are still connected. Its next refresh writes them
back with :data:`PUT_SCRIPT`, which announces ``join`` for every member that was not in the
hash: the writes and the announcements are one rule, so a member is announced each time it
(re)enters the hash and never twice in a row, whether a join or a refresh put it there.

Announcements travel on pub/sub, which loses what is published while a node's link is down
(a Redis restart, a dropped connection, a node stopped while others announce). So each node
also keeps what its subscribers were told (:class:`Announced`) and checks it against the
hashes: after its events channel is confirmed again and at every refresh it reads the hashes
and tells its subscribers the difference. Events and reads are applied so that neither
repeats the other (a join of a member already told is not sent again) and a read never
undoes a newer event.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from .names import first_match
from .numbers import ascii_int
from .redis_format import channel_prefix

#: Pub/sub channel every node with presence listens to for other nodes' joins and leaves.
EVENTS_CHANNEL: Final = "triows:presence"
#: The ``node`` of a leave announced by a sweep (a crashed node's member): every node,
#: the sweeping one included, tells its subscribers.
SWEEPER: Final = "-"

#: KEYS: the channel's hash. ARGV: client id, events channel, event. Publishes the event only
#: when this call removed the member: a leave is announced once, whoever notices it.
LEAVE_SCRIPT: Final = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
"""


#: KEYS: the channel's hash. ARGV: events channel, the hash's ttl in ms, then per member:
#: client id, entry (:func:`encode_entry`), its ``join`` event. Writes every member; publishes
#: the event of each that was not in the hash (a new member, or one swept while its node was
#: away). Returns how many were announced.
PUT_SCRIPT: Final = """
local announced = 0
for i = 3, #ARGV, 3 do
  if redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('PUBLISH', ARGV[1], ARGV[i + 2])
    announced = announced + 1
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return announced
"""


class PresenceMode(enum.StrEnum):
    FULL = "full"
    COUNTS = "counts"


@attrs.frozen
class Member:
    client_id: str
    user_id: str | None
    #: The connection's ``info`` (``triows._core.conninfo``); shown, never compared.
    info: dict[str, Any] | None = attrs.field(default=None, eq=False)

    def as_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"clientId": self.client_id, "userId": self.user_id}
        if self.info is not None:
            found["info"] = self.info
        return found


def mode_for(full: Sequence[str], counts: Sequence[str], channel: str) -> PresenceMode | None:
    """The first matching pattern decides; ``full`` patterns are tried first."""
    rules = [(p, PresenceMode.FULL) for p in full] + [(p, PresenceMode.COUNTS) for p in counts]
    return first_match(rules, channel, None)


def key(channel: str) -> str:
    """The channel's presence hash (in the channel's slot, beside its other keys)."""
    return channel_prefix(channel) + "p"


#: Ends the node of an entry whose last part is JSON ``[user id, info]`` (a member with info).
_WITH_INFO: Final = "+"


def encode_entry(
    expires_ms: int, node: str, user_id: str | None, info: dict[str, Any] | None = None
) -> str:
    """``<expiry ms> <node> <user id>``, or with info ``<expiry ms> <node>+ [user, info]``."""
    if info is not None:
        return f"{expires_ms} {node}{_WITH_INFO} {_compact([user_id, info])}"
    return f"{expires_ms} {node} {user_id if user_id is not None else ''}"


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _decode_entry(value: bytes | str) -> tuple[int, str, Member] | None:
    """``(expiry, node, member without its client id)``; None when malformed."""
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    parts = text.split(" ", 2)
    expires = ascii_int(parts[0]) if len(parts) == 3 else None
    if expires is None:
        return None
    node = parts[1]
    if not node.endswith(_WITH_INFO):
        return expires, node, Member("", parts[2] or None)
    try:
        user, info = json.loads(parts[2])
    except (ValueError, TypeError):  # not JSON, or not a pair
        return None
    if not (user is None or isinstance(user, str)) or not isinstance(info, dict):
        return None
    return expires, node[: -len(_WITH_INFO)], Member("", user, info)


def _member(field: Any, decoded: tuple[int, str, Member]) -> Member:
    client = field.decode() if isinstance(field, bytes) else field
    return Member(client, decoded[2].user_id, decoded[2].info)


def live_entries(entries: Mapping[Any, Any], now_ms: int) -> list[tuple[Member, str]]:
    """:func:`live_members`, each with the node that wrote it."""
    members = []
    for field, value in entries.items():
        decoded = _decode_entry(value)
        if decoded is not None and decoded[0] > now_ms:
            members.append((_member(field, decoded), decoded[1]))
    return members


def live_members(entries: Mapping[Any, Any], now_ms: int) -> list[Member]:
    """The members of a presence hash whose expiry has not passed (malformed fields skipped)."""
    members = []
    for field, value in entries.items():
        decoded = _decode_entry(value)
        if decoded is not None and decoded[0] > now_ms:
            members.append(_member(field, decoded))
    return members


def expired(entries: Mapping[Any, Any], now_ms: int) -> list[Member]:
    """Members whose node stopped refreshing them (or garbage): to be removed, and announced."""
    gone = []
    for field, value in entries.items():
        decoded = _decode_entry(value)
        if decoded is None or decoded[0] <= now_ms:
            client = field.decode() if isinstance(field, bytes) else field
            gone.append(_member(field, decoded) if decoded else Member(client, None))
    return gone


def frame(kind: str, channel: str, member: Member) -> dict[str, Any]:
    """A ``join`` or ``leave`` frame for subscribers."""
    return {"type": kind, "channel": channel, **member.as_json()}


def encode_event(kind: str, channel: str, member: Member, node: str) -> str:
    event: dict[str, Any] = {
        "k": kind,
        "c": channel,
        "i": member.client_id,
        "u": member.user_id,
        "n": node,
    }
    if member.info is not None:
        event["f"] = member.info
    return _compact(event)


def decode_event(data: bytes) -> tuple[str, str, Member, str]:
    """``(kind, channel, member, node)``; ValueError when it is not one of ours."""
    event = json.loads(data)
    kind, channel, client, user, node = (event[k] for k in ("k", "c", "i", "u", "n"))
    if kind not in ("join", "leave") or not all(
        isinstance(v, str) for v in (channel, client, node)
    ):
        raise ValueError(f"not a presence event: {data[:80]!r}")
    info = event.get("f")
    if (user is not None and not isinstance(user, str)) or not (
        info is None or isinstance(info, dict)
    ):
        raise ValueError(f"not a presence event: {data[:80]!r}")
    return kind, channel, Member(client, user, info), node


@attrs.define
class _Told:
    """One channel: the members its subscribers here were told of."""

    members: dict[str, Member] = attrs.Factory(dict)
    #: Reads of the hash settled so far: the first is the starting point (taken silently),
    #: and from the second on, events are news only if they change what was told.
    reads: int = 0

    @property
    def settled(self) -> bool:
        return self.reads >= 2

    #: Members told of that reads did not find, since when (a miss long enough: leave).
    missing: dict[str, float] = attrs.Factory(dict)


class Announced:
    """What the subscribers of each ``full`` channel on this node were told: the members, as
    ``join`` and ``leave`` frames made them. Events and reads of the hash go through it, so
    that subscribers hear each change once, and hear what pub/sub lost.

    - An event is news only if it changes what was told (a join of a member told already, or
      a leave of one not told, is not repeated).
    - :meth:`settle` compares a read of the hash with what was told: members found are
      ``join`` news at once; a member not found is ``leave`` news only once reads have missed
      it for a refresh period (every live node has written its members back by then, after a
      Redis that lost them).
    - A read takes time; what events changed meanwhile is newer than the read, and the read
      leaves those members alone (:meth:`begin_read`).
    - A channel starts to be followed with its first member here (:meth:`follow`). Its first
      read is the starting point, taken silently (its subscribers' ``presence`` answers are
      what they know); until the next read, events are passed on as they come, since some
      were in flight during the first read (a member found by it whose join comes after).
    """

    def __init__(self) -> None:
        self._told: dict[str, _Told] = {}
        #: Per read in progress, the ``(channel, client id)`` events touched meanwhile.
        self._reads: list[set[tuple[str, str]]] = []

    def follow(self, channel: str, here: list[Member]) -> None:
        """``channel`` got its first member here (again): start anew from its members here."""
        self._told[channel] = _Told({member.client_id: member for member in here})

    def forget(self, channel: str) -> None:
        self._told.pop(channel, None)

    def follows(self, channel: str) -> bool:
        return channel in self._told

    def channels(self) -> list[str]:
        return list(self._told)

    def unsettled(self) -> list[str]:
        """Channels without a starting point yet (their first read is due)."""
        return [name for name, told in self._told.items() if not told.reads]

    def knows(self, channel: str, client_id: str) -> bool:
        told = self._told.get(channel)
        return told is not None and client_id in told.members

    def joined(self, channel: str, member: Member) -> bool:
        """A join (an event, or a member here): True if subscribers are to hear it."""
        self._touch(channel, member.client_id)
        told = self._told.get(channel)
        if told is None:
            return True
        known = member.client_id in told.members
        told.members[member.client_id] = member
        told.missing.pop(member.client_id, None)
        return not (known and told.settled)

    def left(self, channel: str, member: Member) -> bool:
        """A leave: True if subscribers are to hear it."""
        self._touch(channel, member.client_id)
        told = self._told.get(channel)
        if told is None:
            return True
        known = told.members.pop(member.client_id, None) is not None
        told.missing.pop(member.client_id, None)
        return known or not told.settled

    def _touch(self, channel: str, client_id: str) -> None:
        for touched in self._reads:
            touched.add((channel, client_id))

    def begin_read(self) -> set[tuple[str, str]]:
        """Before reading the hashes: from now on, events are newer than the read."""
        touched: set[tuple[str, str]] = set()
        self._reads.append(touched)
        return touched

    def end_read(self, touched: set[tuple[str, str]]) -> None:
        self._reads.remove(touched)

    def settle(
        self,
        channel: str,
        found: Mapping[str, Member],
        touched: set[tuple[str, str]],
        *,
        now: float,
        wait: float,
    ) -> tuple[list[Member], list[Member]]:
        """What subscribers must hear so that what they were told matches ``found`` (the
        members read from the hash and the members here, at ``now``): ``(joins, leaves)``. A
        member not found is gone once reads have missed it for ``wait`` seconds."""
        told = self._told.get(channel)
        if told is None:
            return [], []
        told.reads += 1
        if told.reads == 1:
            told.members = {
                client: member
                for client, member in found.items()
                if (channel, client) not in touched
            } | {
                client: member
                for client, member in told.members.items()
                if (channel, client) in touched
            }
            return [], []
        joins = [
            member
            for client, member in found.items()
            if client not in told.members and (channel, client) not in touched
        ]
        for member in joins:
            told.members[member.client_id] = member
        leaves = []
        for client, member in list(told.members.items()):
            if client in found or (channel, client) in touched:
                told.missing.pop(client, None)
            elif now - told.missing.setdefault(client, now) >= wait:
                del told.missing[client]
                del told.members[client]
                leaves.append(member)
        return joins, leaves
