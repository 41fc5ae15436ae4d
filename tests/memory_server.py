"""An in-memory Rime server: the pool, the links and the task runner tested without sockets.

:class:`MemoryServer` is what a test hands the pool as its connector
(``ConnectionPool(task_group, api_key=..., connect=server.connect)``). Each connect makes a
:class:`MemoryConnection`, the client's end (what the library uses of a
:class:`~rime_trio._transport.Connection`; tests ``cast`` it), and a :class:`ServerSocket`,
the server's end: a task speaking real frames over a pair of AnyIO memory object streams. On
``/ws3`` it feeds the emulator's :class:`Ws3ServerModel` and closes with 1000 after ``eos``
once the audio is out; on v1 (``/ws``) its :class:`V1ServerModel`, ``ready`` first, in the
subprotocol the client offered first. Frames are encoded and decoded by the library's own
codecs and audio is rendered by ``_synth``, so tests assert exact bytes; only the WebSocket
framing and TCP are missing, and with them the waiting: a whole stream takes a millisecond.

What goes wrong on a connection is set per connect, 1-based, in :attr:`MemoryServer.faults`
(see :class:`Faults`); a text holding :attr:`MemoryServer.fail_text` is answered with an
error instead of audio (``/ws3``: an ``error`` event; v1: an ``error`` for its context).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NoReturn, Self, cast
from urllib.parse import parse_qsl, urlsplit

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from rime_api import text_to_speech_pb2 as tts

from rime_trio._concurrency import TaskGroup, open_task_group
from rime_trio._errors import ConnectionLost, ProtocolError, RimeError, server_name
from rime_trio._options import RimeOptions
from rime_trio._pool import ConnectionPool, PoolSettings
from rime_trio._protocol import (
    AudioEvent,
    ClientMessage,
    ErrorEvent,
    TextMessage,
    decode_client_message,
    encode_server_event,
)
from rime_trio._protocol_v1 import Encoding, Frame, decode_request, encode_message
from rime_trio._transport import Connection, _close_error
from rime_trio.testing._config import RunRecord
from rime_trio.testing._faults import chunk_sizes
from rime_trio.testing._params import options_from_params
from rime_trio.testing._synth import encode_audio, render_speech
from rime_trio.testing._v1_model import Close, V1ServerModel, Wait, select_subprotocol
from rime_trio.testing._ws3_model import CloseAction, Run, Ws3ServerModel, run_events

__all__ = ["GARBAGE", "Faults", "MemoryConnection", "MemoryServer", "ServerSocket", "open_pool"]

#: What a ``garbage_at`` fault sends: neither JSON nor a v1 envelope.
GARBAGE = "this is not JSON {"


@dataclass(frozen=True, slots=True)
class Faults:
    """What goes wrong on one connection (nothing, by default).

    :ivar refuse: raised by the connect instead of opening (``APIStatusError`` for a refused
        handshake, ``ConnectError`` for a failed TCP connection). Raised once: give each
        connect its own.
    :ivar drop_after_messages: the connection is reset (no close frame) as the server reads
        this many client messages, before it answers the last one.
    :ivar drop_after_chunks: the connection is reset when this many audio chunks went out
        and the next is due (0: the text was taken, no audio ever comes).
    :ivar stall: the server reads everything and answers nothing (v1: not even ``ready``).
    :ivar garbage_at: the server's frame number *garbage_at* (0: its first; v1: ``ready``)
        is :data:`GARBAGE`; the frames it had to send follow.
    """

    refuse: RimeError | None = None
    drop_after_messages: int | None = None
    drop_after_chunks: int | None = None
    stall: bool = False
    garbage_at: int | None = None


@dataclass(frozen=True, slots=True)
class _Hangup:
    """The server's close frame, as it travels to the client."""

    code: int
    reason: str = ""


class _Gone(Exception):
    """The connection is over for the server (the client left, or a fault reset it)."""


@dataclass(eq=False)
class ServerSocket:
    """The server's end of one connection, and what it saw and did.

    :ivar number: which connect made it (1-based, refused connects counted).
    :ivar received: every client message, decoded (``/ws3``: a ``ClientMessage``; v1: a
        ``WebSocketRequest``).
    :ivar runs: the synthesis runs (v1: sentences), with the audio actually sent for each.
    :ivar audio: every audio byte sent, in order.
    :ivar close_code: the close code the server sent (None: it sent no close frame).
    :ivar dropped: a fault reset the connection.
    :ivar closed_by_client: the client closed it.
    """

    server: MemoryServer
    number: int
    url: str
    faults: Faults
    encoding: Encoding | None  # v1's (None: /ws3)
    inbox: MemoryObjectReceiveStream[Frame]
    outbox: MemoryObjectSendStream[Frame | _Hangup]
    received: list[ClientMessage | tts.WebSocketRequest] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    close_code: int | None = None
    dropped: bool = False
    closed_by_client: bool = False
    _chunks: int = 0
    _sent: int = 0  # frames sent
    _scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)

    def texts(self) -> list[str]:
        """The texts the client sent on this connection, in order (either protocol)."""
        texts: list[str] = []
        for message in self.received:
            if isinstance(message, tts.WebSocketRequest):
                if message.WhichOneof("payload") == "text":
                    texts.append(message.text)
            elif isinstance(message, TextMessage):
                texts.append(message.text)
        return texts

    def vanish(self) -> None:
        """Reset the connection now, whatever the server was doing (a server that drops an
        idle socket): the client's end finds it gone."""
        self.dropped = True
        self._scope.cancel()

    async def run(self) -> None:
        with self._scope:
            try:
                with self.outbox, self.inbox:  # on the way out: reads end, writes fail
                    if self.faults.stall:
                        while True:
                            self._take(await self._next())
                    elif self.encoding is None:
                        await self._serve_ws3()
                    else:
                        await self._serve_v1()
            except _Gone:
                pass

    # ----------------------------------------------------------------- frames

    async def _next(self) -> Frame:
        """The client's next frame (waiting for it)."""
        try:
            frame = await self.inbox.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self.closed_by_client = not self.dropped
            raise _Gone from None
        return frame

    def _next_nowait(self) -> Frame | None:
        """The client's next frame if one is here already, else None."""
        try:
            frame = self.inbox.receive_nowait()
        except anyio.WouldBlock:
            return None
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self.closed_by_client = not self.dropped
            raise _Gone from None
        return frame

    def _take(self, frame: Frame) -> ClientMessage | tts.WebSocketRequest:
        """Decode and record a client frame (the connection is reset here if that was the
        ``drop_after_messages``-th).

        :raises ProtocolError: if it is not a message of the connection's protocol.
        """
        message = decode_client_message(frame) if self.encoding is None else decode_request(frame)
        self.received.append(message)
        if len(self.received) == self.faults.drop_after_messages:
            self._reset()
        return message

    async def _send(self, frame: Frame | _Hangup) -> None:
        if self._sent == self.faults.garbage_at:
            self._sent += 1
            await self._send(GARBAGE)
        self._sent += 1
        try:
            self.outbox.send_nowait(frame)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.closed_by_client = not self.dropped
            raise _Gone from None
        await anyio.lowlevel.checkpoint()  # one frame at a time: the client reads meanwhile

    def _before_chunk(self) -> None:
        if self._chunks == self.faults.drop_after_chunks:
            self._reset()
        self._chunks += 1

    def _reset(self) -> NoReturn:
        """Drop the connection without a close frame (a TCP reset): what was sent stays
        readable, then the client's receive and send raise ConnectionLost."""
        self.dropped = True
        raise _Gone

    async def _hang_up(self, code: int, reason: str = "") -> NoReturn:
        self.close_code = code
        await self._send(_Hangup(code, reason))
        raise _Gone

    # ----------------------------------------------------------------- /ws3

    async def _serve_ws3(self) -> None:
        """The emulator's reader and speaker in one loop: read what came, speak what is due
        (one frame at a time, reading between frames), close after ``eos``."""
        query: dict[str, object] = dict(parse_qsl(urlsplit(self.url).query))
        options = options_from_params(query, api_key="memory", http=False)
        model = Ws3ServerModel(options.segment)
        while True:
            await self._read_ws3(model)
            action = model.next_action()
            if action is None:
                await self._read_ws3(model, wait=True)
            elif isinstance(action, CloseAction):
                await self._hang_up(action.code, action.reason)
            else:
                await self._speak_ws3(model, action, options)

    async def _read_ws3(self, model: Ws3ServerModel, *, wait: bool = False) -> None:
        """Feed the model every message here (at least one if *wait*)."""
        frame = await self._next() if wait else self._next_nowait()
        while frame is not None:
            try:
                message = self._take(frame)
            except ProtocolError as exc:
                await self._send(encode_server_event(ErrorEvent(str(exc))))
            else:
                model.receive(cast(ClientMessage, message))
            frame = self._next_nowait()

    async def _speak_ws3(self, model: Ws3ServerModel, run: Run, options: RimeOptions) -> None:
        record = RunRecord(run.text, run.context_id)
        self.runs.append(record)
        fail_text = self.server.fail_text
        if fail_text is not None and fail_text in run.text:
            await self._send(encode_server_event(ErrorEvent(f"cannot say {run.text!r}")))
            model.finish_run(run)
            return  # an error instead of the run, and no done (as the emulator's error_event)
        if not run.empty:
            rate = options.sample_rate
            speech = render_speech(run.text, rate)
            audio = encode_audio(speech.pcm, options.audio_format, rate)
            sizes = chunk_sizes(len(audio), self.server.chunk_bytes)
            for event in run_events(run, speech, audio, sizes, model.readings.timestamps):
                await self._read_ws3(model)  # a clear may abandon the run meanwhile
                if model.is_abandoned(run):
                    break
                if isinstance(event, AudioEvent):
                    self._before_chunk()
                await self._send(encode_server_event(event))
                if isinstance(event, AudioEvent):
                    record.audio += event.data
                    self.audio += event.data
        for done in model.finish_run(run):
            await self._send(encode_server_event(done))

    # ----------------------------------------------------------------- v1

    async def _serve_v1(self) -> None:
        """The emulator's v1 reader and speaker in one loop: the model decides what to send
        (``ready`` first, contexts interleaved); messages are read between frames."""
        assert self.encoding is not None
        model = V1ServerModel(chunk_bytes=self.server.chunk_bytes, records=self.runs)
        while True:
            while (frame := self._next_nowait()) is not None:
                await self._take_v1(model, frame)
            item = model.next_event(anyio.current_time())
            if item is None:
                await self._take_v1(model, await self._next())
            elif isinstance(item, Wait):  # pragma: no cover (no pacing here)
                await anyio.sleep_until(item.until)
            elif isinstance(item, Close):
                await self._hang_up(item.code, item.reason)
            else:
                response = item.response
                if item.kind == "audio":
                    self._before_chunk()
                await self._send(encode_message(response, self.encoding))
                if item.kind == "audio":
                    self.audio += response.audio
                    if item.record is not None:
                        item.record.audio += response.audio

    async def _take_v1(self, model: V1ServerModel, frame: Frame) -> None:
        assert self.encoding is not None
        try:
            request = cast(tts.WebSocketRequest, self._take(frame))
        except ProtocolError as exc:
            # Unrecoverable by the docs (the emulator's answer): say why, then close.
            error = tts.WebSocketError(kind="invalid_input", message=str(exc))
            await self._send(encode_message(tts.WebSocketResponse(error=error), self.encoding))
            await self._hang_up(1007, "undecodable frame")
        model.receive(request, anyio.current_time())
        kind = request.WhichOneof("payload")
        text = request.text if kind == "text" else request.start.text if kind == "start" else ""
        fail_text = self.server.fail_text
        if (
            fail_text is not None
            and fail_text in text
            and request.context_id in model.open_contexts
        ):
            model.fail(request.context_id, "internal", f"cannot say {text!r}")


class MemoryConnection:
    """The client's end of an in-memory connection: :class:`~rime_trio._transport.Connection`'s
    interface, with its errors (a reset or a vanished server: ConnectionLost; a close frame
    other than 1000: the mapped error, as ``_transport`` maps it)."""

    _ids = 0

    def __init__(
        self,
        url: str,
        subprotocol: str | None,
        to_server: MemoryObjectSendStream[Frame],
        from_server: MemoryObjectReceiveStream[Frame | _Hangup],
        server_socket: ServerSocket,
    ) -> None:
        MemoryConnection._ids += 1
        self.id = MemoryConnection._ids
        self.url = url
        self.subprotocol = subprotocol
        #: the server's end (for tests: what it received and sent)
        self.server_socket = server_socket
        self._to_server = to_server
        self._from_server = from_server
        self._close: tuple[int, str] | None = None  # the server's close frame, once read
        self._lost = False
        self._closing = False
        self.closed = False
        #: what came from the server (frames, and the pongs of the pings sent): signs of life
        self.heard = 0

    def __repr__(self) -> str:
        state = "open" if self.usable else "closed"
        return f"<MemoryConnection #{self.id} {state} {self.url}>"

    @property
    def usable(self) -> bool:
        return not (self._closing or self._lost or self._close is not None)

    def seems_alive(self) -> bool:
        """As the real peek: usable, nothing arrived while it waited, the server is there."""
        stats = self._from_server.statistics()
        return self.usable and stats.current_buffer_used == 0 and stats.open_send_streams > 0

    def _closed_error(self) -> RimeError:
        assert self._close is not None
        return _close_error(*self._close, None, server_name(self.url))

    async def send(self, *frames: Frame, ping: bool = False) -> None:
        await anyio.lowlevel.checkpoint()  # cancelled here, nothing was sent
        if self._close is not None:
            raise self._closed_error()
        if self._closing or self._lost:
            raise ConnectionLost("sending failed: the connection is closed")
        try:
            for frame in frames:
                self._to_server.send_nowait(frame)
            if ping:
                self.heard += 1  # the in-memory server's pong, at once
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._lost = True
            raise ConnectionLost(
                "sending failed: the connection closed without a close frame (code 1006)"
            ) from None

    async def receive(self) -> Frame | None:
        if self._close is None:
            try:
                item = await self._from_server.receive()
            except anyio.EndOfStream:
                self._lost = True
                raise ConnectionLost(
                    "receiving failed: the connection closed without a close frame (code 1006)"
                ) from None
            except anyio.ClosedResourceError:
                raise ConnectionLost("receiving failed: the connection is closed") from None
            self.heard += 1
            if not isinstance(item, _Hangup):
                return item
            self._close = (item.code, item.reason)
        if self._close[0] == 1000:
            return None
        raise self._closed_error()

    async def abort(self) -> None:
        self._closing = True
        if not self.closed:
            self.closed = True
            self._to_server.close()
            self._from_server.close()
        with anyio.CancelScope(shield=True):
            await anyio.lowlevel.checkpoint()

    async def aclose(self, *, wait_for_close: float = 1.0) -> None:
        await self.abort()  # the close handshake takes no time in memory


class MemoryServer:
    """The server end of every in-memory connection (see the module docstring). Run it as
    ``async with MemoryServer() as server:`` (its sockets' tasks live in the block).

    :ivar faults: what goes wrong, by connect number (1-based, refused connects counted).
    :ivar fail_text: a run (``/ws3``) or text (v1) holding it is answered with an error.
    :ivar connects: connects asked for, refused ones included.
    :ivar sockets: the server's end of every connection made, in order.
    """

    def __init__(self, *, chunk_bytes: int = 4800, fail_text: str | None = None) -> None:
        self.chunk_bytes = chunk_bytes
        self.fail_text = fail_text
        self.faults: dict[int, Faults] = {}
        self.connects = 0
        self.sockets: list[ServerSocket] = []
        self._stack = AsyncExitStack()
        self._task_group: TaskGroup | None = None

    def talked(self) -> list[ServerSocket]:
        """The sockets the client sent anything on."""
        return [socket for socket in self.sockets if socket.received]

    async def __aenter__(self) -> Self:
        self._task_group = await self._stack.enter_async_context(open_task_group())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._stack.__aexit__(exc_type, exc, tb)

    async def connect(
        self,
        url: str,
        *,
        api_key: str | None,
        ssl_context: object = None,
        connect_timeout: float = 10.0,
        subprotocols: list[str] | None = None,
    ) -> Connection:
        """``open_connection``'s signature: a connection to this server, or the connect's
        ``refuse`` fault raised."""
        assert self._task_group is not None, "use the server as `async with MemoryServer():`"
        self.connects += 1
        number = self.connects
        faults = self.faults.get(number, Faults())
        await anyio.lowlevel.checkpoint()
        if faults.refuse is not None:
            raise faults.refuse
        subprotocol: str | None = None
        encoding: Encoding | None = None
        if urlsplit(url).path == "/ws":
            subprotocol, encoding = select_subprotocol(subprotocols or [])
        to_server, inbox = anyio.create_memory_object_stream[Frame](math.inf)
        outbox, from_server = anyio.create_memory_object_stream[Frame | _Hangup](math.inf)
        socket = ServerSocket(self, number, url, faults, encoding, inbox, outbox)
        self.sockets.append(socket)
        self._task_group.start_soon(socket.run)
        connection = MemoryConnection(url, subprotocol, to_server, from_server, socket)
        return cast(Connection, connection)


@asynccontextmanager
async def open_pool(
    server: MemoryServer, *, api_key: str = "memory-key", **settings: Any
) -> AsyncIterator[ConnectionPool]:
    """A pool whose connections are *server*'s (closed on the way out)."""
    async with open_task_group() as task_group:
        pool = ConnectionPool(
            task_group, api_key=api_key, settings=PoolSettings(**settings), connect=server.connect
        )
        try:
            yield pool
        finally:
            await pool.aclose()
