"""The tasks that run a speech stream, for both wire protocols, inside one task group.

* **input**: reads the caller's text channel and cuts it into sentences, each handed on the
  moment its end is seen;
* **send**: turns sentences and operations into the protocol's messages on the link;
* **recv**: takes the link's events through the protocol state to the caller as
  :class:`AudioChunk` / :class:`WordTimestamp` events, and ends the audio channel once the
  state says the audio is complete;
* **watchdog**: ends the stream with :class:`RimeTimeoutError` when the server stays silent
  while audio is owed (kept off the per-event path, which it would slow down).

Text and audio both flow through bounded channels, so a caller pushing text faster than the
socket takes it, or reading audio slower than the server sends it, is held back instead of
filling memory.

The protocol comes in two parts the :class:`TaskRunner` is handed: a sans-IO
:class:`SpeechState` (what to say, what each event means, when the audio is complete:
``_protocol.StreamState`` for ``/ws3``, ``_protocol_v1.V1StreamState`` for v1) and a
:class:`Link` (the socket, and its replacement while that is safe: ``_retry.SocketLink``,
``_v1_link.V1Link``). Neither knows the tasks; the tasks know nothing of either protocol.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

import anyio

from ._channel import ChannelReceiver, ChannelSender, create_channel
from ._concurrency import CancelScope, TaskGroup, create_cancel_scope, create_event
from ._errors import (
    ConfigurationError,
    EmptyTextError,
    ProtocolError,
    RimeError,
    RimeTimeoutError,
    ServerError,
    redact,
)
from ._events import AudioChunk, SpeechEvent
from ._segment import SentenceSplitter, Tokenizer, speakable

__all__ = [
    "CLEAR",
    "FLUSH",
    "Link",
    "Operation",
    "SpeechState",
    "StreamSettings",
    "TaskRunner",
]

_E = TypeVar("_E")
_E_contra = TypeVar("_E_contra", contravariant=True)
_E_co = TypeVar("_E_co", covariant=True)


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
    :ivar probe_timeout: a ``/ws3`` stream on a socket it did not open (pooled, or a spare)
        that waited idle a second or more sends a ping with its first text; if nothing at
        all (pong or audio) comes back within
        this many seconds, the socket is taken for dead (a NAT or proxy may drop an idle
        connection without a word) and the stream moves to a fresh one, as a retry.
    """

    audio_timeout: float = 10.0
    audio_buffer: int = 64
    max_buffered_audio_bytes: int = 2 * 1024 * 1024
    text_buffer: int = 256
    retries: int = 2
    retry_backoff: float = 0.05
    retry_backoff_max: float = 2.0
    probe_timeout: float = 2.0

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
        if not self.probe_timeout > 0:
            raise ConfigurationError(f"probe_timeout must be positive, got {self.probe_timeout!r}")


class SpeechState(Protocol[_E_contra]):
    """A protocol's sans-IO stream state, as the tasks use it (events of type ``E``).

    Messages are what the link writes (and re-sends on a replacement socket): ``/ws3``
    frames, or v1 texts the link frames for the context it is on.
    """

    @property
    def epoch(self) -> int:
        """Bumped by ``hold()`` (a ``clear()``): text and events stamped with an older epoch
        are stale."""
        ...

    @property
    def complete(self) -> bool: ...

    @property
    def audio_owed(self) -> bool: ...

    @property
    def foreign_events(self) -> int: ...

    def hold(self, delivered_seconds: float) -> None: ...

    def say(self, text: str, *, sentence: bool) -> list[str]: ...

    def flush(self) -> list[str]: ...

    def end(self) -> list[str]: ...

    def give_up_on_done(self) -> list[str]:
        """The messages that end the input another way, when the event that was to end the
        stream has not come for a while (none: it has no other way, or it is not waiting)."""
        ...

    def receive(self, event: _E_contra) -> list[SpeechEvent]: ...

    def finish(self) -> list[SpeechEvent]: ...


class Link(Protocol[_E_co]):
    """A stream's way to the server: a socket of its own (``/ws3``) or a context on a shared
    one (v1). A failure before anything was delivered is retried on another socket inside
    the link, the messages sent so far sent again; after that it is raised.
    """

    #: whether other streams share the socket: then a slow reader holds the stream's text
    #: back (the socket must go on being read), else the socket itself.
    shared: bool
    #: audio bytes received for the stream that the tasks have not taken yet
    backlog: int

    @property
    def retries(self) -> int: ...

    def bind(self, runner: TaskRunner[Any]) -> None: ...

    async def open(self) -> float | None:
        """Attach to a socket; return how long a handshake kept the stream waiting (None: the
        socket was ready, no handshake on the stream's path)."""
        ...

    async def send(self, messages: list[str], *, end: bool) -> None: ...

    async def switch(self) -> None:
        """A ``clear()``: leave what was said (on a fresh socket or context where needed)."""
        ...

    async def receive(self) -> _E_co | None:
        """The next event for the stream; None once the socket's events have ended."""
        ...

    def delivered(self) -> bool:
        """Something reached the caller (no retry from now on); True the first time."""
        ...

    def replenish(self) -> None: ...

    async def release(self, *, complete: bool) -> None: ...


class Operation:
    """A marker the caller's calls put in the text path (flush, clear)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


FLUSH: Final = Operation("flush")
CLEAR: Final = Operation("clear")


class _Text:
    """Text for the send task: a whole sentence, or a part (flushed or at the end)."""

    __slots__ = ("sentence", "text")

    def __init__(self, text: str, *, sentence: bool) -> None:
        self.text = text
        self.sentence = sentence


# How long the recv task lets a reader that is slow to start have the first event alone.
_FIRST_EVENT_HEAD_START: Final = 0.005

# On a shared socket text is held back by the audio it will cause. Speech is rarely faster
# than this (Rime's voices speak 12 to 18 characters a second; the emulator 18), so a
# text is taken to cause at least this much audio per character: an underestimate, which
# never holds text the server needs to keep speaking.
SECONDS_PER_CHARACTER: Final = 0.04

# Sentences the input task may have cut ahead of the send task; with the caller's text
# channel this bounds all text in flight.
_OUTGOING_BUFFER: Final = 8

#: what travels on the channels, stamped with the state's epoch when it was put there
_Stamped = tuple[int, str | Operation]
_Outgoing = tuple[int, _Text | Operation]


class TaskRunner(Generic[_E]):
    """The tasks of one stream, its three channels and the count of audio the caller has not
    taken yet. :meth:`start` starts the input and send tasks in a task group (the send task
    starts the rest once the link is open).

    :meth:`cancel` stops the tasks without touching the caller's code in the same task group
    (a closed ``audio_out``, a ``clear()`` after the input ended, ``client.aclose()``).
    """

    def __init__(
        self,
        state: SpeechState[_E],
        link: Link[_E],
        settings: StreamSettings,
        *,
        tokenizer: Tokenizer | None,
        api_key: str | None,
        audio_bytes_per_character: float = 0.0,
    ) -> None:
        self.state = state
        self.link = link
        self._settings = settings
        self._tokenizer = tokenizer
        self._api_key = api_key
        # Every channel is safe to cancel on every backend (see ._channel): a receive() that
        # asyncio cancels leaves its event for the next one, and a cancelled push_text() has
        # not queued its text.
        self.text_tx: ChannelSender[_Stamped]
        self.text_rx: ChannelReceiver[_Stamped]
        self.text_tx, self.text_rx = create_channel(settings.text_buffer)
        self._outgoing_tx: ChannelSender[_Outgoing]
        self._outgoing_rx: ChannelReceiver[_Outgoing]
        self._outgoing_tx, self._outgoing_rx = create_channel(_OUTGOING_BUFFER)
        self.audio_tx: ChannelSender[tuple[int, SpeechEvent]]
        self.audio_rx: ChannelReceiver[tuple[int, SpeechEvent]]
        self.audio_tx, self.audio_rx = create_channel(settings.audio_buffer)
        #: audio bytes in the audio channel, not yet taken by the caller
        self.buffered = 0
        #: the most audio bytes ever buffered for the caller at once
        self.peak_buffered = 0
        self._drained = create_event()
        #: the stream's failure, raised to the reader after the audio before it
        self.failure: BaseException | None = None
        #: any speakable text was pushed (perhaps then dropped by a clear())
        self.pushed_text = False
        #: set when the caller takes its first event
        self.first_taken = create_event()
        self._connect_requested = create_event()
        self._task_group: TaskGroup | None = None
        self._recv_started = False
        self._frames = 0  # events received, for the watchdog
        self._reading = False  # the recv task waits on the link (not on a slow reader)
        self._watchdog_scope = create_cancel_scope()
        self._recv_scope = create_cancel_scope()
        self._halted: RimeError | None = None
        # Shared sockets: the audio the text sent since the last clear() will cause, at
        # least (see SECONDS_PER_CHARACTER), and the audio that came for it so far.
        self._bytes_per_character = audio_bytes_per_character
        self._audio_expected = 0.0
        self._audio_arrived = 0
        self._scopes: list[CancelScope] = []
        self._cancelled = False
        # Metrics (see StreamMetrics): written once per socket taken or per write, never
        # per event or chunk.
        self.characters_sent = 0
        self.connect_seconds: float | None = None
        self.connection_reused = False
        link.bind(self)

    def start(self, task_group: TaskGroup) -> None:
        """Start the input and send tasks in *task_group*; the send task starts the recv task
        and the watchdog once the link is open (nothing for them to do before).

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
        self.text_rx.close()
        if not self._recv_started:
            self.audio_tx.close()  # no recv task to end the audio

    def halt(self, error: RimeError) -> None:
        """Fail the stream with *error* from outside its tasks (the link, which cannot wait
        for a recv task held back by a slow reader)."""
        if self._halted is None:
            self._halted = error
            self._recv_scope.cancel()

    def fail(self, error: BaseException) -> None:
        """Record *error* as the stream's failure; readers get it after the audio so far."""
        if self.failure is None:
            self.failure = error
        self.audio_tx.close()

    async def _guard(self, task: Callable[[], Awaitable[None]], scope: CancelScope) -> None:
        """Run a task; a failure ends the audio channel, so that a reader in any task gets
        it there, and is raised to the task group as well."""
        with scope:
            try:
                await task()
            except ServerError as exc:
                # The server's words may quote what it was sent, the API key included (the
                # sans-IO protocols that build this error never hold the key).
                error: RimeError = ServerError(redact(exc.message, self._api_key))
                self.fail(error)
                raise error from None
            except ProtocolError as exc:
                # The same for a frame it could not read, which the message shows a piece of.
                error = ProtocolError(redact(str(exc), self._api_key))
                self.fail(error)
                raise error from None
            except Exception as exc:
                self.fail(exc)
                raise

    def close_channels(self) -> None:
        """Close every end of every channel, and drop what the reader never took (nothing
        stays counted). Closing twice is fine."""
        for end in (
            self.text_tx,
            self.text_rx,
            self._outgoing_tx,
            self._outgoing_rx,
            self.audio_tx,
            self.audio_rx,
        ):
            end.close()
        self.drop_audio()

    # ----------------------------------------------------------------- the caller's side

    def clear(self) -> bool:
        """The synchronous part of ``clear()``, after the state's ``hold()``: text and audio
        of the old epoch dropped, the clear queued for the send task. False when the input
        had ended: the stream was stopped instead (nothing more will be said)."""
        self.text_rx.drain()
        self._outgoing_rx.drain()
        self.drop_audio()
        if not self.text_rx.sender_closed:
            try:
                # The queue was just emptied, so there is room: no checkpoint before the
                # hold is in place and the clear is on its way.
                self._outgoing_tx.send_nowait((self.state.epoch, CLEAR))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.WouldBlock):
                pass
            else:
                return True
        # The input has ended: stop speaking now (the socket is closed, the audio ends),
        # without moving to a fresh socket just to end it.
        self.cancel()
        return False

    def taken(self, size: int) -> None:
        """The caller took *size* bytes of audio off the audio channel (or they were
        dropped)."""
        self.buffered -= size
        if self.buffered < self._settings.max_buffered_audio_bytes:
            self._drained.set()

    def drop_audio(self) -> None:
        for _, event in self.audio_rx.drain():
            if isinstance(event, AudioChunk):
                self.taken(len(event.data))

    async def _wait_drained(self) -> None:
        self._drained = create_event()
        await self._drained.wait()

    # ----------------------------------------------------------------- input

    async def _input(self) -> None:
        state = self.state
        splitter = SentenceSplitter(self._tokenizer)
        outgoing = self._outgoing_tx
        epoch = state.epoch
        any_text = False
        # Closed without a checkpoint, so no Cancelled can mask an error; its closing is
        # what tells the send task that the input ended.
        text = self.text_rx
        with outgoing:
            while True:
                try:
                    pushed_in, item = await text.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    break
                if pushed_in != state.epoch:
                    continue  # pushed before a clear() (already handed over when it came)
                if pushed_in != epoch:
                    epoch = pushed_in  # the first item since a clear(): start afresh
                    splitter.clear()
                if isinstance(item, str):
                    if not any_text and speakable(item):
                        any_text = True
                        self._connect_requested.set()  # the handshake overlaps the sentence
                    for sentence in splitter.feed(item):
                        # Text is on its way, even text with no word yet (a run of dashes
                        # longer than a message): the send task must be there to take it.
                        self._connect_requested.set()
                        await outgoing.send((epoch, _Text(sentence, sentence=True)))
                elif item is FLUSH:
                    # Text with no word in it (an emoji, a quote, a mark) would be a run
                    # without speech: it stays, to go with the text that follows.
                    rest = splitter.flush() if speakable(splitter.pending) else ""
                    if rest:
                        await outgoing.send((epoch, _Text(rest, sentence=False)))
                    if any_text:
                        await outgoing.send((epoch, FLUSH))
            if not any_text:
                if self.pushed_text:
                    # Text was pushed, and a clear() dropped it before it was sent: nothing
                    # to say, no socket to open. The audio simply ends.
                    self.cancel()
                    return
                raise EmptyTextError(
                    "the input ended without any text to speak (no letter or digit)"
                )
            rest = splitter.flush() if state.epoch == epoch else ""
            # What follows the last sentence with no word in it (an emoji, a direction mark)
            # would be a run without speech of its own, the sentence before it having left:
            # it is not sent, like whitespace at the very end.
            if speakable(rest):
                await outgoing.send((epoch, _Text(rest, sentence=False)))

    async def _next_batch(self) -> tuple[list[_Outgoing], bool]:
        """What the input task queued for the send task: at least one item (waiting for
        it), and whatever else is queued, to leave in the same write (on a shared socket one
        at a time, each held back by the audio it will cause: see :meth:`_wait_for_reader`);
        and whether the input has ended."""
        outgoing = self._outgoing_rx
        try:
            batch = [await outgoing.receive()]
        except anyio.EndOfStream:
            return [], True
        if self.link.shared:
            return batch, False  # the end, if it comes next, is the next call's
        while True:
            try:
                batch.append(outgoing.receive_nowait())
            except anyio.WouldBlock:
                return batch, False
            except anyio.EndOfStream:
                return batch, True

    # ----------------------------------------------------------------- send

    async def _send(self) -> None:
        await self._connect_requested.wait()
        link = self.link
        state = self.state
        self.connect_seconds = await link.open()
        self.connection_reused = self.connect_seconds is None
        ended = False
        while not ended:
            batch, ended = await self._next_batch()
            messages: list[str] = []
            characters = 0
            for epoch, item in batch:
                if epoch != state.epoch:
                    continue  # said before a clear()
                if isinstance(item, _Text):
                    characters += len(item.text)
                    messages += state.say(item.text, sentence=item.sentence)
                elif item is FLUSH:
                    messages += state.flush()
                else:  # CLEAR: the first item of its epoch, so messages is empty here
                    await link.switch()
                    self._audio_expected, self._audio_arrived = 0.0, 0
            if ended:
                messages += state.end()
            if link.shared:
                await self._send_held_back(messages, ended=ended)
            elif messages or ended:
                await link.send(messages, end=ended)
                self.characters_sent += characters
            self._start_receiving()

    def _start_receiving(self) -> None:
        """Start the recv task and the watchdog, once. Nothing can arrive before the first
        messages left: starting them only then keeps them off the path to the first send."""
        if not self._recv_started:
            self._recv_started = True
            self._spawn(self._recv)
            self._spawn(self._watchdog)

    async def _send_held_back(self, messages: list[str], *, ended: bool) -> None:
        """Send *messages* on a shared socket one at a time, each once the reader can take
        the audio it will cause (a flush or an end may let a long text go at once: it still
        goes out no faster than it is heard), and the end with the last."""
        if not (messages or ended):
            return
        state = self.state
        said_in = state.epoch
        last = len(messages) - 1
        for index, message in enumerate(messages or [""]):
            await self._wait_for_reader()
            if state.epoch != said_in:
                return  # a clear() came while this waited: the rest is no longer to be said
            if not messages:
                await self.link.send([], end=ended)  # the end alone
                return
            await self.link.send([message], end=ended and index == last)
            self._start_receiving()  # before waiting on the reader: its audio must come in
            self.characters_sent += len(message)
            self._audio_expected += len(message) * self._bytes_per_character

    async def _wait_for_reader(self) -> None:
        """Hold the next text back while ``max_buffered_audio_bytes`` of audio wait for the
        caller or are still to come for text already sent: a shared socket cannot be held
        back for one stream, so the server is asked for no more than the reader can take.

        What is still to come is an estimate (see :data:`SECONDS_PER_CHARACTER`). Should a
        server speak faster still, what the estimate expects would never all come: once the
        server has been silent for a quarter of ``audio_timeout`` while this waits, the
        text sent so far counts as answered.
        """
        limit = self._settings.max_buffered_audio_bytes
        quiet = self._settings.audio_timeout / 4
        while self.buffered + self.link.backlog + self._audio_owed() >= limit:
            heard = self._frames
            with anyio.move_on_after(quiet) as waited:
                await self._wait_drained()
            if waited.cancelled_caught and self._frames == heard:
                self._audio_expected = float(self._audio_arrived)

    def _audio_owed(self) -> float:
        if self._audio_arrived >= self._audio_expected:
            # More came than the text sent was expected to cause: that text is answered,
            # and the surplus must not pass for an answer to text not sent yet.
            self._audio_expected = float(self._audio_arrived)
            return 0.0
        return self._audio_expected - self._audio_arrived

    # ----------------------------------------------------------------- recv

    async def _recv(self) -> None:
        state = self.state
        link = self.link
        audio = self.audio_tx
        limit = self._settings.max_buffered_audio_bytes
        # Closed on every way out, without a checkpoint, so no Cancelled can mask an error:
        # the reader always learns that the audio ended.
        with audio, self._recv_scope:
            while True:
                while not link.shared and self.buffered >= limit:
                    # A slow reader: stop reading the socket until it catches up.
                    await self._wait_drained()
                self._reading = True  # only this silence counts for the watchdog
                try:
                    event = await link.receive()
                finally:
                    self._reading = False
                if event is None:
                    outputs = state.finish()
                else:
                    self._frames += 1
                    outputs = state.receive(event)
                if outputs:
                    first = link.delivered()  # from now on a retry could duplicate audio
                    epoch = state.epoch
                    for output in outputs:
                        if not await self._deliver(epoch, output):
                            return
                    if first:
                        await self._head_start()
                        # Only now: the next stream's handshake never delays this one's
                        # first audio, and the reader's path does nothing but read.
                        link.replenish()
                else:
                    # Nothing handed on (a stale event dropped): a send task holding text
                    # back for the reader may look again.
                    self._drained.set()
                if state.complete:
                    self._watchdog_scope.cancel()
                    return
        if self._halted is not None:
            raise self._halted

    async def _deliver(self, epoch: int, output: SpeechEvent) -> bool:
        """Hand *output* to the reader; False if the reader closed ``audio_out``.

        Its bytes are counted as buffered once it is in the channel, not before: a send that
        is cancelled (the stream ending while a slow reader holds it back) or refused put
        nothing there. Nothing runs between the put and the count (the put does not yield),
        so the reader cannot take it uncounted.
        """
        audio = self.audio_tx
        try:
            # No scheduling round per event while the reader keeps up; the link's receive
            # is this loop's checkpoint.
            audio.send_nowait((epoch, output))
        except anyio.WouldBlock:
            try:
                await audio.send((epoch, output))  # slow reader: wait, stop reading
            except anyio.BrokenResourceError:
                return False
        except anyio.BrokenResourceError:
            return False
        if isinstance(output, AudioChunk):
            size = len(output.data)
            self.buffered += size
            self._audio_arrived += size
            self.peak_buffered = max(self.peak_buffered, self.buffered)
        return True

    async def _head_start(self) -> None:
        """Let the reader have the stream's first event (for at most a few milliseconds)
        before the events that came with it are parsed: that is the time to first audio.
        (A yield alone would not do: the loop may run the recv task first.)"""
        with anyio.move_on_after(_FIRST_EVENT_HEAD_START):
            await self.first_taken.wait()

    # ----------------------------------------------------------------- watchdog

    async def _watchdog(self) -> None:
        """End the stream with RimeTimeoutError after ``audio_timeout`` seconds in which audio
        was owed and no event arrived. Silence while nothing is owed never counts.

        It looks every quarter of the timeout (so a timeout fires after between 1 and 1.25
        times ``audio_timeout`` of silence): nothing on the per-event path, where a deadline
        per receive cost a cancel scope per event.
        """
        timeout = self._settings.audio_timeout
        tick = timeout / 4
        silent = 0.0
        seen = self._frames
        state = self.state
        with self._watchdog_scope:  # cancelled by the recv task once the audio has ended
            while True:
                await anyio.sleep(tick)
                # Silence counts only while the recv task waits on the link: a reader that
                # pauses holds the socket back on purpose.
                if state.audio_owed and self._reading and self._frames == seen:
                    if not silent:
                        # The end was to be a done that has not come: end the other way
                        # (the audio is all here, or still coming: nothing is lost).
                        ending = state.give_up_on_done()
                        if ending:
                            await self.link.send(ending, end=True)
                    silent += tick
                    if silent > timeout:
                        raise RimeTimeoutError(
                            f"no audio from the server for {timeout:g} s while audio was owed"
                        )
                else:
                    silent = 0.0
                seen = self._frames
