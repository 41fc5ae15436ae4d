"""A small WebSocket client on AnyIO (wsproto over a TCP stream), so that a test can play the
browser on whichever backend runs it; trio-websocket runs on trio only.

It reads only when asked (``get_message``), and owns its TCP stream, which it always closes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

__all__ = ["ConnectionClosed", "ConnectionRejected", "WebSocket", "open_websocket"]

_RECEIVE_SIZE = 65536


class ConnectionRejected(Exception):
    """The server refused the handshake with an HTTP response."""

    def __init__(self, status_code: int, body: bytes) -> None:
        super().__init__(f"handshake refused with {status_code}")
        self.status_code = status_code
        self.body = body


class ConnectionClosed(Exception):
    """The connection is closed (1006: it ended without a close frame)."""

    def __init__(self, code: int, reason: str | None) -> None:
        super().__init__(f"closed with {code} {reason or ''}".rstrip())
        self.code = code
        self.reason = reason


class WebSocket:
    def __init__(self, stream: anyio.abc.ByteStream, ws: WSConnection) -> None:
        self._stream = stream
        self._ws = ws
        self._events: deque[Event] = deque()
        self._closed: ConnectionClosed | None = None
        self.subprotocol: str | None = None

    async def _receive_events(self) -> None:
        try:
            data: bytes | None = await self._stream.receive(_RECEIVE_SIZE)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            data = None  # wsproto turns the end into a close (1006)
        self._ws.receive_data(data)
        self._events.extend(self._ws.events())

    async def _next_event(self) -> Event:
        while not self._events:
            await self._receive_events()
        return self._events.popleft()

    async def handshake(
        self,
        host: str,
        resource: str,
        subprotocols: list[str],
        extra_headers: list[tuple[bytes, bytes]],
    ) -> None:
        request = Request(
            host=host, target=resource, subprotocols=subprotocols, extra_headers=extra_headers
        )
        await self._stream.send(self._ws.send(request))
        while True:
            event = await self._next_event()
            if isinstance(event, AcceptConnection):
                self.subprotocol = event.subprotocol
                return
            if isinstance(event, RejectConnection):
                body = bytearray()
                finished = not event.has_body
                while not finished:
                    data = await self._next_event()
                    if isinstance(data, RejectData):
                        body += data.data
                        finished = data.body_finished
                raise ConnectionRejected(event.status_code, bytes(body))

    async def send_message(self, message: str | bytes) -> None:
        """:raises ConnectionClosed: if the connection is closed."""
        if self._closed is not None:
            raise self._closed
        await self._stream.send(self._ws.send(Message(data=message)))

    async def get_message(self) -> str | bytes:
        """The next whole message.

        :raises ConnectionClosed: once the server closed the connection (answered here).
        """
        if self._closed is not None:
            raise self._closed
        text: list[str] = []
        data = bytearray()
        while True:
            event = await self._next_event()
            if isinstance(event, TextMessage):
                text.append(event.data)
                if event.message_finished:
                    return "".join(text)
            elif isinstance(event, BytesMessage):
                data += event.data
                if event.message_finished:
                    return bytes(data)
            elif isinstance(event, Ping):
                await self._stream.send(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self._closed = ConnectionClosed(event.code, event.reason)
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    await self._stream.send(self._ws.send(event.response()))
                raise self._closed

    async def aclose(self, code: int = 1000) -> None:
        """Close the connection: a close frame, then (briefly) the server's answer."""
        if self._closed is not None or self._ws.state is not ConnectionState.OPEN:
            return
        self._closed = ConnectionClosed(code, None)
        try:
            await self._stream.send(self._ws.send(CloseConnection(code=code)))
            with anyio.move_on_after(2):
                while not isinstance(await self._next_event(), CloseConnection):
                    pass
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the server is gone already


@asynccontextmanager
async def open_websocket(
    address: str,
    port: int,
    resource: str,
    *,
    host: str | None = None,
    subprotocols: list[str] | None = None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> AsyncIterator[WebSocket]:
    """A WebSocket to *address*:*port* at *resource*, with *host* as its Host header (default:
    ``address:port``); closed (and its TCP stream with it) when the block ends.

    :raises ConnectionRejected: if the server refuses the handshake.
    """
    stream = await anyio.connect_tcp(address, port)
    try:
        ws = WebSocket(stream, WSConnection(ConnectionType.CLIENT))
        await ws.handshake(
            host or f"{address}:{port}", resource, subprotocols or [], extra_headers or []
        )
        try:
            yield ws
        finally:
            with anyio.CancelScope(shield=True):
                await ws.aclose()
    finally:
        await anyio.aclose_forcefully(stream)
