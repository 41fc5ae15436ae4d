"""A speech stream: text in, audio and word timestamps out, over its own ``/ws3`` socket or a
context of a shared Rime WebSocket v1 socket.

:class:`SpeechStream` is the caller's side (push text, flush, clear, end the input, read
events), the same for both protocols. It puts together the protocol's sans-IO state
(``_protocol.StreamState`` or ``_protocol_v1.V1StreamState``), its link (``_retry.SocketLink``
or ``_v1_link.V1Link``) and the :class:`~._stream_tasks.TaskRunner` that runs them;
:func:`open_stream` runs the tasks for the body of an ``async with`` block.

Whatever ends a ``/ws3`` stream (the server's close after the input's ``eos``, an error, the
caller's exception or cancellation, ``client.aclose()``), the socket is closed unless nothing
was ever sent on it, in which case it goes back to the pool for the next stream. A v1 stream
cancels its context if audio is still owed and leaves the socket to the other streams.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, Self

import anyio
import anyio.abc
import anyio.lowlevel

from ._audio import bytes_per_second
from ._channel import ChannelReceiver
from ._concurrency import (
    CancelScope,
    create_event,
    current_task,
    finish_shielded,
    open_task_group,
)
from ._errors import RimeError, StreamClosed
from ._events import AudioChunk, SpeechEvent
from ._metrics import MetricsSink, Outcome, StreamMetrics, outcome_of
from ._options import RimeOptions, websocket_url
from ._pool import ConnectionPool
from ._protocol import StreamState, random_tag
from ._protocol_v1 import V1StreamState, synthesis_request
from ._retry import RetryPolicy, SocketLink
from ._segment import Tokenizer, speakable
from ._stream_tasks import (
    FLUSH,
    SECONDS_PER_CHARACTER,
    Link,
    Operation,
    StreamSettings,
    TaskRunner,
)
from ._text import check_text
from ._v1_link import V1Link

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["EndOfAudio", "SpeechStream", "open_stream"]

logger = logging.getLogger("rime_trio")


class EndOfAudio(anyio.EndOfStream):
    """The stream's audio has ended: raised by ``receive()`` after its last event (an
    ``anyio.EndOfStream``, as ``audio_out`` is an AnyIO object stream)."""


def _audio_bytes_per_character(options: RimeOptions) -> float:
    """The audio one character of text causes, at least (for the hold on shared sockets)."""
    rate = bytes_per_second(options.audio_format, options.sample_rate) or _MP3_BYTES_PER_SECOND
    return rate * SECONDS_PER_CHARACTER * (options.time_scale_factor or 1.0)


# mp3 has no fixed rate: 32 kbit/s, about the least a speech stream uses (an underestimate,
# as for the rate of speech).
_MP3_BYTES_PER_SECOND: Final = 4_000


class SpeechStream:
    """One speech stream. Get it from ``client.stream()``::

        async with client.stream() as stream:
            await stream.push_text("Hello there. ")
            await stream.end_input()
            async for event in stream:
                ...  # AudioChunk or WordTimestamp, in order

    ``text_in`` (a send stream of ``str``) and ``audio_out`` (a receive stream of events) are
    the raw channel pair, AnyIO object streams; closing ``text_in`` ends the input, and
    ``audio_out`` ends after the last audio of that input (its ``receive`` then raises
    :class:`EndOfAudio`). Closing ``audio_out`` ends the stream early.
    """

    def __init__(
        self,
        *,
        options: RimeOptions,
        pool: ConnectionPool,
        settings: StreamSettings,
        tokenizer: Tokenizer | None = None,
        context_id: str | None = None,
        metrics_sink: MetricsSink | None = None,
    ) -> None:
        self.context_id = context_id or random_tag()
        self.options = options
        url = websocket_url(options)  # checks the options can stream at all
        policy = RetryPolicy(settings.retries, settings.retry_backoff, settings.retry_backoff_max)
        self._state: StreamState | V1StreamState
        link: Link[Any]
        if options.stream_protocol == "v1":
            synthesis_request(options)  # settings v1 cannot carry fail here, not mid-stream
            self._state = V1StreamState(self.context_id, options)
            link = V1Link(
                pool,
                url,
                policy,
                self._state,
                max_buffered_audio_bytes=settings.max_buffered_audio_bytes,
                api_key=options.api_key,
            )
        else:
            # The wire tags get their own random part: the caller's context_id is a label,
            # and two streams with the same label must never take each other's audio.
            self._state = StreamState(
                self.context_id,
                audio_format=options.audio_format,
                sample_rate=options.sample_rate,
                segment=options.segment,
            )
            link = SocketLink(
                pool,
                url,
                policy,
                self._state,
                probe_timeout=settings.probe_timeout,
                api_key=options.api_key,
            )
        tasks: TaskRunner[Any] = TaskRunner(
            self._state,
            link,
            settings,
            tokenizer=tokenizer,
            api_key=options.api_key,
            audio_bytes_per_character=_audio_bytes_per_character(options) if link.shared else 0,
        )
        self._tasks = tasks
        self._text_in = _TextSendChannel(self)
        self._audio_rx = _AudioReceiveChannel(self, tasks.audio_rx)
        self._closed_by_client = False
        self._scope: CancelScope | None = None  # the block's task group, while it runs
        self._owner: object = None  # the task whose ``async with`` runs the stream
        self.finished = create_event()
        # Metrics: loop-clock times of the block's start and the first speakable text (the
        # first audio's is on the audio channel), what left the block, the final snapshot.
        self._sink = metrics_sink or MetricsSink()
        self._span: Span | None = None
        self._opened_at: float | None = None
        self._first_text_at: float | None = None
        self._exit_error: BaseException | None = None
        self._final_metrics: StreamMetrics | None = None

    def __repr__(self) -> str:
        return (
            f"<SpeechStream {self.context_id} {self.options.model}/{self.options.speaker} "
            f"{self.audio_seconds:.2f}s delivered>"
        )

    # ----------------------------------------------------------------- caller side

    @property
    def text_in(self) -> anyio.abc.ObjectSendStream[str]:
        """The caller's text channel (``send``, ``send_nowait``, ``aclose``); closing it ends
        the input."""
        return self._text_in

    @property
    def audio_out(self) -> anyio.abc.ObjectReceiveStream[SpeechEvent]:
        """Audio chunks and word timestamps, in stream order. It ends after the last audio
        of the input; if the stream failed, reading past the end raises the failure.
        Closing it ends the stream (its socket is closed, not reused)."""
        return self._audio_rx

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio taken by the caller so far."""
        return self._audio_rx.delivered_seconds

    @property
    def retries(self) -> int:
        """Failures retried (before any audio was delivered)."""
        return self._tasks.link.retries

    @property
    def peak_buffered_audio_bytes(self) -> int:
        """The most audio bytes ever buffered for the caller at once."""
        return self._tasks.peak_buffered

    @property
    def foreign_events(self) -> int:
        """Events tagged for another stream (a misbehaving server), dropped."""
        return self._state.foreign_events

    @property
    def metrics(self) -> StreamMetrics:
        """What the stream measured: a snapshot while it runs (outcome ``running``), the
        final metrics once it has ended (the ones the client's ``on_metrics`` hook got)."""
        if self._final_metrics is not None:
            return self._final_metrics
        now = anyio.current_time() if self._opened_at is not None else None
        return self._measure(now, "running", None)

    def _measure(
        self, now: float | None, outcome: Outcome, error_type: str | None
    ) -> StreamMetrics:
        first_text = self._first_text_at
        first_audio = self._audio_rx.first_audio_at
        tasks = self._tasks
        return StreamMetrics(
            context_id=self.context_id,
            model=self.options.model,
            speaker=self.options.speaker,
            time_to_first_audio=(
                first_audio - first_text
                if first_audio is not None and first_text is not None
                else None
            ),
            stream_open_seconds=(
                0.0 if now is None or self._opened_at is None else now - self._opened_at
            ),
            connect_seconds=tasks.connect_seconds,
            connection_reused=tasks.connection_reused,
            characters_sent=tasks.characters_sent,
            audio_seconds=self.audio_seconds,
            retries=tasks.link.retries,
            foreign_events_dropped=self._state.foreign_events,
            outcome=outcome,
            error_type=error_type,
        )

    def _finish_metrics(self) -> None:
        """Freeze the final metrics and report them (once: the stream has ended)."""
        outcome, error_type = outcome_of(
            complete=self._state.complete, failure=self._tasks.failure, error=self._exit_error
        )
        self._final_metrics = self._measure(anyio.current_time(), outcome, error_type)
        self._sink.finish(self._final_metrics, self._span)

    async def _put(self, item: str | Operation) -> None:
        try:
            await self._tasks.text_tx.send((self._state.epoch, item))
        except anyio.ClosedResourceError:
            raise StreamClosed("the stream's input has already ended") from None
        except anyio.BrokenResourceError:
            raise StreamClosed("the stream has ended: no more text can be sent") from None

    async def push_text(self, text: str) -> None:
        """Add text; complete sentences are sent as soon as their end is seen.

        Cancelled (on any backend, by any means), it has not queued the text: a caller who
        retries it sends the text once.

        :raises InvalidTextError: for text UTF-8 cannot carry (a lone surrogate: half of a
            character split across two pieces), before any of it is queued.
        :raises StreamClosed: if the input or the stream has ended.
        """
        if text:
            check_text(text)
            pushed_at = anyio.current_time() if self._first_text_at is None else 0.0
            await self._put(text)
            self._note_text(text, pushed_at)

    def _note_text(self, text: str, pushed_at: float) -> None:
        """*text*, pushed at *pushed_at*, was queued: time to first audio starts with the
        first speakable text (a letter or digit: what the input task counts as text)."""
        if speakable(text):
            self._tasks.pushed_text = True
            if self._first_text_at is None:
                self._first_text_at = pushed_at

    async def flush(self) -> None:
        """Send any partial sentence and ask the server to synthesize everything now.

        :raises StreamClosed: if the input has ended.
        """
        await self._put(FLUSH)

    async def clear(self) -> None:
        """Barge-in, effective at the call: text not yet spoken is dropped, and no audio or
        timestamp from before the call is delivered after it (not even what was already
        buffered). Later offsets and word times continue from the audio actually taken.

        After :meth:`end_input` there is nothing left to say: the stream's audio ends.
        """
        self._state.hold(self._audio_rx.delivered_seconds)
        self._tasks.clear()
        await anyio.lowlevel.checkpoint()

    async def end_input(self) -> None:
        """End the input; the audio channel ends after its last audio. Idempotent.

        If no text was sent at all, the stream fails at once with :class:`EmptyTextError`.
        """
        await self._tasks.text_tx.aclose()

    async def receive(self) -> SpeechEvent:
        """The next event.

        :raises EndOfAudio: after the last audio of the input (an ``anyio.EndOfStream``).
        :raises RimeError: where the stream failed, so a failure never looks like the end.
        :raises StreamClosed: if ``audio_out`` was closed.
        """
        return await self._audio_rx.receive()

    @property
    def buffered_audio_bytes(self) -> int:
        """Audio bytes received but not yet taken by the caller."""
        return self._tasks.buffered

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SpeechEvent:
        try:
            return await self._audio_rx.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    # ----------------------------------------------------------------- teardown

    def _cancel_from_client(self) -> None:
        """``client.aclose()``: end the stream, the caller's block included (it then raises
        StreamClosed), and so every task and the socket."""
        self._closed_by_client = True
        self._tasks.cancel()
        if self._scope is not None:
            self._scope.cancel()

    async def _release(self) -> None:
        """The socket back to the pool (or closed), every channel end closed, and then
        :attr:`finished` set. Run it with :func:`finish_shielded`."""
        try:
            await self._tasks.link.release(complete=self._state.complete)
        finally:
            # Every end of every channel, or AnyIO warns when they are collected.
            self._tasks.close_channels()
            try:
                self._finish_metrics()  # reported (never raising) before anyone sees finished
            finally:
                self.finished.set()


class _TextSendChannel(anyio.abc.ObjectSendStream[str]):
    """The caller's end of the text channel: stamps each item with the clear() generation."""

    def __init__(self, stream: SpeechStream) -> None:
        self._stream = stream

    async def send(self, value: str) -> None:
        """Add text (as :meth:`SpeechStream.push_text`; cancelled, it has not queued it).

        :raises InvalidTextError: for text UTF-8 cannot carry, before it is queued.
        :raises anyio.ClosedResourceError: if this channel was closed.
        :raises anyio.BrokenResourceError: if the stream has ended.
        """
        stream = self._stream
        check_text(value)
        pushed_at = anyio.current_time() if stream._first_text_at is None else 0.0
        await stream._tasks.text_tx.send((stream._state.epoch, value))
        stream._note_text(value, pushed_at)

    def send_nowait(self, value: str) -> None:
        """Add text without waiting.

        :raises InvalidTextError: for text UTF-8 cannot carry, before it is queued.
        :raises anyio.WouldBlock: if the text buffer is full.
        """
        stream = self._stream
        check_text(value)
        stream._tasks.text_tx.send_nowait((stream._state.epoch, value))
        stream._note_text(value, anyio.current_time() if stream._first_text_at is None else 0.0)

    def close(self) -> None:
        """End the input (as :meth:`SpeechStream.end_input`)."""
        self._stream._tasks.text_tx.close()

    async def aclose(self) -> None:
        self.close()
        await anyio.lowlevel.checkpoint()


class _AudioReceiveChannel(anyio.abc.ObjectReceiveStream[SpeechEvent]):
    """The caller's end of the audio channel: skips events a clear() made stale, counts the
    audio bytes still buffered and the seconds taken."""

    def __init__(
        self,
        stream: SpeechStream,
        channel: ChannelReceiver[tuple[int, SpeechEvent]],
    ) -> None:
        self._stream = stream
        self._channel = channel
        self.delivered_seconds = 0.0
        #: loop-clock time the caller took the first audio chunk (time to first audio ends)
        self.first_audio_at: float | None = None

    async def receive(self) -> SpeechEvent:
        stream = self._stream
        tasks = stream._tasks
        channel = self._channel
        while True:
            try:
                # A cancellation point, but no scheduling round while events are waiting: a
                # reader draining a burst of audio frames would otherwise pay one per event.
                # Cancelled, it takes nothing: the event is the next receive()'s.
                epoch, event = await channel.receive()
            except anyio.EndOfStream:
                if tasks.failure is not None:
                    raise tasks.failure from None
                raise EndOfAudio from None
            except anyio.ClosedResourceError:
                raise StreamClosed("audio_out has been closed") from None
            if isinstance(event, AudioChunk):
                tasks.taken(len(event.data))
                if epoch != stream._state.epoch:
                    continue  # from before a clear()
                self.delivered_seconds = event.offset + event.duration
                if self.first_audio_at is None:
                    self.first_audio_at = anyio.current_time()
            elif epoch != stream._state.epoch:
                continue
            if not tasks.first_taken.is_set():
                # The caller has its first event: the recv task may go on (and have the pool
                # open the next stream's socket).
                tasks.first_taken.set()
            return event

    async def aclose(self) -> None:
        """Stop reading: the stream ends early and its socket is closed."""
        self._channel.close()
        self._stream._tasks.cancel()
        await anyio.lowlevel.checkpoint()


@asynccontextmanager
async def open_stream(stream: SpeechStream) -> AsyncIterator[SpeechStream]:
    """Run *stream*'s tasks for the body of the block (see the module docstring).

    :raises RimeError: the stream's failure (the first one; never an ExceptionGroup).
    :raises StreamClosed: if the client was closed while the stream ran.
    :raises BaseException: the caller's own exception from the body, unchanged.
    """
    stream._owner = current_task()
    stream._opened_at = anyio.current_time()
    stream._span = stream._sink.start_span("rime.stream")
    try:
        async with open_task_group() as task_group:
            stream._scope = task_group.cancel_scope
            stream._tasks.start(task_group)
            yield stream
    except RimeError as exc:
        stream._exit_error = exc
        if not isinstance(exc, StreamClosed):
            exc.audio_seconds_delivered = stream.audio_seconds  # and so in str(exc)
        raise
    except BaseException as exc:
        stream._exit_error = exc  # the caller's own error, or a cancellation (for metrics)
        raise
    finally:
        await finish_shielded(stream._release)
    if stream._closed_by_client:
        raise StreamClosed("the client was closed while this stream was running")
