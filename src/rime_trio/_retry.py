"""A stream's socket, and the policy for replacing it when it fails before any audio.

A failure is retried only while nothing has been delivered to the caller: the frames sent so
far are kept, and a new socket gets all of them again. Once an event has been delivered the
replay buffer is dropped, and any later failure reaches the caller instead (a retry could
duplicate audio).
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import anyio

from ._errors import (
    APIStatusError,
    ConnectionLost,
    ProtocolError,
    RimeConnectionError,
    RimeError,
    RimeTimeoutError,
)
from ._pool import ConnectionPool, Lease, PooledSocket
from ._protocol import ServerEvent, StreamState, decode_server_event
from ._transport import Connection, Received

if TYPE_CHECKING:
    from ._stream_tasks import TaskRunner

__all__ = ["ReplayingLink", "RetryPolicy", "SocketLink", "retryable"]

logger = logging.getLogger("rime_trio")

_S = TypeVar("_S", bound=PooledSocket)


def retryable(error: RimeError) -> bool:
    """Whether *error* may go away on another socket (429, 5xx, network, timeouts).

    Never a :class:`ProtocolError`: a server that sent what we cannot understand would send
    it again, and a retry would only hide the fault behind a later, vaguer error.
    """
    if isinstance(error, ProtocolError):
        return False  # first: even if the error tree ever made it a connection error
    if isinstance(error, APIStatusError):
        return error.retryable
    return isinstance(error, RimeConnectionError | RimeTimeoutError)


class RetryPolicy:
    """A budget of retries with exponential backoff and full jitter: retry *n* waits a
    random time in ``[0, backoff * 2 ** (n - 1)]``, at most *backoff_max* seconds."""

    __slots__ = ("_backoff", "_backoff_max", "_left", "used")

    def __init__(self, retries: int, backoff: float, backoff_max: float) -> None:
        self._left = retries
        self._backoff = backoff
        self._backoff_max = backoff_max
        #: retries spent so far
        self.used = 0

    def spend(self, error: RimeError) -> bool:
        """Spend one retry on *error* if it is retryable and the budget allows."""
        if self._left <= 0 or not retryable(error):
            return False
        self._left -= 1
        self.used += 1
        return True

    async def wait(self) -> None:
        """Sleep before the retry just spent."""
        ceiling = min(self._backoff_max, self._backoff * 2 ** (self.used - 1))
        await anyio.sleep(random.uniform(0, ceiling))


class ReplayingLink(Generic[_S]):
    """What both protocols' links share: a lease on a pool socket of *kind*, the retry budget,
    and the messages sent, kept for a replay on another socket until something was
    delivered."""

    def __init__(
        self,
        pool: ConnectionPool,
        url: str,
        policy: RetryPolicy,
        kind: type[_S],
        label: str,
        api_key: str | None = None,
    ) -> None:
        self._pool = pool
        self._url = url
        self._api_key = api_key  # the stream's (None: the pool's); its sockets carry it
        self._policy = policy
        self._kind = kind
        self._label = label
        self._lock = anyio.Lock(fast_acquire=True)  # no scheduling round when free
        self._replay: list[str] | None = []
        # Whoever ends the stream releases the lease, so a socket is owned here from the
        # moment the pool hands it out.
        self._lease: Lease[_S] | None = None

    @property
    def retries(self) -> int:
        return self._policy.used

    def delivered(self) -> bool:
        """Something reached the caller: from now on a failure is raised, not retried.

        :returns: whether this is the first delivery since the socket took the stream's text.
        """
        first = self._replay is not None
        self._replay = None
        return first

    def _may_retry(self, error: RimeError) -> bool:
        return self._replay is not None and self._policy.spend(error)

    async def _get(self, *, fresh: bool) -> Lease[_S]:
        """A lease from the pool, retrying refused or failed handshakes while allowed."""
        while True:
            try:
                return await self._pool.get(
                    self._url, self._kind, fresh=fresh, api_key=self._api_key
                )
            except RimeError as exc:
                if not self._may_retry(exc):
                    raise
                logger.info("stream %s: %s; retrying", self._label, exc)
                await self._policy.wait()
                # A stream's own socket: not a spare that may have died with the last one.
                # A shared one: the one the other streams of the failed socket move to.
                fresh = not self._kind.shared

    def _take(self, lease: Lease[_S]) -> None:
        self._lease = lease

    async def open(self) -> float | None:
        """Take a socket from the pool (retrying refused or failed handshakes).

        :returns: how long the stream waited for a handshake (its own or one it joined);
            None if the socket was ready when the stream took it.
        :raises RimeError: when the last allowed attempt fails.
        """
        asked = anyio.current_time()
        lease = await self._get(fresh=False)
        self._take(lease)
        return None if lease.handshake_seconds is None else anyio.current_time() - asked


#: A socket that waited idle at least this many seconds is probed before it is trusted
#: (NATs and proxies forget idle connections after tens of seconds, not within one).
PROBE_AFTER_IDLE: Final = 1.0


class SocketLink(ReplayingLink[PooledSocket]):
    """A ``/ws3`` stream's own socket (a :class:`~._stream_tasks.Link`), replaced
    transparently while that is still safe.

    Frames sent are remembered until :meth:`delivered` is called; a failed socket is then
    swapped for a fresh one and every remembered frame is sent again (the state forgets its
    incoming progress first: ``StreamState.restart``).
    """

    shared = False  # a slow reader holds this socket back, and nobody else's
    backlog = 0  # events wait in the socket, not here

    def __init__(
        self,
        pool: ConnectionPool,
        url: str,
        policy: RetryPolicy,
        state: StreamState,
        *,
        probe_timeout: float = 2.0,
        api_key: str | None = None,
    ) -> None:
        super().__init__(pool, url, policy, PooledSocket, state.context_id, api_key)
        self._state = state
        self._probe_timeout = probe_timeout
        #: the current socket (None: none yet)
        self.connection: Connection | None = None
        #: whether a frame went out on the current socket
        self.sent_any = False
        # The current socket was not opened for this stream (pooled, or a spare): it may have
        # died unseen while it waited. Its first write carries a ping, and until it shows a
        # sign of life (its bytes heard then, None before that write) it is on probation.
        self._probing = False
        self._heard_at_probe: int | None = None
        self._probe_deadline = 0.0
        self._idle_since = 0.0
        # The recv task's wait on a socket on probation whose ping has not gone out yet:
        # the write with the ping cancels it, and the deadline starts then.
        self._awaiting_ping: anyio.CancelScope | None = None

    def _take(self, lease: Lease[PooledSocket]) -> None:
        self._lease = lease
        # A plain attribute: the recv task reads it twice per frame.
        self.connection = lease.connection
        self._state.trust_done = self._pool.trusts_dones(self._url)
        self._probing = lease.handshake_seconds is None
        self._idle_since = lease.socket.idle_since  # quiet since (held by the stream too)
        self._heard_at_probe = None

    def bind(self, runner: TaskRunner[Any]) -> None:
        pass  # nothing to tell the tasks: the socket is the stream's alone

    def replenish(self) -> None:
        """Have the pool open the next stream's socket (called once the caller took this
        stream's first event, so that handshake never delays it)."""
        self._pool.replenish(self._url, self._api_key)

    async def send(self, messages: list[str], *, end: bool) -> None:
        """Send the frames *messages* (in one write; the end is among them), on a
        replacement socket if the current one fails and that is safe.

        :raises RimeError: when the failure must reach the caller.
        """
        if not messages:
            return  # the input's end under segment=never, with everything flushed already
        while True:
            async with self._lock:
                connection = self.connection
                assert connection is not None
                try:
                    if self._probing and self._heard_at_probe is None and self._quiet_long():
                        self._heard_at_probe = connection.heard
                        self._probe_deadline = anyio.current_time() + self._probe_timeout
                        await connection.send(*messages, ping=True)
                        if self._awaiting_ping is not None:
                            self._awaiting_ping.cancel()
                    else:
                        await connection.send(*messages)
                except RimeError as exc:
                    error = exc
                else:
                    self.sent_any = True
                    if self._replay is not None:
                        self._replay += messages
                    return
            await self._replace(connection, error)

    async def receive(self) -> ServerEvent | None:
        """The next event of the current socket (on a replacement if it fails and that is
        safe); None when the server closed it after the input's end.

        :raises ConnectionLost: if the server closed it before the input ended.
        :raises ProtocolError: for a frame that is not ``/ws3``.
        """
        while True:
            connection = self.connection
            assert connection is not None
            try:
                if self._probing:
                    frame = await self._probe(connection)
                else:
                    frame = await connection.receive()
                if connection is not self.connection:
                    continue  # a socket a clear() left: everything on it is stale
                if frame is None:
                    if not self._state.eos_sent:
                        raise ConnectionLost(
                            "the server closed the connection (code 1000) before the input ended"
                        )
                    return None
            except RimeError as exc:
                await self._replace(connection, exc)
                continue
            event = decode_server_event(frame)
            if event is not None:
                return event

    def _quiet_long(self) -> bool:
        """Whether the socket on probation was quiet long enough to be probed at its first
        write; if not, it is trusted. A socket quiet only a moment (the stream before just
        left it) is almost surely alive, and the ping would cost every warm stream a frame
        each way before its first audio."""
        if anyio.current_time() - self._idle_since >= PROBE_AFTER_IDLE:
            return True
        self._probing = False
        if self._awaiting_ping is not None:
            self._awaiting_ping.cancel()  # the recv task's wait: no deadline to run now
        return False

    async def _probe(self, connection: Connection) -> Received | None:
        """The next frame of a socket on probation: if nothing at all came back within the
        probe timeout of its first write (not even the pong), it is dead.

        :raises ConnectionLost: for a dead socket (a retry on a fresh one is safe: nothing
            came, so nothing was delivered).
        """
        if self._heard_at_probe is None:
            # Nothing written on it yet (after a clear(), the caller may pause): a frame
            # may come (stale), or the write with the ping; the deadline runs from there.
            with anyio.CancelScope() as waiting:
                self._awaiting_ping = waiting
                try:
                    return await connection.receive()  # (cancel-safe: nothing is lost)
                finally:
                    self._awaiting_ping = None
            if not self._probing:
                return await connection.receive()  # its first write found it trusted
        heard = self._heard_at_probe
        assert heard is not None
        with anyio.move_on_after(self._probe_deadline - anyio.current_time()):
            frame = await connection.receive()
            self._probing = False
            return frame
        if connection.heard > heard:
            self._probing = False  # the pong, at least: alive, only slow to speak
            return await connection.receive()
        raise ConnectionLost(
            f"a pooled socket gave no sign of life within {self._probe_timeout:g} s of the "
            "stream's first text (a dead connection kept open)"
        )

    async def _replace(self, failed: Connection, error: RimeError) -> None:
        """Swap *failed* for a new socket and re-send everything, if that is still safe.

        :raises RimeError: *error* (or a later one) when it must reach the caller instead.
        """
        async with self._lock:
            if self.connection is not failed:
                return  # the other task already replaced it
            while True:
                if not self._may_retry(error):
                    raise error
                logger.info(
                    "stream %s: %s before any audio was delivered; re-sending %d frame(s) on a"
                    " new socket",
                    self._label,
                    error,
                    len(self._replay or ()),
                )
                await self._policy.wait()
                lease = await self._get(fresh=True)
                if self._replay is None:
                    # The other task delivered audio from the failing socket's last frames
                    # meanwhile: re-sending now could duplicate it.
                    self._pool.release(lease, keep=True)  # never used: a spare
                    raise error
                # Swapped with no checkpoint in between: whichever socket is current is the
                # one the stream releases, so a cancellation here leaks neither.
                old = self._lease
                self._take(lease)
                assert old is not None
                self._pool.release(old, keep=False)
                connection = lease.connection
                self.sent_any = False
                self._state.restart()
                try:
                    if self._replay:
                        await connection.send(*self._replay)
                        self.sent_any = True
                except RimeError as exc:
                    failed, error = connection, exc
                    continue
                return

    async def switch(self) -> None:
        """A ``clear()``: move to a fresh socket and close the current one (the hard stop of
        a barge-in), if text went out since the last; then the state's ``interrupt()``.

        Nothing is re-sent: what went out before is exactly what is no longer wanted, so
        the new socket starts with a clean replay buffer (and retries are safe again until
        its first event is delivered).

        :raises RimeError: if no new socket can be had.
        """
        if self._state.needs_new_socket:
            async with self._lock:
                self._replay = []  # nothing after the clear was delivered yet
                lease = await self._get(fresh=False)
                old = self._lease
                self._take(lease)
                self.sent_any = False
                if old is not None:
                    self._pool.release(old, keep=False)
        self._state.interrupt()

    async def release(self, *, complete: bool) -> None:
        """Give the socket back to the pool if nothing was sent on it, or the stream ended at
        a ``done`` (``segment=never``: the socket is idle); else close it.

        Call it shielded: after a complete stream it closes the TCP stream itself.
        """
        lease, self._lease, self.connection = self._lease, None, None
        if lease is None:
            return
        state = self._state
        if state.done_missed:
            self._pool.distrust_dones(self._url)
        if complete and state.ended_by_done and lease.connection.usable:
            self._pool.release(lease, keep=True)  # the next stream's, if the pool wants it
            return
        if not complete and not self.sent_any and lease.connection.usable:
            self._pool.release(lease, keep=True)  # never used: the next stream's spare
            return
        self._pool.replenish(self._url, self._api_key)
        if complete:
            await lease.connection.abort()  # the server closed it; the TCP stream goes too
        self._pool.release(lease, keep=False)
