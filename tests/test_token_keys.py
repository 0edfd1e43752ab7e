"""The key set's fetcher in virtual time: one fetch at a time, at most one per interval, a
slow provider bounded, keys that worked kept."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric import rsa

from triows._core.auth import AuthError
from triows._core.jwt_keys import KeySetCache
from triows._server.token_keys import KeySet, KeysUnavailable

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def document(*kids: str) -> dict[str, Any]:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key()))
    return {"keys": [{**public, "kid": kid} for kid in kids]}


class Provider:
    """A fake identity provider: counts fetches; may be slow or down."""

    def __init__(self, *kids: str) -> None:
        self.kids = list(kids)
        self.fetches = 0
        self.delay = 0.0
        self.down = False

    async def fetch(self) -> Any:
        self.fetches += 1
        await trio.sleep(self.delay)
        if self.down:
            raise jwt.PyJWKClientConnectionError("connection refused")
        return document(*self.kids)


async def test_a_flood_of_unknown_kids_fetches_once_per_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = Provider("k1")
    keys = KeySet(KeySetCache(min_interval=10, ttl=1000), provider.fetch, timeout=5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keys.run)
        assert (await keys.key_for("k1")).algorithms == ("RS256",)
        assert provider.fetches == 1
        refused = 0
        start = trio.current_time()
        for index in range(300):  # 30 seconds of 10 bad kids a second
            with pytest.raises(AuthError, match="no key for its 'kid'"):
                await keys.key_for(f"bad-{index}")
            refused += 1
            await trio.sleep(0.1)
        elapsed = trio.current_time() - start
        assert refused == 300
        # The first fetch, then at most one per 10 s whatever the flood.
        assert 2 <= provider.fetches <= 1 + elapsed // 10 + 1
        # A key rotated in is found by the next fetch the interval allows.
        provider.kids.append("k2")
        await trio.sleep(10)
        assert await keys.key_for("k2") is not None
        nursery.cancel_scope.cancel()


async def test_concurrent_waiters_share_one_fetch(autojump_clock: trio.testing.MockClock) -> None:
    provider = Provider("k1")
    provider.delay = 1
    keys = KeySet(KeySetCache(min_interval=10, ttl=1000), provider.fetch, timeout=5)
    found = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keys.run)

        async def want() -> None:
            found.append(await keys.key_for("k1"))

        await trio.sleep(0.5)  # the first fetch is under way
        async with trio.open_nursery() as waiters:
            for _ in range(50):
                waiters.start_soon(want)
        await trio.sleep(100)  # and no second fetch follows, asked for while the first ran
        nursery.cancel_scope.cancel()
    assert len(found) == 50
    assert provider.fetches == 1


async def test_a_slow_or_down_provider_is_a_clear_refusal_and_old_keys_stay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = Provider("k1")
    provider.delay = 3600  # accepts, never answers
    keys = KeySet(KeySetCache(min_interval=10, ttl=60), provider.fetch, timeout=5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keys.run)
        start = trio.current_time()
        with pytest.raises(KeysUnavailable, match=r"no answer within 5s"):
            await keys.key_for("k1")
        assert trio.current_time() - start == pytest.approx(5)
        # Within the interval nobody waits: refused at once.
        with pytest.raises(KeysUnavailable):
            await keys.key_for("k1")
        assert trio.current_time() - start == pytest.approx(5)
        provider.delay = 0
        await trio.sleep(10)  # the background retry after the interval
        assert await keys.key_for("k1") is not None
        assert keys.failures == 1
        provider.down = True
        await trio.sleep(200)  # past the ttl: refreshes fail, the keys stay
        assert await keys.key_for("k1") is not None
        assert keys.failures >= 2
        # A kid the old keys lack while the set cannot be fetched: unknown, not invalid.
        with pytest.raises(KeysUnavailable, match="connection refused"):
            await keys.key_for("other")
        nursery.cancel_scope.cancel()


async def test_a_rotated_key_whose_fetch_timed_out_is_unavailable_not_invalid(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The provider rotated to a new key, and the fetch that would find it timed out: the
    token was refused 401 "no key for its 'kid'" (which clients take as final) since old keys
    were held. What that fetch would have said is unknown: 503, try again."""
    provider = Provider("k1")
    keys = KeySet(KeySetCache(min_interval=10, ttl=1000), provider.fetch, timeout=5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keys.run)
        assert await keys.key_for("k1") is not None
        provider.kids.append("k2")
        provider.delay = 3600  # slow now
        await trio.sleep(10)
        with pytest.raises(KeysUnavailable, match="no answer within 5s"):
            await keys.key_for("k2")
        with pytest.raises(KeysUnavailable):  # within the interval too: still unknown
            await keys.key_for("k2")
        provider.delay = 0
        await trio.sleep(10)
        assert await keys.key_for("k2") is not None
        with pytest.raises(AuthError, match="no key"):  # a fetch that worked: a real "no"
            await keys.key_for("k3")
        nursery.cancel_scope.cancel()


async def test_keys_are_fetched_again_after_the_ttl(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = Provider("k1")
    keys = KeySet(KeySetCache(min_interval=10, ttl=60), provider.fetch, timeout=5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keys.run)
        await keys.key_for("k1")
        provider.kids = ["k2"]  # k1 withdrawn by the provider
        await trio.sleep(61)
        assert provider.fetches == 2
        with pytest.raises(AuthError, match="no key"):
            await keys.key_for("k1")
        nursery.cancel_scope.cancel()
