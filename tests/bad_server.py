"""A scripted /ws3 server that can send anything: a bare TCP listener that answers the HTTP
upgrade by hand and writes hand-built frames, so no WebSocket library stands between a test
and the bytes the client reads.

On each connection it waits for the client's first text message (or for its ``eos``), then
writes the script's frames, each rendered with the ``contextId`` of the client's first text
message (so a script can answer "the stream's own" text without knowing its random tag), then
ends as the script says: a close frame, a dropped TCP connection, or a stall (it goes on
reading until the client gives up and closes).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

import anyio
import anyio.abc

__all__ = [
    "ScriptedServer",
    "ServerScript",
    "close_payload",
    "frame",
    "scripted_server",
    "take_client_frame",
]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: A frame of the script: its bytes, or a function of the contextId of the client's first
#: text message (None if it had none) that gives them.
ScriptFrame = bytes | Callable[[str | None], bytes]


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0) -> bytes:
    """One unmasked frame as a server sends it (*rsv*: the three RSV bits, RSV1 = 4)."""
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    size = len(payload)
    if size < 126:
        return bytes([first, size]) + payload
    if size < 1 << 16:
        return bytes([first, 126]) + size.to_bytes(2, "big") + payload
    return bytes([first, 127]) + size.to_bytes(8, "big") + payload


def close_payload(code: int | None, reason: str = "") -> bytes:
    return b"" if code is None else code.to_bytes(2, "big") + reason.encode()


def take_client_frame(buffer: bytearray) -> tuple[int, bytes] | None:
    """The next whole (masked) frame a client sent, taken off *buffer*; None: not all here."""
    if len(buffer) < 2:
        return None
    size, at = buffer[1] & 0x7F, 2
    if size >= 126:
        width = 2 if size == 126 else 8
        if len(buffer) < at + width:
            return None
        size, at = int.from_bytes(buffer[at : at + width], "big"), at + width
    if len(buffer) < at + 4 + size:
        return None
    mask, body = buffer[at : at + 4], buffer[at + 4 : at + 4 + size]
    payload = bytes(byte ^ mask[i % 4] for i, byte in enumerate(body))
    opcode = buffer[0] & 0x0F
    del buffer[: at + 4 + size]
    return opcode, payload


@dataclass(frozen=True)
class ServerScript:
    """What the server does on every connection.

    :ivar frames: written once the trigger came, in one write.
    :ivar trigger: ``"text"``: the client's first text message; ``"eos"``: its ``eos``.
    :ivar ending: ``"close"`` sends a close frame with *close* as its payload (then, once
        the client answers it, closes the TCP connection); ``"close_hold"`` sends it too but
        leaves the TCP connection for the client to close; ``"drop"`` closes the TCP
        connection without a close frame; ``"stall"`` sends nothing more and reads until the
        client closes.
    :ivar handshake: if set, the bytes sent instead of the ``101`` answer to the upgrade
        (``{accept}`` in them becomes the right ``Sec-WebSocket-Accept`` value); the
        connection is then closed.
    """

    frames: Sequence[ScriptFrame]
    trigger: Literal["text", "eos"] = "eos"
    ending: Literal["close", "close_hold", "drop", "stall"] = "close"
    close: bytes = close_payload(1000)
    handshake: bytes | None = None


@dataclass
class ScriptedServer:
    script: ServerScript
    port: int = 0
    #: connections on which the script was played (a retry plays it again)
    played: int = 0
    #: every client message on every connection, decoded from JSON where it could be
    received: list[list[object]] = field(default_factory=list)

    async def serve(self, client: anyio.abc.SocketStream) -> None:
        try:
            async with client:
                await self._converse(client)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # the client hung up: that is its business

    async def _converse(self, client: anyio.abc.SocketStream) -> None:
        buffer = bytearray()
        while b"\r\n\r\n" not in buffer:
            buffer += await client.receive()
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        }
        accept = base64.b64encode(hashlib.sha1(headers[b"sec-websocket-key"] + _GUID).digest())
        script = self.script
        if script.handshake is not None:
            self.received.append([])
            await client.send(script.handshake.replace(b"{accept}", accept))
            return
        await client.send(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        buffer = bytearray(rest)
        messages: list[object] = []
        self.received.append(messages)
        context_id: str | None = None
        seen_text = played = closed = False
        while True:
            taken = take_client_frame(buffer)
            if taken is None:
                buffer += await client.receive()
                continue
            opcode, payload = taken
            if opcode == 0x8:  # the client closes (or answers ours): answer, and hang up
                if not closed:
                    await client.send(frame(0x8, payload[:2]))
                if script.ending == "close_hold" and closed:
                    while await client.receive():  # until the client hangs up
                        pass
                return
            if opcode != 0x1:
                continue
            try:
                message = json.loads(payload)
            except ValueError:
                message = payload
            messages.append(message)
            if not isinstance(message, dict):
                continue
            if "text" in message and not seen_text:
                seen_text = True
                found = message.get("contextId")
                context_id = found if isinstance(found, str) else None
            is_eos = message.get("operation") == "eos"
            due = seen_text if script.trigger == "text" else is_eos
            if played or not due:
                continue
            played = True
            self.played += 1
            data = b"".join(f if isinstance(f, bytes) else f(context_id) for f in script.frames)
            if data:
                await client.send(data)
            if script.ending == "drop":
                return
            if script.ending in ("close", "close_hold"):
                closed = True
                await client.send(frame(0x8, script.close))


class Serving(Protocol):
    """A hand-written server: a handler per TCP connection, and the port it got."""

    port: int

    async def serve(self, client: anyio.abc.SocketStream) -> None: ...


_S = TypeVar("_S", bound=Serving)


@asynccontextmanager
async def serving(server: _S) -> AsyncIterator[_S]:
    """Serve *server* on 127.0.0.1 (a free port, set as ``server.port``) for the body of
    the block."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    server.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, server.serve)
        try:
            yield server
        finally:
            group.cancel_scope.cancel()


def scripted_server(script: ServerScript) -> AbstractAsyncContextManager[ScriptedServer]:
    """Serve *script* on 127.0.0.1 (the port is ``server.port``) for the body of the block."""
    return serving(ScriptedServer(script))
