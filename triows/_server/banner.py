"""What a server says when it starts: where it listens, and what in its settings is risky."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import trio

from .._config import Config

log = logging.getLogger("triows.server")


def addresses(listeners: Sequence[trio.abc.Listener[Any]], scheme: str) -> list[str]:
    """``scheme://host:port/`` of each TCP listener."""
    found = []
    for listener in listeners:
        sock = getattr(listener, "socket", None)
        if sock is not None:
            host, port = sock.getsockname()[:2]
            host = f"[{host}]" if ":" in host else host
            found.append(f"{scheme}://{host}:{port}/")
    return found


def describe(
    config: Config, listeners: Sequence[trio.abc.Listener[Any]], broker: str, server_id: str
) -> str:
    """The line logged when the server starts listening."""
    path = (config.path or "/")[1:]
    where = ", ".join(a + path for a in addresses(listeners, "ws")) or "its own listeners"
    auth = "jwt" if config.jwt_enabled else "custom" if config.authenticate else "off"
    return (
        f"triows listening on {where} (broker: {broker}, auth: {auth}, "
        f"server id: {server_id}, pid: {os.getpid()})"
    )


def warn_about(config: Config, listeners: Sequence[trio.abc.Listener[Any]]) -> None:
    if config.authenticate is not None and not config.allow_origins:
        log.warning(
            "an authenticate hook is set and every origin may connect: if it trusts "
            "cookies, any web page a user visits can open a connection as that user "
            "(cross-site WebSocket hijacking). Set allow_origins (--allow-origin) to "
            "your site's origins; see docs/embedding.md"
        )
    keys = urlsplit(config.jwt_jwks_url or "")
    if keys.scheme == "http" and keys.hostname not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "the token keys come over plain http (--jwt-jwks-url %s): whoever is on the way "
            "can swap them and sign any token; use https",
            config.jwt_jwks_url,
        )
    if config.demo:
        for address in addresses(listeners, "http"):
            log.info("demo chat page: %sdemo", address)
