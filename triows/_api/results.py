"""What the HTTP API answers, as typed values (read strictly: a reply of another shape is an
error of its own, never a value half filled)."""

from __future__ import annotations

from typing import Any

import attrs


class MalformedReplyError(ValueError):
    """The server's reply does not have the shape this client knows."""


def _field(body: Any, name: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(body, dict) or name not in body:
        raise MalformedReplyError(f"the reply has no {name!r}: {body!r:.200}")
    value = body[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise MalformedReplyError(f"the reply's {name!r} is {value!r:.100}")
    return value


@attrs.frozen
class PublishResult:
    """A published message: the ``seq`` and ``epoch`` its subscribers see."""

    channel: str
    seq: int
    epoch: str

    @classmethod
    def from_json(cls, body: Any) -> PublishResult:
        return cls(
            _field(body, "channel", str), _field(body, "seq", int), _field(body, "epoch", str)
        )


@attrs.frozen
class BroadcastResult:
    """One :class:`PublishResult` per channel, in the order asked."""

    results: tuple[PublishResult, ...]

    @classmethod
    def from_json(cls, body: Any) -> BroadcastResult:
        return cls(tuple(PublishResult.from_json(r) for r in _field(body, "results", list)))


@attrs.frozen
class ChannelInfo:
    """A channel's position (``seq`` of its last message in ``epoch``) and its subscribers."""

    channel: str
    subscribers: int
    seq: int
    epoch: str | None

    @classmethod
    def from_json(cls, body: Any) -> ChannelInfo:
        epoch = body.get("epoch") if isinstance(body, dict) else None
        if epoch is not None and not isinstance(epoch, str):
            raise MalformedReplyError(f"the reply's 'epoch' is {epoch!r:.100}")
        return cls(
            _field(body, "channel", str),
            _field(body, "subscribers", int),
            _field(body, "seq", int),
            epoch,
        )


@attrs.frozen
class ChannelList:
    """``/api/channels``: the channels listed (most subscribers first), and how many exist."""

    channels: tuple[ChannelInfo, ...]
    total: int

    @classmethod
    def from_json(cls, body: Any) -> ChannelList:
        listed = tuple(ChannelInfo.from_json(c) for c in _field(body, "channels", list))
        return cls(listed, _field(body, "total", int))


@attrs.frozen
class HistoryPage:
    """Messages of a channel, each exactly as it was delivered (``seq``, ``data``, ...)."""

    channel: str
    epoch: str | None
    seq: int
    messages: tuple[dict[str, Any], ...]

    @classmethod
    def from_json(cls, body: Any) -> HistoryPage:
        messages = _field(body, "messages", list)
        if not all(isinstance(m, dict) for m in messages):
            raise MalformedReplyError("the reply's 'messages' are not all objects")
        info = ChannelInfo.from_json({**body, "subscribers": 0})
        return cls(info.channel, info.epoch, info.seq, tuple(messages))


@attrs.frozen
class Member:
    """A connection subscribed to a presence channel, with its ``info`` (a JSON object)."""

    client_id: str
    user_id: str | None
    info: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, body: Any) -> Member:
        user = body.get("userId") if isinstance(body, dict) else None
        info = body.get("info") if isinstance(body, dict) else None
        if user is not None and not isinstance(user, str):
            raise MalformedReplyError(f"a member's 'userId' is {user!r:.100}")
        if info is not None and not isinstance(info, dict):
            raise MalformedReplyError(f"a member's 'info' is {info!r:.100}")
        return cls(_field(body, "clientId", str), user, info)


@attrs.frozen
class Presence:
    """Who is subscribed: ``members`` is ``None`` on a counts-only channel (or one over the
    server's member limit)."""

    channel: str
    count: int
    members: tuple[Member, ...] | None

    @classmethod
    def from_json(cls, body: Any) -> Presence:
        members = body.get("members") if isinstance(body, dict) else None
        if members is not None and not isinstance(members, list):
            raise MalformedReplyError(f"the reply's 'members' is {members!r:.100}")
        return cls(
            _field(body, "channel", str),
            _field(body, "count", int),
            None if members is None else tuple(Member.from_json(m) for m in members),
        )


def count(name: str) -> Any:
    """A reply ``{name: n}`` (``disconnected``, ``subscribed``, ...) -> ``n``."""
    return lambda body: _field(body, name, int)
