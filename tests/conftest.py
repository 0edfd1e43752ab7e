from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from .rediscluster import RedisClusterNodes
from .redisserver import RedisServer

SECRET = "test-secret-test-secret-test-secret"


def make_token(sub: str = "alice", **claims: object) -> str:
    return jwt.encode({"sub": sub, **claims}, SECRET, algorithm="HS256")


@pytest.fixture
def secret() -> str:
    return SECRET


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One Redis for the session; tests use their own channel names."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, persistent, that the test may kill and restart."""
    server = RedisServer(tmp_path, persistent=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """One Redis Cluster of three masters for the session (no replicas: tests that kill a
    master make their own, :func:`own_redis_cluster`); tests use their own channel names."""
    cluster = RedisClusterNodes(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["single", "cluster"])
def shared_redis_url(request: pytest.FixtureRequest) -> str:
    """The session's one Redis, then the session's Redis Cluster (its first node's URL, as a
    user gives it: the node says it is in a cluster)."""
    if request.param == "single":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url
    cluster: RedisClusterNodes = request.getfixturevalue("redis_cluster")
    return cluster.url


@pytest.fixture
def own_redis_cluster(tmp_path: Path) -> Iterator[RedisClusterNodes]:
    """A Redis Cluster of the test's own, three masters with a replica each, persistent
    (``appendfsync always``), that the test may break (kill a master, move a slot)."""
    cluster = RedisClusterNodes(tmp_path, replicas=1, persistent=True)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
