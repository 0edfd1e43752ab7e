"""Who may do what, and how often: tokens, the ``authorize`` hook and the rate limits.

One place for the rules a request meets after its connection was admitted, shared by the
handshake (token verification) and by connections (per request): the principal's own channel
patterns, then the application's ``authorize`` hook (bounded by ``handshake_timeout``; a hook
that does not answer has not said "no": error 503, try again), then the per-connection and
per-user token buckets (error 429).
"""

from __future__ import annotations

import contextlib
import inspect
from collections import Counter
from collections.abc import Callable, Iterator

import attrs
import trio

from .._config import Config
from .._core import protocol
from .._core.auth import Action, AuthError, Principal, verify_token
from .._core.jwt_keys import KeySetCache, VerifyingKey, public_key_from_pem, token_kid
from .._core.protocol import ProtocolError
from .._core.ratelimit import PerKey, TokenBucket
from .._core.revocations import DEFAULT_TTL, Revocations
from .token_keys import KeySet, KeysUnavailable, fetch_over_http


class Access:
    def __init__(self, config: Config, wall_clock: Callable[[], float]) -> None:
        self.config = config
        self._wall_clock = wall_clock
        self._user_rates = {
            Action.PUBLISH: PerKey(config.user_publish_rate, 2 * config.user_publish_rate),
            Action.SUBSCRIBE: PerKey(config.user_subscribe_rate, 2 * config.user_subscribe_rate),
        }
        #: Requests refused with 429 by a rate limit, by action.
        self.rate_limited: Counter[str] = Counter()
        #: Whether connections carry a principal that can expire (JWT or a custom hook).
        self.enabled = config.jwt_enabled or config.authenticate is not None
        #: Users whose older tokens are refused (``Server.revoke``); with ``jwt_max_age`` a
        #: revocation lasts that long (older tokens are refused anyway then).
        self.revocations = Revocations(config.jwt_max_age or DEFAULT_TTL)
        self._key: VerifyingKey | None = None
        if config.jwt_secret is not None:
            self._key = VerifyingKey(config.jwt_secret, ("HS256",))
        elif config.jwt_public_key is not None:
            self._key = public_key_from_pem(config.jwt_public_key)
        #: The identity provider's key set (``jwt_jwks_url``), fetched by :meth:`run`.
        self.key_set: KeySet | None = None
        if config.jwt_jwks_url is not None:
            cache = KeySetCache(config.jwt_jwks_min_interval, config.jwt_jwks_ttl)
            fetch = fetch_over_http(config.jwt_jwks_url, config.jwt_jwks_timeout)
            self.key_set = KeySet(cache, fetch, config.jwt_jwks_timeout)

    def is_revoked(self, principal: Principal) -> bool:
        """Whether ``principal``'s token was revoked (issued before its user's revocation)."""
        if not len(self.revocations):
            return False
        return self.revocations.revoked(
            principal.user_id, principal.claims, self._wall_clock(), principal.authenticated_at
        )

    def vouched(self, principal: Principal) -> Principal:
        """The ``authenticate`` hook's principal, stamped with the time it was vouched for
        (what a revocation compares when it has no token ``iat``)."""
        return attrs.evolve(principal, authenticated_at=self._wall_clock())

    async def run(self) -> None:
        """Keep the key set fresh (a supervisor task); nothing to do without one."""
        if self.key_set is not None:
            await self.key_set.run()

    @property
    def keys_may_wait(self) -> bool:
        """Whether checking a token may wait for its key (a key set fetched over HTTP)."""
        return self.key_set is not None

    async def verify_token(self, token: str) -> Principal:
        """A JWT's principal, by the server's clock and settings; ``AuthError`` otherwise,
        ``KeysUnavailable`` when its key cannot be had now. May wait for the key set."""
        key = self._key
        if key is None:
            assert self.key_set is not None
            kid = token_kid(token)
            with trio.move_on_after(self.config.handshake_timeout):
                key = await self.key_set.key_for(kid)
            if key is None:
                raise KeysUnavailable("token keys unavailable (still fetching); try again")
        return self._verify(token, key)

    def verify_token_nowait(self, token: str) -> Principal:
        """The same, with a key at hand (a secret or a public key; not a key set)."""
        assert self._key is not None
        return self._verify(token, self._key)

    def _verify(self, token: str, key: VerifyingKey) -> Principal:
        config = self.config
        return verify_token(
            token,
            key.key,
            algorithms=key.algorithms,
            now=self._wall_clock(),
            audience=config.jwt_audience,
            issuer=config.jwt_issuer,
            leeway=config.jwt_leeway,
            require_exp=config.jwt_require_exp,
            max_age=config.jwt_max_age,
        )

    @staticmethod
    def check_allowed(
        principal: Principal,
        action: Action,
        channel: str,
        request_id: protocol.RequestId | None,
    ) -> None:
        """What the token allows; the ``authorize`` hook, if any, is asked in :meth:`authorize`."""
        if not principal.may(action, channel):
            raise _forbidden(action, channel, request_id)

    async def authorize(
        self,
        principal: Principal,
        action: Action,
        channel: str,
        request_id: protocol.RequestId | None,
    ) -> None:
        self.check_allowed(principal, action, channel, request_id)
        hook = self.config.authorize
        if hook is None:
            return
        result = hook(principal, action, channel)
        if inspect.isawaitable(result):
            try:
                with trio.fail_after(self.config.handshake_timeout):
                    result = await result
            except trio.TooSlowError:
                # Not a "no": the client may try again (a refresh keeps its subscriptions).
                raise ProtocolError(
                    protocol.UNAVAILABLE, "authorization timed out; try again", request_id
                ) from None
        if not result:
            raise _forbidden(action, channel, request_id)

    def publish_limited(self, principal: Principal) -> bool:
        """Whether ``principal``'s publishes meet a rate limit at all (per connection, or per
        user for a principal with a user id): without one a publish takes no token and
        reads no clock. A connection asks once: a refreshed token is the same user's."""
        return self.config.publish_rate > 0 or (
            principal.user_id is not None and self.config.user_publish_rate > 0
        )

    def check_rate(
        self,
        principal: Principal,
        action: Action,
        bucket: TokenBucket,
        request_id: protocol.RequestId | None,
    ) -> None:
        """Take a token from the connection's bucket and its user's; error 429 without one."""
        user = principal.user_id
        if bucket.rate <= 0 and (user is None or self._user_rates[action].rate <= 0):
            return  # no limit: no clock read
        self.take(principal, action, bucket, trio.current_time(), request_id)

    def take(
        self,
        principal: Principal,
        action: Action,
        bucket: TokenBucket,
        now: float,
        request_id: protocol.RequestId | None,
    ) -> None:
        """:meth:`check_rate` at ``now``, by a caller that knows a limit applies (and reads
        the clock once for its whole step)."""
        user = principal.user_id
        if bucket.take(now) and (user is None or self._user_rates[action].take(user, now)):
            return
        self.rate_limited[str(action)] += 1
        raise ProtocolError(
            protocol.TOO_MANY, f"{action} rate limit exceeded; slow down", request_id
        )


def _forbidden(
    action: Action, channel: str, request_id: protocol.RequestId | None
) -> ProtocolError:
    return ProtocolError(protocol.FORBIDDEN, f"not allowed to {action} on '{channel}'", request_id)


@contextlib.contextmanager
def token_errors(config: Config, request_id: protocol.RequestId | None) -> Iterator[None]:
    """A refresh's token refused: 401; its key not to be had now: 503 (the old token stands)."""
    if not config.jwt_enabled:
        raise ProtocolError(protocol.BAD_REQUEST, "token refresh needs JWT auth", request_id)
    try:
        yield
    except AuthError as exc:
        raise ProtocolError(protocol.UNAUTHORIZED, str(exc), request_id) from None
    except KeysUnavailable as exc:
        raise ProtocolError(protocol.UNAVAILABLE, str(exc), request_id) from None
