"""Where presence keeps the members of every node: the :class:`PresenceStore` interface, and
the store of a node alone (:class:`LocalPresenceStore`). The Redis broker's store is
``triows._brokers.redis.presence_store``; the factory chooses one with the broker."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .._core.presence import Member

#: ``(kind, channel, member)``: a join or a leave of this node, to be written to the store.
Change = tuple[str, str, Member]
#: Per channel, its live members with the node each is on.
Found = dict[str, list[tuple[Member, str]]]


class PresenceStore(Protocol):
    """Where the members of every node live, and how a node hears of the others' changes."""

    #: Whether other nodes share it (False: nothing to write, read or sweep).
    shared: bool
    #: This node's name in the store (its members' entries, its own announcements).
    node_id: str

    def listen(self, on_event: Callable[[bytes], None], on_resync: Callable[[], None]) -> None:
        """Call ``on_event`` with each join or leave announced by any node, and ``on_resync``
        each time the announcements are followed again (a pub/sub link that came back: what
        was announced meanwhile was lost)."""
        ...

    async def write(self, changes: list[Change], expires_ms: int, ttl: float) -> None: ...

    async def refresh_and_sweep(
        self,
        mine: list[tuple[str, Member]],
        channels: list[str],
        now_ms: int,
        expires_ms: int,
        ttl: float,
    ) -> tuple[Found, int]:
        """Refresh this node's members, sweep expired ones; the live members of ``channels``
        and how many of ours had to be announced again."""
        ...

    async def read(self, channels: list[str], now_ms: int) -> Found:
        """The live members of ``channels``, without writing anything."""
        ...

    async def count(self, channel: str) -> int:
        """Members stored for ``channel`` (every node's; O(1))."""
        ...

    async def entries(self, channel: str) -> Mapping[Any, Any]:
        """The stored entries of ``channel`` (``triows._core.presence`` reads them)."""
        ...


class LocalPresenceStore:
    """One node alone: its subscribers are all the members there are."""

    shared = False
    node_id = "local"

    def listen(self, on_event: Callable[[bytes], None], on_resync: Callable[[], None]) -> None:
        pass  # nobody else announces anything

    async def write(self, changes: list[Change], expires_ms: int, ttl: float) -> None:
        raise AssertionError("a local presence store stores nothing")

    async def refresh_and_sweep(
        self,
        mine: list[tuple[str, Member]],
        channels: list[str],
        now_ms: int,
        expires_ms: int,
        ttl: float,
    ) -> tuple[Found, int]:
        raise AssertionError("a local presence store stores nothing")

    async def read(self, channels: list[str], now_ms: int) -> Found:
        raise AssertionError("a local presence store stores nothing")

    async def count(self, channel: str) -> int:
        return 0

    async def entries(self, channel: str) -> Mapping[Any, Any]:
        return {}
