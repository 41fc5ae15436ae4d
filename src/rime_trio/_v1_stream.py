"""A speech stream over Rime's WebSocket v1: one context at a time on a shared socket.

The stream's public side (:class:`~._stream.SpeechStream`) and its input task are the same as
on ``/ws3``; what differs is here:

* :class:`~._protocol_v1.V1StreamState` (sans-IO, in ``_protocol_v1``): every protocol
  decision: what to say and when, the context's frames, which events are stale, completion;
* :class:`V1Link`: the stream's place on a shared socket (a :class:`~._v1_session.V1Session`):
  the socket, the route of its current context, the texts sent on it (re-sent on a new socket
  while nothing was delivered), and the inbox the session's reader routes the context's
  events to;
* :class:`V1StreamTasks`: the send task (the state's frames onto the link), the recv task
  (events from the inbox through the state to the caller) and the shared watchdog.

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

from ._channel import ChannelReceiver, ChannelSender, create_channel
from ._concurrency import create_cancel_scope
from ._errors import RimeError, SlowReaderError
from ._protocol_v1 import Audio, Event, Frame, V1Connection, V1StreamState
from ._retry import RetryPolicy
from ._stream_tasks import FLUSH, TaskRunner, Text
from ._v1_session import Lost, V1Session, V1Sessions

if TYPE_CHECKING:
    from ._segment import Tokenizer
    from ._stream import SpeechStream

__all__ = ["V1Link", "V1StreamTasks"]

logger = logging.getLogger("rime_trio")

# The inbox may grow to this many times max_buffered_audio_bytes (with the audio channel)
# before the stream fails: room for the audio of text sent before the stream held back (text
# is held only once its audio has come, so what one write asked for always gets in).
_HARD_LIMIT_FACTOR: Final = 8


class V1Link:
    """A stream's place on the shared v1 sockets (see the module docstring).

    The send task calls :meth:`open`, :meth:`send` and :meth:`switch`; the session's reader
    calls :meth:`deliver`; the recv task reads :attr:`inbox` and calls :meth:`replace` when
    the socket was lost; the stream's teardown calls :meth:`release`. The frames are the
    state's (:class:`~._protocol_v1.V1StreamState`), made under the link's lock right before
    each write, so that a replacement socket never interleaves with them.
    """

    def __init__(
        self,
        stream: SpeechStream,
        sessions: V1Sessions,
        url: str,
        policy: RetryPolicy,
        state: V1StreamState,
    ) -> None:
        self._stream = stream
        self._sessions = sessions
        self._url = url
        self._policy = policy
        self._state = state
        self._lock = anyio.Lock()
        self.session: V1Session | None = None
        # Texts sent on the current context, kept while nothing of it was delivered.
        self._replay: list[str] | None = []
        # Unbounded by count, bounded in bytes by the overflow check in deliver().
        self.inbox_tx: ChannelSender[Event | Lost]
        self.inbox: ChannelReceiver[Event | Lost]
        self.inbox_tx, self.inbox = create_channel(math.inf)
        self.pending_bytes = 0  # audio bytes in the inbox
        limit = stream._settings.max_buffered_audio_bytes
        self._hard_limit = _HARD_LIMIT_FACTOR * limit
        self.overflow: SlowReaderError | None = None
        self.overflow_scope = create_cancel_scope()  # the recv task's, cancelled on overflow
        self.sent_any = False

    @property
    def retries(self) -> int:
        return self._policy.used

    @property
    def wire_ids(self) -> list[str]:
        """Every context the stream started, in order (for tests and logs)."""
        return self._state.wire_ids

    def delivered(self) -> bool:
        """Something reached the caller: from now on a failure is raised, not retried.

        :returns: whether this is the first delivery since the context took the text.
        """
        first = self._replay is not None
        self._replay = None
        return first

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
        session, wire_id = self.session, self._state.wire_id
        if session is not None and wire_id is not None:
            session.routes.pop(wire_id, None)  # nothing more of it into the inbox
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
                session, protocol, shared, ready = await self._attach()
            except RimeError as exc:
                error = exc
            else:
                self.session = session
                self._state.attach(protocol)
                return shared, ready
            if not self._may_retry(error):
                raise error
            logger.info("stream %s: %s; retrying", self._stream.context_id, error)
            await self._policy.wait()

    async def _attach(self) -> tuple[V1Session, V1Connection, bool, bool]:
        session, ready = self._sessions.attach(self._url, self)
        shared = ready or len(session.members) > 1
        try:
            protocol = await session.wait_ready()
        except BaseException:
            self._sessions.detach(session, self)
            raise
        return session, protocol, shared, ready

    def _may_retry(self, error: RimeError) -> bool:
        return self._replay is not None and self._policy.spend(error)

    def _frames(self, session: V1Session, texts: list[str], *, end: bool) -> list[Frame]:
        """The state's frames for *texts* (and the end); a context they start is routed to
        this stream."""
        state = self._state
        before = state.wire_id
        frames = state.frames(texts, end=end)
        wire_id = state.wire_id
        if wire_id is not None and wire_id != before:
            session.routes[wire_id] = self
            session.contexts_started += 1
        return frames

    async def send(self, texts: list[str], *, end: bool) -> None:
        """Send *texts* on the current context (starting it first), and its end if *end*; on
        a new socket if the current one fails and nothing was delivered.

        :raises RimeError: when the failure must reach the caller.
        """
        async with self._lock:
            session = self.session
            assert session is not None
            if self._replay is not None:
                self._replay += texts  # before the write: a failed one is re-sent too
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
                    session, protocol, _, _ = await self._attach()
                except RimeError as exc:
                    error = exc
                    continue
                if self._replay is None:
                    # The recv task delivered audio of the failing socket meanwhile:
                    # re-sending could duplicate it.
                    self._sessions.detach(session, self)
                    raise error
                self.session = session
                self._state.attach(protocol)  # a fresh context, a fresh id
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
        """A ``clear()``: the state leaves the current context (only it: its ``cancel`` goes
        out) and goes on with a fresh one, on the same socket, once there is text to say.
        Retries are safe again until its first audio is delivered."""
        async with self._lock:
            self._replay = []
            session, wire_id = self.session, self._state.wire_id
            frames = self._state.interrupt()
            if session is None or wire_id is None:
                return
            await self._cancel(session, wire_id, frames)

    async def _cancel(self, session: V1Session, wire_id: str, frames: list[Frame]) -> None:
        """Stop routing context *wire_id* (its late events are nobody's) and send *frames*
        (its ``cancel``, if it still runs)."""
        session.routes.pop(wire_id, None)
        if frames and session.usable:
            try:
                await session.send(*frames)
            except RimeError as exc:
                # The socket failed: its contexts are gone with it; the stream learns of it
                # in its inbox (or does not care any more).
                logger.debug("cancelling context %s failed: %s", wire_id, exc)

    async def release(self, *, complete: bool) -> None:
        """Leave the socket: cancel the context if audio is still owed (*complete* is the
        state's own, which decides), detach (the socket stays open for the other streams).
        Call it shielded."""
        self.inbox_tx.close()
        self.inbox.close()
        session, wire_id = self.session, self._state.wire_id
        self.session = None
        if session is None:
            return
        try:
            frames = self._state.leave()
            if wire_id is not None:
                await self._cancel(session, wire_id, frames)
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
                    texts += state.text_messages(item.text)
                elif item is FLUSH:
                    texts += state.flush_messages()
                else:  # CLEAR: the first item of its generation, so texts is empty here
                    await link.switch()  # the state's interrupt(), its cancel on the socket
            if ended:
                texts += state.end_messages()
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
                        item = await inbox.receive()
                    except (anyio.EndOfStream, anyio.ClosedResourceError):
                        return
                    finally:
                        self._reading = False
                    self._frames += 1
                    if isinstance(item, Lost):
                        if item.session is link.session:
                            await link.replace(item.session, item.error)
                        continue
                    if isinstance(item, Audio):
                        link.pending_bytes -= len(item.chunk.data)
                    outputs = state.receive(item)
                    if not outputs and isinstance(item, Audio):
                        # Stale audio dropped, not handed on: a send task holding text back
                        # for the reader may go on (only the reader's taking wakes it
                        # otherwise).
                        stream._audio_dropped()
                    first = link.delivered() if outputs else False
                    generation = stream._generation
                    for output in outputs:
                        if not await self._deliver(audio, generation, output):
                            return
                    if first:
                        await self._head_start()  # no socket to replenish: it is shared
                    if state.complete:
                        self._watchdog_scope.cancel()
                        return
            if link.overflow is not None:
                raise link.overflow
