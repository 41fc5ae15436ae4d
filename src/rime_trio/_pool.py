"""A pool of fresh ``/ws3`` sockets, keyed by URL (the URL holds every synthesis setting), and
the client's shared v1 sockets (:class:`~._v1_session.V1Sessions`, at :attr:`ConnectionPool.v1`).

A ``/ws3`` socket serves one stream: the stream ends with ``eos`` and the server's close,
the only end of its audio that every reading of Rime's docs agrees on (see
:class:`~rime_trio._protocol.StreamState`). The pool's job is therefore to have the *next*
socket open before it is needed: ``prewarm()`` opens one, and every stream that takes a
socket has a replacement opened in the background, so sequential streams never wait for a
handshake.

Decisions are made by :func:`choose`, a pure function of the pool's state and the clock;
the :class:`ConnectionPool` around it only does the I/O those decisions call for.
"""

from __future__ import annotations

import logging
import ssl
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import anyio

from ._concurrency import TaskGroup, create_cancel_scope, create_event
from ._errors import ConfigurationError, RimeError, StreamClosed
from ._transport import Connection, open_connection
from ._v1_session import V1Sessions

__all__ = ["ConnectionPool", "PoolSettings", "PoolStats", "choose"]

logger = logging.getLogger("rime_trio")

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """How the pool keeps sockets (see :class:`ConnectionPool`).

    :ivar max_size: fresh sockets kept open and waiting, at most (0: none are kept, and no
        replacement is opened in the background: every stream makes its own handshake).
    :ivar max_session_duration: an unused socket older than this is closed, seconds.
    :ivar mark_refreshed_on_get: restart a socket's session timer when it is handed out.
    :ivar connect_timeout: bound on TCP + TLS + WebSocket handshake, seconds.
    :ivar teardown_timeout: how long closing a socket waits for the server's reply, seconds.
    :ivar max_contexts_per_socket: v1 only: streams that share one socket at most; one more
        opens another socket. A v1 socket no stream uses stays open for the next streams
        (one per URL; none with ``max_size=0``) until ``max_session_duration``.
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
    reused: int = 0  # gets served by a socket opened ahead of time (prewarmed or replaced)
    retired: int = 0  # sockets closed by the pool


@dataclass(frozen=True, slots=True)
class Choice:
    """What :func:`choose` decided: the socket to hand out (if any) and those to retire."""

    connection: Connection | None
    retire: tuple[Connection, ...] = field(default=())


def expired(connection: Connection, now: float, max_session_duration: float) -> bool:
    return now - connection.refreshed_at >= max_session_duration


def choose(idle: Sequence[Connection], url: str, now: float, max_session_duration: float) -> Choice:
    """Pick the most recently opened idle socket for *url* that still seems alive; retire
    dead or expired ones (only the sockets looked at are peeked, one syscall each)."""
    retire = [c for c in idle if not c.usable or expired(c, now, max_session_duration)]
    for candidate in reversed(idle):
        if candidate.url != url or candidate in retire:
            continue
        if candidate.seems_alive():
            return Choice(candidate, tuple(retire))
        retire.append(candidate)
    return Choice(None, tuple(retire))


class _Opening:
    """A socket being opened ahead of time; one ``get()`` may claim it before it is ready."""

    __slots__ = ("claimed", "connection", "done", "error", "scope", "url")

    def __init__(self, url: str) -> None:
        self.url = url
        self.claimed = False
        self.done = create_event()
        self.scope = create_cancel_scope()
        self.connection: Connection | None = None
        self.error: RimeError | None = None


class ConnectionPool:
    """Fresh sockets waiting for the next stream.

    * ``get(url)`` hands out a fresh socket for *url*: an idle one, one already being opened
      in the background, or a new one; ``replenish(url)`` then opens its replacement in the
      background.
    * ``put(connection)`` takes back a socket that was never used (a stream that ended
      before sending anything); it is kept unless it is dead, expired, for a URL no longer
      wanted, or the pool is full.
    * ``retire(connection)`` closes a socket in the background (bounded, shielded).
    * Idle sockets older than ``max_session_duration`` are retired.
    """

    def __init__(
        self,
        task_group: TaskGroup,  # for background opens and closes only: sockets have no tasks
        *,
        api_key: str | None,
        ssl_context: ssl.SSLContext | None = None,
        settings: PoolSettings | None = None,
        on_open: Callable[[], None] | None = None,
    ) -> None:
        self._task_group = task_group
        self._on_open = on_open  # told of every handshake made (for OpenTelemetry)
        self._api_key = api_key
        self._ssl_context = ssl_context
        self.settings = settings or PoolSettings()
        self._idle: list[Connection] = []
        self._opening: list[_Opening] = []
        self._wanted_urls: set[str] | None = None
        self._closed = False
        self._background = 0
        self._background_done = create_event()
        self.stats = PoolStats()
        # Sockets handed out already open (no handshake on the taker's path), until the
        # taker asks (see took_open()); weak, so one never asked about is simply forgotten.
        self._handed_open: weakref.WeakSet[Connection] = weakref.WeakSet()
        #: the shared v1 sockets (streams of a v1 URL speak on these, not on the ones above)
        self.v1 = V1Sessions(
            task_group,
            self._open,
            max_streams=self.settings.max_contexts_per_socket,
            keep_idle=self.settings.max_size > 0,
            max_session_duration=self.settings.max_session_duration,
            connect_timeout=self.settings.connect_timeout,
            teardown_timeout=self.settings.teardown_timeout,
        )

    def __repr__(self) -> str:
        return (
            f"<ConnectionPool idle={len(self._idle)} opening={len(self._opening)}"
            f" max_size={self.settings.max_size}>"
        )

    @property
    def idle(self) -> int:
        """Open sockets waiting for a stream."""
        return len(self._idle)

    def _check_open(self) -> None:
        if self._closed:
            raise StreamClosed("the client has been closed")

    def _wanted(self, url: str) -> bool:
        return self._wanted_urls is None or url in self._wanted_urls

    async def get(self, url: str, *, fresh: bool = False) -> tuple[Connection, bool]:
        """Return ``(socket, opened_ahead)`` for *url*; ``fresh=True`` opens a new one.

        :raises StreamClosed: if the pool is closed.
        :raises APIStatusError, ConnectError, RimeTimeoutError: if a new socket cannot open.
        """
        self._check_open()
        now = anyio.current_time()
        choice = choose(self._idle, url, now, self.settings.max_session_duration)
        for connection in choice.retire:
            self._idle.remove(connection)
            self.retire(connection)
        if fresh:
            return await self._open(url), False
        if choice.connection is not None:
            connection = choice.connection
            self._idle.remove(connection)
            self._hand_out(connection, now)
            self._handed_open.add(connection)
            return connection, True
        opening = next((o for o in self._opening if o.url == url and not o.claimed), None)
        if opening is None:
            return await self._open(url), False
        opening.claimed = True
        try:
            await opening.done.wait()
        except BaseException:
            opening.claimed = False  # cancelled while waiting: the socket goes to the pool
            if opening.connection is not None:
                self.put(opening.connection)
            raise
        if opening.error is not None:
            raise opening.error
        ready = opening.connection
        assert ready is not None
        now = anyio.current_time()
        if expired(ready, now, self.settings.max_session_duration):
            self.retire(ready)  # a handshake slower than the session duration itself
            return await self._open(url), False
        self._hand_out(ready, now)
        return ready, True

    def took_open(self, connection: Connection) -> bool:
        """Whether *connection* was handed out already open: an idle socket, with no
        handshake (not even the end of a background one) on the taker's path. Ask once."""
        if connection in self._handed_open:
            self._handed_open.discard(connection)
            return True
        return False

    def _hand_out(self, connection: Connection, now: float) -> None:
        if self.settings.mark_refreshed_on_get:
            connection.refreshed_at = now
        self.stats.reused += 1

    def replenish(self, url: str) -> None:
        """Open a spare socket for *url* in the background, unless one is ready or coming.

        A stream calls it once its first audio arrived (or when it ends), not when it takes
        its socket: a handshake then would compete with the stream's own first audio.
        """
        if self._closed or not self._wanted(url):
            return
        if any(c.url == url for c in self._idle) or any(
            o.url == url and not o.claimed for o in self._opening
        ):
            return
        if len(self._idle) + len(self._opening) >= self.settings.max_size:
            return
        opening = _Opening(url)
        self._opening.append(opening)
        self._spawn(self._open_ahead, opening)

    async def _open_ahead(self, opening: _Opening) -> None:
        try:
            with opening.scope:
                opening.connection = await self._open(opening.url)
            if opening.scope.cancelled_caught:
                opening.error = StreamClosed("the client has been closed")
        except RimeError as exc:
            opening.error = exc
            if not opening.claimed:
                logger.debug("opening a spare socket failed: %s", exc)
        finally:
            self._opening.remove(opening)
            opening.done.set()
            if opening.connection is not None and not opening.claimed:
                self.put(opening.connection)

    async def _open(self, url: str, subprotocols: list[str] | None = None) -> Connection:
        connection = await open_connection(
            url,
            api_key=self._api_key,
            ssl_context=self._ssl_context,
            connect_timeout=self.settings.connect_timeout,
            subprotocols=subprotocols,
        )
        self.stats.opened += 1
        if self._on_open is not None:
            self._on_open()
        return connection

    def put(self, connection: Connection) -> None:
        """Take back a socket on which nothing was sent."""
        keep = (
            not self._closed
            and connection.seems_alive()
            and not expired(connection, anyio.current_time(), self.settings.max_session_duration)
            and self._wanted(connection.url)
            and len(self._idle) < self.settings.max_size
        )
        if keep:
            self._idle.append(connection)
        else:
            self.retire(connection)

    def retire(self, connection: Connection) -> None:
        """Close *connection* in the background (a close frame, bounded, shielded)."""
        self.stats.retired += 1
        self._spawn(self._close, connection)

    def _spawn(self, task: Callable[[_T], Awaitable[None]], arg: _T) -> None:
        self._background += 1  # counted when spawned, so wait_teardowns() cannot miss it
        self._task_group.start_soon(self._counted, task, arg)

    async def _counted(self, task: Callable[[_T], Awaitable[None]], arg: _T) -> None:
        try:
            await task(arg)
        finally:
            self._background -= 1
            if not self._background:
                self._background_done.set()

    async def _close(self, connection: Connection) -> None:
        await connection.aclose(wait_for_close=self.settings.teardown_timeout)

    async def wait_teardowns(self) -> None:
        """Wait until every background open and close has finished (each is bounded)."""
        while self._background:
            if self._background_done.is_set():
                self._background_done = create_event()
            await self._background_done.wait()

    async def prewarm(self, url: str) -> None:
        """Open a socket for *url* ahead of time, unless one is ready or being opened (or the
        pool keeps none: ``max_size=0``).

        :raises APIStatusError, ConnectError, RimeTimeoutError: if it cannot open.
        """
        self._check_open()
        if self.settings.max_size == 0:
            return  # no socket may wait in the pool: opening one would only waste a handshake
        now = anyio.current_time()
        if choose(self._idle, url, now, self.settings.max_session_duration).connection is not None:
            return
        opening = next((o for o in self._opening if o.url == url and not o.claimed), None)
        if opening is not None:
            await opening.done.wait()
            if opening.error is not None:
                raise opening.error
            return
        self.put(await self._open(url))

    def invalidate(self, keep_url: str) -> None:
        """Retire idle sockets for any URL but *keep_url* (options changed); sockets in use
        finish their stream."""
        self._wanted_urls = {keep_url}
        self.v1.invalidate(keep_url)
        for connection in [c for c in self._idle if c.url != keep_url]:
            self._idle.remove(connection)
            self.retire(connection)

    def retire_idle(self) -> None:
        """Retire every idle socket (closed in the background); the pool stays open."""
        idle, self._idle = self._idle, []
        for connection in idle:
            self.retire(connection)
        self.v1.retire_idle()

    def want(self, url: str) -> None:
        """Also keep sockets for *url* (a per-stream override of the options)."""
        if self._wanted_urls is not None:
            self._wanted_urls.add(url)
        self.v1.want(url)

    async def aclose(self) -> None:
        """Close every idle socket, in parallel; stop opening spares. Safe to call twice."""
        self._closed = True
        for opening in self._opening:
            opening.scope.cancel()
        idle, self._idle = self._idle, []
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(self.v1.aclose)
                for connection in idle:
                    self.stats.retired += 1
                    task_group.start_soon(self._close, connection)
