"""The client's WebSocket sockets, for both protocols: one pool of :class:`PooledSocket`
entries (a socket opening, waiting or in use), keyed by URL (the URL holds every synthesis
setting).

A socket carries at most its *capacity* of streams at once: one on ``/ws3``, where a stream
ends with ``eos`` and the server's close (the only end of its audio that every reading of
Rime's docs agrees on, see :class:`~rime_trio._protocol.StreamState`), so a socket that
carried text is never handed out again; up to ``max_contexts_per_socket`` on v1, whose
:class:`~._v1_session.V1Session` adds the reader task that routes each context's events to
its stream. The rest is one mechanism for both:

* :meth:`ConnectionPool.get` gives a stream a :class:`Lease` on a socket for its URL with
  room (one still opening counts: streams that start together share its handshake), or
  opens one; the lease says how long the stream waited for a handshake (None: it was ready).
* :meth:`ConnectionPool.release` takes the lease back; a socket left without streams is kept
  for the next ones when it may be (see :meth:`~ConnectionPool.release`), else closed.
* :meth:`ConnectionPool.replenish` opens a spare in the background once a stream took one
  (so sequential streams never wait for a handshake), :meth:`~ConnectionPool.prewarm` in
  the foreground; sockets without streams past ``max_session_duration`` are closed whenever
  the pool looks (no timer).

Which socket a stream gets is decided by :func:`choose`, a pure function of the sockets, the
clock and a liveness answer passed in; the pool around it only does the I/O.
"""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Generic, TypeVar

import anyio

from ._concurrency import TaskGroup, create_cancel_scope, create_event
from ._errors import (
    APIStatusError,
    ConfigurationError,
    ConnectError,
    ConnectionLost,
    ProtocolError,
    RimeConnectionError,
    RimeError,
    RimeTimeoutError,
    ServerError,
    StreamClosed,
)
from ._transport import Connection, open_connection

__all__ = [
    "ConnectionPool",
    "Connector",
    "Lease",
    "Opener",
    "PoolSettings",
    "PoolStats",
    "PooledSocket",
    "choose",
    "clone_error",
]

logger = logging.getLogger("rime_trio")

_T = TypeVar("_T")

#: How a socket is opened: URL and subprotocols in, an open connection out.
Opener = Callable[[str, list[str] | None], Awaitable[Connection]]
#: What makes a connection (``open_connection``'s signature; tests pass an in-memory one).
Connector = Callable[..., Awaitable[Connection]]


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """How the pool keeps sockets (see :class:`ConnectionPool`).

    :ivar max_size: sockets kept open without a stream, at most (0: none are kept, and no
        spare is opened in the background: every stream makes its own handshake).
    :ivar max_session_duration: a socket without a stream for this long is closed, seconds.
    :ivar mark_refreshed_on_get: restart a socket's session timer when a stream takes it
        and when the last one leaves it.
    :ivar connect_timeout: bound on TCP + TLS + WebSocket handshake, seconds (v1: and the
        server's ``ready``).
    :ivar teardown_timeout: how long closing a socket waits for the server's reply, seconds.
        On v1 also: how long a stream leaving waits for its frames on a socket that stopped
        draining, and how long a context the server has not answered a ``cancel`` for counts
        against ``max_contexts_per_socket``.
    :ivar max_contexts_per_socket: v1 only: streams that share one socket at most; one more
        opens another socket. One v1 socket per URL is kept without a stream.
    """

    max_size: int = 8
    max_session_duration: float = 300.0
    mark_refreshed_on_get: bool = True
    connect_timeout: float = 10.0
    teardown_timeout: float = 1.0
    max_contexts_per_socket: int = 64

    def __post_init__(self) -> None:
        if self.max_size < 0:
            raise ConfigurationError(f"max_pool_size must be >= 0, got {self.max_size}")
        if self.max_contexts_per_socket < 1:
            raise ConfigurationError(
                f"max_contexts_per_socket must be >= 1, got {self.max_contexts_per_socket}"
            )
        for name in ("max_session_duration", "connect_timeout", "teardown_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"{name} must be positive, got {getattr(self, name)!r}")


@dataclass(slots=True)
class PoolStats:
    opened: int = 0  # handshakes made
    reused: int = 0  # streams given a socket opened before they asked (ready or not)
    retired: int = 0  # sockets the pool closed (not counting those the server had closed)


def clone_error(error: RimeError, prefix: str = "") -> RimeError:
    """A fresh exception like *error* for one stream: streams waiting on one socket must not
    raise one exception object (each stream writes its own ``audio_seconds_delivered`` on
    it, and each raise rewrites its traceback)."""
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


class PooledSocket:
    """One socket of the pool, as ``/ws3`` uses it (v1's :class:`~._v1_session.V1Session`
    adds its reader). Its task (run by the pool) opens it; *capacity* streams may hold a
    lease on it at once."""

    #: whether streams share the socket (v1) or each has its own (/ws3)
    shared: ClassVar[bool] = False

    def __init__(self, url: str, settings: PoolSettings, api_key: str | None = None) -> None:
        self.url = url
        # The key its handshake carried: a stream with another key never takes it. (Never
        # shown: not in the repr, not logged.)
        self.api_key = api_key
        self.capacity = settings.max_contexts_per_socket if self.shared else 1
        self.users: set[Lease[Any]] = set()
        self.connection: Connection | None = None
        self.ready = create_event()  # set once ready, or once it failed
        self.error: RimeError | None = None
        self.scope = create_cancel_scope()  # its task's: cancelled to close the socket
        self.running = True  # its task runs (opening it; on v1, reading it)
        self.closing = False
        self.refreshed_at = anyio.current_time()  # the session timer's start
        #: when it last became idle (opened, or its last stream left): how long it waited
        self.idle_since = self.refreshed_at

    def __repr__(self) -> str:
        state = (
            "failed" if self.error is not None else "ready" if self.ready.is_set() else "opening"
        )
        return f"<{type(self).__name__} {self.url} {state} streams={len(self.users)}>"

    @property
    def usable(self) -> bool:
        """Not failed or closing (one still opening counts: streams may wait for it)."""
        return (
            self.error is None
            and not self.closing
            and (self.connection is None or self.connection.usable)
        )

    @property
    def load(self) -> int:
        """How much of the capacity is taken."""
        return len(self.users)

    def has_room(self) -> bool:
        return self.usable and self.load < self.capacity

    def alive(self) -> bool:
        """Whether the socket, open and waiting, still seems to be (a peek: one syscall)."""
        return self.connection is not None and self.connection.seems_alive()

    async def serve(self, opener: Opener) -> None:
        """The socket's task: open it (v1's goes on reading it until it closes)."""
        self.connection = await opener(self.url, None)
        self.ready.set()

    def fail(self, error: RimeError) -> None:
        """The socket failed (or was closed): whoever waits for it gets *error*."""
        if self.error is None:
            self.error = error
        self.ready.set()

    async def wait_ready(self) -> None:
        """Wait until the socket is ready.

        :raises RimeError: why it failed (a refused handshake, ...): a copy of one's own.
        """
        await self.ready.wait()
        if self.error is not None or self.connection is None:
            raise clone_error(self.error or StreamClosed("the socket was closed"))


_S = TypeVar("_S", bound=PooledSocket)


class Lease(Generic[_S]):
    """A stream's hold on a socket of the pool, from :meth:`ConnectionPool.get` to
    :meth:`ConnectionPool.release`."""

    __slots__ = ("handshake_seconds", "socket")

    def __init__(self, socket: _S) -> None:
        self.socket = socket
        #: how long the stream waited for a handshake (its own or one it joined); None if the
        #: socket was ready when it was taken (no handshake on the stream's path)
        self.handshake_seconds: float | None = None

    @property
    def connection(self) -> Connection:
        connection = self.socket.connection
        assert connection is not None  # a lease is handed out once the socket is ready
        return connection


@dataclass(frozen=True, slots=True)
class Choice:
    """What :func:`choose` decided: the socket to hand out (if any) and those to retire."""

    socket: PooledSocket | None
    retire: tuple[PooledSocket, ...] = field(default=())


def choose(
    sockets: Sequence[PooledSocket],
    url: str,
    now: float,
    max_session_duration: float,
    alive: Callable[[PooledSocket], bool],
    api_key: str | None = None,
) -> Choice:
    """The socket for a stream of *url*: among those with room, a ready one before one
    still opening, then the fullest (streams pack into as few sockets as their capacity
    allows, and the others stay idle and expire), then the newest. Only a socket whose
    handshake carried *api_key* will do. Sockets without streams that failed, expired or,
    asked *alive* (only those looked at), seem dead are retired.
    """
    retire: list[PooledSocket] = []
    candidates: list[tuple[tuple[bool, int, int], PooledSocket]] = []
    for index, socket in enumerate(sockets):
        idle = not socket.users and socket.ready.is_set()
        if idle and (not socket.usable or now - socket.refreshed_at >= max_session_duration):
            retire.append(socket)
            continue
        if socket.url == url and socket.api_key == api_key and socket.has_room():
            candidates.append(((socket.ready.is_set(), socket.load, index), socket))
    for _, socket in sorted(candidates, key=lambda c: c[0], reverse=True):
        if socket.users or not socket.ready.is_set() or alive(socket):
            return Choice(socket, tuple(retire))
        retire.append(socket)
    return Choice(None, tuple(retire))


class ConnectionPool:
    """The client's WebSocket sockets (see the module docstring). Its background work (opens,
    closes, v1 readers) runs in *task_group*; every piece of it is bounded in time."""

    def __init__(
        self,
        task_group: TaskGroup,
        *,
        api_key: str | None,
        ssl_context: ssl.SSLContext | None = None,
        settings: PoolSettings | None = None,
        on_open: Callable[[], None] | None = None,
        connect: Connector = open_connection,
    ) -> None:
        self._task_group = task_group
        self._connect = connect
        self._on_open = on_open  # told of every handshake made (for OpenTelemetry)
        self._api_key = api_key
        self._ssl_context = ssl_context
        self.settings = settings or PoolSettings()
        #: every socket of the pool, in the order they were opened
        self.sockets: list[PooledSocket] = []
        self._wanted_urls: set[str] | None = None
        self._wanted_keys: set[str | None] | None = None
        # /ws3 URLs whose server left a stream waiting for the done that was to end it.
        self._dones_untrusted: set[str] = set()
        self._closed = False
        self._background = 0
        self._background_changed = create_event()  # set when a background task ends
        self.stats = PoolStats()

    def __repr__(self) -> str:
        return f"<ConnectionPool sockets={len(self.sockets)} max_size={self.settings.max_size}>"

    @property
    def idle(self) -> int:
        """Open sockets waiting for a stream."""
        return sum(1 for s in self.sockets if not s.users and s.ready.is_set() and s.usable)

    def _check_open(self) -> None:
        if self._closed:
            raise StreamClosed("the client has been closed")

    def _wanted(self, url: str, api_key: str | None) -> bool:
        return (self._wanted_urls is None or url in self._wanted_urls) and (
            self._wanted_keys is None or api_key in self._wanted_keys
        )

    def _key(self, api_key: str | None) -> str | None:
        """The key a socket for a stream with *api_key* carries (None: the pool's)."""
        return self._api_key if api_key is None else api_key

    def _choose(self, url: str, api_key: str | None) -> PooledSocket | None:
        choice = choose(
            self.sockets,
            url,
            anyio.current_time(),
            self.settings.max_session_duration,
            lambda socket: socket.alive(),
            api_key,
        )
        for socket in choice.retire:
            self._close(socket)
        return choice.socket

    # ----------------------------------------------------------------- streams

    async def get(
        self, url: str, kind: type[_S], *, fresh: bool = False, api_key: str | None = None
    ) -> Lease[_S]:
        """A lease on a ready socket of *kind* for *url*, whose handshake carried *api_key*
        (None: the pool's); ``fresh=True`` opens a new one.
        Choosing and joining a socket take no checkpoint, so streams starting together fill
        one socket before another opens.

        :raises StreamClosed: if the pool is closed.
        :raises RimeError: why the socket could not be opened (APIStatusError, ConnectError,
            RimeTimeoutError; on v1 also ProtocolError): a copy of this stream's own.
        """
        self._check_open()
        asked = anyio.current_time()
        key = self._key(api_key)
        socket = None if fresh else self._choose(url, key)
        if socket is None:
            socket = self._start(url, kind, key)
        else:
            self.stats.reused += 1
        assert isinstance(socket, kind)
        lease = Lease(socket)
        socket.users.add(lease)
        if self.settings.mark_refreshed_on_get:
            socket.refreshed_at = asked
        if not socket.ready.is_set():
            try:
                await socket.wait_ready()
            except BaseException:
                # Cancelled while waiting, the socket stays for the next stream.
                self.release(lease, keep=True)
                raise
            lease.handshake_seconds = anyio.current_time() - asked
        elif socket.error is not None:  # pragma: no cover (choose() only hands out usable)
            raise clone_error(socket.error)
        return lease

    def release(self, lease: Lease[_S], *, keep: bool) -> None:
        """The stream is done with the socket. One left without streams is kept for the next
        ones if *keep* says it may serve another (v1: always; /ws3: only when nothing was
        sent on it), and the pool wants it: it is usable, alive and not expired, for a
        wanted URL, and fewer than ``max_size`` wait (one shared socket per URL: the one
        with room for a stream, see :meth:`_keeps`); else it is closed, in the background."""
        socket = lease.socket
        socket.users.discard(lease)
        if socket.users:
            return
        socket.idle_since = anyio.current_time()
        if self.settings.mark_refreshed_on_get:
            socket.refreshed_at = socket.idle_since
        if not (keep and self._keeps(socket)):
            self._close(socket)

    def _keeps(self, socket: PooledSocket) -> bool:
        """Whether *socket*, left without streams, waits for the next ones (see
        :meth:`release`). One shared socket is enough for the next streams of its URL (up to
        its capacity): if another waits already, the one kept is the one with room (a v1
        socket may have none for a while, its contexts cancelled but not yet answered), and
        the other is closed."""
        if self._closed or not socket.usable or not self._wanted(socket.url, socket.api_key):
            return False
        if socket.ready.is_set():
            expired = anyio.current_time() - socket.refreshed_at
            if expired >= self.settings.max_session_duration or not socket.alive():
                return False
        spares = [s for s in self.sockets if s is not socket and not s.users and s.usable]
        twins = [s for s in spares if socket.shared and s.shared and s.url == socket.url]
        if twins and (not socket.has_room() or any(s.has_room() for s in twins)):
            return False
        if len(spares) - len(twins) >= self.settings.max_size:
            return False
        for twin in twins:
            self._close(twin)  # no room in it for a stream: this one takes its place
        return True

    def replenish(self, url: str, api_key: str | None = None) -> None:
        """Open a spare ``/ws3`` socket for *url* in the background, unless one is ready or
        coming, or ``max_size`` are kept already.

        A stream calls it once its first audio was taken (or when it ends), not when it
        takes its socket: a handshake then would compete with the stream's own first audio.
        """
        key = self._key(api_key)
        if self._closed or not self._wanted(url, key):
            return
        spares = [s for s in self.sockets if not s.users and s.usable]
        if len(spares) >= self.settings.max_size or any(
            s.url == url and s.api_key == key for s in spares
        ):
            return
        self._start(url, PooledSocket, key)

    async def prewarm(self, url: str, kind: type[PooledSocket], api_key: str | None = None) -> None:
        """Open a socket of *kind* for *url* and wait until it is ready, unless one with room
        is ready or opening (or the pool keeps none: ``max_size=0``).

        :raises RimeError: if it cannot be opened (as :meth:`get`).
        """
        self._check_open()
        if self.settings.max_size == 0:
            return  # no socket may wait in the pool: opening one would only waste a handshake
        key = self._key(api_key)
        socket = self._choose(url, key) or self._start(url, kind, key)
        await socket.wait_ready()

    # ----------------------------------------------------------------- options

    def invalidate(self, keep_url: str, api_key: str | None = None) -> None:
        """Close the sockets without streams for any URL but *keep_url*, or any key but
        *api_key* (options changed: None keeps the pool's key); sockets in use serve their
        streams to the end. *api_key* is the key of new sockets from now on."""
        if api_key is not None:
            self._api_key = api_key
        self._wanted_urls = {keep_url}
        self._wanted_keys = {self._api_key}
        for socket in [s for s in self.sockets if not s.users]:
            if not self._wanted(socket.url, socket.api_key):
                self._close(socket)

    def want(self, url: str, api_key: str | None = None) -> None:
        """Also keep sockets for *url* and *api_key* (a per-stream override of the options)."""
        if self._wanted_urls is not None:
            self._wanted_urls.add(url)
        if self._wanted_keys is not None:
            self._wanted_keys.add(self._key(api_key))

    def trusts_dones(self, url: str) -> bool:
        """Whether a ``segment=never`` stream of *url* may end at its last flush's ``done``
        (and leave its socket to the next stream): until one such ``done`` failed to come."""
        return url not in self._dones_untrusted

    def distrust_dones(self, url: str) -> None:
        """A stream of *url* waited in vain for the ``done`` that was to end it: the next
        ones end with ``eos`` and the close (one socket each, but no wait)."""
        if url not in self._dones_untrusted:
            logger.info("no done came for a stream's last flush: streams end with eos")
            self._dones_untrusted.add(url)

    def retire_idle(self) -> None:
        """Close every socket without streams (in the background); the pool stays open."""
        for socket in [s for s in self.sockets if not s.users]:
            self._close(socket)

    # ----------------------------------------------------------------- sockets

    def _start(self, url: str, kind: type[_S], api_key: str | None) -> _S:
        socket = kind(url, self.settings, api_key)
        self.sockets.append(socket)
        self._spawn(self._run, socket)
        return socket

    async def _run(self, socket: PooledSocket) -> None:
        """The socket's task: open it (v1: then read it); drop it when it fails or closes."""
        try:
            with socket.scope:
                await socket.serve(functools.partial(self._open, api_key=socket.api_key))
            if socket.scope.cancel_called:
                socket.fail(StreamClosed("the socket was closed"))
        except RimeError as exc:
            if not socket.users:
                logger.debug("opening a spare socket failed: %s", exc)
            socket.fail(exc)
        finally:
            socket.running = False
            if socket.error is not None:
                await self._drop(socket)
            elif not socket.users and not self._keeps(socket):
                self.stats.retired += 1
                await self._drop(socket)  # a spare no longer wanted (cancelled, options)

    async def _open(
        self, url: str, subprotocols: list[str] | None, *, api_key: str | None
    ) -> Connection:
        connection = await self._connect(
            url,
            api_key=api_key,
            ssl_context=self._ssl_context,
            connect_timeout=self.settings.connect_timeout,
            subprotocols=subprotocols,
        )
        self.stats.opened += 1
        if self._on_open is not None:
            self._on_open()
        return connection

    def _close(self, socket: PooledSocket) -> None:
        """Close *socket* in the background (a close frame, bounded, shielded)."""
        if socket.closing or socket not in self.sockets:
            return  # closing, or dropped already (it failed)
        socket.closing = True
        if socket.running:
            self.stats.retired += 1
            socket.scope.cancel()  # its task drops it
        elif socket.connection is not None and socket.connection.closed:
            self.sockets.remove(socket)  # closed already (the stream's end): no task needed
        else:
            self.stats.retired += 1
            self._spawn(self._drop, socket)

    async def _drop(self, socket: PooledSocket) -> None:
        if socket in self.sockets:
            self.sockets.remove(socket)
        if socket.connection is not None:
            # Shielded and bounded by itself: the close frame, the reply, the TCP stream.
            await socket.connection.aclose(wait_for_close=self.settings.teardown_timeout)

    def _spawn(self, task: Callable[[_T], Awaitable[None]], arg: _T) -> None:
        self._background += 1  # counted when spawned, so wait_teardowns() cannot miss it
        # Named for what it does (a socket's task is "_run"), not for the wrapper.
        self._task_group.start_soon(
            self._counted, task, arg, name=f"rime_trio._pool.{task.__name__}"
        )

    async def _counted(self, task: Callable[[_T], Awaitable[None]], arg: _T) -> None:
        try:
            await task(arg)
        finally:
            self._background -= 1
            self._background_changed.set()

    async def wait_teardowns(self) -> None:
        """Wait until the pool's background work is over: opens, closes, and the readers of
        sockets being closed (each bounded). A v1 socket's reader is not work to wait for
        once the socket is open: it runs as long as the socket does."""
        while True:
            opening = next((s for s in self.sockets if s.running and not s.ready.is_set()), None)
            if opening is not None:
                await opening.ready.wait()
                continue
            if self._background <= self._serving():
                return
            self._background_changed = event = create_event()
            await event.wait()

    def _serving(self) -> int:
        """Sockets whose task only reads them now (v1: open, not failed, not closing)."""
        return sum(
            1
            for s in self.sockets
            if s.running and s.ready.is_set() and s.error is None and not s.closing
        )

    async def aclose(self) -> None:
        """Close every socket but a ready ``/ws3`` one a stream holds (closed when that stream
        ends), within the teardown timeout, in parallel. Safe to call twice."""
        self._closed = True
        for socket in list(self.sockets):
            if socket.shared or not socket.users or not socket.ready.is_set():
                self._close(socket)
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(self.settings.teardown_timeout + 1):
                await self.wait_teardowns()
