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
the stream decides whether that may be retried. Sends are shielded and bounded, so that a
stream cancelled mid-write can never leave half a frame on a socket others share.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Protocol

import anyio

from ._errors import APIStatusError, ConnectionLost, RimeError, RimeTimeoutError, StreamClosed
from ._pool import Opener, PooledSocket, PoolSettings, clone_error
from ._protocol_v1 import (
    DEFAULT_SUBPROTOCOLS,
    Cancelled,
    Done,
    ErrorEvent,
    Event,
    Frame,
    V1Connection,
)

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
    broke this one), or a status the server closed with (1011 "503: ...")."""
    if isinstance(cause, APIStatusError):
        return clone_error(cause)
    return ConnectionLost(f"the v1 socket was lost: {cause}")


class V1Session(PooledSocket):
    """One shared v1 socket (see the module docstring)."""

    shared: ClassVar[bool] = True

    def __init__(self, url: str, settings: PoolSettings) -> None:
        super().__init__(url, settings)
        self._connect_timeout = settings.connect_timeout
        self._send_timeout = settings.teardown_timeout + settings.connect_timeout
        self.routes: dict[str, Route] = {}  # wire context id -> its stream
        self.protocol: V1Connection | None = None

    @property
    def load(self) -> int:
        """The streams on the socket, plus the contexts the server still runs for no stream
        (cancelled, the ``cancelled`` not yet back): they count against the limit too."""
        orphans = 0
        protocol = self.protocol
        if protocol is not None:
            orphans = sum(1 for c in protocol.open_context_ids if c not in self.routes)
        return len(self.users) + orphans

    def alive(self) -> bool:
        return self.usable  # its reader notices a dead socket at once: nothing to peek

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
        while True:
            frame = await connection.receive()
            if frame is None:
                raise ConnectionLost("the server closed the v1 socket (code 1000)")
            for event in protocol.receive(frame):
                self.route(event)

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
            self.fail(error)
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
        route.deliver(self, event)

    def fail(self, error: RimeError) -> None:
        """The socket failed: every stream on it gets a :class:`Lost` with its own copy of
        *error*, and the reader stops (it closes the socket). Idempotent."""
        if self.error is not None:
            return
        super().fail(error)
        routes, self.routes = self.routes, {}
        for route in routes.values():
            route.deliver(self, Lost(self, lost_error(error)))
        self.scope.cancel()
