"""An identity provider's key set (JWKS), fetched without ever blocking the event loop.

One background task (:meth:`KeySet.run`, in the supervisor) does every fetch: at start, when
the keys are older than ``jwt_jwks_ttl``, and when a token names a ``kid`` the set does not
hold, at most once per ``jwt_jwks_min_interval`` (:class:`triows._core.jwt_keys.KeySetCache`).
A handshake that needs keys waits for the fetch under way (never starts its own), within its
deadline. The fetch is PyJWT's ``PyJWKClient`` (no redirects, http(s) only) in a worker thread,
bounded by ``jwt_jwks_timeout``; a thread that overruns is abandoned and ends by its own socket
timeout. A failed fetch keeps the keys that worked; with none yet, tokens are refused with
503 ("try again"), never left hanging.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import trio

from .._core.auth import AuthError
from .._core.jwt_keys import KeySetCache, VerifyingKey, keys_from_jwks

log = logging.getLogger("triows.auth")

#: Fetches the key set document (a JSON object), or raises.
Fetch = Callable[[], Awaitable[Any]]


class KeysUnavailable(Exception):
    """No key can check this token now (the key set could not be fetched): try again."""


def fetch_over_http(url: str, timeout: float) -> Fetch:
    """PyJWKClient's fetch in a thread, which a cancel abandons (its socket's ``timeout`` ends
    it soon after)."""
    client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=timeout)

    async def fetch() -> Any:
        return await trio.to_thread.run_sync(client.fetch_data, abandon_on_cancel=True)

    return fetch


class KeySet:
    def __init__(self, cache: KeySetCache, fetch: Fetch, timeout: float) -> None:
        self._cache = cache
        self._fetch = fetch
        self._timeout = timeout
        self._wanted = trio.Event()
        #: Set when the fetch under way (or the next one) has ended, then replaced.
        self._done = trio.Event()
        self._fetching = False
        #: Fetches started, and those that failed (for statistics and tests).
        self.fetches = 0
        self.failures = 0

    async def key_for(self, kid: str | None) -> VerifyingKey:
        """The key ``kid`` names; a fetch is waited for when the set does not hold it and
        one may start. ``AuthError`` for a ``kid`` the provider does not publish,
        ``KeysUnavailable`` while no key set could be fetched."""
        cache = self._cache
        key = cache.find(kid)
        if key is not None:
            return key
        if self._fetching or cache.may_fetch(trio.current_time()):
            done = self._done
            if not self._fetching:  # else the fetch under way answers: no second one
                self._wanted.set()
            await done.wait()
            key = cache.find(kid)
            if key is not None:
                return key
        if not cache.keys:
            reason = cache.error or "not fetched yet"
            raise KeysUnavailable(f"token keys unavailable ({reason}); try again")
        raise AuthError("invalid token: no key for its 'kid'")

    async def run(self) -> None:
        cache = self._cache
        while True:
            with trio.move_on_at(cache.next_refresh(trio.current_time())):
                await self._wanted.wait()
            self._wanted = trio.Event()
            self._fetching = True
            self.fetches += 1
            cache.attempted(trio.current_time())
            try:
                with trio.fail_after(self._timeout):
                    document = await self._fetch()
                keys = keys_from_jwks(document)
            except trio.TooSlowError:
                self._failed(f"no answer within {self._timeout:g}s")
            except (jwt.PyJWTError, ValueError, OSError) as exc:
                self._failed(str(exc))
            else:
                cache.stored(keys, trio.current_time())
                log.debug("token keys fetched: %d", len(keys))
            finally:
                self._fetching = False
                done, self._done = self._done, trio.Event()
                done.set()

    def _failed(self, reason: str) -> None:
        self.failures += 1
        self._cache.failed(reason)
        kept = (
            f"; keeping the {len(self._cache.keys)} keys fetched before" if self._cache.keys else ""
        )
        log.warning("could not fetch the token keys (JWKS): %s%s", reason, kept)
