"""Opening redis-py clients: one Redis, or a Redis Cluster found from the same URL.

``--redis-url redis://host:port/0`` names one Redis or any node of a cluster: the node is
asked (``INFO cluster``) and a ``cluster_enabled:1`` answer makes this a cluster client, which
learns the other nodes and the slots from it. ``redis+cluster://h1:p1,h2:p2`` (or
``rediss+cluster://``) gives several seeds, so a start does not depend on one node being up.

Every client fails fast: no retries inside redis-py (it would retry for ~4 s by default, and a
cluster client ten times); the broker decides what to retry and reports the outage. A cluster
client still follows ``MOVED`` and ``ASK`` redirections itself (a command that is redirected
did not run, so following it is safe).
"""

from __future__ import annotations

import logging
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from ..._core import redis_format as fmt

log = logging.getLogger("triows.redis")

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}


class RedisUrlError(ValueError):
    """A ``redis+cluster://`` URL that names no usable seed."""


def fail_fast(timeout: float) -> dict[str, Any]:
    """The options of every connection: bounded waits, no retries inside redis-py."""
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }


def cluster_seeds(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]] | None:
    """The seeds and connection options of a ``redis+cluster://`` URL; None for another
    scheme. Raises :class:`RedisUrlError` for a cluster URL without a valid seed."""
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        return None
    credentials, _, hosts = parts.netloc.rpartition("@")
    options: dict[str, Any] = {"ssl": True} if CLUSTER_SCHEMES[parts.scheme] else {}
    if credentials:
        user, has_password, password = credentials.partition(":")
        if has_password:
            options["password"] = unquote(password)
        if user:
            options["username"] = unquote(user)
    seeds = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise RedisUrlError(f"{url!r}: seeds must be host:port, comma separated")
        seeds.append((host.strip("[]"), int(port)))
    return seeds, options


class Clients:
    """What the broker talks to, found on first use (in a worker thread: it is I/O).

    ``command`` is a ``redis.Redis`` or a ``RedisCluster`` (typed as the former: the commands
    the broker uses are the same); ``cluster`` says which. ``node(host, port)`` opens a client
    of one cluster node, with the same options, for a shard's pub/sub connection."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.cluster = False
        self._seeds = cluster_seeds(url)  # raises on a malformed cluster URL, at once
        self._options: dict[str, Any] = {}

    def open(self) -> redis.Redis:
        """Open the command client: a cluster client when the URL or the node says so."""
        if self._seeds is not None:
            seeds, options = self._seeds
            return self._open_cluster(seeds, options)
        single = redis.Redis.from_url(self.url, **fail_fast(self.timeout))
        if not _cluster_enabled(single):
            _warn_of_layout_1(single)
            return single
        kwargs = single.connection_pool.connection_kwargs
        options = {k: kwargs[k] for k in ("username", "password") if kwargs.get(k)}
        if single.connection_pool.connection_class is redis.SSLConnection:
            options["ssl"] = True
        seed = (str(kwargs.get("host", "localhost")), int(kwargs.get("port", 6379)))
        single.close()
        if int(kwargs.get("db") or 0) != 0:
            log.warning("a Redis Cluster has only database 0: the URL's database is ignored")
        return self._open_cluster([seed], options)

    def _open_cluster(self, seeds: list[tuple[str, int]], options: dict[str, Any]) -> redis.Redis:
        self.cluster = True
        self._options = options
        # redis-py's cluster API is untyped: Any, at this one place.
        node: Any = ClusterNode
        client: Any = RedisCluster(
            startup_nodes=[node(host, port) for host, port in seeds],
            **fail_fast(self.timeout),
            **options,
        )
        log.info("Redis at %s is a cluster of %d master(s)", seeds[0], len(client.get_primaries()))
        return cast(redis.Redis, client)

    def node(self, host: str, port: int) -> redis.Redis:
        """A client of one cluster node (its pub/sub connection)."""
        return redis.Redis(host=host, port=port, **fail_fast(self.timeout), **self._options)


def _cluster_enabled(client: redis.Redis) -> bool:
    try:
        info = client.info("cluster")
    except redis.ResponseError:
        return False  # INFO refused (a managed Redis may rename it): not a cluster we can see
    return bool(info.get("cluster_enabled"))


def _warn_of_layout_1(client: redis.Redis) -> None:
    """Nodes of an older triows (keys without hash tags) following channels here number them
    apart from this node: say so, loudly, instead of letting clients see two numberings."""
    try:
        older = client.pubsub_channels(fmt.LAYOUT_1_PUBSUB_PATTERN)
    except redis.ResponseError:
        return
    if older:
        log.error(
            "nodes of an older triows (key layout 1) follow %d channel(s) in this Redis; they "
            "number channels apart from this version: stop them before starting this one "
            "(see docs/deployment.md, upgrading)",
            len(older),
        )
