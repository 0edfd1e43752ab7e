from __future__ import annotations

import jwt
import pytest

SECRET = "test-secret-test-secret-test-secret"


def make_token(sub: str = "alice", **claims: object) -> str:
    return jwt.encode({"sub": sub, **claims}, SECRET, algorithm="HS256")


@pytest.fixture
def secret() -> str:
    return SECRET
