"""An identity provider's key set (JWKS), fetched without ever blocking the event loop.

One background task (:meth:`KeySet.run`, in the supervisor) does every fetch: at start, when
the keys are older than ``jwt_jwks_ttl``, and when a token names a ``kid`` the set does not
hold, at most once per ``jwt_jwks_min_interval`` (:class:`triows._core.jwt_keys.KeySetCache`).
A handshake that needs keys waits for the fetch under way (never starts its own), within its
deadline. The fetch (:func:`read_jwks`: no redirects, http(s) only) runs in a worker thread
bounded by ``jwt_jwks_timeout`` as a whole, not per read, and reads at most
:data:`MAX_JWKS_BYTES`: an endless or dripping body ends the thread too, rather than leaving
it abandoned and growing (as ``json.load`` of a response would). A failed fetch keeps the
keys that worked; with none yet, tokens are refused with 503 ("try again"), never left
hanging.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any, Final

import jwt
import trio

from .._core.auth import AuthError
from .._core.jwt_keys import KeySetCache, VerifyingKey, keys_from_jwks

log = logging.getLogger("triows.auth")

#: Fetches the key set document (a JSON object), or raises.
Fetch = Callable[[], Awaitable[Any]]


class KeysUnavailable(Exception):
    """No key can check this token now (the key set could not be fetched): try again."""


#: Largest key set document read: a provider's holds a few keys (some KiB).
MAX_JWKS_BYTES: Final = 1 << 20
_CHUNK = 65536


def fetch_over_http(url: str, timeout: float) -> Fetch:
    """:func:`read_jwks` in a thread, which a cancel abandons (it ends by itself within about
    ``timeout``)."""

    async def fetch() -> Any:
        read = functools.partial(read_jwks, url, timeout)
        return await trio.to_thread.run_sync(read, abandon_on_cancel=True)

    return fetch


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is an error: the key set is where it was configured


def read_jwks(url: str, timeout: float, limit: int = MAX_JWKS_BYTES) -> Any:
    """The key set document at ``url`` (blocking: run it in a thread). Within ``timeout``
    seconds as a whole (checked between reads, each bounded by it too) and ``limit`` bytes;
    ``ValueError`` with the reason otherwise (``OSError`` when the provider cannot be
    reached)."""
    if not url.lower().startswith(("http://", "https://")):
        raise ValueError("the JWKS URL must be http(s)")
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.build_opener(_NoRedirect()).open(request, timeout=timeout) as answer:
            body = bytearray()
            while chunk := answer.read1(_CHUNK):
                body += chunk
                if len(body) > limit:
                    raise ValueError(f"the JWKS is more than {limit} bytes")
                if time.monotonic() > deadline:
                    raise ValueError(f"no whole answer within {timeout:g}s")
    except urllib.error.HTTPError as exc:
        exc.close()
        raise OSError(f"the JWKS URL answered {exc.code}") from None
    except http.client.HTTPException as exc:
        raise OSError(f"not an HTTP answer: {type(exc).__name__}") from None
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("the JWKS is not JSON: nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"the JWKS is not JSON: {exc}") from None


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
        ``KeysUnavailable`` while no key set could be fetched (or the last fetch failed)."""
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
        if not cache.keys or cache.error is not None:
            # No keys, or the last fetch failed: a ``kid`` they lack may be one rotated in
            # since (a "no" now would be final for a client; this is unknown).
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
