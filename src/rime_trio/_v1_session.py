"""Rime WebSocket v1 sockets shared by many streams: one reader task per socket.

A :class:`V1Session` is one v1 socket and its sans-IO state (:class:`~._protocol_v1.V1Connection`).
Its reader task, run in the client's task group by :class:`V1Sessions`, is the only reader of
the socket: it turns frames into events and routes each, by context id, to the stream that
owns the context (a :class:`Route`). Routing never waits: a route takes the event into an
inbox of its own at once, so one slow stream can never stall the others on the socket (what a
stream does about a reader that falls behind is its own business, see ``_v1_stream``).

:class:`V1Sessions` decides which socket a stream speaks on: the fullest open (or opening)
socket for the URL that still has room for one more stream (``max_contexts_per_socket``),
else a new one. A stream attaches before the socket is ready, so streams that start together
share the handshake instead of each opening a socket of its own. A socket no stream uses stays
open for the next ones (one per URL, unless the pool keeps none), up to
``max_session_duration``.

When a socket fails (closed, dropped, a frame that is not v1, a refused handshake), every
stream on it gets a :class:`Lost` in its inbox, with an error of its own naming the cause;
the stream decides whether that may be retried. Sends are shielded and bounded, so that a
stream cancelled mid-write can never leave half a frame on a socket others share.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import anyio

from ._concurrency import TaskGroup, create_cancel_scope, create_event
from ._errors import (
    APIStatusError,
    ConnectError,
    ConnectionLost,
    ProtocolError,
    RimeConnectionError,
    RimeError,
    RimeTimeoutError,
    ServerError,
    StreamClosed,
)
from ._protocol_v1 import (
    DEFAULT_SUBPROTOCOLS,
    Cancelled,
    Done,
    ErrorEvent,
    Event,
    Frame,
    V1Connection,
)
from ._transport import Connection

__all__ = ["Lost", "Route", "V1Session", "V1Sessions", "clone_error", "lost_error"]

logger = logging.getLogger("rime_trio")

#: How a session opens a socket: URL and subprotocols in, an open connection out.
Opener = Callable[[str, list[str]], Awaitable[Connection]]


class Lost:
    """Inbox item: *session*, which carried the context, failed with *error* (the stream's own
    copy)."""

    __slots__ = ("error", "session")

    def __init__(self, session: V1Session, error: RimeError) -> None:
        self.session = session
        self.error = error


class Route(Protocol):
    """What a session delivers a context's events to. :meth:`deliver` must not wait."""

    def deliver(self, item: Event | Lost) -> None: ...


def clone_error(error: RimeError, prefix: str = "") -> RimeError:
    """A fresh exception like *error* for one stream: streams sharing a socket must not raise
    one exception object (each stream writes its own ``audio_seconds_delivered`` on it, and
    each raise rewrites its traceback)."""
    if isinstance(error, APIStatusError):
        return APIStatusError(error.status_code, error.message, server=error.server)
    if isinstance(error, ServerError):
        return ServerError(error.message)
    message = f"{prefix}{error}"
    if type(error) in _MESSAGE_ONLY:
        return type(error)(message)  # the same class: a refused connect stays ConnectError
    return ConnectionLost(message)


# The errors made from a message alone (cloned as they are; anything else, as a lost socket).
_MESSAGE_ONLY: Final = frozenset(
    {
        ConnectError,
        ConnectionLost,
        RimeConnectionError,
        RimeTimeoutError,
        ProtocolError,
        StreamClosed,
    }
)


def lost_error(cause: RimeError) -> RimeError:
    """What a stream on a socket that failed with *cause* gets: a :class:`ConnectionLost`
    naming the cause (a retry on another socket is safe while nothing was delivered, whatever
    broke this one), or a status the server closed with (1011 "503: ...")."""
    if isinstance(cause, APIStatusError):
        return clone_error(cause)
    return ConnectionLost(f"the v1 socket was lost: {cause}")


class V1Session:
    """One shared v1 socket (see the module docstring). Made by :class:`V1Sessions`."""

    def __init__(self, url: str, max_streams: int, send_timeout: float) -> None:
        self.url = url
        self.max_streams = max_streams
        self._send_timeout = send_timeout
        self.members: set[object] = set()  # the streams attached (at most max_streams)
        self.routes: dict[str, Route] = {}  # wire context id -> its stream
        self.connection: Connection | None = None
        self.protocol: V1Connection | None = None
        self.ready = create_event()  # set once ready, or once the session failed
        self.error: RimeError | None = None
        self.scope = create_cancel_scope()  # the reader's: cancelled to close the session
        self.idle_since = anyio.current_time()

    def __repr__(self) -> str:
        state = (
            "failed" if self.error is not None else "ready" if self.ready.is_set() else "opening"
        )
        return f"<V1Session {self.url} {state} streams={len(self.members)}>"

    @property
    def usable(self) -> bool:
        """Not failed or closing (an opening session counts: streams may join it)."""
        return (
            self.error is None
            and not self.scope.cancel_called
            and (self.connection is None or self.connection.usable)
        )

    @property
    def has_room(self) -> bool:
        """Room for one more context: the streams on the socket, plus the contexts the
        server still runs for no stream (cancelled, the ``cancelled`` not yet back), under
        the limit."""
        if not self.usable:
            return False
        orphans = 0
        protocol = self.protocol
        if protocol is not None:
            orphans = sum(1 for c in protocol.open_context_ids if c not in self.routes)
        return len(self.members) + orphans < self.max_streams

    async def wait_ready(self) -> V1Connection:
        """Wait until the server's ``ready``.

        :raises RimeError: why the session failed (the handshake refused, ...): a copy.
        """
        await self.ready.wait()
        if self.error is not None or self.protocol is None:
            raise clone_error(self.error or StreamClosed("the v1 socket was closed"))
        return self.protocol

    async def send(self, *frames: Frame) -> None:
        """Send *frames* in one write: shielded from the caller's cancellation (half a frame
        would break the socket for every stream on it) and bounded by the send timeout (a
        write that cannot finish fails the socket).

        :raises RimeError: if the socket failed (before or during the write): a copy.
        """
        connection = self.connection
        if self.error is not None or connection is None:
            raise clone_error(self.error or StreamClosed("the v1 socket was closed"))
        error: RimeError | None = None
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(self._send_timeout) as scope:
                try:
                    await connection.send(*frames)
                except RimeError as exc:
                    error = exc
            if scope.cancelled_caught:
                error = RimeTimeoutError(
                    f"sending on the v1 socket took longer than {self._send_timeout:g} s"
                )
        if error is not None:
            self.lose(error)
            raise clone_error(error)

    def route(self, event: Event) -> None:
        """Hand *event* to the stream whose context it concerns (never waits)."""
        context_id = event.context_id
        if context_id is None:
            if isinstance(event, ErrorEvent):
                # The docs: it concerns the connection, and open contexts keep running. If it
                # was fatal (authentication), the server's close follows and fails them all.
                logger.warning(
                    "v1 server error for the connection: %s: %s", event.kind, event.message
                )
            return
        route = self.routes.get(context_id)
        if route is None:
            return  # a context whose stream left (and cancelled it): nobody wants it
        if isinstance(event, Done | Cancelled | ErrorEvent):
            del self.routes[context_id]
        route.deliver(event)

    def lose(self, error: RimeError) -> None:
        """The socket failed: every stream on it gets a :class:`Lost` with its own copy of
        *error*, and the reader stops (it closes the socket). Idempotent."""
        if self.error is not None:
            return
        self.error = error
        routes, self.routes = self.routes, {}
        for route in routes.values():
            route.deliver(Lost(self, lost_error(error)))
        self.scope.cancel()
        self.ready.set()


# Idle sockets kept per URL: one is enough for the next streams to start without a handshake
# (it takes up to max_contexts_per_socket of them).
_IDLE_PER_URL: Final = 1


class V1Sessions:
    """The v1 sockets of one client, and their reader tasks (in *task_group*).

    :meth:`attach` gives a stream a socket (see the module docstring), :meth:`detach` takes
    it back; :meth:`prewarm` opens one ahead of time; :meth:`aclose` closes them all.
    """

    def __init__(
        self,
        task_group: TaskGroup,
        opener: Opener,
        *,
        max_streams: int,
        keep_idle: bool,
        max_session_duration: float,
        connect_timeout: float,
        teardown_timeout: float,
    ) -> None:
        self._task_group = task_group
        self._open = opener
        self.max_streams = max_streams
        self._keep_idle = keep_idle
        self._max_session_duration = max_session_duration
        self._connect_timeout = connect_timeout
        self._teardown_timeout = teardown_timeout
        self.sessions: list[V1Session] = []
        self._closed = False
        self._wanted_urls: set[str] | None = None
        #: sockets opened (handshakes begun) over the client's life
        self.opened = 0

    def __repr__(self) -> str:
        return f"<V1Sessions {len(self.sessions)} socket(s)>"

    # ----------------------------------------------------------------- streams

    def attach(self, url: str, member: object) -> tuple[V1Session, bool]:
        """A socket for *member* (a stream): ``(session, already_ready)``.

        Synchronous, so that streams starting together fill one socket before another opens.

        :raises StreamClosed: if the client is closed.
        """
        if self._closed:
            raise StreamClosed("the client has been closed")
        self._retire_expired()
        candidates = [s for s in self.sessions if s.url == url and s.has_room]
        if candidates:
            # The fullest first: streams pack into as few sockets as the limit allows, and
            # idle sockets stay idle (and expire).
            session = max(candidates, key=lambda s: (s.ready.is_set(), len(s.members)))
        else:
            session = self._start(url)
        session.members.add(member)
        return session, session.ready.is_set()

    def detach(self, session: V1Session, member: object) -> None:
        """*member* no longer uses *session*; a socket left without streams is kept for the
        next ones (one per URL) or closed."""
        session.members.discard(member)
        if session.members:
            return
        session.idle_since = anyio.current_time()
        keep = (
            self._keep_idle
            and not self._closed
            and session.usable
            and self._wanted(session.url)
            and not any(
                s is not session and s.url == session.url and s.usable and not s.members
                for s in self.sessions
            )
        )
        if not keep:
            session.scope.cancel()  # the reader closes it

    async def prewarm(self, url: str) -> None:
        """Open a socket for *url* and wait for its ``ready``, unless one is open or opening.

        :raises RimeError: if it cannot be opened.
        """
        if self._closed:
            raise StreamClosed("the client has been closed")
        self._retire_expired()
        session = next((s for s in self.sessions if s.url == url and s.usable), None)
        if session is None:
            session = self._start(url)
        await session.wait_ready()

    def invalidate(self, keep_url: str) -> None:
        """Close idle sockets for any URL but *keep_url*; sockets in use serve on."""
        self._wanted_urls = {keep_url}
        for session in self.sessions:
            if session.url != keep_url and not session.members:
                session.scope.cancel()

    def want(self, url: str) -> None:
        if self._wanted_urls is not None:
            self._wanted_urls.add(url)

    def retire_idle(self) -> None:
        """Close every socket no stream uses."""
        for session in self.sessions:
            if not session.members:
                session.scope.cancel()

    async def aclose(self) -> None:
        """Close every socket (each within the teardown timeout, in parallel). Twice is fine."""
        self._closed = True
        sessions = list(self.sessions)
        for session in sessions:
            session.scope.cancel()
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._teardown_timeout + 1):
            for session in sessions:
                await session.ready.wait()
                if session.connection is not None:
                    await session.connection.wait_closed()

    # ----------------------------------------------------------------- sockets

    def _wanted(self, url: str) -> bool:
        return self._wanted_urls is None or url in self._wanted_urls

    def _retire_expired(self) -> None:
        now = anyio.current_time()
        for session in self.sessions:
            if not session.members and now - session.idle_since >= self._max_session_duration:
                session.scope.cancel()

    def _start(self, url: str) -> V1Session:
        session = V1Session(url, self.max_streams, self._teardown_timeout + self._connect_timeout)
        self.sessions.append(session)
        self.opened += 1
        self._task_group.start_soon(self._run, session)
        return session

    async def _run(self, session: V1Session) -> None:
        """The session's reader: open, wait for ``ready``, then route every frame until the
        socket fails or the session is closed (its scope cancelled)."""
        try:
            with session.scope:
                await self._serve(session)
        except RimeError as exc:
            session.lose(exc)
        finally:
            session.lose(StreamClosed("the v1 socket was closed"))  # no-op if it failed
            if session in self.sessions:
                self.sessions.remove(session)
            if session.connection is not None:
                # Shielded and bounded by itself: the close frame, the reply, the TCP stream.
                await session.connection.aclose(wait_for_close=self._teardown_timeout)

    async def _serve(self, session: V1Session) -> None:
        connection = await self._open(session.url, list(DEFAULT_SUBPROTOCOLS))
        session.connection = connection
        protocol = V1Connection(connection.subprotocol)
        try:
            with anyio.fail_after(self._connect_timeout):
                while protocol.ready is None:
                    frame = await connection.receive()
                    if frame is None:
                        raise ConnectionLost("the server closed the v1 socket before 'ready'")
                    for event in protocol.receive(frame):
                        session.route(event)
        except TimeoutError:
            raise RimeTimeoutError(
                f"no 'ready' from the v1 server within {self._connect_timeout:g} s"
            ) from None
        session.protocol = protocol
        session.ready.set()
        while True:
            frame = await connection.receive()
            if frame is None:
                raise ConnectionLost("the server closed the v1 socket (code 1000)")
            for event in protocol.receive(frame):
                session.route(event)
