"""The public client: options, HTTP synthesis, streaming, and the socket pool."""

from __future__ import annotations

import logging
import ssl
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

import anyio
import httpx

from ._concurrency import (
    TaskGroup,
    create_task_group,
    current_task,
    finish_shielded,
    single_exception,
)
from ._errors import ConfigurationError, EmptyTextError, StreamClosed
from ._events import AudioChunk, SpeechEvent, WordTimestamp
from ._http import HttpSynthesizer
from ._metrics import MetricsHook, MetricsSink, StreamMetrics, SynthesisMetrics, SynthesisRecord
from ._options import (
    DEFAULT_HTTP_URL,
    AudioFormat,
    RimeOptions,
    StreamProtocol,
    streaming_url,
    websocket_url,
)
from ._pool import ConnectionPool, PooledSocket, PoolSettings
from ._segment import Tokenizer
from ._stream import SpeechStream, open_stream
from ._stream_tasks import StreamSettings
from ._v1_session import V1Session
from ._voices import Voice, voices_url

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from ._otel import Telemetry

__all__ = ["Capabilities", "RimeClient", "SynthesisChunks", "SynthesisResult", "TimestampDelivery"]

logger = logging.getLogger("rime_trio")


#: How a stream's word timestamps arrive: beside the audio (``/ws3``: each run's words with
#: its chunks), after the audio (v1: once, in the context's ``done``), or not at all.
TimestampDelivery = Literal["with_audio", "after_audio", "none"]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the current mode offers.

    :ivar streaming: the one-shot calls stream (incremental input; word timestamps).
    :ivar aligned_transcript: the one-shot calls return word timestamps.
    :ivar protocol: what ``client.stream()`` speaks: ``"v1"`` (Rime's WebSocket v1, streams
        share sockets) or ``"ws3"`` (a socket per stream).
    :ivar word_timestamps: how a stream's word timestamps arrive: ``"with_audio"`` (``/ws3``),
        ``"after_audio"`` (v1: all of a stream's words at once, after its last audio, or
        after the audio of each ``clear()``-ed part), ``"none"`` (v1 with
        ``word_timestamps=False``).
    """

    streaming: bool
    aligned_transcript: bool
    protocol: StreamProtocol = "ws3"
    word_timestamps: TimestampDelivery = "with_audio"


@dataclass(frozen=True, slots=True)
class SynthesisResult:
    """The whole audio of one synthesis (word timestamps in streaming mode).

    :ivar metrics: what the synthesis measured, the object the client's ``on_metrics`` hook
        got: :class:`SynthesisMetrics` over HTTP, :class:`StreamMetrics` in streaming mode
        (where the synthesis is a stream).
    """

    audio: bytes
    audio_format: AudioFormat
    sample_rate: int
    duration: float
    word_timestamps: tuple[WordTimestamp, ...] = field(default=())
    metrics: StreamMetrics | SynthesisMetrics | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return (
            f"SynthesisResult({len(self.audio)} bytes {self.audio_format}@{self.sample_rate}, "
            f"{self.duration:.3f}s, {len(self.word_timestamps)} words)"
        )


class SynthesisChunks(AsyncIterator[AudioChunk]):
    """The audio of :meth:`RimeClient.synthesize_chunks`, chunk by chunk, with the word
    timestamps seen so far (:attr:`words`, in streaming mode) and its :attr:`metrics`."""

    __slots__ = ("_events", "_metrics", "words")

    def __init__(
        self,
        events: AsyncIterator[SpeechEvent],
        metrics: Callable[[], StreamMetrics | SynthesisMetrics],
    ) -> None:
        self._events = events
        self._metrics = metrics
        #: the word timestamps that came with the chunks so far (streaming mode only; HTTP
        #: answers carry none)
        self.words: list[WordTimestamp] = []

    async def __anext__(self) -> AudioChunk:
        """The next chunk (a stream's word timestamps go to :attr:`words`).

        :raises StopAsyncIteration: after the last chunk.
        :raises RimeError: where the synthesis failed.
        """
        while True:
            event = await self._events.__anext__()
            if isinstance(event, AudioChunk):
                return event
            self.words.append(event)

    @property
    def metrics(self) -> StreamMetrics | SynthesisMetrics:
        """What the synthesis measured so far (final once the ``async with`` block has
        exited): :class:`SynthesisMetrics` over HTTP, :class:`StreamMetrics` in streaming
        mode."""
        return self._metrics()


class RimeClient:
    """A Rime TTS client for Trio and asyncio (on AnyIO: ``trio.run``, ``asyncio.run``, or
    ``anyio.run`` on either backend).

    Use it as an async context manager; it owns the HTTP connection pool and the WebSocket
    pool, and the tasks that keep those sockets alive::

        async with RimeClient(base_url="ws://127.0.0.1:8080", api_key=...) as client:
            async with client.stream() as stream:
                await stream.push_text("Hello there. ")
                await stream.end_input()
                async for event in stream:
                    ...

    Options come as a :class:`RimeOptions`, as keyword arguments, or both (keywords win).

    :param http_client: an ``httpx.AsyncClient`` to share (the client then never closes it).
    :param timeout: HTTP request timeout, seconds.
    :param ssl_context: TLS settings for ``wss://`` and ``https://`` (verification is on by
        default).
    :param max_pool_size: fresh sockets kept open for the next streams, at most (0: none).
    :param max_session_duration: an unused socket older than this is closed, seconds.
    :param mark_refreshed_on_get: restart a socket's session timer when it is handed out.
    :param connect_timeout: bound on TCP + TLS + WebSocket handshake, seconds (on v1, and
        again on the server's ``ready``).
    :param max_contexts_per_socket: v1 only: streams that share one socket at most; one
        more opens another socket.
    :param teardown_timeout: how long closing a socket waits for the server's reply.
    :param stream_settings: audio timeout, buffer sizes and retries for streams.
    :param on_metrics: called with the final :class:`StreamMetrics` of every stream (and
        every ``synthesize`` in streaming mode) and the :class:`SynthesisMetrics` of every
        HTTP synthesis, once each, as it ends. It runs in the stream's teardown, so keep it
        quick (hand the numbers on, do no I/O); whatever it raises is logged on
        ``rime_trio.metrics`` and ignored.
    :param telemetry: export spans and metrics through OpenTelemetry (needs the ``otel``
        extra: ``opentelemetry-api``); a no-op until an OpenTelemetry SDK is configured.
        Passing a provider turns it on too.
    :param tracer_provider: spans go there rather than to the global provider.
    :param meter_provider: metrics go there rather than to the global provider.
    :raises ConfigurationError: for invalid options, or telemetry without opentelemetry-api.
    """

    def __init__(
        self,
        options: RimeOptions | None = None,
        *,
        http_client: httpx.AsyncClient | None = None,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        max_pool_size: int = 8,
        max_session_duration: float = 300.0,
        mark_refreshed_on_get: bool = True,
        connect_timeout: float = 10.0,
        teardown_timeout: float = 1.0,
        max_contexts_per_socket: int = 64,
        stream_settings: StreamSettings | None = None,
        on_metrics: MetricsHook | None = None,
        telemetry: bool = False,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        **option_fields: Any,
    ) -> None:
        if options is None:
            options = RimeOptions(**option_fields)
        elif option_fields:
            options = options.replace(**option_fields)
        self._options = options
        self._timeout = timeout
        self._ssl_context = ssl_context
        self.pool_settings = PoolSettings(
            max_size=max_pool_size,
            max_session_duration=max_session_duration,
            mark_refreshed_on_get=mark_refreshed_on_get,
            connect_timeout=connect_timeout,
            teardown_timeout=teardown_timeout,
            max_contexts_per_socket=max_contexts_per_socket,
        )
        self.stream_settings = stream_settings or StreamSettings()
        self._http_client = http_client
        self._http: HttpSynthesizer | None = None
        self._pool: ConnectionPool | None = None
        self._task_group: TaskGroup | None = None
        self._exit_stack: AsyncExitStack | None = None
        self._streams: weakref.WeakSet[SpeechStream] = weakref.WeakSet()
        self._closed = False
        self._metrics = MetricsSink(on_metrics)
        if telemetry or tracer_provider is not None or meter_provider is not None:
            self._metrics.telemetry = _telemetry(tracer_provider, meter_provider)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._exit_stack else "not started"
        mode = "streaming" if self._options.streaming else "http"
        return f"<RimeClient {mode} {self._options.endpoint} {state}>"

    @property
    def options(self) -> RimeOptions:
        return self._options

    @property
    def capabilities(self) -> Capabilities:
        """What the current options offer (see :class:`Capabilities`)."""
        options = self._options
        streaming = options.streaming
        protocol = options.stream_protocol
        delivery: TimestampDelivery = "with_audio"
        if not options.timestamps_available:
            delivery = "none"  # Rime times English and Spanish only (docs/arcana-sunset.mdx)
        elif protocol == "v1":
            delivery = "after_audio" if options.word_timestamps else "none"
        aligned = streaming and delivery != "none"
        return Capabilities(streaming, aligned, protocol, delivery)

    @property
    def pool(self) -> ConnectionPool:
        """The WebSocket pool (for inspection: ``pool.idle``, ``pool.stats``)."""
        if self._pool is None:
            raise StreamClosed("use the client inside `async with RimeClient(...) as client:`")
        return self._pool

    def update_options(self, **changes: Any) -> RimeOptions:
        """Apply *changes* to the client's options and return the new options.

        When the streaming URL changes (model, speaker, any query parameter), idle sockets for
        the old URL are retired; running streams finish on their own socket. A new
        ``api_key`` retires the idle sockets that carried the old one, and later streams open
        theirs with the new key.

        :raises ConfigurationError: if the result is invalid (the old options stay).
        """
        old = self._options
        new = old.replace(**changes)
        self._options = new
        new_url = _stream_url(new)
        changed = _stream_url(old) != new_url or old.api_key != new.api_key
        if self._pool is not None and new_url is not None and changed:
            self._pool.invalidate(new_url, new.api_key)
        return new

    # ----------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Self:
        if self._closed:
            raise StreamClosed("this RimeClient has been closed")
        if self._exit_stack is not None:
            raise RuntimeError("RimeClient is already entered")
        stack = AsyncExitStack()
        stack.enter_context(single_exception())
        self._task_group = await stack.enter_async_context(create_task_group())
        self._pool = ConnectionPool(
            self._task_group,
            api_key=self._options.api_key,
            ssl_context=self._ssl_context,
            settings=self.pool_settings,
            on_open=None if (t := self._metrics.telemetry) is None else t.socket_opened,
        )
        self._exit_stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self.aclose()
        stack, self._exit_stack = self._exit_stack, None
        if stack is None:
            return None
        # The task group must exit in the scope it was entered in: here, not in aclose(), which
        # may be called from inside some other task group. It sees a cancellation from the
        # body, so a cancellation of its own scope is absorbed there. The caller's own
        # exception does not go through it: a task group would wrap it in an ExceptionGroup
        # (and flatten a group the caller raised), and it must leave the block unchanged.
        if exc is None or isinstance(exc, anyio.get_cancelled_exc_class()):
            return await stack.__aexit__(exc_type, exc, tb)
        try:
            await stack.__aexit__(None, None, None)
        except Exception as teardown_error:
            # The pool's background work failing as the caller's error leaves: the caller's
            # error is what they need to see.
            logger.debug(
                "client teardown failure behind the caller's own exception", exc_info=teardown_error
            )
        return None

    async def aclose(self) -> None:
        """End running streams, close every socket, close HTTP.

        Bounded in time, safe to call twice, from any task and under cancellation.
        """
        if self._closed:
            return
        self._closed = True
        caller = current_task()
        await finish_shielded(lambda: self._close(caller))

    async def _close(self, caller: object) -> None:
        streams = list(self._streams)
        for stream in streams:
            stream._cancel_from_client()
        with anyio.move_on_after(self.pool_settings.teardown_timeout + 1.0):
            for stream in streams:
                # A stream whose block the caller is in cannot end before this returns; its
                # socket goes back to the closed pool, which closes it, when the block exits.
                if stream._owner is not caller:
                    await stream.finished.wait()
        if self._pool is not None:
            await self._pool.aclose()
        if self._http is not None:
            await self._http.aclose()
        # The pool's background work is bounded on its own (opens are cancelled, closes
        # last at most teardown_timeout): nothing here may cancel the caller's code.

    def _require_open(self) -> None:
        if self._closed:
            raise StreamClosed("this RimeClient has been closed")
        if self._exit_stack is None:
            raise StreamClosed("use the client inside `async with RimeClient(...) as client:`")

    def _require_http(self) -> HttpSynthesizer:
        """The HTTP side, built on first use: a client that only streams never pays for an
        httpx client and its TLS context (tens of milliseconds of CPU)."""
        self._require_open()
        if self._http is None:
            self._http = HttpSynthesizer(
                self._http_client, timeout=self._timeout, ssl_context=self._ssl_context
            )
        return self._http

    def _options_for(self, overrides: dict[str, Any]) -> RimeOptions:
        return self._options.replace(**overrides) if overrides else self._options

    async def prewarm(self) -> None:
        """Open a streaming socket now, so the next stream skips the handshake (in HTTP
        mode too: streams use the same server's WebSocket, see :meth:`stream`). On v1, the
        socket (once the server is ``ready``) that the next streams share.

        :raises ConfigurationError: if the options cannot be streamed (see :meth:`stream`).
        :raises APIStatusError, ConnectError, RimeTimeoutError: if the socket cannot open.
        :raises ProtocolError: v1 only: the server does not speak v1 as this client does.
        """
        self._require_open()
        options = streaming_options(self._options)
        kind = V1Session if options.stream_protocol == "v1" else PooledSocket
        await self.pool.prewarm(websocket_url(options), kind, options.api_key)

    async def voices(self, model: str | None = None) -> list[Voice]:
        """The speakers the client's server offers (of *model* only, if given): Rime's
        public voice list for Rime, the same path on another server (the emulator serves its
        own). No key is sent.

        :raises APIStatusError, ProtocolError, RimeConnectionError, RimeTimeoutError: if
            the list cannot be read.
        """
        return await self._require_http().voices(voices_url(self._options.endpoint), model=model)

    # ----------------------------------------------------------------- streaming

    def stream(
        self,
        *,
        tokenizer: Tokenizer | None = None,
        context_id: str | None = None,
        **overrides: Any,
    ) -> AbstractAsyncContextManager[SpeechStream]:
        """Open a speech stream (see :class:`SpeechStream`) over a pooled ``/ws3`` socket of
        its own, or, on Rime's WebSocket v1 (``options.stream_protocol == "v1"``), as a
        context of a socket it shares with up to ``max_contexts_per_socket`` other streams;
        use it as ``async with client.stream() as stream:``.

        A client in HTTP mode (no ``base_url``, or an ``http(s)://`` one) streams too: over
        the WebSocket of the same server, with the same settings (Rime's streaming host for
        Rime's HTTP host, ``ws://HOST:PORT/ws3`` for ``http://HOST:PORT``). The client's mode
        decides only how :meth:`synthesize` and :meth:`synthesize_chunks` work.

        Option keywords override the client's options for this stream. *tokenizer* replaces
        the blingfire sentence splitter (any ``str -> list[str]`` callable).

        :raises ConfigurationError: for invalid overrides, or options that cannot stream
            (``audio_format="wav"``, an ``http(s)://`` base_url with a path of its own).
        :raises EmptyTextError: if the input ends without any text (at once, no connection).
        :raises APIStatusError: handshake refused (401, 400, 429...) or a 1011 close with a
            status (e.g. 400 "text is too long").
        :raises ServerError: the server sent an ``error`` event.
        :raises RimeConnectionError, RimeTimeoutError, ProtocolError: see the error tree.
        :raises StreamClosed: if the client is closed, or closes while the stream runs.
        """
        options = self._options_for(overrides)
        return open_stream(self._new_stream(options, tokenizer, context_id))

    def _new_stream(
        self,
        options: RimeOptions,
        tokenizer: Tokenizer | None = None,
        context_id: str | None = None,
    ) -> SpeechStream:
        self._require_open()
        if options is not self._options:
            self.pool.want(websocket_url(streaming_options(options)), options.api_key)
        options = streaming_options(options)
        stream = SpeechStream(
            options=options,
            pool=self.pool,
            settings=self.stream_settings,
            tokenizer=tokenizer,
            context_id=context_id,
            metrics_sink=self._metrics,
        )
        self._streams.add(stream)
        return stream

    # ----------------------------------------------------------------- synthesis

    async def synthesize(self, text: str, **overrides: Any) -> SynthesisResult:
        """Synthesize *text* and return all of its audio (over HTTP, or over a pooled socket
        in streaming mode, where word timestamps come too).

        :raises EmptyTextError: if *text* is empty or whitespace.
        :raises InvalidTextError: if *text* holds a lone surrogate (UTF-8 cannot carry it),
            before anything is sent.
        :raises ConfigurationError: for invalid overrides.
        :raises APIStatusError: when the server answers with a status other than 2xx
            (status code and message kept; redirects are not followed).
        :raises ProtocolError: when the server sends what cannot be understood (over HTTP,
            a ``pcm`` or ``wav`` body ending in half a sample).
        :raises RimeConnectionError: when the connection fails.
        :raises RimeTimeoutError: when the server does not answer in time.
        """
        options = self._options_for(overrides)
        audio = bytearray()
        duration = 0.0
        # One path for both modes: synthesize_chunks chooses the transport.
        async with self.synthesize_chunks(text, options=options) as chunks:
            async for chunk in chunks:
                audio += chunk.data
                duration += chunk.duration
        return SynthesisResult(
            bytes(audio),
            options.audio_format,
            options.sample_rate,
            duration,
            tuple(chunks.words),
            chunks.metrics,
        )

    @asynccontextmanager
    async def synthesize_chunks(
        self, text: str, *, options: RimeOptions | None = None, **overrides: Any
    ) -> AsyncIterator[SynthesisChunks]:
        """Synthesize *text*, yielding audio chunks as they arrive (earliest first audio)::

            async with client.synthesize_chunks("Hello.") as chunks:
                async for chunk in chunks:
                    play(chunk.data)
            print(chunks.metrics)

        :raises EmptyTextError: if *text* is empty or whitespace.
        :raises InvalidTextError, APIStatusError, ProtocolError, RimeConnectionError,
            RimeTimeoutError: as :meth:`synthesize`.
        """
        self._require_open()
        _check_text(text)
        options = options or self._options_for(overrides)
        if options.streaming:
            async with open_stream(self._new_stream(options)) as stream:
                await stream.push_text(text)
                await stream.end_input()
                yield SynthesisChunks(stream, lambda: stream.metrics)
            return
        http = self._require_http()
        record = SynthesisRecord(options, len(text), anyio.current_time())
        span = self._metrics.start_span("rime.synthesis")
        error: BaseException | None = None
        try:
            async with http.stream(options, text, record) as chunks:
                yield SynthesisChunks(chunks, lambda: _measure_http(record))
        except BaseException as exc:
            error = exc
            raise
        finally:
            # No await here: a cancelled caller still reports, exactly once.
            self._metrics.finish(record.finish(anyio.current_time(), error), span)


async def list_voices(
    model: str | None = None,
    *,
    base_url: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> list[Voice]:
    """The speakers a server offers, without a client or a key: Rime's public list
    (``https://users.rime.ai/data/voices/all-v2.json``), or the same path on *base_url*'s
    server (the emulator's ``http_url`` or ``ws_url``, say). Each HTTP step is bounded by
    10 seconds; bound the whole with ``anyio.fail_after()`` if you need to.

    :raises APIStatusError, ProtocolError, RimeConnectionError, RimeTimeoutError: if the
        list cannot be read.
    """
    http = HttpSynthesizer(timeout=10.0, ssl_context=ssl_context)
    try:
        return await http.voices(voices_url(base_url or DEFAULT_HTTP_URL), model=model)
    finally:
        await http.aclose()


def streaming_options(options: RimeOptions) -> RimeOptions:
    """*options* as a stream uses them: themselves in streaming mode; in HTTP mode the same
    settings on the same server's WebSocket (worked out once per options object: they are
    frozen, and every stream asks).

    :raises ConfigurationError: if they cannot be streamed.
    """
    if options.streaming:
        return options
    twin = options._streaming_twin
    if twin is None:
        try:
            twin = options.replace(base_url=streaming_url(options))
            websocket_url(twin)  # e.g. audio_format="wav" cannot stream
        except ConfigurationError as exc:
            raise ConfigurationError(
                f"streaming from an HTTP-mode client uses the server's WebSocket, but: {exc}"
            ) from None
        object.__setattr__(options, "_streaming_twin", twin)
    return twin


def _stream_url(options: RimeOptions) -> str | None:
    """The URL a stream with *options* connects to (None: they cannot stream)."""
    try:
        return websocket_url(streaming_options(options))
    except ConfigurationError:
        return None


def _check_text(text: str) -> None:
    if not text or not text.strip():
        raise EmptyTextError("nothing to synthesize: the text is empty")


def _measure_http(record: SynthesisRecord) -> SynthesisMetrics:
    if record.final is not None:
        return record.final
    return record.snapshot(anyio.current_time(), "running", None)


def _telemetry(
    tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None
) -> Telemetry:
    """OpenTelemetry for a client, imported only now: ``import rime_trio`` never needs it.

    :raises ConfigurationError: if ``opentelemetry-api`` is not installed.
    """
    try:
        from ._otel import Telemetry
    except ImportError:
        raise ConfigurationError(
            "telemetry needs OpenTelemetry's API: pip install 'rime-trio[otel]'"
        ) from None
    return Telemetry(tracer_provider, meter_provider)
