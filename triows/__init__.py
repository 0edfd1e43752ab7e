"""triows: a real-time WebSocket pub/sub server and library built on Trio.

Embed it::

    async with trio.open_nursery() as nursery:
        server = await nursery.start(triows.serve, triows.Config(port=8080))
        await server.publish("news", {"headline": "hello"})
"""

from types import ModuleType as _ModuleType
from typing import TYPE_CHECKING as _TYPE_CHECKING

from ._brokers.seam import (
    BrokerStatistics,
    BrokerUnavailableError,
    OutcomeUnknownError,
    Published,
)
from ._config import Authenticate, Authorize, Config, Rejected
from ._core.auth import Action, Principal
from ._core.handshake import HandshakeRequest
from ._core.outbox import SlowConsumerPolicy
from ._ops.view import (
    ChannelInfo,
    ChannelStatistics,
    ConnectionStatistics,
    ControlFailed,
    HistoryResult,
    ServerStatistics,
)
from ._server.server import Server, serve

if _TYPE_CHECKING:
    from . import client

__version__ = "0.1.0"


def __getattr__(name: str) -> _ModuleType:
    """``triows.client`` is imported on first use: a server needs neither it nor the
    WebSocket client library under it (trio-websocket, wsproto)."""
    if name == "client":
        import importlib

        return importlib.import_module(".client", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Action",
    "Authenticate",
    "Authorize",
    "BrokerStatistics",
    "BrokerUnavailableError",
    "ChannelInfo",
    "ChannelStatistics",
    "Config",
    "ConnectionStatistics",
    "ControlFailed",
    "HandshakeRequest",
    "HistoryResult",
    "OutcomeUnknownError",
    "Principal",
    "Published",
    "Rejected",
    "Server",
    "ServerStatistics",
    "SlowConsumerPolicy",
    "client",
    "serve",
]


def __dir__() -> list[str]:
    return sorted({*globals(), "client"})
