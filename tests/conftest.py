from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

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
