"""Accepted streams: an admission ticket first, then the request head, then its handler.

Every stream gets its ticket (``triows._core.admission``) before its first byte is read and
gives it back when its task ends. Its head is read within one deadline and parsed
(``triows._core.handshake``, sans-I/O); then a plain HTTP request goes to the HTTP handler as
a :class:`PlainRequest`, and an upgrade to the handshake handler as a
:class:`PendingHandshake`, which accepts it with a :class:`~triows._net.websocket.WebSocket`
or refuses it. Refusals and answers close gracefully (:func:`answer`). Nothing here knows what
the server does with a connection: that is ``triows._server``.

trio-websocket stays on the client side (``triows._client.transport``).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import trio

from .._core.admission import Admission, Refused, Ticket
from .._core.extensions import Deflate, MalformedExtensions, negotiate
from .._core.frame_parser import Close, Failure, FrameParser
from .._core.frames import close_frame
from .._core.handshake import (
    HandshakeError,
    HandshakeRequest,
    HttpRequest,
    accept_response,
    http_response,
    parse_request,
    upgrade_key,
    wants_upgrade,
)
from .._core.proxy import Network, address_key, is_trusted
from .heads import client_of, peer_address, read_head
from .listen import serve_listeners
from .websocket import RECEIVE_BUFFER, Closed, WebSocket

__all__ = ["PendingHandshake", "PlainRequest", "Serve", "answer", "serve_streams"]

log = logging.getLogger("triows.transport")

#: Time an answer still gets to be written once its request's deadline has passed (a 504 or
#: a refusal must reach a client that does read).
ANSWER_GRACE = 1.0
#: Reads of leftover request bytes at most after an answer (see :func:`linger`).
LINGER_READS = 16


class PendingHandshake:
    """A handshake the server has yet to accept or reject.

    ``ticket`` is the stream's admission ticket, still pending: the server moves it to a
    connection before its first await, adds the user and marks it open. ``deadline`` bounds
    the whole handshake, from the moment the stream was accepted to the last byte of the
    answer.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        request: HttpRequest,
        leftover: bytes,
        *,
        remote: str,
        ip: str,
        max_message_size: int,
        compression: bool = False,
        ticket: Ticket,
        deadline: float,
    ) -> None:
        self._stream = stream
        self._key = upgrade_key(request)
        #: permessage-deflate as accepted (offered by the client, and compression is on).
        self.deflate: Deflate | None = None
        if compression:
            try:
                self.deflate = negotiate(request.headers.get("sec-websocket-extensions"))
            except MalformedExtensions as exc:
                raise HandshakeError(400, f"malformed Sec-WebSocket-Extensions: {exc}") from None
        self._leftover = leftover
        self._max_message_size = max_message_size
        self.ticket = ticket
        self.deadline = deadline
        #: The greeting went out with the 101 (:meth:`accept`).
        self.greeted = False
        target = urlsplit(request.target)
        self.info = HandshakeRequest(
            path=target.path or "/",
            query=dict(reversed(parse_qsl(target.query, keep_blank_values=True))),
            headers=request.headers,
            remote=remote,
            ip=ip,
        )

    async def accept(self, greeting: Callable[[], bytes] | None = None) -> WebSocket:
        """The 101, with ``greeting()`` (the connection's first frames) in the same write: one
        system call and one wake-up of the client for both. ``greeted`` says whether the
        greeting went out; it does not when the socket did not take the 101 at once (it then
        waits for the rest of the 101 alone, and what happened meanwhile may forbid a
        greeting: the connection greets later, or not at all)."""
        deflate = self.deflate
        parser = FrameParser(self._max_message_size, inflate=deflate is not None)
        ws = WebSocket(self._stream, parser, self._leftover)
        if deflate is not None:
            ws.deflate_limit = deflate.max_payload
        response = accept_response(self._key, None if deflate is None else deflate.response)
        first = b"" if greeting is None else greeting()
        # An empty socket takes it whole: no wait, no scope.
        written = ws.write_nowait(response + first if first else response)
        if written < len(response):
            with trio.fail_at(self.deadline):
                await self._stream.send_all(response[written:])
        else:
            self.greeted = bool(first)
            if written < len(response) + len(first):  # part of the greeting is out already
                with trio.fail_at(self.deadline):
                    await self._stream.send_all((response + first)[written:])
        # No checkpoint otherwise: reading the head was one, and the connection's first read
        # is the next.
        return ws

    async def reject(self, status: int, message: str) -> None:
        await _refuse(self._stream, status, message, (), self.deadline)

    async def reject_by_close(self, code: int, reason: str) -> None:
        """Refuse after the upgrade instead: the 101, then at once a close frame with ``code``
        (a browser cannot read a refused handshake's status, but it reads a close code). Waits
        for the client's close frame within the handshake's deadline (or a short grace), then
        closes."""
        with trio.move_on_at(max(self.deadline, trio.current_time() + ANSWER_GRACE)):
            try:
                ws = await self.accept()
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError):
                return  # the client left, or does not read: nothing more to say
            try:
                await ws.write(close_frame(code, reason))
                parser = ws.parser
                while True:
                    if parser.pending:  # what one read inflates is parsed in steps
                        await trio.lowlevel.checkpoint()
                        data = b""
                    elif not (data := await ws.receive()):
                        break
                    if any(isinstance(event, Close | Failure) for event in parser.feed(data)):
                        break
            except Closed:
                pass
            finally:
                ws.close_now()


@attrs.define(slots=True, eq=False)
class PlainRequest:
    """A request without ``Upgrade: websocket``, handed to the HTTP endpoints.

    ``ticket`` is still pending: the endpoints move it to ``http`` (or answer a probe
    without it). ``deadline`` bounds reading the body and answering.
    """

    stream: trio.abc.Stream
    request: HttpRequest
    #: Bytes the client sent after its head: the start of its body.
    leftover: bytes
    remote: str
    ip: str
    ticket: Ticket
    deadline: float


async def _refuse(
    stream: trio.abc.Stream,
    status: int,
    reason: str,
    headers: tuple[tuple[str, str], ...],
    deadline: float,
) -> None:
    """Answer with an HTTP error; the connection then ends."""
    await answer(stream, http_response(status, reason.encode() + b"\n", headers=headers), deadline)


async def answer(stream: trio.abc.Stream, response: bytes, deadline: float) -> None:
    """Write a complete HTTP answer, then close gracefully, all by ``deadline`` (or within
    :data:`ANSWER_GRACE` when it has passed: a 504 must still reach a client that reads).

    Closing a socket with unread bytes makes the kernel send a reset, which can destroy the
    answer before the client reads it (a head over the limit, a body never read). So after
    the answer we say we are done (half-close) and read what is left until the client
    closes, at most :data:`LINGER_READS` reads, within the same bound.
    """
    with trio.move_on_at(max(deadline, trio.current_time() + ANSWER_GRACE)):
        try:
            await stream.send_all(response)
            if isinstance(stream, trio.SocketStream):
                await stream.send_eof()
                for _ in range(LINGER_READS):
                    if not await stream.receive_some(RECEIVE_BUFFER):
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client left: nothing more to say


#: An accepted connection's life (its reader, heartbeat and goodbye), run by the stream's
#: task once the handshake's frames and cancel scope are gone.
Serve = Callable[[], Awaitable[None]]
#: Answers a handshake: the connection to serve when accepted, None when refused (answered).
HandshakeHandler = Callable[[PendingHandshake], Awaitable[Serve | None]]
#: Answers a plain HTTP request; the transport closes the stream afterwards.
HttpHandler = Callable[[PlainRequest], Awaitable[None]]


async def _serve_stream(
    stream: trio.abc.Stream,
    handler: HandshakeHandler,
    *,
    http_handler: HttpHandler,
    trusted_proxies: tuple[Network, ...],
    max_message_size: int,
    compression: bool = False,
    handshake_timeout: float,
    admission: Admission,
) -> None:
    """Everything about one TCP stream, behind a boundary no exception crosses.

    Its admission ticket is taken before the first byte is read and released when this
    returns, whatever happened in between. An accepted connection then runs here, in this
    frame: the handshake's own frames and its evictable scope are gone by then, so an idle
    connection does not hold them (about 1 KiB each) for its whole life.
    """
    try:
        peer = peer_address(stream)
        try:
            trusted = bool(trusted_proxies) and is_trusted(peer[0], trusted_proxies)
            ticket = admission.stream(address_key(peer[0]), trusted=trusted)
        except Refused:
            # As many streams as allowed are waiting for their request (from this address, or
            # in all): one more would cost a descriptor and a task for nothing. No answer:
            # nothing was read, and a flood is best met with the least work.
            return
        deadline = trio.current_time() + handshake_timeout
        # All places taken, the admission may close this stream (while it waits for its
        # request or closes) to make room for a newer one; never once it is a connection. The
        # same scope cuts a head that takes longer than the deadline (one scope, not two).
        evictable = trio.CancelScope(deadline=deadline)
        ticket.on_evict = evictable.cancel
        serve: Serve | None = None  # none when evicted
        try:
            with evictable:
                serve = await _serve_head(
                    stream,
                    ticket,
                    peer,
                    deadline,
                    evictable,
                    handler=handler,
                    http_handler=http_handler,
                    trusted_proxies=trusted_proxies,
                    max_message_size=max_message_size,
                    compression=compression,
                )
            del evictable  # an open connection is never evicted (``Ticket.opened``)
            if serve is not None:
                try:
                    await serve()
                except Exception:
                    log.exception("connection task failed")
        finally:
            ticket.release()
    finally:
        # This task's stream, closed whatever happened (the accept loop leaves it to us). A
        # socket is closed at once: a connection's goodbye has closed it already.
        if isinstance(stream, trio.SocketStream):
            stream.socket.close()
        else:
            await trio.aclose_forcefully(stream)


async def _serve_head(
    stream: trio.abc.Stream,
    ticket: Ticket,
    peer: tuple[str, int | None],
    deadline: float,
    scope: trio.CancelScope,
    *,
    handler: HandshakeHandler,
    http_handler: HttpHandler,
    trusted_proxies: tuple[Network, ...],
    max_message_size: int,
    compression: bool,
) -> Serve | None:
    """Read and parse the head, then answer it (plain HTTP) or hand it to the handshake
    handler; the accepted connection to serve, if any. ``scope`` (the stream's) has the
    deadline while the head is read: a slowloris is cut there, as an evicted stream is."""
    try:
        try:
            head = await read_head(stream)
            if scope.cancel_called:
                # The head came in the round its deadline passed, or this stream was
                # evicted meanwhile (its ticket given back): its task was rescheduled with
                # the data before the cancellation, which would otherwise strike at the next
                # checkpoint, halfway through an answer. Cut now, as a head that came late.
                return None
        finally:
            scope.deadline = math.inf  # answers have bounds of their own (a grace for refusals)
        if head is None:  # a client that left before its request
            return None
        request = parse_request(head[0])
        remote, ip = client_of(peer, request, trusted_proxies)
        if not wants_upgrade(request):
            plain = PlainRequest(
                stream, request, head[1], remote, address_key(ip), ticket, deadline
            )
            del head, request
            await http_handler(plain)
            return None
        pending = [
            PendingHandshake(
                stream,
                request,
                head[1],
                remote=remote,
                ip=ip,
                max_message_size=max_message_size,
                compression=compression,
                ticket=ticket,
                deadline=deadline,
            )
        ]
        del head, request
        # Handed over, not kept: the handler drops the request once it has answered it.
        return await handler(pending.pop())
    except HandshakeError as refused:
        log.debug("refused a request: %d %s", refused.status, refused.reason)
        ticket.closing()
        await _refuse(stream, refused.status, refused.reason, refused.headers, deadline)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, trio.TooSlowError) as gone:
        # The peer went away or stalled mid-handshake (a reset, a scanner): not our failure.
        log.debug("peer left during the handshake: %r", gone)
    except Exception:
        log.exception("connection task failed")
    return None


async def serve_streams(
    handler: HandshakeHandler,
    listeners: list[trio.abc.Listener[Any]],
    *,
    handler_nursery: trio.Nursery,
    http_handler: HttpHandler,
    trusted_proxies: tuple[Network, ...],
    max_message_size: int,
    compression: bool = False,
    handshake_timeout: float,
    admission: Admission,
    task_status: trio.TaskStatus[list[trio.abc.Listener[Any]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    # A partial, not a wrapper coroutine: one frame less held by every connection.
    serve_one = functools.partial(
        _serve_stream,
        handler=handler,
        http_handler=http_handler,
        trusted_proxies=trusted_proxies,
        max_message_size=max_message_size,
        compression=compression,
        handshake_timeout=handshake_timeout,
        admission=admission,
    )
    await serve_listeners(
        serve_one, listeners, handler_nursery=handler_nursery, task_status=task_status
    )
