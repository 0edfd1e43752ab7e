"""Where the client's server is and how to reach it: the URL, the token, the byte stream.

Asked anew at every (re)connect, so that a function giving tokens can renew an expiring one
and tests can hand in in-memory streams (``open_stream``) instead of TCP.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode, urlsplit

import trio

StreamOpener = Callable[[], Awaitable[trio.abc.Stream]]
#: A token, or a function returning one (sync or async), asked again at every (re)connect so
#: that expiring tokens can be renewed.
TokenSource = str | Callable[[], "str | Awaitable[str]"]


class Endpoint:
    """A ``ws://`` or ``wss://`` URL (checked at once), a token source, a stream opener."""

    def __init__(
        self, url: str, token: TokenSource | None, open_stream: StreamOpener | None
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"expected a ws:// or wss:// URL, got {url!r}")
        self._parts = parts
        self._hostname: str = parts.hostname
        self._token = token
        self.open_stream: StreamOpener = open_stream or self._open_tcp
        #: The ``Host`` of the handshake.
        self.host = parts.netloc

    async def handshake_path(self) -> str:
        """The path and query of the handshake, with a fresh token (unbounded: the caller
        sets the deadline)."""
        path = self._parts.path or "/"
        query = self._parts.query
        token = await self._current_token()
        if token is not None:
            query = "&".join(q for q in (query, urlencode({"token": token})) if q)
        return f"{path}?{query}" if query else path

    async def _current_token(self) -> str | None:
        source = self._token
        if source is None or isinstance(source, str):
            return source
        token = source()
        if inspect.isawaitable(token):
            token = await token  # bounded by the caller's deadline
        return token

    async def _open_tcp(self) -> trio.abc.Stream:
        parts = self._parts
        if parts.scheme == "wss":
            return await trio.open_ssl_over_tcp_stream(self._hostname, parts.port or 443)
        return await trio.open_tcp_stream(self._hostname, parts.port or 80)
