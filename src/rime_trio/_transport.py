"""One ``/ws3`` WebSocket: opening, sending, receiving, closing.

The only module that touches trio-websocket. Its exceptions (and ``OSError``, TLS errors) are
mapped to the RimeError tree here. The TCP stream is ours, not trio-websocket's: its client
leaves the socket open after a server close or a rejected handshake, so we close it ourselves,
and we notice end-of-file at once so a pooled socket closed by the server is known dead.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from ._concurrency import leaf_exceptions
from ._errors import (
    APIStatusError,
    ConnectError,
    ConnectionLost,
    RimeError,
    RimeTimeoutError,
    redact,
)

__all__ = ["Connection", "open_connection"]

logger = logging.getLogger("rime_trio")

#: Frames trio-websocket may read ahead of us; bounds memory when the caller reads slowly.
MESSAGE_QUEUE_SIZE: Final = 16
MAX_MESSAGE_SIZE: Final = 4 * 1024 * 1024
# trio-websocket reads 4 KiB at a time by default: a 6 KiB audio frame then costs two reads,
# two wake-ups and several parser passes. 64 KiB reads take whole frames, often several.
RECEIVE_BUFFER_SIZE: Final = 64 * 1024
_STATUS_REASON = re.compile(r"^\s*(\d{3})\s*:\s*(.*)$", re.DOTALL)
_ids = itertools.count(1)


class _ObservedStream(trio.abc.Stream):
    """Delegates to the TCP (or TLS) stream and reports end-of-file or breakage."""

    def __init__(self, stream: trio.abc.Stream, on_eof: trio.Event) -> None:
        self._stream = stream
        self._on_eof = on_eof

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._on_eof.set()
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self._stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._on_eof.set()
            raise
        if not data:
            self._on_eof.set()
        return data

    async def aclose(self) -> None:
        await self._stream.aclose()


def _close_error(exc: ConnectionClosed, api_key: str | None) -> RimeError:
    reason = exc.reason
    code = reason.code if reason is not None else 1006
    text = (reason.reason if reason is not None else None) or ""
    match = _STATUS_REASON.match(text)
    if code == 1011 and match:
        return APIStatusError(int(match.group(1)), redact(match.group(2), api_key))
    detail = f": {redact(text, api_key)}" if text else ""
    return ConnectionLost(f"the server closed the connection (code {code}{detail})")


@contextmanager
def _map_errors(api_key: str | None, what: str) -> Iterator[None]:
    """The WebSocket transport boundary: everything leaves as a RimeError (or Cancelled)."""
    try:
        yield
    except RimeError:
        raise
    except ConnectionClosed as exc:
        raise _close_error(exc, api_key) from None
    except ConnectionRejected as exc:
        body = (exc.body or b"").decode("utf-8", "replace").strip()
        raise APIStatusError(exc.status_code, redact(body, api_key)) from None
    except (HandshakeError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise ConnectionLost(redact(f"{what}: {exc!r}", api_key)) from None
    except trio.TooSlowError:
        raise RimeTimeoutError(f"{what}: timed out") from None
    except (OSError, ssl.SSLError) as exc:
        raise ConnectError(redact(f"{what}: {exc}", api_key)) from None


class Connection:
    """An open ``/ws3`` socket with settings fixed by its URL.

    Created by :func:`open_connection`; a background task (in the nursery given there) runs
    trio-websocket's reader and closes the TCP stream when the socket ends.
    """

    def __init__(self, url: str, api_key: str | None) -> None:
        self.id = next(_ids)
        self.url = url
        self._api_key = api_key
        self._ws: WebSocketConnection | None = None
        self._eof = trio.Event()
        self._finished = trio.Event()
        self._closed = trio.Event()
        self.opened_at = 0.0
        #: when the pool last handed it out (for max_session_duration)
        self.refreshed_at = 0.0

    def __repr__(self) -> str:
        state = "open" if self.usable else "closed"
        return f"<Connection #{self.id} {state} {urlsplit(self.url).netloc}>"

    @property
    def usable(self) -> bool:
        """False once the socket is closed, closing, or its TCP stream hit end-of-file."""
        return (
            self._ws is not None
            and self._ws.closed is None
            and not self._eof.is_set()
            and not self._finished.is_set()
        )

    def _socket(self) -> WebSocketConnection:
        if self._ws is None:  # pragma: no cover - only reachable by misuse
            raise ConnectionLost("the connection is not open")
        return self._ws

    async def send(self, frame: str) -> None:
        """Send one text frame.

        :raises ConnectionLost: if the socket is closed or breaks.
        :raises APIStatusError: if the server closed it with a status (1011 "400: ...").
        """
        with _map_errors(self._api_key, "sending failed"):
            await self._socket().send_message(frame)

    async def receive(self) -> str | bytes | None:
        """Receive one frame (queued frames first, even after the server closed).

        :returns: the frame, or None once the server has closed normally (code 1000).
        :raises ConnectionLost: if the socket closed otherwise, or broke.
        :raises APIStatusError: if the server closed it with a status (1011 "400: ...").
        """
        with _map_errors(self._api_key, "receiving failed"):
            try:
                return await self._socket().get_message()
            except ConnectionClosed as exc:
                if exc.reason is not None and exc.reason.code == 1000:
                    return None
                raise

    async def aclose(self, *, wait_for_close: float = 1.0) -> None:
        """Close the socket: a close frame (the hard stop: the server abandons whatever it
        was synthesizing), up to *wait_for_close* seconds for the server's reply, then the
        TCP stream.

        Shielded from cancellation and bounded by *wait_for_close*; failures are logged, never
        raised, so a teardown can never mask the error that caused it. Safe to call twice.
        """
        if self._finished.is_set():
            await self._closed.wait()
            return
        with trio.move_on_after(wait_for_close) as scope:
            scope.shield = True
            try:
                ws = self._ws
                if ws is not None and ws.closed is None and not self._eof.is_set():
                    await ws.aclose()
            except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            except Exception:  # teardown must not raise; the caller may be handling another error
                logger.debug("error while closing %r", self, exc_info=True)
        if scope.cancelled_caught:
            logger.debug("%r: no close from the server within %.1fs", self, wait_for_close)
        self._finished.set()
        with trio.CancelScope(shield=True):
            await self._closed.wait()

    def abort(self) -> None:
        """Drop the socket at once without a close handshake; its background task closes
        the TCP stream (:meth:`wait_closed` waits for that)."""
        self._finished.set()

    @property
    def closed(self) -> bool:
        """True once the TCP stream is closed and the background task has ended."""
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        """Wait until :attr:`closed`."""
        await self._closed.wait()

    async def _run(
        self,
        *,
        ssl_context: ssl.SSLContext | None,
        connect_timeout: float,
        task_status: trio.TaskStatus[Connection],
    ) -> None:
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        secure = parts.scheme == "wss"
        port = parts.port or (443 if secure else 80)
        resource = parts.path + (f"?{parts.query}" if parts.query else "")
        host_header = host if parts.port is None else f"{host}:{port}"
        headers = [(b"authorization", f"Bearer {self._api_key}".encode())]
        stream: trio.abc.Stream | None = None
        started = False
        try:
            with _map_errors(self._api_key, f"connecting to {host}:{port} failed"):
                # The deadline covers TCP, TLS and the handshake; it is lifted once open.
                with trio.CancelScope(deadline=trio.current_time() + connect_timeout) as opening:
                    if secure:
                        ssl_stream = await trio.open_ssl_over_tcp_stream(
                            host,
                            port,
                            ssl_context=ssl_context or ssl.create_default_context(),
                            https_compatible=True,
                        )
                        stream = ssl_stream
                        # Here, not in trio-websocket's reader task, which would swallow a
                        # certificate error and leave the handshake waiting for its deadline.
                        try:
                            await ssl_stream.do_handshake()
                        except trio.BrokenResourceError as exc:
                            raise ConnectError(
                                f"TLS handshake with {host}:{port} failed: {exc.__cause__ or exc}"
                            ) from None
                    else:
                        stream = await trio.open_tcp_stream(host, port)
                    try:
                        async with trio.open_nursery() as reader_nursery:
                            # If the stream dies before the handshake completes, trio-websocket
                            # would wait for it forever: stop waiting at end-of-file.
                            reader_nursery.start_soon(self._abort_on_eof, opening)
                            self._ws = await wrap_client_stream(
                                reader_nursery,
                                # Any trio Stream works; the annotation is narrower than the code.
                                _ObservedStream(stream, self._eof),  # type: ignore[arg-type]
                                host_header,
                                resource,
                                extra_headers=headers,
                                message_queue_size=MESSAGE_QUEUE_SIZE,
                                max_message_size=MAX_MESSAGE_SIZE,
                                receive_buffer_size=RECEIVE_BUFFER_SIZE,
                            )
                            opening.deadline = math.inf
                            self.opened_at = self.refreshed_at = trio.current_time()
                            task_status.started(self)
                            started = True
                            logger.debug("%r opened", self)
                            await _first_of(self._finished, self._eof)
                            reader_nursery.cancel_scope.cancel()
                    except BaseExceptionGroup as group:
                        # A rejected handshake is raised by the reader task, inside a group.
                        errors = [
                            e for e in leaf_exceptions(group) if not isinstance(e, trio.Cancelled)
                        ]
                        if not errors:
                            raise
                        raise errors[0] from None
                if opening.cancelled_caught and not started:
                    if self._eof.is_set():
                        raise ConnectionLost(
                            f"{host}:{port} closed the connection during the handshake"
                        )
                    raise trio.TooSlowError
        except (trio.Cancelled, KeyboardInterrupt):
            raise
        except Exception:
            if not started:
                raise
            # After start-up this task belongs to the client's nursery: never crash it.
            logger.debug("%r ended with an error", self, exc_info=True)
        finally:
            self._finished.set()
            try:
                if stream is not None:
                    # aclose_forcefully still raises an outer Cancelled after closing.
                    with trio.CancelScope(shield=True):
                        await trio.aclose_forcefully(stream)
            finally:
                self._closed.set()
            if started:
                logger.debug("%r closed", self)

    async def _abort_on_eof(self, opening: trio.CancelScope) -> None:
        await self._eof.wait()
        if self.opened_at == 0.0:  # still handshaking; afterwards _run watches for EOF
            opening.cancel()


async def _first_of(*events: trio.Event) -> None:
    async with trio.open_nursery() as nursery:
        for event in events:

            async def wait(event: trio.Event = event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait)


async def open_connection(
    nursery: trio.Nursery,
    url: str,
    *,
    api_key: str | None,
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float = 10.0,
) -> Connection:
    """Open a ``/ws3`` socket whose background task lives in *nursery*.

    :raises APIStatusError: if the handshake is refused (status and body text kept).
    :raises ConnectError: if the TCP or TLS connection cannot be made.
    :raises RimeTimeoutError: if opening takes longer than *connect_timeout*.
    """
    connection = Connection(url, api_key)
    started: Connection = await nursery.start(
        lambda task_status: connection._run(
            ssl_context=ssl_context, connect_timeout=connect_timeout, task_status=task_status
        )
    )
    return started
