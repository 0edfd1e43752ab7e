"""Server configuration: one frozen object, validated where it is built.

Every limit has a default that is safe to expose on a network; ``attrs.evolve(config, ...)``
makes variants. The CLI builds the same object from flags and ``TRIOWS_*`` variables, so an
embedded server and ``python -m triows`` cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import attrs

from ._core.admission import Limits
from ._core.auth import Action, Principal
from ._core.dedupe import DedupeRule
from ._core.handshake import HandshakeRequest
from ._core.jwt_keys import public_key_from_pem
from ._core.names import first_match, validate_pattern
from ._core.outbox import SlowConsumerPolicy
from ._core.proxy import parse_networks

#: ``authenticate(request)``: return a Principal to accept, ``None`` to refuse with 401, or raise
#: :class:`Rejected` for another status. May be a coroutine function.
Authenticate = Callable[[HandshakeRequest], "Principal | Awaitable[Principal | None] | None"]
#: ``authorize(principal, action, channel)``: truthy to allow. May be a coroutine function.
Authorize = Callable[[Principal, Action, str], "bool | Awaitable[bool]"]


def _positive(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive number, got {value!r}")


def _not_negative(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be 0 or a positive number, got {value!r}")


def _int_at_least(minimum: int) -> Callable[[Any, attrs.Attribute[Any], int], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(
                f"{attribute.name} must be an integer of at least {minimum}, got {value!r}"
            )

    return check


def _port(_: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"port must be an integer from 0 to 65535, got {value!r}")


def _path(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and (not value.startswith("/") or "?" in value):
        raise ValueError(f"path must start with '/' and hold no query, got {value!r}")


def _secret(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and len(value.encode()) < 32:
        # HS256 with a short secret can be brute-forced offline from one captured token;
        # RFC 7518 §3.2 asks for a key at least as long as the hash (32 bytes).
        raise ValueError("jwt_secret must be at least 32 bytes long")


def _public_key(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None:
        try:
            public_key_from_pem(value)
        except ValueError as exc:
            raise ValueError(f"jwt_public_key {exc}") from None


def _jwks_url(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "jwt_jwks_url must be an http(s) URL, e.g. "
                f"https://id.example.com/.well-known/jwks.json, got {value!r}"
            )


#: The ways to check tokens; one at most (a token names no way to tell which is meant).
_TOKEN_KEYS = ("jwt_secret", "jwt_public_key", "jwt_jwks_url")


def _redis_url(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    schemes = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
    if value is not None and not value.startswith(schemes):
        raise ValueError(
            "redis_url must look like redis://host:port/db (or rediss://, unix://, or "
            f"redis+cluster://host1:port1,host2:port2 for a cluster), got {value!r}"
        )


def _api_key(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and (len(value) < 16 or not value.isprintable() or " " in value):
        raise ValueError(
            "api_key must be at least 16 printable characters without spaces "
            "(e.g. from: python -c 'import secrets; print(secrets.token_urlsafe())')"
        )


def _none_if_empty(value: str | None) -> str | None:
    return value or None


def _sse_path(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    _path(_, attribute, value)
    if value in ("/health", "/ready", "/metrics", "/stats", "/demo", "/triows.js") or (
        value is not None and value.startswith("/api/")
    ):
        raise ValueError(f"sse_path {value!r} is an HTTP endpoint's path")


def _networks(value: Any) -> tuple[str, ...]:
    return tuple(
        str(network) for network in parse_networks([value] if isinstance(value, str) else value)
    )


def _origins(value: Any) -> tuple[str, ...]:
    """Each an origin as browsers send it (``scheme://host[:port]``, in lower case: browsers
    serialize it so), or ``*``."""
    origins = []
    for origin in [value] if isinstance(value, str) else value:
        text = str(origin).strip().rstrip("/").lower()
        if text != "*":
            parts = urlsplit(text)
            if not (parts.scheme and parts.netloc) or parts.path or parts.query:
                raise ValueError(
                    f"allow_origins: {origin!r} is not an origin; browsers send the scheme, "
                    "the host and any port, e.g. https://app.example.com or "
                    "http://localhost:8000"
                )
        origins.append(text)
    return tuple(origins)


def _patterns(field: str, value: Any) -> tuple[str, ...]:
    try:
        return tuple(validate_pattern(p) for p in ([value] if isinstance(value, str) else value))
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None


def _presence_patterns(value: Any) -> tuple[str, ...]:
    return _patterns("presence", value)


def _presence_count_patterns(value: Any) -> tuple[str, ...]:
    return _patterns("presence_counts", value)


def _policy_rules(value: Any) -> tuple[tuple[str, SlowConsumerPolicy], ...]:
    rules = []
    for pattern, policy in value:
        try:
            rules.append((validate_pattern(pattern), SlowConsumerPolicy(policy)))
        except ValueError as exc:
            raise ValueError(f"channel_policies: {exc}") from None
    return tuple(rules)


def _history_rules(value: Any) -> tuple[tuple[str, int, float], ...]:
    try:
        rules = tuple((validate_pattern(p), int(size), float(ttl)) for p, size, ttl in value)
    except ValueError as exc:
        raise ValueError(f"channel_history: {exc}") from None
    for pattern, size, ttl in rules:
        if size < 0 or not (math.isfinite(ttl) and ttl >= 0):
            raise ValueError(f"channel_history for {pattern!r}: size and ttl must be >= 0")
    return rules


@attrs.frozen(kw_only=True)
class Config:
    """Everything ``serve()`` needs. See ``docs/configuration.md`` for each field."""

    host: str = "127.0.0.1"
    port: int = attrs.field(default=8080, validator=_port)
    #: Only this URL path is served (other paths get 404); ``None`` serves any path.
    path: str | None = attrs.field(default=None, validator=_path)
    jwt_secret: str | None = attrs.field(default=None, repr=False, validator=_secret)
    #: When set, a token's ``aud`` / ``iss`` claim must name it.
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    #: Seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat``.
    jwt_leeway: float = attrs.field(default=0.0, validator=_not_negative)
    #: Refuse tokens without an ``exp`` claim (they would be valid forever).
    jwt_require_exp: bool = False
    #: Refuse tokens issued (``iat``) more than this many seconds ago, and tokens without
    #: ``iat``; 0: no limit.
    jwt_max_age: float = attrs.field(default=0.0, validator=_not_negative)
    #: An identity provider's public key, as PEM text (``BEGIN PUBLIC KEY`` or a certificate):
    #: tokens it signed (RS256, ES256, ...) are accepted. Instead of ``jwt_secret``.
    jwt_public_key: str | None = attrs.field(default=None, validator=_public_key)
    #: An identity provider's key set (JWKS) URL: a token is checked with the key its ``kid``
    #: names. Instead of ``jwt_secret`` or ``jwt_public_key``.
    jwt_jwks_url: str | None = attrs.field(default=None, validator=_jwks_url)
    #: At most one fetch of the key set per this many seconds (an unknown ``kid`` asks for one).
    jwt_jwks_min_interval: float = attrs.field(default=10.0, validator=_positive)
    #: Seconds the key set is used before it is fetched again, in the background.
    jwt_jwks_ttl: float = attrs.field(default=300.0, validator=_positive)
    #: Seconds one fetch of the key set may take; a slower provider is a failed fetch.
    jwt_jwks_timeout: float = attrs.field(default=5.0, validator=_positive)
    #: Origins allowed to connect (e.g. ``https://app.example``); empty allows every origin.
    allow_origins: tuple[str, ...] = attrs.field(default=(), converter=_origins)
    max_connections: int = attrs.field(default=10_000, validator=_int_at_least(1))
    #: Connections from one client address, and of one authenticated user; more get HTTP
    #: 429 at the handshake. 0: no limit.
    max_connections_per_ip: int = attrs.field(default=1000, validator=_int_at_least(0))
    max_connections_per_user: int = attrs.field(default=100, validator=_int_at_least(0))
    #: Streams accepted whose HTTP request has not arrived yet, in all and from one address
    #: (a trusted proxy's count in the total only); more are closed at once. 0 per address:
    #: no limit. Separate from ``max_connections``: idle sockets cannot take its places.
    max_pending: int = attrs.field(default=1024, validator=_int_at_least(1))
    max_pending_per_ip: int = attrs.field(default=64, validator=_int_at_least(0))
    #: Plain HTTP requests answered at once, in all and per client address (more: 503 and
    #: 429); ``/health`` and ``/ready`` are answered outside this pool.
    max_http_requests: int = attrs.field(default=256, validator=_int_at_least(1))
    max_http_requests_per_ip: int = attrs.field(default=32, validator=_int_at_least(0))
    #: Publishes (subscribes) per second allowed to one connection, and to one user over all
    #: its connections; bursts of twice the rate pass. More get error 429. 0: no limit.
    publish_rate: float = attrs.field(default=1000.0, validator=_not_negative)
    user_publish_rate: float = attrs.field(default=2000.0, validator=_not_negative)
    subscribe_rate: float = attrs.field(default=100.0, validator=_not_negative)
    user_subscribe_rate: float = attrs.field(default=200.0, validator=_not_negative)
    #: Largest incoming message in bytes; a bigger one closes the connection with 1009. At
    #: least 2048: a ``message`` frame keeps 1024 bytes for its envelope around ``data``.
    max_message_size: int = attrs.field(default=64 * 1024, validator=_int_at_least(2048))
    #: Accept permessage-deflate when a client offers it (RFC 7692, without context takeover:
    #: no connection keeps a zlib context; a broadcast is compressed once for every subscriber).
    compression: bool = True
    #: Broadcast payloads of at most this many bytes go uncompressed (acks, pongs and other
    #: replies always do).
    compression_threshold: int = attrs.field(default=256, validator=_int_at_least(0))
    max_subscriptions: int = attrs.field(default=100, validator=_int_at_least(1))
    heartbeat_interval: float = attrs.field(default=25.0, validator=_positive)
    heartbeat_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: Close connections that hold no subscription and sent nothing for this long; 0 = never.
    idle_timeout: float = attrs.field(default=300.0, validator=_not_negative)
    #: Frames a subscriber may have waiting for its socket before its slow-consumer policy acts.
    outbox_size: int = attrs.field(default=1024, validator=_int_at_least(1))
    #: Bytes a subscriber may have waiting; the outbox is full at either limit.
    outbox_max_bytes: int = attrs.field(default=1024 * 1024, validator=_int_at_least(1))
    slow_consumer: SlowConsumerPolicy = attrs.field(
        default=SlowConsumerPolicy.DISCONNECT, converter=SlowConsumerPolicy
    )
    #: ``(glob, policy)`` rules; the first match gives a channel its own slow-consumer policy.
    channel_policies: tuple[tuple[str, SlowConsumerPolicy], ...] = attrs.field(
        default=(), converter=_policy_rules
    )
    #: Messages kept per channel for resume (``subscribe`` with ``since``); 0 keeps none.
    history_size: int = attrs.field(default=100, validator=_int_at_least(0))
    #: Seconds a message stays in history; 0 keeps none.
    history_ttl: float = attrs.field(default=300.0, validator=_not_negative)
    #: Bytes of history per channel, and for all channels together (in-process broker; with
    #: Redis, history lives in its streams, bounded by count and Redis' own maxmemory).
    history_max_bytes: int = attrs.field(default=1024 * 1024, validator=_int_at_least(0))
    history_total_bytes: int = attrs.field(default=256 * 1024 * 1024, validator=_int_at_least(0))
    #: ``(glob, size, ttl)`` rules; the first match gives a channel its own history bounds.
    channel_history: tuple[tuple[str, int, float], ...] = attrs.field(
        default=(), converter=_history_rules
    )
    #: Channels kept only for their history (no subscriber); beyond it the least recently
    #: published is forgotten (its next lifetime gets a new epoch).
    max_idle_channels: int = attrs.field(default=10_000, validator=_int_at_least(0))
    #: Publish ids remembered per principal for dedupe, and for how long; 0 turns it off.
    dedupe_size: int = attrs.field(default=1000, validator=_int_at_least(0))
    dedupe_ttl: float = attrs.field(default=300.0, validator=_not_negative)
    #: Principals with a dedupe window; the least recently active is forgotten first.
    dedupe_max_principals: int = attrs.field(default=100_000, validator=_int_at_least(1))
    #: Publish ids remembered in all; the oldest is forgotten first.
    dedupe_max_entries: int = attrs.field(default=1_000_000, validator=_int_at_least(1))
    #: Resident memory (bytes) above which new connections are refused with 503 until it
    #: falls below 90% of it again; 0 turns the guard off.
    memory_limit: int = attrs.field(default=0, validator=_int_at_least(0))
    #: How long a ``block`` publisher waits for one subscriber before disconnecting it (1013).
    block_timeout: float = attrs.field(default=5.0, validator=_positive)
    #: Requests a connection may have waiting while an earlier one is served (an async
    #: ``authorize`` hook, Redis), and their bytes; more get error 429. Sized for a client
    #: flushing its offline queue.
    inbox_size: int = attrs.field(default=256, validator=_int_at_least(1))
    inbox_max_bytes: int = attrs.field(default=1024 * 1024, validator=_int_at_least(1))
    #: Time for a client to complete the HTTP upgrade (and for ``authenticate`` to answer).
    handshake_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: Time for the closing handshake of one connection.
    close_timeout: float = attrs.field(default=5.0, validator=_positive)
    shutdown_timeout: float = attrs.field(default=10.0, validator=_not_negative)
    #: Let other processes bind the same host and port (``SO_REUSEPORT``); the kernel spreads
    #: connections across them. ``--workers`` sets it.
    reuse_port: bool = False
    #: ``redis://host:port/db``: this server becomes one node of a cluster sharing that Redis
    #: (numbering, history, dedupe and fan-out go through it). ``None``: in-process broker.
    #: A node of a Redis Cluster is found to be one (``INFO cluster``); several seeds:
    #: ``redis+cluster://host1:port1,host2:port2``.
    redis_url: str | None = attrs.field(default=None, validator=_redis_url)
    #: Publications held in order while Redis is unreachable; beyond it publishers get 503.
    redis_buffer_size: int = attrs.field(default=10_000, validator=_int_at_least(1))
    #: Timeout of one Redis command, and the pub/sub watchdog's period.
    redis_timeout: float = attrs.field(default=2.0, validator=_positive)
    #: Seconds Redis keeps a channel's numbering and stream after its last use.
    redis_key_ttl: float = attrs.field(default=86_400.0, validator=_positive)
    #: Seconds a message stays in its channel's Redis stream beyond the history size, so that a
    #: node whose link to Redis broke (an outage, a partition, a pause) catches up from it.
    redis_retention: float = attrs.field(default=60.0, validator=_not_negative)
    #: Channel patterns with presence: ``presence`` requests list members, and subscribers
    #: get ``join``/``leave`` frames. ``presence_counts`` patterns answer counts only.
    presence: tuple[str, ...] = attrs.field(default=(), converter=_presence_patterns)
    presence_counts: tuple[str, ...] = attrs.field(default=(), converter=_presence_count_patterns)
    #: Above this many members a presence channel answers counts only and sends no join/leave.
    presence_max_members: int = attrs.field(default=1000, validator=_int_at_least(1))
    #: Seconds a member stays in Redis after its node last refreshed it (nodes refresh every
    #: third of it): a crashed node's members are gone within this.
    presence_ttl: float = attrs.field(default=30.0, validator=_positive)
    #: Serve the demo chat page at ``/demo`` (``--demo``).
    demo: bool = False
    #: Key of the HTTP publish API (``X-API-Key``); ``None`` turns the API off (404).
    api_key: str | None = attrs.field(default=None, repr=False, validator=_api_key)
    #: Reverse proxies (addresses or CIDR networks) whose ``X-Forwarded-For`` is believed.
    trusted_proxies: tuple[str, ...] = attrs.field(default=(), converter=_networks)
    #: Latency histograms and ``GET /metrics``; off, neither exists (404).
    metrics: bool = True
    #: Seconds between the monitor's samples, and seconds of samples it keeps.
    monitor_interval: float = attrs.field(default=1.0, validator=_positive)
    monitor_history: float = attrs.field(default=3600.0, validator=_positive)
    #: Event-loop lag (seconds) and resident memory (bytes) above which the monitor logs a
    #: warning (and once more when back below 90% of it); 0 turns a warning off.
    warn_loop_lag: float = attrs.field(default=0.5, validator=_not_negative)
    warn_memory: int = attrs.field(default=0, validator=_int_at_least(0))
    #: A directory the processes of one ``--workers`` server share: each writes its figures
    #: there once per monitor sample, and ``/metrics`` and ``/stats`` add them all up. Set by
    #: the ``--workers`` supervisor.
    shared_stats_dir: str | None = None
    #: Server-Sent Events (``GET <sse_path>?channel=...``, docs/browser.md): the path, or
    #: ``None`` (or ``""``) to turn them off (404); seconds between keep-alive comments; the
    #: ``retry:`` hint in seconds (each stream gets it within ±50%, so that browsers
    #: disconnected together do not all come back at the same instant).
    sse_path: str | None = attrs.field(
        default="/sse", converter=_none_if_empty, validator=_sse_path
    )
    sse_keepalive: float = attrs.field(default=15.0, validator=_positive)
    sse_retry: float = attrs.field(default=3.0, validator=_positive)
    #: Shown to clients in ``welcome`` and ``pong``; random when not set.
    server_id: str | None = None
    authenticate: Authenticate | None = attrs.field(default=None, eq=False, repr=False)
    authorize: Authorize | None = attrs.field(default=None, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        given = [name for name in _TOKEN_KEYS if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(
                f"{given[0]} and {given[1]} cannot be used together: tokens are checked "
                "either with a shared secret, or a public key, or a key set (JWKS)"
            )

    @property
    def jwt_enabled(self) -> bool:
        """Whether tokens are checked here (with a secret, a public key or a key set)."""
        return any(getattr(self, name) is not None for name in _TOKEN_KEYS)

    def admission_limits(self) -> Limits:
        """The limits admission (``triows._core.admission``) holds every stream to."""
        return Limits(
            max_pending=self.max_pending,
            max_pending_per_ip=self.max_pending_per_ip,
            max_http=self.max_http_requests,
            max_http_per_ip=self.max_http_requests_per_ip,
            max_connections=self.max_connections,
            max_connections_per_ip=self.max_connections_per_ip,
            max_connections_per_user=self.max_connections_per_user,
        )

    def dedupe_rule(self) -> DedupeRule:
        """What both brokers remember of publish ids (``triows._core.dedupe``)."""
        return DedupeRule(
            size=self.dedupe_size, ttl=self.dedupe_ttl, max_entries=self.dedupe_max_entries
        )

    def policy_for(self, channel: str) -> SlowConsumerPolicy:
        return first_match(self.channel_policies, channel, self.slow_consumer)

    def history_for(self, channel: str) -> tuple[int, float]:
        rules = [(pattern, (size, ttl)) for pattern, size, ttl in self.channel_history]
        return first_match(rules, channel, (self.history_size, self.history_ttl))

    def origin_allowed(self, origin: str | None) -> bool:
        """Browsers always send ``Origin``; other clients usually do not and are allowed."""
        if not self.allow_origins or origin is None or "*" in self.allow_origins:
            return True
        return origin.rstrip("/").lower() in self.allow_origins


class Rejected(Exception):  # a verdict, not a failure: hence no "Error" suffix
    """Raise from ``authenticate`` to refuse a handshake with ``status`` (e.g. 403)."""

    def __init__(self, status: int, reason: str) -> None:
        if not 400 <= status <= 599:
            raise ValueError("a rejection status must be a 4xx or 5xx code")
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
