"""A pool of open ``/ws3`` sockets, keyed by URL (the URL holds every synthesis setting).

Decisions are made by :func:`choose`, a pure function of the pool's state and the clock;
the :class:`ConnectionPool` around it only does the I/O those decisions call for.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from ._errors import ConfigurationError, StreamClosed
from ._transport import Connection, open_connection

__all__ = ["ConnectionPool", "PoolSettings", "PoolStats", "choose"]


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """How the pool keeps sockets (see :class:`ConnectionPool`)."""

    max_size: int = 8
    max_session_duration: float = 300.0
    mark_refreshed_on_get: bool = True
    connect_timeout: float = 10.0
    teardown_timeout: float = 1.0

    def __post_init__(self) -> None:
        if self.max_size < 0:
            raise ConfigurationError(f"max_pool_size must be >= 0, got {self.max_size}")
        for name in ("max_session_duration", "connect_timeout", "teardown_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"{name} must be positive, got {getattr(self, name)!r}")


@dataclass(slots=True)
class PoolStats:
    opened: int = 0  # handshakes made
    reused: int = 0  # gets served by an idle socket
    retired: int = 0  # sockets closed with the eos teardown


@dataclass(frozen=True, slots=True)
class Choice:
    """What :func:`choose` decided: the socket to hand out (if any) and those to retire."""

    connection: Connection | None
    retire: tuple[Connection, ...] = field(default=())


def expired(connection: Connection, now: float, max_session_duration: float) -> bool:
    return now - connection.refreshed_at >= max_session_duration


def choose(idle: Sequence[Connection], url: str, now: float, max_session_duration: float) -> Choice:
    """Pick the most recently used idle socket for *url*; retire dead or expired ones."""
    retire = tuple(c for c in idle if not c.usable or expired(c, now, max_session_duration))
    candidates = [c for c in idle if c.url == url and c not in retire]
    return Choice(candidates[-1] if candidates else None, retire)


class ConnectionPool:
    """Open sockets waiting for the next stream.

    * ``get(url)`` hands out an idle socket for *url* (refreshing its session timer when
      ``mark_refreshed_on_get``), or opens a new one; concurrent streams get separate sockets.
    * ``put(connection)`` takes a socket back after a stream that finished cleanly; it is kept
      unless it is dead, expired, for a URL no longer wanted, or the pool is full.
    * ``retire(connection)`` closes a socket with the eos teardown in the background.
    * Idle sockets older than ``max_session_duration`` (since their last use) are retired.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        api_key: str | None,
        ssl_context: ssl.SSLContext | None = None,
        settings: PoolSettings | None = None,
    ) -> None:
        self._nursery = nursery
        self._api_key = api_key
        self._ssl_context = ssl_context
        self.settings = settings or PoolSettings()
        self._idle: list[Connection] = []
        self._wanted_urls: set[str] | None = None
        self._closed = False
        self._teardowns = 0
        self._teardown_done = trio.lowlevel.ParkingLot()
        self.stats = PoolStats()

    def __repr__(self) -> str:
        return f"<ConnectionPool idle={len(self._idle)} max_size={self.settings.max_size}>"

    @property
    def idle(self) -> int:
        return len(self._idle)

    def _check_open(self) -> None:
        if self._closed:
            raise StreamClosed("the client has been closed")

    async def get(self, url: str, *, fresh: bool = False) -> tuple[Connection, bool]:
        """Return ``(socket, reused)`` for *url*; ``fresh=True`` skips idle sockets.

        :raises StreamClosed: if the pool is closed.
        :raises APIStatusError, ConnectError, RimeTimeoutError: if a new socket cannot open.
        """
        self._check_open()
        now = trio.current_time()
        choice = choose(self._idle, url, now, self.settings.max_session_duration)
        for connection in choice.retire:
            self._idle.remove(connection)
            self.retire(connection)
        if choice.connection is not None and not fresh:
            self._idle.remove(choice.connection)
            if self.settings.mark_refreshed_on_get:
                choice.connection.refreshed_at = now
            self.stats.reused += 1
            return choice.connection, True
        return await self._open(url), False

    async def _open(self, url: str) -> Connection:
        connection = await open_connection(
            self._nursery,
            url,
            api_key=self._api_key,
            ssl_context=self._ssl_context,
            connect_timeout=self.settings.connect_timeout,
        )
        self.stats.opened += 1
        return connection

    def put(self, connection: Connection) -> None:
        """Take back a socket whose stream finished cleanly (no audio owed)."""
        keep = (
            not self._closed
            and connection.usable
            and not expired(connection, trio.current_time(), self.settings.max_session_duration)
            and (self._wanted_urls is None or connection.url in self._wanted_urls)
            and len(self._idle) < self.settings.max_size
        )
        if keep:
            self._idle.append(connection)
        else:
            self.retire(connection)

    def retire(self, connection: Connection, *, clear: bool = False) -> None:
        """Close *connection* with the eos teardown, in the background (bounded, shielded)."""
        self.stats.retired += 1
        if connection.usable:
            self._spawn_teardown(self._nursery, connection, clear)
        else:
            connection.abort()

    def _spawn_teardown(self, nursery: trio.Nursery, connection: Connection, clear: bool) -> None:
        self._teardowns += 1  # counted when spawned, so wait_teardowns() cannot miss it
        nursery.start_soon(self._teardown, connection, clear)

    async def _teardown(self, connection: Connection, clear: bool) -> None:
        try:
            await connection.aclose(clear=clear, wait_for_close=self.settings.teardown_timeout)
        finally:
            self._teardowns -= 1
            self._teardown_done.unpark_all()

    async def wait_teardowns(self) -> None:
        """Wait until every background eos teardown has finished (each is bounded)."""
        while self._teardowns:
            await self._teardown_done.park()

    async def prewarm(self, url: str) -> None:
        """Open a socket for *url* ahead of time, unless an idle one is ready.

        :raises APIStatusError, ConnectError, RimeTimeoutError: if it cannot open.
        """
        self._check_open()
        now = trio.current_time()
        if choose(self._idle, url, now, self.settings.max_session_duration).connection is not None:
            return
        connection = await self._open(url)
        self.put(connection)

    def invalidate(self, keep_url: str) -> None:
        """Retire idle sockets for any URL but *keep_url* (options changed); sockets in use
        finish their stream, then are retired when they come back."""
        self._wanted_urls = {keep_url}
        for connection in [c for c in self._idle if c.url != keep_url]:
            self._idle.remove(connection)
            self.retire(connection)

    def retire_idle(self) -> None:
        """Retire every idle socket (eos teardown in the background); the pool stays open."""
        idle, self._idle = self._idle, []
        for connection in idle:
            self.retire(connection)

    def want(self, url: str) -> None:
        """Also keep sockets for *url* (a per-stream override of the options)."""
        if self._wanted_urls is not None:
            self._wanted_urls.add(url)

    async def aclose(self) -> None:
        """Close every idle socket with the eos teardown, in parallel. Safe to call twice."""
        self._closed = True
        idle, self._idle = self._idle, []
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for connection in idle:
                    self._spawn_teardown(nursery, connection, False)
