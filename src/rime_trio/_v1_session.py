"""A Rime WebSocket v1 socket shared by many streams, with the one reader task it needs.

A :class:`V1Session` is one v1 socket of the pool (a :class:`~._pool.PooledSocket` whose
capacity is ``max_contexts_per_socket``) and its sans-IO state
(:class:`~._protocol_v1.V1Connection`). Its task, run by the pool, opens it, waits for the
server's ``ready`` and is then the only reader of the socket: it turns frames into events and
routes each, by context id, to the stream that owns the context (a :class:`Route`). Routing
never waits: a route takes the event into an inbox of its own at once, so one slow stream can
never stall the others on the socket (what a stream does about a reader that falls behind is
its own business, see ``_v1_link``). Which socket a stream joins is the pool's choice.

When a socket fails (closed, dropped, a frame that is not v1, a refused handshake), every
stream on it gets a :class:`Lost` in its inbox, with an error of its own naming the cause;
the stream decides whether that may be retried.

Writes are the session's too: a stream's frames go into the socket's queue, and a writer task
beside the reader sends them (whatever was queued meanwhile in one write). Half a frame would
break the socket for every stream on it, so a write is never abandoned half-way while the
socket serves: a stream cancelled while its frames wait leaves at once, and they still go out;
a write the server does not take within ``teardown_timeout + connect_timeout`` fails the
socket (every stream on it gets :class:`Lost`). So a stream's teardown never waits for a
socket that stopped draining longer than ``teardown_timeout`` (see :meth:`V1Session.send`),
and the pool does not keep such a socket for the next streams (see :meth:`V1Session.alive`).

A context whose stream left it (its ``cancel`` sent) still runs on the server until the
``cancelled`` comes back, so it counts against the socket's capacity: for ``teardown_timeout``
at most (a server that never answers a cancel must not fill a socket for good; the context's
late events are dropped by :class:`~._protocol_v1.V1Connection` whenever they come).
"""

from __future__ import annotations

import logging
from typing import ClassVar, Protocol

import anyio

from ._concurrency import Event as Signal
from ._concurrency import create_event, open_task_group
from ._errors import (
    APIStatusError,
    ConnectionLost,
    ProtocolError,
    RimeError,
    RimeTimeoutError,
    StreamClosed,
)
from ._pool import Opener, PooledSocket, PoolSettings, clone_error
from ._protocol_v1 import (
    DEFAULT_SUBPROTOCOLS,
    Cancelled,
    ContextMixUp,
    Done,
    ErrorEvent,
    Event,
    Frame,
    V1Connection,
)
from ._transport import Connection

__all__ = ["Lost", "Route", "V1Session", "lost_error"]

logger = logging.getLogger("rime_trio")


class Lost:
    """Inbox item: *session*, which carried the context, failed with *error* (the stream's own
    copy)."""

    __slots__ = ("error", "session")

    def __init__(self, session: V1Session, error: RimeError) -> None:
        self.session = session
        self.error = error


class Route(Protocol):
    """What a session delivers a context's events to. :meth:`deliver` must not wait."""

    def deliver(self, session: V1Session, item: Event | Lost) -> None: ...


def lost_error(cause: RimeError) -> RimeError:
    """What a stream on a socket that failed with *cause* gets: a :class:`ConnectionLost`
    naming the cause (a retry on another socket is safe while nothing was delivered, whatever
    broke this one; also an event for a context never started: another socket may be sane),
    a status the server closed with (1011 "503: ..."), or the :class:`ProtocolError` of a
    frame the client cannot read (never retried, as on ``/ws3``: a server that sent it would
    send it again)."""
    if isinstance(cause, APIStatusError | ProtocolError) and not isinstance(cause, ContextMixUp):
        return clone_error(cause)
    return ConnectionLost(f"the v1 socket was lost: {cause}")


class V1Session(PooledSocket):
    """One shared v1 socket (see the module docstring)."""

    shared: ClassVar[bool] = True

    def __init__(self, url: str, settings: PoolSettings, api_key: str | None = None) -> None:
        super().__init__(url, settings, api_key)
        self._connect_timeout = settings.connect_timeout
        self._teardown_timeout = settings.teardown_timeout
        self._send_timeout = settings.teardown_timeout + settings.connect_timeout
        self.routes: dict[str, Route] = {}  # wire context id -> its stream
        self.protocol: V1Connection | None = None
        # Contexts open on the server for no stream (cancelled, no terminal event yet), with
        # when the session first saw them so: they count against the capacity for a while.
        self._orphans: dict[str, float] = {}
        # The writer's queue: frames to send, and the callers waiting for them to go out.
        self._queue: list[Frame] = []
        self._waiters: list[Signal] = []
        self._writing = False  # the writer is in a write
        self._write_since = 0.0  # since when
        self._wake = create_event()  # set when frames were queued for an idle writer

    @property
    def load(self) -> int:
        """The streams on the socket, plus the contexts the server still runs for no stream
        (cancelled, the ``cancelled`` not yet back): they count against the limit too, for
        ``teardown_timeout`` from when the session first finds them without a stream."""
        load = len(self.users)
        protocol = self.protocol
        if protocol is None:
            return load
        now = anyio.current_time()
        for context_id in protocol.open_context_ids:
            if context_id not in self.routes:
                since = self._orphans.setdefault(context_id, now)
                if now - since < self._teardown_timeout:
                    load += 1
        return load

    def alive(self) -> bool:
        """Usable (its reader notices a dead socket at once: nothing to peek), and draining:
        one whose write the server has not taken for ``teardown_timeout`` is no socket to
        keep for the next streams (its writer fails it, in time)."""
        if self._writing and anyio.current_time() - self._write_since >= self._teardown_timeout:
            return False
        return self.usable

    async def wait_ready(self) -> None:
        await super().wait_ready()
        if self.protocol is None:  # pragma: no cover (ready is set with the protocol)
            raise StreamClosed("the v1 socket was closed")

    async def serve(self, opener: Opener) -> None:
        """Open the socket, wait for ``ready``, then route every frame until it fails."""
        connection = await opener(self.url, list(DEFAULT_SUBPROTOCOLS))
        self.connection = connection
        protocol = V1Connection(connection.subprotocol)
        try:
            with anyio.fail_after(self._connect_timeout):
                while protocol.ready is None:
                    frame = await connection.receive()
                    if frame is None:
                        raise ConnectionLost("the server closed the v1 socket before 'ready'")
                    for event in protocol.receive(frame):
                        self.route(event)
        except TimeoutError:
            raise RimeTimeoutError(
                f"no 'ready' from the v1 server within {self._connect_timeout:g} s"
            ) from None
        self.protocol = protocol
        self.ready.set()
        async with open_task_group() as task_group:
            # Named as a part of the socket's task (the pool's _run), which it is.
            task_group.start_soon(self._write, connection, name="rime_trio._pool._run.writer")
            while True:
                frame = await connection.receive()
                if frame is None:
                    raise ConnectionLost("the server closed the v1 socket (code 1000)")
                for event in protocol.receive(frame):
                    self.route(event)

    async def _write(self, connection: Connection) -> None:
        """The writer: send what is queued, all of it in one write, each write bounded by the
        send timeout (one the server does not take fails the socket)."""
        while True:
            if not self._queue:
                self._wake = create_event()
                await self._wake.wait()
                continue
            frames, self._queue = self._queue, []
            waiters, self._waiters = self._waiters, []
            self._writing = True
            self._write_since = anyio.current_time()
            try:
                with anyio.move_on_after(self._send_timeout) as scope:
                    await connection.send(*frames)
            finally:
                self._writing = False
                for waiter in waiters:
                    waiter.set()  # they find the socket's error, if the write failed
            if scope.cancelled_caught:
                raise RimeTimeoutError(
                    f"sending on the v1 socket took longer than {self._send_timeout:g} s"
                )

    async def send(self, *frames: Frame) -> None:
        """Queue *frames* for the writer (in order, in one write with whatever else is
        queued). The writer idle, they go out in its next turn and this returns at once;
        else it waits for them to go out (backpressure), up to ``teardown_timeout``: past
        that, or cancelled, the caller leaves and they are the writer's to send, or to fail
        the socket with (every stream on it then gets :class:`Lost`). A stream leaving never
        waits longer for a socket that stopped draining, and never leaves half a frame on it.

        :raises RimeError: if the socket failed or closed (before, or while waiting): a copy.
        """
        busy = self._writing or bool(self._queue)
        self.send_nowait(*frames)
        if not busy:
            return
        waiter = create_event()
        self._waiters.append(waiter)
        with anyio.move_on_after(self._teardown_timeout):
            await waiter.wait()
        if self.error is not None:
            raise clone_error(self.error)

    def send_nowait(self, *frames: Frame) -> None:
        """Queue *frames* for the writer and return, whatever it is doing (for a stream
        leaving: its ``cancel`` goes out in order, or the socket fails).

        :raises RimeError: if the socket failed or closed: a copy.
        """
        if self.error is not None or self.closing or self.connection is None:
            raise clone_error(self.error or StreamClosed("the v1 socket was closed"))
        if not (self._writing or self._queue):
            self._wake.set()
        self._queue += frames

    def route(self, event: Event) -> None:
        """Hand *event* to the stream whose context it concerns (never waits)."""
        context_id = event.context_id
        if context_id is None:
            if isinstance(event, ErrorEvent):
                # The docs: it concerns the connection, and open contexts keep running. If it
                # was fatal (authentication), the server's close follows and fails them all.
                connection = self.connection
                message = event.message if connection is None else connection.redact(event.message)
                logger.warning("v1 server error for the connection: %s: %s", event.kind, message)
            return
        route = self.routes.get(context_id)
        if route is None:
            # A context whose stream left (and cancelled it): nobody wants it; once it ends,
            # it no longer takes room on the socket.
            if self._orphans and isinstance(event, Done | Cancelled | ErrorEvent):
                self._orphans.pop(context_id, None)
            return
        if isinstance(event, Done | Cancelled | ErrorEvent):
            del self.routes[context_id]
        route.deliver(self, event)

    def fail(self, error: RimeError) -> None:
        """The socket failed: every stream on it gets a :class:`Lost` with its own copy of
        *error*, and the reader stops (it closes the socket). Idempotent."""
        if self.error is not None:
            return
        super().fail(error)
        self._queue.clear()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.set()  # to find the error
        routes, self.routes = self.routes, {}
        for route in routes.values():
            route.deliver(self, Lost(self, lost_error(error)))
        self.scope.cancel()
