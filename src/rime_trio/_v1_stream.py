"""A speech stream over Rime's WebSocket v1: one context at a time on a shared socket.

The stream's public side (:class:`~._stream.SpeechStream`) and its input task are the same as
on ``/ws3``; what differs is here:

* :class:`V1StreamState`: the bookkeeping ``SpeechStream`` reads (completion, the clock's place
  after a ``clear()``, whether audio is owed);
* :class:`V1Link`: the stream's place on a shared socket (a :class:`~._v1_session.V1Session`):
  its current context, the texts sent on it (re-sent on a new socket while nothing was
  delivered), and the inbox the session's reader routes the context's events to;
* :class:`V1StreamTasks`: the send task (sentences as v1 ``text`` messages, cut by the same
  :class:`~._protocol.MessageCutter` as on ``/ws3``), the recv task (events from the inbox to
  the caller) and the shared watchdog.

Completion is the context's ``done`` after the stream's ``end``: unambiguous on v1. A
``clear()`` cancels the context and goes on with a fresh one (fresh id, on the same socket).
Leaving the stream with audio owed cancels its context only; the socket and the other streams
on it carry on.

Backpressure is per stream, never on the shared socket (stopping its reader would stall every
stream on it): while ``max_buffered_audio_bytes`` of audio wait for the caller, the stream
holds its next text back, so the server is asked for no more; audio already asked for still
comes, into the stream's own inbox. Past eight times the limit the stream fails with
:class:`SlowReaderError` and its context is cancelled.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Final

import anyio

from ._concurrency import create_cancel_scope, receive_soon
from ._errors import ProtocolError, RimeError, ServerError, SlowReaderError
from ._options import RimeOptions
from ._protocol import MessageCutter
from ._protocol_v1 import Audio, Cancelled, Done, ErrorEvent, Event, Frame, Started
from ._retry import RetryPolicy
from ._stream_tasks import FLUSH, TaskRunner, Text
from ._v1_session import Lost, V1Session, V1Sessions

if TYPE_CHECKING:
    from ._events import SpeechEvent
    from ._segment import Tokenizer
    from ._stream import SpeechStream

__all__ = ["V1Link", "V1StreamState", "V1StreamTasks"]

logger = logging.getLogger("rime_trio")

# The inbox may grow to this many times max_buffered_audio_bytes (with the audio channel)
# before the stream fails: room for the audio of text sent before the stream held back (text
# is held only once its audio has come, so what one write asked for always gets in).
_HARD_LIMIT_FACTOR: Final = 8
# How long the recv task lets a reader that is slow to start have the first event alone.
_FIRST_EVENT_HEAD_START: Final = 0.005


class V1StreamState:
    """What :class:`SpeechStream` reads of a v1 stream (the counterpart of ``/ws3``'s
    :class:`~._protocol.StreamState`)."""

    __slots__ = (
        "complete",
        "context_id",
        "discarded_events",
        "end_sent",
        "foreign_events",
        "holding",
        "offset",
        "unanswered",
    )

    def __init__(self, context_id: str) -> None:
        self.context_id = context_id  # the caller's label
        self.complete = False
        #: always 0: an event for a context never started fails the socket (ProtocolError)
        self.foreign_events = 0
        #: events of a context the stream left (cancelled by a clear()), dropped
        self.discarded_events = 0
        self.offset = 0.0  # the stream's clock where the current context begins
        self.holding = False  # a clear() began: deliver nothing until the new context
        self.end_sent = False
        self.unanswered = False  # text went out and no audio came since

    def hold(self, delivered_seconds: float) -> None:
        """Start an interruption: nothing is delivered until :meth:`interrupt`; the next
        context's times begin at *delivered_seconds* (the audio the caller took)."""
        self.holding = True
        self.offset = delivered_seconds

    def interrupt(self) -> None:
        self.holding = False
        self.unanswered = False

    @property
    def audio_owed(self) -> bool:
        """True after the input ended (until ``done``), and while text went out and no audio
        answered it. Not while the caller has simply not sent more (v1 has no per-sentence
        ``done``: a stall mid-way is caught once the input ends)."""
        return not self.complete and (self.end_sent or self.unanswered)


class V1Link:
    """A stream's place on the shared v1 sockets (see the module docstring).

    The send task calls :meth:`open`, :meth:`send` and :meth:`switch`; the session's reader
    calls :meth:`deliver`; the recv task reads :attr:`inbox` and calls :meth:`replace` when
    the socket was lost; the stream's teardown calls :meth:`release`.
    """

    def __init__(
        self,
        stream: SpeechStream,
        sessions: V1Sessions,
        url: str,
        options: RimeOptions,
        policy: RetryPolicy,
        state: V1StreamState,
    ) -> None:
        self._stream = stream
        self._sessions = sessions
        self._url = url
        self._options = options
        self._policy = policy
        self._state = state
        self._lock = anyio.Lock()
        self.session: V1Session | None = None
        #: the wire id of the current context (None: none started since the last switch)
        self.context_id: str | None = None
        #: every context the stream started, in order (for tests and logs)
        self.wire_ids: list[str] = []
        # Texts sent on the current context, kept while nothing of it was delivered.
        self._replay: list[str] | None = []
        # Unbounded by count, bounded in bytes by the overflow check in deliver().
        self.inbox_tx, self.inbox = anyio.create_memory_object_stream[Event | Lost](math.inf)
        self.pending_bytes = 0  # audio bytes in the inbox
        limit = stream._settings.max_buffered_audio_bytes
        self._hard_limit = _HARD_LIMIT_FACTOR * limit
        self.overflow: SlowReaderError | None = None
        self.overflow_scope = create_cancel_scope()  # the recv task's, cancelled on overflow
        self.sent_any = False

    @property
    def retries(self) -> int:
        return self._policy.used

    def delivered(self) -> bool:
        """Something reached the caller: from now on a failure is raised, not retried.

        :returns: whether this is the first delivery since the context took the text.
        """
        first = self._replay is not None
        self._replay = None
        return first

    def replenish(self) -> None:
        """Nothing to do: the socket is shared and stays open (the ``/ws3`` link opens the
        next stream's socket here)."""

    # ----------------------------------------------------------------- from the reader

    def deliver(self, item: Event | Lost) -> None:
        """Take an event of the current context (or the socket's loss) into the inbox; never
        waits. Past the hard limit the stream fails (its recv task is stopped)."""
        if isinstance(item, Audio):
            self.pending_bytes += len(item.chunk.data)
            if self.pending_bytes + self._stream._buffered > self._hard_limit:
                self._overflowed()
                return
        try:  # noqa: SIM105 (per chunk: a try costs less than contextlib.suppress)
            self.inbox_tx.send_nowait(item)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the stream has ended

    def _overflowed(self) -> None:
        if self.overflow is not None:
            return
        self.overflow = SlowReaderError(
            f"the reader fell {self._hard_limit} bytes of audio behind the server; v1 streams "
            "share a socket, so the server cannot be held back for one of them: the stream's "
            "context was cancelled (read faster, or raise max_buffered_audio_bytes)"
        )
        session, context_id = self.session, self.context_id
        if session is not None and context_id is not None:
            session.routes.pop(context_id, None)  # nothing more of it into the inbox
        self.overflow_scope.cancel()

    # ----------------------------------------------------------------- sockets

    async def open(self) -> tuple[bool, bool]:
        """Attach to a socket and wait for it to be ready, retrying refused or failed
        handshakes while that is allowed.

        :returns: ``(shared, was_ready)``: whether the stream joined a socket it did not open,
            and whether that socket was ready when it joined (no handshake on its path).
        :raises RimeError: when the last allowed attempt fails.
        """
        while True:
            try:
                session, shared, ready = await self._attach()
            except RimeError as exc:
                error = exc
            else:
                self.session = session
                return shared, ready
            if not self._may_retry(error):
                raise error
            logger.info("stream %s: %s; retrying", self._stream.context_id, error)
            await self._policy.wait()

    async def _attach(self) -> tuple[V1Session, bool, bool]:
        session, ready = self._sessions.attach(self._url, self)
        shared = ready or len(session.members) > 1
        try:
            await session.wait_ready()
        except BaseException:
            self._sessions.detach(session, self)
            raise
        return session, shared, ready

    def _may_retry(self, error: RimeError) -> bool:
        return self._replay is not None and self._policy.spend(error)

    def _frames(self, session: V1Session, texts: list[str], *, end: bool) -> list[Frame]:
        """Frames for *texts* (and the end) on the current context, starting it if need be."""
        protocol = session.protocol
        assert protocol is not None
        frames: list[Frame] = []
        if self.context_id is not None and not protocol.is_open(self.context_id):
            # The context ended without our asking (an error, an unasked cancel): that end
            # is on its way to the recv task, which raises it. Nothing more is said, and no
            # new context is opened behind its back (that would hide the error, and the audio
            # it cost, under a stream that looks complete).
            return []
        if self.context_id is None:
            context_id = protocol.next_context_id()
            frames.append(
                protocol.start(
                    context_id,
                    self._options,
                    timestamps=self._options.word_timestamps,
                    label=self._stream.context_id,
                    offset=self._state.offset,
                )
            )
            self.context_id = context_id
            self.wire_ids.append(context_id)
            session.routes[context_id] = self
            session.contexts_started += 1
        context_id = self.context_id
        frames += [protocol.send_text(context_id, text) for text in texts]
        if end:
            frames.append(protocol.end(context_id))
        return frames

    async def send(self, texts: list[str], *, end: bool) -> None:
        """Send *texts* on the current context (starting it first), and its end if *end*; on
        a new socket if the current one fails and nothing was delivered.

        :raises RimeError: when the failure must reach the caller.
        """
        state = self._state
        async with self._lock:
            session = self.session
            assert session is not None
            if self._replay is not None:
                self._replay += texts  # before the write: a failed one is re-sent too
            # Before the write too: the context's done may be routed before this task runs
            # again, and the recv task must know it answers the end.
            state.end_sent = state.end_sent or end
            state.unanswered = state.unanswered or bool(texts)
            frames = self._frames(session, texts, end=end)
            if not frames:
                return
            try:
                await session.send(*frames)
            except RimeError as exc:
                error = exc
            else:
                self.sent_any = True
                return
        await self.replace(session, error)

    async def replace(self, failed: V1Session, error: RimeError) -> None:
        """The socket *failed*: start the context afresh on another and re-send its texts (and
        its end), if nothing of it was delivered and the retries allow.

        :raises RimeError: *error* (or a later one) when it must reach the caller instead.
        """
        async with self._lock:
            if self.session is not failed:
                return  # the other task replaced it already
            while True:
                if not self._may_retry(error):
                    raise error
                logger.info(
                    "stream %s: %s before any audio was delivered; re-sending %d text(s) on "
                    "another v1 socket",
                    self._stream.context_id,
                    error,
                    len(self._replay or ()),
                )
                self._sessions.detach(failed, self)
                self.session = None
                await self._policy.wait()
                try:
                    session, _, _ = await self._attach()
                except RimeError as exc:
                    error = exc
                    continue
                if self._replay is None:
                    # The recv task delivered audio of the failing socket meanwhile:
                    # re-sending could duplicate it.
                    self._sessions.detach(session, self)
                    raise error
                self.session = session
                self.context_id = None  # a fresh context, a fresh id
                try:
                    await session.send(
                        *self._frames(session, list(self._replay), end=self._state.end_sent)
                    )
                except RimeError as exc:
                    failed, error = session, exc
                    continue
                self.sent_any = True
                return

    async def switch(self) -> None:
        """A ``clear()``: cancel the current context (only it) and go on with a fresh one,
        on the same socket, once there is text to say. Retries are safe again until its
        first audio is delivered."""
        async with self._lock:
            self._replay = []
            session, context_id = self.session, self.context_id
            self.context_id = None
            if session is None or context_id is None:
                return
            await self._cancel(session, context_id)

    async def _cancel(self, session: V1Session, context_id: str) -> None:
        session.routes.pop(context_id, None)  # its late events are nobody's
        protocol = session.protocol
        frame = protocol.cancel(context_id) if protocol is not None else None
        if frame is not None and session.usable:
            try:
                await session.send(frame)
            except RimeError as exc:
                # The socket failed: its contexts are gone with it; the stream learns of it
                # in its inbox (or does not care any more).
                logger.debug("cancelling context %s failed: %s", context_id, exc)

    async def release(self, *, complete: bool) -> None:
        """Leave the socket: cancel the context if audio is still owed, detach (the socket
        stays open for the other streams). Call it shielded."""
        self.inbox_tx.close()
        self.inbox.close()
        session, context_id = self.session, self.context_id
        self.session = None
        if session is None:
            return
        try:
            if context_id is not None and not complete:
                protocol = session.protocol
                if protocol is not None and protocol.is_open(context_id):
                    await self._cancel(session, context_id)
            if context_id is not None:
                session.routes.pop(context_id, None)
        finally:
            self._sessions.detach(session, self)


class V1StreamTasks(TaskRunner):
    """The tasks of a v1 stream (see the module docstring)."""

    def __init__(
        self,
        stream: SpeechStream,
        *,
        sessions: V1Sessions,
        url: str,
        tokenizer: Tokenizer | None,
    ) -> None:
        super().__init__(stream, tokenizer=tokenizer)
        settings = stream._settings
        state = stream._state
        assert isinstance(state, V1StreamState)
        self._state = state
        self.link = V1Link(
            stream,
            sessions,
            url,
            stream.options,
            RetryPolicy(settings.retries, settings.retry_backoff, settings.retry_backoff_max),
            state,
        )

    # ----------------------------------------------------------------- send

    async def _send(self) -> None:
        await self._connect_requested.wait()
        asked = anyio.current_time()
        link = self.link
        # Reused: a socket another stream (or prewarm()) opened; connect_seconds: the wait
        # for it, unless it was ready already (no handshake on this stream's path).
        self.connection_reused, ready = await link.open()
        if not ready:
            self.connect_seconds = anyio.current_time() - asked
        receiving = False
        stream = self._stream
        state = self._state
        cutter = MessageCutter()
        # segment="never": the server speaks only on a flush or the end; v1 has no such
        # mode (NONE speaks every text on arrival), so the text waits here.
        hold_text = stream.options.segment == "never"
        held = ""
        ended = False
        while not ended:
            batch, ended = await self._next_batch()
            texts: list[str] = []
            characters = 0
            said_in = stream._generation
            for generation, item in batch:
                if generation != stream._generation:
                    continue  # said before a clear()
                if isinstance(item, Text):
                    characters += len(item.text)
                    if hold_text:
                        held += item.text
                    else:
                        texts += cutter.cut(item.text)
                elif item is FLUSH:
                    if held:
                        texts += cutter.cut(held)
                        held = ""
                else:  # CLEAR: the first item of its generation, so texts is empty here
                    await link.switch()
                    cutter.clear()
                    held = ""
                    state.interrupt()
            if ended and held:
                texts += cutter.cut(held)
            if texts or ended:
                await self._wait_for_reader()
                if stream._generation != said_in:
                    # A clear() came while this waited: that text is no longer to be said.
                    texts, characters = [], 0
                if texts or ended:
                    await link.send(texts, end=ended)
                    self.characters_sent += characters
            if not receiving:
                receiving = self._recv_started = True
                self._spawn(self._recv)
                self._spawn(self._watchdog)

    async def _wait_for_reader(self) -> None:
        """Hold the next text back while ``max_buffered_audio_bytes`` of audio wait for the
        caller: the server cannot be held back for one stream of a shared socket."""
        stream = self._stream
        limit = stream._settings.max_buffered_audio_bytes
        while stream._buffered + self.link.pending_bytes >= limit:
            await stream._wait_drained()

    # ----------------------------------------------------------------- recv

    async def _recv(self) -> None:
        stream = self._stream
        state = self._state
        link = self.link
        audio = stream._audio_tx
        inbox = link.inbox
        # Closed on every way out, without a checkpoint, so no Cancelled can mask an error:
        # the reader always learns that the audio ended.
        with audio:
            with link.overflow_scope:
                while True:
                    self._reading = True  # only this silence counts for the watchdog
                    try:
                        item = await receive_soon(inbox)
                    except (anyio.EndOfStream, anyio.ClosedResourceError):
                        return
                    finally:
                        self._reading = False
                    self._frames += 1
                    if isinstance(item, Lost):
                        if item.session is link.session:
                            await link.replace(item.session, item.error)
                        continue
                    outputs = self._outputs(item)
                    if outputs is None:
                        continue
                    first = link.delivered() if outputs else False
                    generation = stream._generation
                    for output in outputs:
                        if not await self._deliver(audio, generation, output):
                            return
                    if first:
                        # Let the reader have the stream's first event before the next:
                        # that is the time to first audio.
                        with anyio.move_on_after(_FIRST_EVENT_HEAD_START):
                            await stream._first_taken_event.wait()
                    if state.complete:
                        self._watchdog_scope.cancel()
                        return
            if link.overflow is not None:
                raise link.overflow

    def _outputs(self, event: Event) -> list[SpeechEvent] | None:
        """What *event* of the inbox gives the caller (None: nothing, it is stale).

        :raises RimeError: for an ``error`` or an unasked ``cancelled`` of the context.
        """
        state = self._state
        link = self.link
        if isinstance(event, Audio):
            link.pending_bytes -= len(event.chunk.data)
        if event.context_id != link.context_id or state.holding:
            state.discarded_events += 1  # a context the stream left (a clear())
            if isinstance(event, Audio):
                # Audio dropped, not handed on: a send task holding text back for the
                # reader may go on (only the reader's taking wakes it otherwise).
                self._stream._audio_dropped()
            return None
        if isinstance(event, Audio):
            state.unanswered = False
            return [event.chunk]
        if isinstance(event, Done):
            if not state.end_sent:
                raise ProtocolError("the server ended the context before its input ended")
            if event.timestamps_error is not None:
                logger.debug("stream %s: %s", state.context_id, event.timestamps_error)
            state.complete = True
            return list(event.words)
        if isinstance(event, Started):
            return None
        if isinstance(event, Cancelled):
            raise ServerError("the server cancelled the stream's context")
        assert isinstance(event, ErrorEvent)
        raise event.exception()
