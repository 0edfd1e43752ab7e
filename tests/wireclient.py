"""A WebSocket client on a real TCP socket that writes any frame, valid or not, and checks
every byte the server sends with a strict parser of its own (not triows', not wsproto's).

For tests of the wire itself: stream integrity under backpressure, and the close frames a
misbehaving client must get.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import zlib
from typing import Any

import trio

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class CorruptStream(AssertionError):
    """The server sent bytes that are not a valid sequence of server frames."""


def encode_frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        header = bytes([first, mask_bit | length])
    elif length < 1 << 16:
        header = bytes([first, mask_bit | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([first, mask_bit | 127]) + length.to_bytes(8, "big")
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class WireClient:
    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self._buffer = bytearray()
        self.received = 0
        #: Every frame the server sent, in order: (opcode, payload).
        self.frames: list[tuple[int, bytes]] = []
        self.eof = False
        #: Answer the server's pings (from read_some), as any WebSocket client does.
        self.answer_pings = True
        self._pongs_owed: list[bytes] = []
        #: The 101 answer's head; permessage-deflate accepted (RSV1 frames are inflated, each
        #: on its own, as without context takeover), and how many frames came compressed.
        self.head = b""
        self.inflate = False
        self.compressed = 0

    @classmethod
    async def connect(
        cls,
        port: int,
        *,
        receive_buffer: int | None = None,
        welcome: bool = True,
        extensions: str | None = None,
    ) -> WireClient:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:  # before connect, so the window is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        await sock.connect(("127.0.0.1", port))
        client = cls(sock)
        key = base64.b64encode(os.urandom(16)).decode()
        offer = "" if extensions is None else f"Sec-WebSocket-Extensions: {extensions}\r\n"
        await client.send_raw(
            (
                "GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
            ).encode()
        )
        head = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in head:
                head += await sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        client.head = head
        client.inflate = b"permessage-deflate" in head
        if welcome:  # triows greets first; the conformance echo server does not
            await client.read_until(lambda c: c.texts())
        return client

    async def send_raw(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[await self.sock.send(view) :]

    async def send_frame(self, opcode: int, payload: bytes = b"", **options: Any) -> None:
        await self.send_raw(encode_frame(opcode, payload, **options))

    async def send_json(self, frame: dict[str, Any]) -> None:
        await self.send_frame(TEXT, json.dumps(frame).encode())

    async def read_some(self, size: int = 65536) -> None:
        data = await self.sock.recv(size)
        if not data:
            self.eof = True
            return
        self.received += len(data)
        self._buffer += data
        self._parse()
        owed, self._pongs_owed = self._pongs_owed, []
        for payload in owed if self.answer_pings else ():
            await self.send_frame(PONG, payload)

    async def read_until(self, done: Any, timeout: float = 20) -> None:
        with trio.fail_after(timeout):
            while not done(self):
                if self.eof:
                    raise EOFError("the server closed the connection")
                await self.read_some()

    async def read_to_end(self, timeout: float = 20) -> None:
        """Read until the server closes TCP."""
        with trio.fail_after(timeout):
            while not self.eof:
                try:
                    await self.read_some()
                except ConnectionResetError:
                    self.eof = True

    def texts(self) -> list[dict[str, Any]]:
        return [json.loads(payload) for opcode, payload in self.frames if opcode == TEXT]

    def of_opcode(self, opcode: int) -> list[bytes]:
        return [payload for op, payload in self.frames if op == opcode]

    @property
    def close(self) -> tuple[int | None, str] | None:
        """The server's close frame: (code, reason), code None when it carried none."""
        for payload in self.of_opcode(CLOSE):
            if not payload:
                return None, ""
            return int.from_bytes(payload[:2], "big"), payload[2:].decode()
        return None

    def _parse(self) -> None:
        buffer = self._buffer
        while len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            where = f"frame {len(self.frames)}, first bytes {bytes(buffer[:8])!r}"
            compressed = first & 0x70 == 0x40 and self.inflate
            if first & 0x70 and not compressed:
                raise CorruptStream(f"reserved bits set at {where}")
            if compressed and first & 0x0F not in (TEXT, BINARY):
                raise CorruptStream(f"RSV1 on a control frame at {where}")
            if not first & 0x80:
                raise CorruptStream(f"fragmented frame at {where} (triows never fragments)")
            opcode = first & 0x0F
            if opcode not in (TEXT, BINARY, CLOSE, PING, PONG):
                raise CorruptStream(f"opcode {opcode:#x} at {where}")
            if second & 0x80:
                raise CorruptStream(f"masked server frame at {where}")
            length, header = second & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, header = int.from_bytes(buffer[2:4], "big"), 4
                if length < 126:
                    raise CorruptStream(f"non-minimal length at {where}")
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, header = int.from_bytes(buffer[2:10], "big"), 10
                if length < 1 << 16 or length >> 63:
                    raise CorruptStream(f"bad 64-bit length at {where}")
            if opcode >= CLOSE and length > 125:
                raise CorruptStream(f"control frame of {length} bytes at {where}")
            if len(buffer) < header + length:
                return
            payload = bytes(buffer[header : header + length])
            del buffer[: header + length]
            if compressed:
                self.compressed += 1
                try:
                    payload = zlib.decompressobj(-15).decompress(payload + b"\0\0\xff\xff")
                except zlib.error as exc:
                    raise CorruptStream(f"compressed frame does not inflate at {where}") from exc
            if opcode == TEXT:
                try:
                    json.loads(payload.decode())
                except ValueError as exc:
                    raise CorruptStream(f"text frame is not UTF-8 JSON at {where}") from exc
            if opcode == CLOSE and len(payload) == 1:
                raise CorruptStream(f"close frame with 1-byte payload at {where}")
            if self.close is not None:
                raise CorruptStream(f"a frame after the close frame at {where}")
            self.frames.append((opcode, payload))
            if opcode == PING:
                self._pongs_owed.append(payload)

    async def aclose(self) -> None:
        self.sock.close()
