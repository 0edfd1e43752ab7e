"""``triows.api.AsyncClient``: the HTTP API from async code (FastAPI, Starlette, Trio):
the same calls as :class:`triows.api.Client`, awaited (httpx runs on asyncio and Trio)."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any, TypeVar

import anyio
import httpx

from . import calls
from .calls import Call, Retries
from .errors import UnavailableError
from .results import BroadcastResult, ChannelInfo, ChannelList, HistoryPage, Presence, PublishResult
from .sync import DEFAULT_TIMEOUT, api_key_or_environment, never_sent

T = TypeVar("T")


class AsyncClient:
    """A client of a triows server's HTTP API, for one event loop; keeps connections for
    reuse. Use ``async with AsyncClient(...) as api:`` or call :meth:`aclose`.

    Each call is tried again on no answer, 5xx, 429 and 202 "unknown" (``retries`` more
    times, backoff from ``backoff`` doubling to ``max_backoff`` seconds, jittered); a publish
    keeps its ``idempotency_key`` (made once when not given) for every try, so a retry never
    publishes twice. The server's refusals raise :class:`triows.api.RequestError`; what is
    still unavailable after the retries raises :class:`triows.api.UnavailableError`, or
    :class:`triows.api.UnknownOutcomeError` for a publish that may have gone out.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retries = Retries(retries, backoff, max_backoff)
        self._http = httpx.AsyncClient(
            base_url=url,
            headers={"X-API-Key": api_key_or_environment(api_key)},
            timeout=timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _run(self, call: Call[T]) -> T:
        maybe_sent = False
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    call.method, call.path, json=call.body, params=call.params
                )
            except httpx.UnsupportedProtocol:
                raise
            except httpx.TransportError as exc:
                error = calls.no_answer(call, repr(exc), sent=not never_sent(exc))
            else:
                try:
                    return calls.judge(call, response.status_code, response.text)
                except UnavailableError as exc:
                    error = exc
            maybe_sent = maybe_sent or calls.may_have_published(error)
            if attempt >= self.retries.retries:
                raise calls.final(call, error, maybe_sent)
            await anyio.sleep(self.retries.delay(attempt))
            attempt += 1

    async def publish(
        self, channel: str, data: Any, *, idempotency_key: str | None = None
    ) -> PublishResult:
        """Publish ``data`` on ``channel``; its ``seq`` and ``epoch``."""
        return await self._run(calls.publish(channel, data, idempotency_key))

    async def broadcast(
        self, channels: Iterable[str], data: Any, *, idempotency_key: str | None = None
    ) -> BroadcastResult:
        """Publish ``data`` on each of ``channels`` (up to 1000, distinct)."""
        return await self._run(calls.broadcast(channels, data, idempotency_key))

    async def channels(self, *, limit: int | None = None) -> ChannelList:
        """The channels, most subscribers first."""
        return await self._run(calls.channels(limit))

    async def channel(self, channel: str) -> ChannelInfo:
        """A channel's ``epoch`` and ``seq`` now (subscribe with them as ``since``/``epoch``
        to miss nothing after a state loaded now) and its subscribers."""
        return await self._run(calls.channel(channel))

    async def history(
        self,
        channel: str,
        *,
        limit: int | None = None,
        since: int | None = None,
        reverse: bool = False,
    ) -> HistoryPage:
        """Messages kept in ``channel``'s history (after ``since``; the newest first with
        ``reverse``)."""
        return await self._run(calls.history(channel, limit, since, reverse))

    async def presence(self, channel: str) -> Presence:
        """Who is subscribed to a presence channel, with their ``info``."""
        return await self._run(calls.presence(channel))

    async def disconnect(
        self,
        *,
        user: str | None = None,
        client: str | None = None,
        code: int | None = None,
        reason: str | None = None,
    ) -> int:
        """Close every connection of ``user`` (or the connection ``client``); how many."""
        return await self._run(calls.disconnect(user, client, code, reason))

    async def unsubscribe(
        self,
        channel: str,
        *,
        user: str | None = None,
        client: str | None = None,
        reason: str | None = None,
    ) -> int:
        """Drop ``channel`` from ``user``'s (or ``client``'s) subscriptions; how many."""
        return await self._run(calls.unsubscribe(channel, user, client, reason))

    async def subscribe(
        self, channel: str, *, user: str | None = None, client: str | None = None
    ) -> int:
        """Subscribe ``user``'s connections (or ``client``) to ``channel``; how many."""
        return await self._run(calls.subscribe(channel, user, client))

    async def revoke(self, user: str, *, before: float | None = None) -> int:
        """Refuse ``user``'s tokens issued (``iat``) before ``before`` (unix seconds; the
        server's default when not given) and close its connections; how many it closed."""
        return await self._run(calls.revoke(user, before))
