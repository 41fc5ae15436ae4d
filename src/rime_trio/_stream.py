"""A speech stream: text in, audio and word timestamps out, over one pooled ``/ws3`` socket.

Inside one nursery:

* the **input** task reads the caller's text channel and cuts it into sentences, each sent
  the moment its end is seen;
* the **send** task turns sentences and operations into protocol frames on the socket;
* the **recv** task decodes frames into :class:`AudioChunk` / :class:`WordTimestamp` events
  on the audio channel, and ends it once all audio of the input has arrived;
* a small **watchdog** ends the stream with :class:`RimeTimeoutError` when the server stays
  silent while audio is owed (kept off the per-frame path, which it would slow down).

Whatever ends the stream (the input's last audio, an error, the caller's exception or
cancellation, ``client.aclose()``), the socket goes back to the pool only if no audio is owed
on it; otherwise it is retired with the ``eos`` teardown, so a later stream can never receive
stale audio.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, Self, cast

import trio

from ._concurrency import single_exception
from ._errors import (
    APIStatusError,
    ConfigurationError,
    EmptyTextError,
    RimeConnectionError,
    RimeError,
    RimeTimeoutError,
    StreamClosed,
)
from ._events import AudioChunk, SpeechEvent
from ._options import RimeOptions, websocket_url
from ._pool import ConnectionPool
from ._protocol import StreamState, decode_server_event
from ._segment import SentenceSplitter, Tokenizer
from ._transport import Connection

__all__ = ["SpeechStream", "StreamSettings", "open_stream"]

logger = logging.getLogger("rime_trio")


class _Operation:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


_FLUSH: Final = _Operation("flush")
_CLEAR: Final = _Operation("clear")
_END: Final = _Operation("end of input")

_TextItem = str | _Operation


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """Per-client stream behaviour (not synthesis options: those are :class:`RimeOptions`).

    :ivar audio_timeout: longest silence from the server while audio is owed, in seconds.
        No timeout runs while the caller simply has not sent (or finished) a sentence.
    :ivar audio_buffer: events buffered for a slow reader, at most.
    :ivar max_buffered_audio_bytes: audio bytes buffered for a slow reader, at most (give or
        take one chunk); past it the recv task stops reading the socket, and TCP holds the
        server back, so client memory stays bounded however slowly the caller reads.
    :ivar text_buffer: text items the caller may queue before ``push_text`` waits.
    :ivar retries: how many times a failure before any audio was delivered is retried: a
        refused or failed connection (429, 5xx, network errors, connect timeouts) or a socket
        that dies. Everything sent so far is sent again on a new socket; nothing can be
        duplicated because nothing had been delivered. After audio was delivered, failures
        are raised with the amount of audio delivered, never retried.
    :ivar retry_backoff: base delay in seconds; retry *n* waits a random time in
        ``[0, retry_backoff * 2 ** (n - 1)]`` (full jitter), at most ``retry_backoff_max``.
    """

    audio_timeout: float = 10.0
    audio_buffer: int = 64
    max_buffered_audio_bytes: int = 2 * 1024 * 1024
    text_buffer: int = 256
    retries: int = 2
    retry_backoff: float = 0.05
    retry_backoff_max: float = 2.0

    def __post_init__(self) -> None:
        if not self.audio_timeout > 0:
            raise ConfigurationError(f"audio_timeout must be positive, got {self.audio_timeout!r}")
        if self.audio_buffer < 1 or self.text_buffer < 1:
            raise ConfigurationError("audio_buffer and text_buffer must be at least 1")
        if self.max_buffered_audio_bytes < 1:
            raise ConfigurationError("max_buffered_audio_bytes must be at least 1")
        if self.retries < 0:
            raise ConfigurationError(f"retries must be >= 0, got {self.retries}")
        if self.retry_backoff < 0 or self.retry_backoff_max < 0:
            raise ConfigurationError("retry_backoff and retry_backoff_max must be >= 0")


def _retryable(error: RimeError) -> bool:
    if isinstance(error, APIStatusError):
        return error.retryable
    return isinstance(error, RimeConnectionError | RimeTimeoutError)


class SpeechStream:
    """One speech stream. Get it from ``client.stream()``::

        async with client.stream() as stream:
            await stream.push_text("Hello there. ")
            await stream.end_input()
            async for event in stream:
                ...  # AudioChunk or WordTimestamp, in order

    ``text_in`` (a trio send channel of ``str``) and ``audio_out`` (a receive channel of
    events) are the raw channel pair; closing ``text_in`` ends the input, and ``audio_out``
    ends after the last audio of that input.
    """

    def __init__(
        self,
        *,
        options: RimeOptions,
        pool: ConnectionPool,
        settings: StreamSettings,
        tokenizer: Tokenizer | None = None,
        context_id: str | None = None,
    ) -> None:
        self.context_id = context_id or secrets.token_hex(8)
        self.options = options
        self._url = websocket_url(options)
        self._pool = pool
        self._settings = settings
        self._tokenizer = tokenizer
        self._state = StreamState(
            self.context_id,
            audio_format=options.audio_format,
            sample_rate=options.sample_rate,
            segment=options.segment,
        )
        self._text_tx, self._text_rx = trio.open_memory_channel[_TextItem](settings.text_buffer)
        self._audio_tx, audio_rx = trio.open_memory_channel[SpeechEvent](settings.audio_buffer)
        self._audio_rx = _AudioReceiveChannel(self, audio_rx)
        self._buffered = 0  # audio bytes in the channel, not yet taken by the caller
        self._drained = trio.Event()
        #: the most audio bytes ever buffered for the caller at once
        self.peak_buffered_audio_bytes = 0
        #: failures retried (before any audio was delivered)
        self.retries = 0
        self._outgoing_tx, self._outgoing_rx = trio.open_memory_channel[_TextItem](math.inf)
        self._connect_requested = trio.Event()
        self._connected = trio.Event()
        self._connection: Connection | None = None
        self._send_lock = trio.Lock()
        # Frames sent on the current socket, kept only until the first event is delivered:
        # while it exists, a dead socket can be replaced and the frames sent again.
        self._replay: list[str] | None = []
        self._retries_left = settings.retries
        self._frames = 0  # frames received, for the watchdog
        self._recv_scope: trio.CancelScope | None = None
        self._scope: trio.CancelScope | None = None
        self._closed_by_client = False
        self._failure: RimeError | None = None
        self.finished = trio.Event()

    def __repr__(self) -> str:
        return (
            f"<SpeechStream {self.context_id} {self.options.model}/{self.options.speaker} "
            f"{self._state.audio_seconds:.2f}s delivered>"
        )

    # ----------------------------------------------------------------- caller side

    @property
    def text_in(self) -> trio.MemorySendChannel[str]:
        """The caller's text channel; close it to end the input."""
        return cast("trio.MemorySendChannel[str]", self._text_tx)

    @property
    def audio_out(self) -> trio.abc.ReceiveChannel[SpeechEvent]:
        """Audio chunks and word timestamps, in stream order. It ends after the last audio
        of the input; if the stream failed, reading past the end raises the failure."""
        return self._audio_rx

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio delivered so far."""
        return self._state.audio_seconds

    @property
    def foreign_events(self) -> int:
        """Events for other streams seen on this socket (stale audio), dropped."""
        return self._state.foreign_events

    async def _put(self, item: _TextItem) -> None:
        try:
            await self._text_tx.send(item)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise StreamClosed("the stream's input has already ended") from None

    async def push_text(self, text: str) -> None:
        """Add text; complete sentences are sent as soon as their end is seen.

        :raises StreamClosed: if the input has ended.
        """
        if text:
            await self._put(text)

    async def flush(self) -> None:
        """Send any partial sentence and ask the server to synthesize everything now.

        :raises StreamClosed: if the input has ended.
        """
        await self._put(_FLUSH)

    async def clear(self) -> None:
        """Barge-in: drop text not yet spoken; audio from before the clear is never
        delivered after it, and later timestamps stay aligned with delivered audio.

        :raises StreamClosed: if the input has ended.
        """
        # The hold starts with no checkpoint after the call, so nothing from before the
        # clear can slip through; it ends when the send task sends the clear frame.
        self._state.hold()
        try:
            self._text_tx.send_nowait(_CLEAR)
        except trio.WouldBlock:
            try:
                await self._put(_CLEAR)
            except BaseException:
                self._state.release_hold()
                raise
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._state.release_hold()
            raise StreamClosed("the stream's input has already ended") from None

    async def end_input(self) -> None:
        """End the input; the audio channel ends after its last audio. Idempotent.

        If no text was sent at all, the stream fails at once with :class:`EmptyTextError`.
        """
        await self._text_tx.aclose()

    async def receive(self) -> SpeechEvent:
        """The next event.

        :raises trio.EndOfChannel: after the last audio of the input.
        :raises RimeError: where the stream failed, so a failure never looks like the end.
        """
        return await self._audio_rx.receive()

    @property
    def buffered_audio_bytes(self) -> int:
        """Audio bytes received but not yet taken by the caller."""
        return self._buffered

    def _taken(self, size: int) -> None:
        self._buffered -= size
        if self._buffered < self._settings.max_buffered_audio_bytes:
            self._drained.set()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SpeechEvent:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def _guard(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run a stream task; a failure ends the audio channel and is re-raised to the
        reader as well as to the nursery."""
        try:
            await task()
        except RimeError as exc:
            if self._failure is None:
                self._failure = exc
            self._audio_tx.close()
            raise

    # ----------------------------------------------------------------- input task

    async def _input_task(self) -> None:
        splitter = SentenceSplitter(self._tokenizer)
        outgoing = self._outgoing_tx
        any_text = False
        with outgoing:  # closed without a checkpoint, so no Cancelled can mask an error
            async for item in self._text_rx:
                if isinstance(item, str):
                    if not any_text and item.strip():
                        any_text = True
                        self._connect_requested.set()  # handshake overlaps the first sentence
                    for sentence in splitter.feed(item):
                        outgoing.send_nowait(sentence + " ")
                elif item is _FLUSH:
                    rest = splitter.flush()
                    if rest:
                        outgoing.send_nowait(rest + " ")
                    if any_text:
                        outgoing.send_nowait(_FLUSH)
                elif item is _CLEAR:
                    splitter.clear()
                    outgoing.send_nowait(_CLEAR)  # the send task ends the hold
            if not any_text:
                raise EmptyTextError("the input ended without any text to speak")
            rest = splitter.flush()
            if rest:
                outgoing.send_nowait(rest)
            outgoing.send_nowait(_END)

    # ----------------------------------------------------------------- send task

    async def _send_task(self) -> None:
        await self._connect_requested.wait()
        self._connection = await self._open_connection(fresh=False)
        self._connected.set()
        state = self._state
        async for item in self._outgoing_rx:
            if isinstance(item, str):
                frames = state.text_frames(item)
            elif item is _FLUSH:
                frames = [state.flush_frame()]
            elif item is _CLEAR:
                frames = [state.clear_frame()]
            else:
                frames = state.end_input_frames()
            for frame in frames:
                await self._send(frame)
            if state.complete and self._recv_scope is not None:
                self._recv_scope.cancel()  # nothing more will come: let recv end the audio

    async def _send(self, frame: str) -> None:
        while True:
            async with self._send_lock:
                connection = self._connection
                assert connection is not None
                try:
                    await connection.send(frame)
                except RimeError as exc:
                    error = exc
                else:
                    if self._replay is not None:
                        self._replay.append(frame)
                    return
            await self._replace_connection(connection, error)

    def _may_retry(self, error: RimeError) -> bool:
        """Spend one retry on *error* if that is still safe and allowed."""
        if self._replay is None or self._retries_left <= 0 or not _retryable(error):
            return False
        self._retries_left -= 1
        self.retries += 1
        return True

    async def _backoff(self) -> None:
        settings = self._settings
        attempt = settings.retries - self._retries_left
        ceiling = min(settings.retry_backoff_max, settings.retry_backoff * 2 ** (attempt - 1))
        await trio.sleep(random.uniform(0, ceiling))

    async def _open_connection(self, *, fresh: bool) -> Connection:
        """A socket from the pool, with retryable failures retried (backoff and jitter)."""
        while True:
            try:
                connection, _ = await self._pool.get(self._url, fresh=fresh)
            except RimeError as exc:
                if not self._may_retry(exc):
                    raise
                logger.info("stream %s: %s; retrying", self.context_id, exc)
                await self._backoff()
                fresh = True
            else:
                return connection

    async def _replace_connection(self, failed: Connection, error: RimeError) -> None:
        """Swap a failed socket for a new one and re-send everything, if that is still safe.

        :raises RimeError: *error* (or a later one) when it must reach the caller instead.
        """
        async with self._send_lock:
            if self._connection is not failed:
                return  # the other task already replaced it
            while True:
                if not self._may_retry(error):
                    raise error
                logger.info(
                    "stream %s: %s before any audio was delivered; re-sending %d frame(s) on a"
                    " new socket",
                    self.context_id,
                    error,
                    len(self._replay or ()),
                )
                self._pool.retire(failed)
                await self._backoff()
                connection = await self._open_connection(fresh=True)
                self._state.restart()
                try:
                    for frame in self._replay or ():
                        await connection.send(frame)
                except RimeError as exc:
                    failed, error = connection, exc
                    continue
                self._connection = connection
                return

    # ----------------------------------------------------------------- recv task

    async def _watchdog(self) -> None:
        """End the stream with RimeTimeoutError after ``audio_timeout`` seconds in which audio
        was owed and no frame arrived. Silence while nothing is owed never counts.

        It looks every quarter of the timeout (so a timeout fires after between 1 and 1.25
        times ``audio_timeout`` of silence): nothing on the per-frame path, where a deadline
        per receive cost a cancel scope per frame.
        """
        timeout = self._settings.audio_timeout
        tick = timeout / 4
        silent = 0.0
        seen = self._frames
        state = self._state
        while not state.complete:
            await trio.sleep(tick)
            if state.audio_owed and self._frames == seen:
                silent += tick
                if silent > timeout:
                    raise RimeTimeoutError(
                        f"no audio from the server for {timeout:g} s while audio was owed "
                        f"({state.audio_seconds:.2f} s delivered)"
                    )
            else:
                silent = 0.0
            seen = self._frames

    async def _receive_frame(self) -> str | bytes:
        while True:
            connection = self._connection
            assert connection is not None
            try:
                return await connection.receive()
            except RimeError as exc:
                await self._replace_connection(connection, exc)

    async def _recv_task(self) -> None:
        await self._connected.wait()
        state = self._state
        audio = self._audio_tx
        # The channel is closed without a checkpoint, so no Cancelled can mask an error; the
        # scope is cancelled by the send task when the input ends with nothing owed.
        with audio, trio.CancelScope() as scope:
            self._recv_scope = scope
            limit = self._settings.max_buffered_audio_bytes
            while not state.complete:
                while self._buffered >= limit:
                    # A slow reader: stop reading the socket until it catches up.
                    self._drained = trio.Event()
                    await self._drained.wait()
                frame = await self._receive_frame()
                self._frames += 1
                event = decode_server_event(frame)
                if event is None:
                    continue
                for output in state.receive(event):
                    self._replay = None  # delivered: from now on a retry could duplicate
                    if isinstance(output, AudioChunk):
                        self._buffered += len(output.data)
                        self.peak_buffered_audio_bytes = max(
                            self.peak_buffered_audio_bytes, self._buffered
                        )
                    try:
                        # No scheduling round per event while the reader keeps up; the
                        # receive above is this loop's checkpoint.
                        audio.send_nowait(output)
                    except trio.WouldBlock:
                        await audio.send(output)  # slow reader: wait, and stop reading

    # ----------------------------------------------------------------- lifecycle

    def _cancel_from_client(self) -> None:
        self._closed_by_client = True
        if self._scope is not None:
            self._scope.cancel()

    def _release(self) -> None:
        """Give the socket back to the pool if it is clean, else retire it (eos teardown)."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._state.complete and connection.usable:
            self._pool.put(connection)
        else:
            self._pool.retire(connection, clear=self._state.sent_any)


class _AudioReceiveChannel(trio.abc.ReceiveChannel[SpeechEvent]):
    """The caller's end of the audio channel; counts the audio bytes still buffered."""

    def __init__(
        self, stream: SpeechStream, channel: trio.MemoryReceiveChannel[SpeechEvent]
    ) -> None:
        self._stream = stream
        self._channel = channel

    async def receive(self) -> SpeechEvent:
        try:
            event = await self._channel.receive()
        except trio.EndOfChannel:
            failure = self._stream._failure
            if failure is not None:
                raise failure from None
            raise
        if isinstance(event, AudioChunk):
            self._stream._taken(len(event.data))
        return event

    async def aclose(self) -> None:
        await self._channel.aclose()


@asynccontextmanager
async def open_stream(stream: SpeechStream) -> AsyncIterator[SpeechStream]:
    """Run *stream*'s tasks for the body of the block (see the module docstring)."""
    try:
        with single_exception():
            async with trio.open_nursery() as nursery:
                stream._scope = nursery.cancel_scope
                nursery.start_soon(stream._guard, stream._input_task)
                nursery.start_soon(stream._guard, stream._send_task)
                nursery.start_soon(stream._guard, stream._recv_task)
                nursery.start_soon(stream._guard, stream._watchdog)
                try:
                    yield stream
                finally:
                    # The body is done with the stream: stop whatever is still running.
                    nursery.cancel_scope.cancel()
    except RimeError as exc:
        if not isinstance(exc, StreamClosed):
            exc.audio_seconds_delivered = stream.audio_seconds  # and so in str(exc)
        raise
    finally:
        stream._release()
        stream.finished.set()
    if stream._closed_by_client:
        raise StreamClosed("the client was closed while this stream was running")
