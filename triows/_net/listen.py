"""TCP listeners, optionally shared by several processes (``SO_REUSEPORT``), and the accept
loop.

``trio.open_tcp_listeners`` does everything but ``SO_REUSEPORT``, which ``--workers`` needs: each
worker process binds the same port and the kernel spreads new connections across them, so no
process hands sockets to another.

:func:`serve_listeners` is ``trio.serve_listeners`` without its wrapper task around each
handler: every stream's task is the handler itself, under one given name, and the handler
closes its stream (``triows._net.streams``). trio's wrapper stays on the stack of every open
connection (a frame and a name formatted per task) and closes every stream with
``aclose_forcefully``: a cancel scope and a cancelled checkpoint per handshake, for a socket
already closed.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import trio

#: The kernel caps it at net.core.somaxconn (what trio asks for too).
BACKLOG = 0xFFFF
#: What ``accept`` fails with when the process or the system is out of descriptors or
#: memory: logged, and tried again after :data:`ACCEPT_RETRY` seconds (trio's own rule).
ACCEPT_CAPACITY_ERRNOS = frozenset(
    code
    for code in (getattr(errno, name, None) for name in ("EMFILE", "ENFILE", "ENOMEM", "ENOBUFS"))
    if code is not None
)
ACCEPT_RETRY = 0.1
#: Every accepted stream's task, named once (trio would format a name per task).
STREAM_TASK = "triows.stream"

log = logging.getLogger("triows.transport")


class ListenError(OSError):
    """The server cannot listen where it was told to: one error saying where and why (trio's
    own is an exception group, one member per address tried)."""


async def open_tcp_listeners(
    host: str, port: int, *, reuse_port: bool
) -> list[trio.SocketListener]:
    try:
        return await _open(host, port, reuse_port=reuse_port)
    except* OSError as group:
        first: BaseException = group
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        errno = getattr(first, "errno", None)
        reason = getattr(first, "strerror", None) or str(first)
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ListenError(errno, f"cannot listen on {where}: {reason}") from None


async def _open(host: str, port: int, *, reuse_port: bool) -> list[trio.SocketListener]:
    if not reuse_port:
        return await trio.open_tcp_listeners(port, host=host)
    addresses = await trio.socket.getaddrinfo(
        host, port, type=trio.socket.SOCK_STREAM, flags=trio.socket.AI_PASSIVE
    )
    listeners: list[trio.SocketListener] = []
    try:
        for family, kind, proto, _, address in addresses:
            sock = trio.socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                await sock.bind(address)
                sock.listen(BACKLOG)
            except BaseException:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


def reserve_port(host: str, port: int, *, claim: bool = False) -> tuple[list[socket.socket], int]:
    """Bind (without listening) a ``SO_REUSEPORT`` socket, so a supervisor can learn the port
    that ``port=0`` picks and keep it while its workers bind it too; with ``claim``, also
    claim the address for this supervisor alone (:func:`_claim`). Raises ``OSError`` when the
    port is taken by another program, or claimed by another supervisor. Close every socket
    returned to give the port up."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        port = int(sock.getsockname()[1])
        held = _claim(host, port) if claim else None
    except BaseException:
        sock.close()
        raise
    return [sock] if held is None else [sock, held], port


def _claim(host: str, port: int) -> socket.socket | None:
    """One supervisor per address where its workers share a private Redis: ``SO_REUSEPORT``
    lets any process of the same user bind the port again, so a second such supervisor would
    bind without error and its workers would share the port with the first one's, each set on
    its own Redis: clients split between two servers that never see each other's messages.
    (Supervisors on one ``--redis-url`` share channels: overlapping them, as a deploy may, is
    left alone.) The claim is
    an abstract Unix socket named after the address (Linux): the kernel lets one process hold a
    name and frees it when that process dies, however it dies (no file left behind)."""
    if not sys.platform.startswith("linux"):
        return None
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        claim.bind(f"\0triows-port-{os.getuid()}-{host}-{port}")
    except OSError as exc:
        claim.close()
        if exc.errno != errno.EADDRINUSE:
            raise
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ListenError(
            errno.EADDRINUSE,
            f"cannot listen on {where}: another triows supervisor serves it "
            "(two would share the port without sharing their channels)",
        ) from None
    return claim


async def serve_listeners(
    handler: Callable[[Any], Awaitable[None]],
    listeners: list[trio.abc.Listener[Any]],
    *,
    handler_nursery: trio.Nursery,
    task_status: trio.TaskStatus[list[trio.abc.Listener[Any]]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Accept on every listener; each stream gets a task running ``handler(stream)`` in
    ``handler_nursery``, which must close the stream whatever happens. Runs until cancelled
    (the listeners are closed then); ``task_status`` gets the listeners."""
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept, listener, handler_nursery, handler)
        task_status.started(listeners)
    raise AssertionError("the accept loops never return")  # pragma: no cover


async def _accept(
    listener: trio.abc.Listener[Any],
    handler_nursery: trio.Nursery,
    handler: Callable[[Any], Awaitable[None]],
) -> NoReturn:
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                code = exc.errno
                if code is None or code not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                log.error(
                    "accept failed with %s (%s); trying again in %s seconds",
                    errno.errorcode[code],
                    os.strerror(code),
                    ACCEPT_RETRY,
                )
                await trio.sleep(ACCEPT_RETRY)
            else:
                handler_nursery.start_soon(handler, stream, name=STREAM_TASK)
