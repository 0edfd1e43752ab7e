"""Revocations at their edges, in process and in virtual time: the cap under concurrent
revokes, principals without a token (the ``authenticate`` hook), ``before`` far away."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionRejected

from triows import BrokerUnavailableError, ControlFailed, Principal
from triows.testing import open_test_server


async def test_concurrent_revokes_at_the_cap_share_only_what_is_kept(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two revokes of different users with one place left: both passed the room check
    before the first await (sharing it, e.g. in Redis), so both were shared and one was
    answered "full": a revocation kept in Redis but refused here. The place is held first."""
    async with open_test_server(jwt_secret="s" * 32) as harness:
        server = harness.server
        revocations = server.access.revocations
        revocations.max_entries = 1
        shared: list[str] = []

        async def share(user: str, before: float, ttl: float) -> None:
            await trio.sleep(0.1)  # a round trip to Redis
            shared.append(user)

        monkeypatch.setattr(server.broker, "share_revocation", share)
        outcomes: dict[str, Any] = {}

        async def revoke(user: str) -> None:
            try:
                outcomes[user] = await server.revoke(user)
            except ControlFailed as exc:
                outcomes[user] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(revoke, "alice")
            nursery.start_soon(revoke, "bob")
        done = [user for user, outcome in outcomes.items() if outcome == 0]
        refused = [o for o in outcomes.values() if isinstance(o, ControlFailed)]
        assert (len(done), len(refused)) == (1, 1)
        assert "revoked already" in str(refused[0])
        assert shared == done  # the refused one is nowhere
        assert len(revocations) == 1
        # The place is given back on every exit: a failed share leaves nothing held.
        revocations.max_entries = 2

        async def unreachable(user: str, before: float, ttl: float) -> None:
            await trio.sleep(0.1)
            raise BrokerUnavailableError("Redis is unreachable; nothing was revoked")

        monkeypatch.setattr(server.broker, "share_revocation", unreachable)
        with pytest.raises(BrokerUnavailableError):
            await server.revoke("carol")
        monkeypatch.setattr(server.broker, "share_revocation", share)
        assert await server.revoke("dave") == 0
        assert len(revocations) == 2


async def test_a_login_after_a_revoke_is_good_with_the_authenticate_hook(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The hook's principal has no token ``iat``: it counted as issued before every
    revocation, so revoking a user locked them out for the revocation's whole TTL, even
    after a new login. It counts as issued when the hook vouched for it."""

    def authenticate(info: Any) -> Principal:
        iat = info.query.get("iat")
        claims = {} if iat is None else {"iat": int(iat)}
        return Principal(user_id=info.query.get("user"), claims=claims)

    async with open_test_server(authenticate=authenticate) as harness:
        server = harness.server
        async with harness.connect(path="/?user=alice") as alice:
            assert await server.revoke("alice") == 1
            assert await alice.wait_closed() == (4601, "token revoked")
        async with harness.connect(path="/?user=alice") as again:
            assert (await again.request({"type": "ping"}))["type"] == "pong"
        # A hook's principal carrying its own token's iat is compared by that iat.
        with pytest.raises(ConnectionRejected) as refused:
            async with harness.connect(path=f"/?user=alice&iat={time.time() - 60:.0f}"):
                pass
        assert refused.value.status_code == 401


async def test_kept_revocations_are_read_at_each_link_up_and_outlive_a_bug(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from trio_util import AsyncBool

    from triows._server.kept_revocations import RETRY, follow_kept

    reads: list[float] = []

    class Control:
        async def load_revocations(self) -> int:
            reads.append(trio.current_time())
            if len(reads) == 1:
                raise RuntimeError("a bug")
            return 1

    up = AsyncBool(False)
    control: Any = Control()  # what follow_kept uses of the server's Control
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow_kept, control, up, 5.0, False)
        await trio.sleep(10)
        assert reads == []  # not while Redis is away
        up.value = True
        await trio.sleep(10)
        assert len(reads) == 2  # the bug logged, read again after the backoff
        assert reads[1] - reads[0] == RETRY
        up.value = False
        await trio.sleep(1)
        up.value = True
        await trio.sleep(1)
        assert len(reads) == 3  # once per link-up
        nursery.cancel_scope.cancel()


async def test_taking_many_kept_revocations_lets_the_others_run(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node takes every revocation kept in Redis at each link-up (up to the cap, 100,000):
    one synchronous loop stalled every connection of the node meanwhile."""
    async with open_test_server(jwt_secret="s" * 32) as harness:
        server = harness.server
        now = time.time()
        kept = [(f"user-{n}", now) for n in range(5000)]

        async def shared_revocations() -> list[tuple[str, float]]:
            await trio.lowlevel.checkpoint()
            return kept

        monkeypatch.setattr(server.broker, "shared_revocations", shared_revocations)
        ticks = 0
        seen: set[int] = set()
        revocations = server.access.revocations
        revoke = revocations.revoke

        def counting_revoke(user: str, before: float, now: float) -> None:
            seen.add(ticks)
            revoke(user, before, now)

        monkeypatch.setattr(revocations, "revoke", counting_revoke)
        loaded = trio.Event()

        async def others() -> None:
            nonlocal ticks
            while not loaded.is_set():
                ticks += 1
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(others)
            assert await server.control.load_revocations() == len(kept)
            loaded.set()
        assert len(revocations) == len(kept)
        assert len(seen) > 1  # the others ran between revocations taken
