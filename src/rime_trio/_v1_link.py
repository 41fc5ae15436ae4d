"""A speech stream's link over Rime's WebSocket v1: one context at a time on a shared socket.

The stream's tasks (:mod:`._stream_tasks`) are the same as on ``/ws3``; every protocol
decision (what to say and when, the context's frames, which events are stale, completion) is
the sans-IO :class:`~._protocol_v1.V1StreamState`'s. :class:`V1Link` is the stream's place
on a shared socket (a :class:`~._v1_session.V1Session`): the socket, the route of its current
context, the texts sent on it (re-sent on a new socket while nothing was delivered), and the
inbox the session's reader routes the context's events to.

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
from typing import TYPE_CHECKING, Any, Final

import anyio

from ._channel import ChannelReceiver, ChannelSender, create_channel
from ._errors import ConnectionLost, RimeError, SlowReaderError
from ._pool import ConnectionPool, Lease
from ._protocol_v1 import Audio, ErrorEvent, Event, Frame, V1StreamState
from ._retry import ReplayingLink, RetryPolicy
from ._v1_session import Lost, V1Session

if TYPE_CHECKING:
    from ._stream_tasks import TaskRunner

__all__ = ["V1Link"]

logger = logging.getLogger("rime_trio")

# The inbox may grow to this many times max_buffered_audio_bytes (with the audio channel)
# before the stream fails: room for the audio of text sent before the stream held back (text
# is held only once its audio has come, so what one write asked for always gets in).
_HARD_LIMIT_FACTOR: Final = 8


class V1Link(ReplayingLink[V1Session]):
    """A stream's place on the shared v1 sockets (a :class:`~._stream_tasks.Link`; see the
    module docstring).

    The send task calls :meth:`open`, :meth:`send` and :meth:`switch`; the session's reader
    calls :meth:`deliver`; the recv task calls :meth:`receive`; the stream's teardown calls
    :meth:`release`. The frames are the state's (:class:`~._protocol_v1.V1StreamState`),
    made under the link's lock right before each write, so that a replacement socket never
    interleaves with them.
    """

    shared = True  # a slow reader holds the stream's text back, never the socket

    def __init__(
        self,
        pool: ConnectionPool,
        url: str,
        policy: RetryPolicy,
        state: V1StreamState,
        *,
        max_buffered_audio_bytes: int,
        api_key: str | None = None,
    ) -> None:
        super().__init__(pool, url, policy, V1Session, state.context_id, api_key)
        self._state = state
        # Unbounded by count, bounded in bytes by the overflow check in deliver().
        # Each item with the socket it came from: only the current socket's are the stream's
        # (context ids restart on every socket, so an old socket's "c1" is not the new one's).
        self._inbox_tx: ChannelSender[tuple[V1Session, Event | Lost]]
        self._inbox: ChannelReceiver[tuple[V1Session, Event | Lost]]
        self._inbox_tx, self._inbox = create_channel(math.inf)
        #: audio bytes in the inbox
        self.backlog = 0
        self._hard_limit = _HARD_LIMIT_FACTOR * max_buffered_audio_bytes
        self._runner: TaskRunner[Any] | None = None
        self._overflowed = False
        self._lost: RimeError | None = None  # why the stream has no socket any more

    @property
    def session(self) -> V1Session | None:
        """The socket the stream speaks on (None: none yet, or between two)."""
        return None if self._lease is None else self._lease.socket

    def bind(self, runner: TaskRunner[Any]) -> None:
        self._runner = runner

    def replenish(self) -> None:
        pass  # the socket is shared and stays open: nothing to replace

    # ----------------------------------------------------------------- from the reader

    def deliver(self, session: V1Session, item: Event | Lost) -> None:
        """Take an event of the current context on *session* (or the socket's loss) into the
        inbox; never waits. Past the hard limit the stream fails (its recv task is stopped)."""
        if session is not self.session:
            return  # a socket the stream left (replaced): nothing on it is the stream's
        if isinstance(item, Audio):
            self.backlog += len(item.chunk.data)
            runner = self._runner
            if runner is not None and self.backlog + runner.buffered > self._hard_limit:
                self._overflow(runner)
                return
        try:  # noqa: SIM105 (per chunk: a try costs less than contextlib.suppress)
            self._inbox_tx.send_nowait((session, item))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the stream has ended

    def _overflow(self, runner: TaskRunner[Any]) -> None:
        if self._overflowed:
            return
        self._overflowed = True
        session, wire_id = self.session, self._state.wire_id
        if session is not None and wire_id is not None:
            session.routes.pop(wire_id, None)  # nothing more of it into the inbox
        runner.halt(
            SlowReaderError(
                f"the reader fell {self._hard_limit} bytes of audio behind the server; v1 "
                "streams share a socket, so the server cannot be held back for one of them: "
                "the stream's context was cancelled (read faster, or raise "
                "max_buffered_audio_bytes)"
            )
        )

    async def receive(self) -> Event | None:
        """The next event of the stream's context; a lost socket is replaced first (and its
        texts re-sent) when that is safe. None once the inbox was closed.

        :raises RimeError: the socket's loss, when it must reach the caller.
        """
        while True:
            try:
                session, item = await self._inbox.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return None
            if isinstance(item, Audio):
                self.backlog -= len(item.chunk.data)
            if session is not self.session:
                continue  # queued before the stream moved to another socket
            if isinstance(item, Lost):
                await self._replace(session, item.error)
                continue
            refused = isinstance(item, ErrorEvent) and item.format_refused
            if refused and await self._rename(session, item.context_id):
                continue
            return item

    # ----------------------------------------------------------------- sockets

    def _take(self, lease: Lease[V1Session]) -> None:
        self._lease = lease
        protocol = lease.socket.protocol
        assert protocol is not None  # the pool hands out ready sockets
        self._state.attach(protocol)  # a fresh context, a fresh id

    def _frames(self, session: V1Session, texts: list[str], *, end: bool) -> list[Frame]:
        """The state's frames for *texts* (and the end); a context they start is routed to
        this stream."""
        state = self._state
        before = state.wire_id
        frames = state.frames(texts, end=end)
        wire_id = state.wire_id
        if wire_id is not None and wire_id != before:
            session.routes[wire_id] = self
        return frames

    def _replayed(self, session: V1Session) -> list[Frame]:
        """The frames that say every text of the replay buffer again (and the end, if it was
        sent), however many contexts its flushes ask for: a write starts one at most, and
        nothing else would write the rest."""
        state = self._state
        frames = self._frames(session, list(self._replay or ()), end=state.end_sent)
        while state.pending:
            frames += self._frames(session, [], end=state.end_sent)
        return frames

    async def send(self, texts: list[str], *, end: bool) -> None:
        """Send the messages *texts* on the current context (starting it first), and its end
        if *end*; on a new socket if the current one fails and nothing was delivered.

        :raises RimeError: when the failure must reach the caller.
        """
        async with self._lock:
            session = self.session
            if session is None:
                # The socket was lost and no other could be had (the recv task raised why):
                # the same failure, not a second one of its own.
                raise self._lost or ConnectionLost("the stream's v1 socket was lost")
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
                return
        await self._replace(session, error)

    async def _replace(self, failed: V1Session, error: RimeError) -> None:
        """The socket *failed*: start the context afresh on another and re-send its texts (and
        its end), if nothing of it was delivered and the retries allow.

        :raises RimeError: *error* (or a later one) when it must reach the caller instead.
        """
        async with self._lock:
            if self.session is not failed:
                return  # the other task replaced it already
            while True:
                if not self._may_retry(error):
                    self._lost = error
                    raise error
                logger.info(
                    "stream %s: %s before any audio was delivered; re-sending %d text(s) on "
                    "another v1 socket",
                    self._label,
                    error,
                    len(self._replay or ()),
                )
                assert self._lease is not None
                self._pool.release(self._lease, keep=True)  # the pool drops it if it failed
                self._lease = None
                await self._policy.wait()
                # Not fresh: the streams that shared the lost socket move to one new one.
                try:
                    lease = await self._get(fresh=False)
                except RimeError as exc:
                    self._lost = exc
                    raise
                if self._replay is None:
                    # The recv task delivered audio of the failing socket meanwhile:
                    # re-sending could duplicate it.
                    self._pool.release(lease, keep=True)
                    raise error
                self._take(lease)
                session = lease.socket
                try:
                    await session.send(*self._replayed(session))
                except RimeError as exc:
                    failed, error = session, exc
                    continue
                return

    async def _rename(self, session: V1Session, context_id: str | None) -> bool:
        """The server refused the audio format's name in context *context_id*'s ``start`` (the
        socket names it otherwise from now on): say the stream's texts again on a fresh
        context, if nothing was delivered yet. False if the refusal must reach the caller.

        Not a retry: no backoff and no budget spent. The names to try are few, and each
        refusal moves the socket on to the next.

        :raises RimeError: when the socket fails and no other can be had.
        """
        async with self._lock:
            state = self._state
            if self.session is not session or self._replay is None:
                return False
            if not state.speaks_on(context_id):
                return True  # a context the stream left already: its refusal is stale
            cancels = state.leave()  # a context after it may run (named before the refusal)
            assert session.protocol is not None
            state.attach(session.protocol)
            frames = [*cancels, *self._replayed(session)]
            try:
                await session.send(*frames)
            except RimeError as exc:
                error = exc
            else:
                return True
        await self._replace(session, error)
        return True

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
                # Queued, not waited for: a stream leaving or clearing never waits on a
                # socket that stopped draining (the session's writer sends it, in order).
                session.send_nowait(*frames)
            except RimeError as exc:
                # The socket failed: its contexts are gone with it; the stream learns of it
                # in its inbox (or does not care any more).
                logger.debug("cancelling context %s failed: %s", wire_id, exc)

    async def release(self, *, complete: bool) -> None:
        """Leave the socket: cancel the context if audio is still owed (*complete* is the
        state's own, which decides), detach (the socket stays open for the other streams).
        Call it shielded."""
        self._inbox_tx.close()
        self._inbox.close()
        lease, wire_id = self._lease, self._state.wire_id
        self._lease = None
        if lease is None:
            return
        try:
            frames = self._state.leave()
            if wire_id is not None:
                await self._cancel(lease.socket, wire_id, frames)
        finally:
            self._pool.release(lease, keep=True)
