"""Test kit for applications built on triows: a real server on in-memory streams.

Works under pytest-trio's ``autojump_clock`` (virtual time)::

    async def test_my_handler(autojump_clock):
        async with triows.testing.open_test_server(heartbeat_interval=5) as harness:
            async with harness.connect() as client:
                await client.request({"type": "subscribe", "channel": "news"})
                await harness.server.publish("news", {"headline": "hi"})
                assert (await client.receive_type("message"))["data"] == {"headline": "hi"}
"""

from ._harness import (
    ConnectionClosed,
    ConnectionRejected,
    TestClient,
    TestServer,
    open_test_server,
)
from ._streams import MemoryListener, MemoryStream, memory_stream_pair

__all__ = [
    "ConnectionClosed",
    "ConnectionRejected",
    "MemoryListener",
    "MemoryStream",
    "TestClient",
    "TestServer",
    "memory_stream_pair",
    "open_test_server",
]
