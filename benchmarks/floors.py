"""Bare WebSocket loops: the floors rime-trio's figures are set beside.

Three floors, each reading the socket 64 KiB at a time (rime-trio's read size):

* **trio-websocket** (Trio only): ``wrap_client_stream`` with ``receive_buffer_size=65536``;
  its reader task parses frames and queues messages for ``get_message``.
* **wsproto** (either backend): wsproto driven from the caller's own task over an AnyIO TCP
  stream, no reader task, no queue: rime-trio's own transport, with nothing on top.
* **websockets** (asyncio only): the ``websockets`` asyncio client (C speedups, no
  compression), the obvious asyncio alternative to rime-trio's transport.

A floor does the least a client can do: send a JSON text message, JSON-decode each frame,
base64-decode the audio.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

import anyio
import anyio.abc
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from ._common import API_KEY

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

RECEIVE_SIZE = 64 * 1024
AUTH = [(b"authorization", f"Bearer {API_KEY}".encode())]
FLUSH = '{"operation": "flush"}'
EOS = '{"operation": "eos"}'
PCM_BYTES_PER_SECOND = 48000  # 16-bit mono at 24 kHz


class Floor(Protocol):
    """One open socket of a bare loop."""

    async def send(self, text: str) -> None: ...

    async def receive(self) -> str | bytes | None:
        """The next message, or None once the server has closed."""
        ...


class FloorError(Exception):
    """The server closed a floor's socket in the middle of an utterance."""


# ----------------------------------------------------------------------------- trio-websocket


class TrioWebsocketFloor:
    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws

    async def send(self, text: str) -> None:
        await self._ws.send_message(text)

    async def receive(self) -> str | bytes | None:
        try:
            message: str | bytes = await self._ws.get_message()
        except ConnectionClosed:
            return None
        return message


@contextlib.asynccontextmanager
async def open_trio_websocket(url: str) -> AsyncIterator[TrioWebsocketFloor]:
    """A bare trio-websocket client that owns (and always closes) its TCP stream:
    trio-websocket's own client leaves it open after the server closes."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    stream = await trio.open_tcp_stream(host, port)
    try:
        async with trio.open_nursery() as nursery:
            resource = f"{parts.path}?{parts.query}"
            ws = await wrap_client_stream(
                nursery,
                stream,
                f"{host}:{port}",
                resource,
                extra_headers=AUTH,
                receive_buffer_size=RECEIVE_SIZE,
            )
            try:
                yield TrioWebsocketFloor(ws)
            finally:
                with trio.move_on_after(2):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


# ----------------------------------------------------------------------------- wsproto


class WsprotoFloor:
    """wsproto driven by whoever calls :meth:`receive`, over an AnyIO socket stream."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self._stream = stream
        self._send_all = stream.send
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._messages: deque[str | bytes] = deque()
        self._text: list[str] = []
        self._bytes = bytearray()
        self._closed = False

    async def handshake(self, host: str, target: str) -> None:
        request = Request(host=host, target=target, extra_headers=AUTH)
        await self._send_all(self._ws.send(request))
        while True:
            data = await self._receive_some()
            if not data:
                raise FloorError("the server closed during the handshake")
            self._ws.receive_data(data)
            for event in self._ws.events():
                if isinstance(event, AcceptConnection):
                    return
                if isinstance(event, RejectConnection):
                    raise FloorError(f"handshake refused: {event.status_code}")

    async def _receive_some(self) -> bytes:
        try:
            return await self._stream.receive(RECEIVE_SIZE)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return b""

    async def send(self, text: str) -> None:
        await self._send_all(self._ws.send(Message(data=text)))

    async def receive(self) -> str | bytes | None:
        messages = self._messages
        while not messages:
            if self._closed:
                return None
            data = await self._receive_some()
            if not data:
                self._closed = True
                continue
            self._ws.receive_data(data)
            reply = self._read_events()
            if reply:
                await self._send_all(reply)
        return messages.popleft()

    def _read_events(self) -> bytes:
        reply = b""
        for event in self._ws.events():
            if isinstance(event, TextMessage):
                if event.message_finished and not self._text:
                    self._messages.append(event.data)
                else:
                    self._text.append(event.data)
                    if event.message_finished:
                        self._messages.append("".join(self._text))
                        self._text.clear()
            elif isinstance(event, BytesMessage):
                self._bytes += event.data
                if event.message_finished:
                    self._messages.append(bytes(self._bytes))
                    self._bytes.clear()
            elif isinstance(event, Ping):
                reply += self._ws.send(event.response())
            elif isinstance(event, CloseConnection):
                self._closed = True
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    reply += self._ws.send(event.response())
        return reply

    async def aclose(self) -> None:
        with anyio.move_on_after(2):
            if self._ws.state is ConnectionState.OPEN:
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await self._send_all(self._ws.send(CloseConnection(code=1000)))
                while not self._closed:
                    data = await self._receive_some()
                    if not data:
                        break
                    self._ws.receive_data(data)
                    self._read_events()
        await anyio.aclose_forcefully(self._stream)


@contextlib.asynccontextmanager
async def open_wsproto(url: str) -> AsyncIterator[WsprotoFloor]:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    stream = await anyio.connect_tcp(host, port)
    floor = WsprotoFloor(stream)
    try:
        await floor.handshake(f"{host}:{port}", f"{parts.path}?{parts.query}")
        yield floor
    finally:
        await floor.aclose()


# ----------------------------------------------------------------------------- websockets


class WebsocketsFloor:
    def __init__(self, ws: ClientConnection) -> None:
        from websockets.exceptions import ConnectionClosed as Closed

        self._ws = ws
        self._closed = Closed

    async def send(self, text: str) -> None:
        await self._ws.send(text)

    async def receive(self) -> str | bytes | None:
        try:
            return await self._ws.recv()
        except self._closed:
            return None


@contextlib.asynccontextmanager
async def open_websockets(url: str) -> AsyncIterator[WebsocketsFloor]:
    """The ``websockets`` asyncio client as a bare loop: no compression (the servers offer
    none to the other clients either), no keepalive pings, no proxy lookup."""
    from websockets.asyncio.client import connect

    async with connect(
        url,
        additional_headers=[(name.decode(), value.decode()) for name, value in AUTH],
        compression=None,
        proxy=None,
        ping_interval=None,
        max_size=None,
        close_timeout=2,
    ) as ws:
        yield WebsocketsFloor(ws)


# ----------------------------------------------------------------------------- utterances


async def _next(floor: Floor) -> dict[str, object]:
    frame = await floor.receive()
    if frame is None:
        raise FloorError("the server closed the socket in the middle of an utterance")
    message: dict[str, object] = json.loads(frame)
    return message


async def first_audio(floor: Floor, text: str, tag: str, start: float) -> float:
    """Send *text* as one message; return the time from *start* to the first chunk, decoded."""
    await floor.send(json.dumps({"text": text, "contextId": tag}))
    while True:
        message = await _next(floor)
        if message["type"] == "chunk":
            base64.b64decode(str(message["data"]))
            return time.perf_counter() - start


async def finish(floor: Floor) -> None:
    """The rest of an utterance: flush, decode the audio until ``done``."""
    await floor.send(FLUSH)
    while True:
        message = await _next(floor)
        if message["type"] == "chunk":
            base64.b64decode(str(message["data"]))
        elif message["type"] == "done":
            return


async def finish_with_eos(floor: Floor) -> None:
    """The rest of a one-utterance socket (as rime-trio ends a stream): ``eos``, then decode
    the audio until the server closes."""
    await floor.send(EOS)
    while (frame := await floor.receive()) is not None:
        message = json.loads(frame)
        if message["type"] == "chunk":
            base64.b64decode(message["data"])


async def long_stream(floor: Floor, sentences: list[str]) -> float:
    """Send every sentence (each flushed) and ``eos``, decode everything until the server
    closes; return the seconds of audio received."""
    for n, sentence in enumerate(sentences):
        await floor.send(json.dumps({"text": sentence, "contextId": f"t#{n}"}))
        await floor.send(FLUSH)
    await floor.send(EOS)
    audio_bytes = 0
    while (frame := await floor.receive()) is not None:
        message = json.loads(frame)
        if message["type"] == "chunk":
            audio_bytes += len(base64.b64decode(message["data"]))
    return audio_bytes / PCM_BYTES_PER_SECOND
