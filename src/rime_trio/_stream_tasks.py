"""The tasks that run a speech stream, inside one task group.

* **input**: reads the caller's text channel and cuts it into sentences, each handed on the
  moment its end is seen;
* **send**: turns sentences and operations into protocol frames on the socket;
* **recv**: decodes frames into :class:`AudioChunk` / :class:`WordTimestamp` events on the
  audio channel, and ends it when the server closes after the input's ``eos``;
* **watchdog**: ends the stream with :class:`RimeTimeoutError` when the server stays silent
  while audio is owed (kept off the per-frame path, which it would slow down).

Text and audio both flow through bounded channels, so a caller pushing text faster than the
socket takes it, or reading audio slower than the server sends it, is held back instead of
filling memory.

:class:`TaskRunner` holds what every protocol's stream shares (the input task, delivery to
the caller, the watchdog, starting and stopping); :class:`StreamTasks` is the ``/ws3``
stream, ``_v1_stream.V1StreamTasks`` the v1 one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import anyio

from ._channel import ChannelSender
from ._concurrency import (
    CancelScope,
    TaskGroup,
    create_cancel_scope,
    create_event,
)
from ._errors import (
    ConnectionLost,
    EmptyTextError,
    RimeError,
    RimeTimeoutError,
    ServerError,
    redact,
)
from ._events import AudioChunk, SpeechEvent
from ._pool import ConnectionPool
from ._protocol import StreamState, decode_server_event
from ._retry import RetryPolicy, SocketLink
from ._segment import SentenceSplitter, Tokenizer, speakable

if TYPE_CHECKING:
    from ._stream import SpeechStream

__all__ = ["CLEAR", "FLUSH", "Operation", "StreamTasks", "TaskRunner", "Text"]


class Operation:
    """A marker the caller's calls put in the text path (flush, clear)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


FLUSH: Final = Operation("flush")
CLEAR: Final = Operation("clear")


class Text:
    """Text for the send task: a whole sentence (flushed in bySentence mode) or a part."""

    __slots__ = ("sentence", "text")

    def __init__(self, text: str, *, sentence: bool) -> None:
        self.text = text
        self.sentence = sentence


# How long the recv task lets a reader that is slow to start have the first event alone.
_FIRST_EVENT_HEAD_START: Final = 0.005

#: what the input task hands the send task, stamped with the interruption generation
Outgoing = tuple[int, Text | Operation]


class TaskRunner:
    """What the tasks of every protocol's stream share; :meth:`start` starts the input and
    send tasks in a task group (the send task starts the rest once it has a socket).

    :meth:`cancel` stops the tasks without touching the caller's code in the same task group
    (a closed ``audio_out``, a ``clear()`` after the input ended, ``client.aclose()``).
    """

    def __init__(self, stream: SpeechStream, *, tokenizer: Tokenizer | None) -> None:
        self._stream = stream
        self._tokenizer = tokenizer
        self._connect_requested = create_event()
        self._task_group: TaskGroup | None = None
        self._recv_started = False
        self._frames = 0  # frames received, for the watchdog
        self._reading = False  # the recv task waits on the socket (not on a slow reader)
        self._watchdog_scope = create_cancel_scope()
        self._scopes: list[CancelScope] = []
        self._cancelled = False
        # Metrics (see StreamMetrics): written once per socket taken or per write, never
        # per frame or chunk.
        self.characters_sent = 0
        self.connect_seconds: float | None = None
        self.connection_reused = False

    async def _send(self) -> None:
        raise NotImplementedError

    def start(self, task_group: TaskGroup) -> None:
        """Start the input and send tasks in *task_group*; the send task starts the recv task
        and the watchdog once it has a socket (nothing for them to do before).

        A task's failure is raised out of the task group (and handed to the audio reader).
        """
        self._task_group = task_group
        self._spawn(self._input)
        self._spawn(self._send)

    def _spawn(self, task: Callable[[], Awaitable[None]]) -> None:
        # One scope each (a scope is entered once): cancel() reaches every task, and the
        # task group's own scope stays the caller's.
        assert self._task_group is not None
        scope = create_cancel_scope()
        if self._cancelled:
            scope.cancel()
        self._scopes.append(scope)
        self._task_group.start_soon(self._guard, task, scope)

    def cancel(self) -> None:
        """Stop every task; the stream's audio ends (its socket is closed, not reused), and
        a ``push_text`` waiting for room, or any later one, raises StreamClosed."""
        self._cancelled = True
        for scope in self._scopes:
            scope.cancel()
        self._stream._text_rx.close()
        if not self._recv_started:
            self._stream._audio_tx.close()  # no recv task to end the audio

    async def _guard(self, task: Callable[[], Awaitable[None]], scope: CancelScope) -> None:
        """Run a task; a failure ends the audio channel, so that a reader in any task gets
        it there, and is raised to the task group as well."""
        with scope:
            try:
                await task()
            except ServerError as exc:
                # The server's words may quote what it was sent, the API key included (the
                # sans-IO protocols that build this error never hold the key).
                stream = self._stream
                error = ServerError(redact(exc.message, stream.options.api_key))
                stream._fail(error)
                raise error from None
            except Exception as exc:
                self._stream._fail(exc)
                raise

    # ----------------------------------------------------------------- input

    async def _input(self) -> None:
        stream = self._stream
        splitter = SentenceSplitter(self._tokenizer)
        outgoing = stream._outgoing_tx
        generation = stream._generation
        any_text = False
        # Closed without a checkpoint, so no Cancelled can mask an error; its closing is
        # what tells the send task that the input ended.
        text = stream._text_rx
        with outgoing:
            while True:
                try:
                    pushed_in, item = await text.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    break
                if pushed_in != stream._generation:
                    continue  # pushed before a clear() (already handed over when it came)
                if pushed_in != generation:
                    generation = pushed_in  # the first item since a clear(): start afresh
                    splitter.clear()
                if isinstance(item, str):
                    if not any_text and speakable(item):
                        any_text = True
                        self._connect_requested.set()  # the handshake overlaps the sentence
                    for sentence in splitter.feed(item):
                        # Text is on its way, even text with no word yet (a run of dashes
                        # longer than a message): the send task must be there to take it.
                        self._connect_requested.set()
                        await outgoing.send((generation, Text(sentence, sentence=True)))
                elif item is FLUSH:
                    # Text with no word in it (an emoji, a quote, a mark) would be a run
                    # without speech: it stays, to go with the text that follows.
                    rest = splitter.flush() if speakable(splitter.pending) else ""
                    if rest:
                        await outgoing.send((generation, Text(rest, sentence=False)))
                    if any_text:
                        await outgoing.send((generation, FLUSH))
            if not any_text:
                if stream._pushed_text:
                    # Text was pushed, and a clear() dropped it before it was sent: nothing
                    # to say, no socket to open. The audio simply ends.
                    self.cancel()
                    return
                raise EmptyTextError(
                    "the input ended without any text to speak (no letter or digit)"
                )
            rest = splitter.flush() if stream._generation == generation else ""
            # What follows the last sentence with no word in it (an emoji, a direction mark)
            # would be a run without speech of its own, the sentence before it having left:
            # it is not sent, like whitespace at the very end.
            if speakable(rest):
                await outgoing.send((generation, Text(rest, sentence=False)))

    async def _next_batch(self) -> tuple[list[Outgoing], bool]:
        """What the input task queued for the send task: at least one item (waiting for
        it), and whatever else is queued, to leave in the same write; and whether the input
        has ended."""
        outgoing = self._stream._outgoing_rx
        try:
            batch = [await outgoing.receive()]
        except anyio.EndOfStream:
            return [], True
        while True:
            try:
                batch.append(outgoing.receive_nowait())
            except anyio.WouldBlock:
                return batch, False
            except anyio.EndOfStream:
                return batch, True

    # ----------------------------------------------------------------- delivery

    async def _deliver(
        self,
        audio: ChannelSender[tuple[int, SpeechEvent]],
        generation: int,
        output: SpeechEvent,
    ) -> bool:
        """Hand *output* to the reader; False if the reader closed ``audio_out``.

        Its bytes are counted as buffered once it is in the channel, not before: a send that
        is cancelled (the stream ending while a slow reader holds it back) or refused put
        nothing there. Nothing runs between the put and the count (the put does not yield),
        so the reader cannot take it uncounted.
        """
        stream = self._stream
        try:
            # No scheduling round per event while the reader keeps up; the socket receive
            # is this loop's checkpoint.
            audio.send_nowait((generation, output))
        except anyio.WouldBlock:
            try:
                await audio.send((generation, output))  # slow reader: wait, stop reading
            except anyio.BrokenResourceError:
                return False
        except anyio.BrokenResourceError:
            return False
        if isinstance(output, AudioChunk):
            stream._buffered += len(output.data)
            stream.peak_buffered_audio_bytes = max(
                stream.peak_buffered_audio_bytes, stream._buffered
            )
        return True

    async def _head_start(self) -> None:
        """Let the reader have the stream's first event (for at most a few milliseconds)
        before the frames that came with it are parsed: that is the time to first audio.
        (A yield alone would not do: the loop may run the recv task first.)"""
        with anyio.move_on_after(_FIRST_EVENT_HEAD_START):
            await self._stream._first_taken_event.wait()

    # ----------------------------------------------------------------- watchdog

    async def _watchdog(self) -> None:
        """End the stream with RimeTimeoutError after ``audio_timeout`` seconds in which audio
        was owed and no frame arrived. Silence while nothing is owed never counts.

        It looks every quarter of the timeout (so a timeout fires after between 1 and 1.25
        times ``audio_timeout`` of silence): nothing on the per-frame path, where a deadline
        per receive cost a cancel scope per frame.
        """
        stream = self._stream
        timeout = stream._settings.audio_timeout
        tick = timeout / 4
        silent = 0.0
        seen = self._frames
        state = stream._state
        with self._watchdog_scope:  # cancelled by the recv task once the audio has ended
            while True:
                await anyio.sleep(tick)
                # Silence counts only while the recv task waits on the socket: a reader that
                # pauses holds the socket back on purpose.
                if state.audio_owed and self._reading and self._frames == seen:
                    silent += tick
                    if silent > timeout:
                        raise RimeTimeoutError(
                            f"no audio from the server for {timeout:g} s while audio was owed "
                            f"({stream.audio_seconds:.2f} s delivered)"
                        )
                else:
                    silent = 0.0
                seen = self._frames


class StreamTasks(TaskRunner):
    """The tasks of a ``/ws3`` stream: its own socket (:class:`SocketLink`), sent frames
    replayed on a replacement while nothing was delivered."""

    def __init__(
        self,
        stream: SpeechStream,
        *,
        pool: ConnectionPool,
        url: str,
        tokenizer: Tokenizer | None,
    ) -> None:
        super().__init__(stream, tokenizer=tokenizer)
        settings = stream._settings
        self._pool = pool
        state = stream._state
        assert isinstance(state, StreamState)
        self._state = state
        self.link = SocketLink(
            pool,
            url,
            RetryPolicy(settings.retries, settings.retry_backoff, settings.retry_backoff_max),
            label=stream.context_id,
            on_restart=state.restart,
        )

    # ----------------------------------------------------------------- send

    async def _send(self) -> None:
        await self._connect_requested.wait()
        asked = anyio.current_time()
        await self.link.open()
        assert self.link.connection is not None
        if self._pool.took_open(self.link.connection):
            self.connection_reused = True
        else:
            self.connect_seconds = anyio.current_time() - asked
        receiving = False
        stream = self._stream
        state = self._state
        ended = False
        while not ended:
            batch, ended = await self._next_batch()
            frames: list[str] = []
            characters = 0
            for generation, item in batch:
                if generation != stream._generation:
                    continue  # said before a clear()
                if isinstance(item, Text):
                    characters += len(item.text)
                    if item.sentence:
                        frames += state.sentence_frames(item.text)
                    else:
                        frames += state.text_frames(item.text)
                elif item is FLUSH:
                    frames.append(state.flush_frame())
                else:  # CLEAR: the first item of its generation, so frames is empty here
                    if state.needs_new_socket:
                        await self.link.switch()
                    state.interrupt()
            if ended:
                frames += state.end_frames()
            if frames:
                await self.link.send(*frames)
                self.characters_sent += characters
            if not receiving:
                # Nothing can arrive before the first frames left: starting the recv task and
                # the watchdog only now keeps them off the path to the first send.
                receiving = self._recv_started = True
                self._spawn(self._recv)
                self._spawn(self._watchdog)

    # ----------------------------------------------------------------- recv

    async def _receive_frame(self) -> str | bytes | None:
        state = self._state
        while True:
            connection = self.link.connection
            assert connection is not None
            try:
                frame = await connection.receive()
                if connection is not self.link.connection:
                    continue  # a socket a clear() left: everything on it is stale
                if frame is None and not state.eos_sent:
                    raise ConnectionLost(
                        "the server closed the connection (code 1000) before the input ended"
                    )
            except RimeError as exc:
                await self.link.replace(connection, exc)
            else:
                return frame

    async def _recv(self) -> None:
        stream = self._stream
        state = self._state
        audio = stream._audio_tx
        limit = stream._settings.max_buffered_audio_bytes
        # Closed on every way out, without a checkpoint, so no Cancelled can mask an error:
        # the reader always learns that the audio ended.
        with audio:
            while True:
                while stream._buffered >= limit:
                    # A slow reader: stop reading the socket until it catches up.
                    await stream._wait_drained()
                self._reading = True  # only this silence counts for the watchdog
                try:
                    frame = await self._receive_frame()
                finally:
                    self._reading = False
                if frame is None:
                    outputs = state.finish()
                else:
                    self._frames += 1
                    event = decode_server_event(frame)
                    if event is None:
                        continue
                    outputs = state.receive(event)
                if outputs:
                    first = self.link.delivered()  # from now on a retry could duplicate audio
                    generation = stream._generation
                    for output in outputs:
                        if not await self._deliver(audio, generation, output):
                            return
                    if first:
                        await self._head_start()
                        # Only now: the next stream's handshake never delays this one's
                        # first audio, and the reader's path does nothing but read.
                        self.link.replenish()
                if frame is None:
                    self._watchdog_scope.cancel()
                    return
