"""A Rime-compatible server for tests, benchmarks and offline demos.

It serves ``/ws3`` (WebSocket) and ``/v1/rime-tts`` (HTTP) on one port of 127.0.0.1 through a
real ASGI server (hypercorn's trio worker). It speaks through :mod:`rime_trio._protocol` and
validates parameters with the client's own option rules, so the two cannot drift apart.

Behaviour follows ``PROTOCOL.md``; where Rime's docs leave a point open, the emulator picks
one documented answer and a setting selects the other (see :class:`EmulatorConfig`).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast
from urllib.parse import parse_qsl

import trio

from .._concurrency import single_exception
from .._errors import ConfigurationError, ProtocolError
from .._options import AudioFormat, RimeOptions, format_for_accept, options_from_params
from .._protocol import (
    MAX_TEXT_CHARS,
    AudioEvent,
    Clear,
    DoneEvent,
    EndOfStream,
    ErrorEvent,
    Flush,
    TextMessage,
    TimestampsEvent,
    decode_client_message,
    encode_server_event,
    sentence_end,
)
from ._proxy import TcpFaultProxy
from ._synth import encode_audio, render_speech

__all__ = ["EmulatorConfig", "EmulatorStats", "Fault", "RimeEmulator", "open_emulator"]

logger = logging.getLogger("rime_trio.emulator")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_STREAMING_FORMATS: Final = ("pcm", "mulaw")
_HTTP_FORMATS: Final = ("pcm", "mulaw", "wav")
_CONTENT_TYPE: Final = {"pcm": "audio/pcm", "mulaw": "audio/x-mulaw", "wav": "audio/wav"}


@dataclass(slots=True)
class EmulatorConfig:
    """How the emulator behaves. Mutable: a test may change it while the server runs; each
    new connection or request reads it afresh.

    :ivar api_key: the bearer key it accepts.
    :ivar time_to_first_chunk: seconds between a batch being ready and its first chunk.
    :ivar real_time_factor: 0 sends audio as fast as possible; 1.0 paces it in real time;
        above 1 is a server slower than real time.
    :ivar chunk_bytes: size of each audio chunk (the last of a batch may be shorter).
    :ivar eos_empty_sends_done: what ``eos`` on an empty buffer does (open in Rime's docs):
        False closes without a ``done``, True sends a ``done`` first.
    :ivar max_sockets: concurrent WebSocket limit; past it handshakes get 429
        ``Currently at websocket limit`` (None: no limit).
    :ivar max_text_chars: longest text message accepted before closing with 1011
        ``400: text is too long``.
    :ivar faults: misbehaviours to inject, each for all or some connections.
    """

    api_key: str = "emulator-key"
    time_to_first_chunk: float = 0.0
    real_time_factor: float = 0.0
    chunk_bytes: int = 4800
    eos_empty_sends_done: bool = False
    max_sockets: int | None = None
    max_text_chars: int = MAX_TEXT_CHARS
    faults: list[Fault] = field(default_factory=list)


FaultKind = Literal[
    "reject",
    "close",
    "idle_close",
    "drop",
    "stall",
    "error_event",
    "missing_done",
    "extra_done",
    "odd_chunks",
    "timestamps",
    "foreign_audio",
]


@dataclass(frozen=True, slots=True)
class Fault:
    """A misbehaviour of the emulator, for the connections it names.

    :ivar kind: what goes wrong:

        * ``reject``: refuse the handshake with *status* and *body*;
        * ``close``: close with *code* and *reason* once *after_messages* client messages
          have arrived on the socket (0: right after accepting);
        * ``idle_close``: close with *code* and *reason* after *seconds* without a client
          message (what servers and proxies do to idle sockets);
        * ``drop``: drop the TCP connection without a close frame when a batch reaches chunk
          number *after_chunks* (0: before any audio); needs ``open_emulator(tcp_faults=True)``;
        * ``stall``: send nothing for *seconds* when a batch reaches chunk *after_chunks*;
        * ``error_event``: answer every batch with an ``error`` event (*body*) instead of audio;
        * ``missing_done`` / ``extra_done``: no ``done`` for a batch, or two of them;
        * ``odd_chunks``: audio in odd-sized chunks, some of one byte (samples split);
        * ``timestamps``: send a batch's timestamps at *position*: ``before`` its first chunk,
          ``between`` chunks (the default behaviour) or ``after`` its last chunk;
        * ``foreign_audio``: before each batch's audio, send a chunk tagged with another
          stream's contextId (stale audio on a reused socket).

        A very slow server is ``EmulatorConfig.real_time_factor`` above 1.

    :ivar connections: 1-based WebSocket connection numbers it applies to (None: all).
    """

    kind: FaultKind
    connections: frozenset[int] | None = None
    status: int = 500
    body: str = "Internal server error"
    code: int = 1011
    reason: str = ""
    after_messages: int = 0
    seconds: float = 0.0
    after_chunks: int = 0
    position: Literal["before", "between", "after"] = "between"

    def applies_to(self, connection: int) -> bool:
        return self.connections is None or connection in self.connections


@dataclass(slots=True)
class EmulatorStats:
    """What the emulator saw and sent; tests assert on it."""

    handshakes: int = 0  # WebSocket connections accepted
    rejected: int = 0  # WebSocket handshakes refused
    open_sockets: int = 0  # WebSocket connections open right now
    http_requests: int = 0
    #: every client message received, per connection index, in order
    received: dict[int, list[object]] = field(default_factory=lambda: defaultdict(list))
    #: audio bytes sent, per wire contextId, in order
    audio: dict[str | None, bytearray] = field(default_factory=lambda: defaultdict(bytearray))
    #: texts synthesized, per wire contextId
    texts: dict[str | None, list[str]] = field(default_factory=lambda: defaultdict(list))

    def audio_for(self, context_prefix: str) -> bytes:
        """All audio sent for wire context ids starting with *context_prefix*, in order of
        their sequence numbers (one client stream)."""
        keys = [k for k in self.audio if k is not None and k.startswith(context_prefix)]
        keys.sort(key=lambda k: (len(k), k))
        return b"".join(bytes(self.audio[k]) for k in keys)


class _Reject(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


@dataclass(slots=True)
class _Batch:
    text: str
    context_id: str | None
    generation: int


@dataclass(slots=True)
class _EndOfStream:
    buffer_was_empty: bool


class _Pacer:
    """Paces a batch's audio at ``real_time_factor`` (0: as fast as possible)."""

    def __init__(self, real_time_factor: float, total_bytes: int, seconds: float) -> None:
        self._factor = real_time_factor
        self._seconds_per_byte = seconds / total_bytes if total_bytes else 0.0
        self._start = trio.current_time()

    async def sent(self, total_sent: int) -> None:
        """Wait until *total_sent* bytes are due."""
        if self._factor > 0:
            due = self._start + total_sent * self._seconds_per_byte * self._factor
            await trio.sleep_until(due)


class _Connection:
    """One accepted ``/ws3`` socket: a reader task and a speaker task over ASGI."""

    def __init__(
        self,
        emulator: RimeEmulator,
        index: int,
        options: RimeOptions,
        receive: Receive,
        send: Send,
        client: tuple[str, int] | None = None,
    ) -> None:
        self.emulator = emulator
        self.client = client
        self._scope: trio.CancelScope | None = None
        self.config = emulator.config
        self.index = index
        self.options = options
        self._receive = receive
        self._send = send
        self._send_lock = trio.Lock()
        self._buffer: list[tuple[str, str | None]] = []
        self._generation = 0
        self._batches, self._batch_queue = trio.open_memory_channel[_Batch | _EndOfStream](math.inf)
        self._closed = False
        self._messages = 0

    def _fault(self, kind: FaultKind) -> Fault | None:
        # Read live, so that a test can arm a fault at an exact point of a conversation.
        for fault in self.config.faults:
            if fault.kind == kind and fault.applies_to(self.index):
                return fault
        return None

    async def _maybe_close(self) -> bool:
        fault = self._fault("close")
        if fault is not None and self._messages >= fault.after_messages:
            await self._hang_up(fault.code, fault.reason)
            return True
        return False

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            nursery.start_soon(self._speak)
            await self._read()

    def _end(self) -> None:
        """Stop both tasks of this connection (the ASGI handler then returns)."""
        assert self._scope is not None
        self._scope.cancel()

    async def _hang_up(self, code: int, reason: str = "") -> None:
        await self.close(code, reason)
        self._end()

    async def send_frame(self, frame: str) -> None:
        async with self._send_lock:
            if not self._closed:
                await self._send({"type": "websocket.send", "text": frame})

    async def close(self, code: int = 1000, reason: str = "") -> None:
        async with self._send_lock:
            if not self._closed:
                self._closed = True
                await self._send({"type": "websocket.close", "code": code, "reason": reason})

    # ----------------------------------------------------------------- reading

    def _buffered_text(self) -> str:
        return "".join(piece for piece, _ in self._buffer)

    def _take_buffer(self, upto: int | None = None) -> None:
        """Queue buffered text (all of it, or its first *upto* characters) as one batch."""
        text = self._buffered_text()
        if upto is None:
            upto = len(text)
        batch_text, rest = text[:upto], text[upto:]
        # The batch carries the contextId of the message that completed it.
        context_id: str | None = None
        consumed = 0
        for piece, cid in self._buffer:
            context_id = cid
            consumed += len(piece)
            if consumed >= upto:
                break
        self._buffer = [(rest, context_id)] if rest else []
        if batch_text.strip():
            self._batches.send_nowait(_Batch(batch_text, context_id, self._generation))

    async def _read(self) -> None:
        if await self._maybe_close():
            return
        idle = self._fault("idle_close")
        while True:
            with trio.move_on_after(idle.seconds if idle else math.inf) as waiting:
                message = await self._receive()
            if waiting.cancelled_caught and idle is not None:
                await self._hang_up(idle.code, idle.reason)
                return
            if message["type"] == "websocket.disconnect":
                self._end()
                return
            frame = message.get("text") or message.get("bytes") or b""
            try:
                client_message = decode_client_message(frame)
            except ProtocolError as exc:
                await self.send_frame(encode_server_event(ErrorEvent(str(exc))))
                continue
            self.emulator.stats.received[self.index].append(client_message)
            self._messages += 1
            if await self._maybe_close():
                return
            if isinstance(client_message, TextMessage):
                if len(client_message.text) > self.config.max_text_chars:
                    await self._hang_up(1011, "400: text is too long")
                    return
                self._buffer.append((client_message.text, client_message.context_id))
                if self.options.segment == "immediate":
                    self._take_buffer()
                elif self.options.segment == "bySentence":
                    end = sentence_end(self._buffered_text())
                    if end:
                        self._take_buffer(end)
            elif isinstance(client_message, Flush):
                self._take_buffer()
            elif isinstance(client_message, Clear):
                self._buffer.clear()
                self._generation += 1  # batches queued or speaking are abandoned
            elif isinstance(client_message, EndOfStream):
                empty = not self._buffered_text().strip()
                self._take_buffer()
                self._batches.send_nowait(_EndOfStream(empty))
                # After eos the server takes no more text and closes once the audio is out,
                # but it still notices a client that goes away first.
                while (await self._receive())["type"] != "websocket.disconnect":
                    pass
                self._end()
                return

    # ----------------------------------------------------------------- speaking

    async def _speak(self) -> None:
        async for item in self._batch_queue:
            if isinstance(item, _EndOfStream):
                if item.buffer_was_empty and self.config.eos_empty_sends_done:
                    await self.send_frame(encode_server_event(DoneEvent(None)))
                await self._hang_up(1000)
                return
            if item.generation == self._generation:
                await self._speak_batch(item)

    def _chunk_sizes(self, total: int) -> list[int]:
        step = max(1, self.config.chunk_bytes)
        if self._fault("odd_chunks") is not None:
            # Odd sizes, some a single byte: PCM samples split across chunks.
            pattern = [1, step // 3 | 1, 3, step + 1, 7]
            sizes: list[int] = []
            cycle = 0
            while sum(sizes) < total:
                sizes.append(pattern[cycle % len(pattern)])
                cycle += 1
        else:
            sizes = [step] * ((total + step - 1) // step)
        if sizes:
            sizes[-1] -= sum(sizes) - total
        return [size for size in sizes if size > 0]

    async def _speak_batch(self, batch: _Batch) -> None:
        config = self.config
        options = self.options
        speech = render_speech(batch.text, options.sample_rate)
        audio = encode_audio(speech.pcm, options.audio_format, options.sample_rate)
        stats = self.emulator.stats
        stats.texts[batch.context_id].append(batch.text)
        if config.time_to_first_chunk > 0:
            await trio.sleep(config.time_to_first_chunk)
        error = self._fault("error_event")
        if error is not None:
            await self.send_frame(encode_server_event(ErrorEvent(error.body)))
            return
        if self._fault("foreign_audio") is not None:
            stale = encode_server_event(AudioEvent(b"\x11\x22" * 160, f"stale-{self.index}#1"))
            await self.send_frame(stale)
        timestamps = encode_server_event(
            TimestampsEvent(speech.words, speech.starts, speech.ends, batch.context_id)
        )
        placement = self._fault("timestamps")
        where = placement.position if placement is not None else "between"
        stall = self._fault("stall")
        drop = self._fault("drop")
        if where == "before":
            await self.send_frame(timestamps)
        pacer = _Pacer(config.real_time_factor, len(audio), speech.duration)
        sent = 0
        for number, size in enumerate(self._chunk_sizes(len(audio))):
            if drop is not None and number == drop.after_chunks:
                self.emulator._drop_tcp(self.client)
                self._closed = True  # nothing more goes out on this connection
                self._end()
                return
            if stall is not None and number == stall.after_chunks:
                await trio.sleep(stall.seconds)
            if batch.generation != self._generation:
                return  # cleared: no more audio and no done for this batch
            chunk = audio[sent : sent + size]
            await self.send_frame(encode_server_event(AudioEvent(chunk, batch.context_id)))
            stats.audio[batch.context_id] += chunk
            sent += size
            if number == 0 and where == "between":
                await self.send_frame(timestamps)
            await pacer.sent(sent)
        if where == "after":
            await self.send_frame(timestamps)
        if self._fault("missing_done") is None:
            await self.send_frame(encode_server_event(DoneEvent(batch.context_id)))
            if self._fault("extra_done") is not None:
                await self.send_frame(encode_server_event(DoneEvent(batch.context_id)))


class RimeEmulator:
    """The emulator's ASGI application and the handle tests use.

    Start it with :func:`open_emulator` (or ``rime-trio emulator``). ``http_url`` and
    ``ws_url`` are set once it listens; ``stats`` records what it saw.
    """

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config if config is not None else EmulatorConfig()
        self.stats = EmulatorStats()
        self.host = "127.0.0.1"
        self.port = 0
        self.secure = False
        self._connection_counter = itertools.count(1)
        self._socket_change = trio.lowlevel.ParkingLot()
        self._proxy: TcpFaultProxy | None = None

    def _drop_tcp(self, client: tuple[str, int] | None) -> None:
        if self._proxy is None:
            raise RuntimeError("'drop' faults need open_emulator(..., tcp_faults=True)")
        if client is None or not self._proxy.drop(client[1]):
            raise RuntimeError(f"no proxied TCP connection for {client!r}")

    async def wait_open_sockets(self, at_most: int = 0) -> None:
        """Wait until no more than *at_most* WebSocket connections are open."""
        while self.stats.open_sockets > at_most:
            await self._socket_change.park()

    def _sockets_changed(self, delta: int) -> None:
        self.stats.open_sockets += delta
        self._socket_change.unpark_all()

    @property
    def http_url(self) -> str:
        """Base URL for HTTP synthesis (``/v1/rime-tts`` is the default path)."""
        return f"{'https' if self.secure else 'http'}://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """Base URL for streaming (``/ws3`` is the default path)."""
        return f"{'wss' if self.secure else 'ws'}://{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"<RimeEmulator {self.http_url} open_sockets={self.stats.open_sockets}>"

    # ----------------------------------------------------------------- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _check_key(self, scope: Scope) -> None:
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        if authorization != f"Bearer {self.config.api_key}":
            raise _Reject(401, "Unauthorized: invalid or missing API key")

    def _options(self, params: dict[str, object], *, http: bool) -> RimeOptions:
        try:
            return options_from_params(params, api_key=self.config.api_key, http=http)
        except ConfigurationError as exc:
            raise _Reject(400, f"Bad request: {exc}") from None

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        index = next(self._connection_counter)
        try:
            if scope["path"].rstrip("/") != "/ws3":
                raise _Reject(404, f"Not found: {scope['path']}")
            self._check_key(scope)
            for fault in self.config.faults:
                if fault.kind == "reject" and fault.applies_to(index):
                    raise _Reject(fault.status, fault.body)
            limit = self.config.max_sockets
            if limit is not None and self.stats.open_sockets >= limit:
                raise _Reject(429, "Currently at websocket limit")
            query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
            options = self._options(dict(query), http=False)
            if options.audio_format not in _STREAMING_FORMATS:
                raise _Reject(
                    400, f"Bad request: the emulator streams {', '.join(_STREAMING_FORMATS)}"
                )
        except _Reject as reject:
            self.stats.rejected += 1
            await _deny(send, reject)
            return
        await send({"type": "websocket.accept"})
        self.stats.handshakes += 1
        self._sockets_changed(+1)
        try:
            await _Connection(self, index, options, receive, send, scope.get("client")).run()
        finally:
            self._sockets_changed(-1)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.stats.http_requests += 1
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            if scope["path"].rstrip("/") != "/v1/rime-tts":
                raise _Reject(404, f"Not found: {scope['path']}")
            if scope["method"] != "POST":
                raise _Reject(405, "Method not allowed: use POST")
            self._check_key(scope)
            headers = dict(scope["headers"])
            accept = headers.get(b"accept", b"audio/pcm").decode("latin-1")
            audio_format = format_for_accept(accept)
            if audio_format not in _HTTP_FORMATS:
                raise _Reject(400, f"Bad request: unsupported Accept {accept!r}")
            try:
                params = json.loads(body)
            except ValueError:
                raise _Reject(400, "Bad request: body is not JSON") from None
            if not isinstance(params, dict):
                raise _Reject(400, "Bad request: body must be a JSON object")
            text = params.pop("text", None)
            if not isinstance(text, str) or not text.strip():
                raise _Reject(400, "Bad request: 'text' must be a non-empty string")
            if len(text) > MAX_TEXT_CHARS:
                raise _Reject(400, "Bad request: text is too long")
            options = self._options(params, http=True)
        except _Reject as reject:
            await _plain_response(send, reject.status, reject.body)
            return
        await self._stream_http_audio(send, text, options, audio_format)

    async def _stream_http_audio(
        self, send: Send, text: str, options: RimeOptions, audio_format: AudioFormat
    ) -> None:
        config = self.config
        speech = render_speech(text, options.sample_rate)
        audio = encode_audio(speech.pcm, audio_format, options.sample_rate)
        self.stats.texts[None].append(text)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", _CONTENT_TYPE[audio_format].encode()),
                    (b"content-length", str(len(audio)).encode()),
                ],
            }
        )
        if config.time_to_first_chunk > 0:
            await trio.sleep(config.time_to_first_chunk)
        step = max(1, config.chunk_bytes)
        pacer = _Pacer(config.real_time_factor, len(audio), speech.duration)
        for offset in range(0, len(audio), step):
            chunk = audio[offset : offset + step]
            last = offset + step >= len(audio)
            await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            self.stats.audio[None] += chunk
            if not last:
                await pacer.sent(offset + len(chunk))


async def _plain_response(send: Send, status: int, body: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8")],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


async def _deny(send: Send, reject: _Reject) -> None:
    """Refuse a WebSocket handshake with a status and plain-text body (ASGI denial response)."""
    await send(
        {
            "type": "websocket.http.response.start",
            "status": reject.status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8")],
        }
    )
    await send({"type": "websocket.http.response.body", "body": reject.body.encode()})


@asynccontextmanager
async def open_emulator(
    config: EmulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    certfile: str | None = None,
    keyfile: str | None = None,
    tcp_faults: bool = False,
) -> AsyncIterator[RimeEmulator]:
    """Run the emulator on *host*:*port* (0 picks a free port) for the body of the block.

    Usable from any trio (or anyio-on-trio) code::

        async with open_emulator() as emulator:
            client = RimeClient(base_url=emulator.ws_url, api_key=emulator.config.api_key)

    *certfile* and *keyfile* serve ``https://`` and ``wss://`` instead. *tcp_faults* puts a TCP
    proxy in front so that ``drop`` faults can reset a connection without a close frame.
    """
    from hypercorn.config import Config
    from hypercorn.trio import serve

    emulator = RimeEmulator(config)
    hyper = Config()
    hyper.bind = [f"{host}:{0 if tcp_faults else port}"]
    hyper.accesslog = None
    hyper.errorlog = logger
    hyper.graceful_timeout = 0.5
    hyper.keep_alive_timeout = 30.0
    if certfile is not None:
        hyper.certfile = certfile
        hyper.keyfile = keyfile
        emulator.secure = True
    shutdown = trio.Event()
    with single_exception():
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(
                lambda task_status: serve(
                    # Hypercorn types ASGI messages as TypedDicts; ours are plain mappings.
                    cast(Any, emulator),
                    hyper,
                    shutdown_trigger=shutdown.wait,
                    task_status=task_status,
                )
            )
            emulator.host = host
            emulator.port = int(binds[0].rsplit(":", 1)[1])
            proxy_scope = trio.CancelScope()
            if tcp_faults:
                proxy = emulator._proxy = TcpFaultProxy(host, emulator.port)

                async def run_proxy(task_status: trio.TaskStatus[int]) -> None:
                    with proxy_scope:
                        await proxy.serve(host, port, task_status=task_status)

                emulator.port = await nursery.start(run_proxy)
            try:
                yield emulator
            finally:
                shutdown.set()
                proxy_scope.cancel()
