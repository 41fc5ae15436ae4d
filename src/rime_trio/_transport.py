"""One WebSocket (``/ws3``, or Rime's v1 ``/ws``): opening, sending, receiving, closing, over
wsproto and AnyIO.

The only module that touches the network. wsproto (sans-IO) frames the bytes; the socket is
an AnyIO byte stream, so the same code runs on Trio and asyncio. There is no task per
socket: whoever calls :meth:`Connection.receive` (a stream's recv task) reads the socket
and parses frames in place, which removes a reader task, a queue and a scheduling round per
frame (a bare loop built this way takes a quarter of the CPU per utterance of one on
trio-websocket; see benchmarks/README.md). Exceptions of AnyIO, wsproto, ``OSError`` and TLS
are mapped to the :class:`RimeError` tree here, and nowhere else.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import re
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, cast
from urllib.parse import urlsplit

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ._concurrency import create_event
from ._errors import (
    APIStatusError,
    ConnectError,
    ConnectionLost,
    ProtocolError,
    RimeError,
    RimeTimeoutError,
    redact,
    server_name,
)

__all__ = ["Connection", "open_connection"]

logger = logging.getLogger("rime_trio")

#: Largest message accepted from the server (a JSON frame with base64 audio).
MAX_MESSAGE_SIZE: Final = 4 * 1024 * 1024
# Whole audio frames in one read, often several: fewer wake-ups and parser passes.
RECEIVE_BUFFER_SIZE: Final = 64 * 1024
_STATUS_REASON = re.compile(r"^\s*(\d{3})\s*:\s*(.*)$", re.DOTALL)
_NORMAL_CLOSE: Final = 1000
_MESSAGE_TOO_BIG: Final = 1009
# The states in which a CloseConnection from wsproto is its own verdict on malformed bytes
# rather than the server's close frame (which moves OPEN on to REMOTE_CLOSING, and
# LOCAL_CLOSING on to CLOSED).
_VIOLATION_STATES: Final = frozenset({ConnectionState.OPEN, ConnectionState.LOCAL_CLOSING})
_ids = itertools.count(1)

Received = str | bytes


def _mapped(exc: Exception, api_key: str | None, what: str) -> RimeError | None:
    """The RimeError a transport failure becomes (None: not a transport failure)."""
    if isinstance(exc, TimeoutError):
        return RimeTimeoutError(f"{what}: timed out")
    if isinstance(exc, anyio.EndOfStream | anyio.BrokenResourceError | anyio.ClosedResourceError):
        message = f"{what}: the connection closed without a close frame (code 1006)"
        return ConnectionLost(redact(message, api_key))
    if isinstance(exc, RemoteProtocolError):
        message = f"{what}: the server broke the WebSocket protocol: {exc}"
        return ProtocolError(redact(message, api_key))
    if isinstance(exc, LocalProtocolError):
        return ConnectionLost(redact(f"{what}: the connection is closing ({exc})", api_key))
    if isinstance(exc, OSError | ssl.SSLError):
        return ConnectError(redact(f"{what}: {exc}", api_key))
    return None


@contextmanager
def _map_errors(api_key: str | None, what: str) -> Iterator[None]:
    """The transport boundary: everything leaves as a RimeError (or cancellation)."""
    try:
        yield
    except RimeError:
        raise
    except Exception as exc:
        error = _mapped(exc, api_key, what)
        if error is None:
            raise
        raise error from None


def _close_error(code: int, reason: str, api_key: str | None, server: str) -> RimeError:
    match = _STATUS_REASON.match(reason)
    if code == 1011 and match:
        status, message = int(match.group(1)), redact(match.group(2), api_key)
        return APIStatusError(status, message, server=server)
    detail = f": {redact(reason, api_key)}" if reason else ""
    return ConnectionLost(f"the server closed the connection (code {code}{detail})")


class Connection:
    """An open WebSocket (for ``/ws3``, with settings fixed by its URL).

    Made by :func:`open_connection`. One task may :meth:`receive` while another
    :meth:`send`\\s; sends are serialized (a reply to a ping or a close may come from the
    receiving task).
    """

    def __init__(self, url: str, api_key: str | None, stream: anyio.abc.ByteStream) -> None:
        self.id = next(_ids)
        self.url = url
        self._api_key = api_key
        self._stream = stream
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._send_lock = anyio.Lock(fast_acquire=True)  # no scheduling round when free
        self._events: Iterator[Event] | None = None  # wsproto's, pulled lazily
        self._reply = b""  # pongs and the close reply owed to the server
        #: bytes received from the server so far (any frame, a pong included): a sign of life
        self.heard = 0
        # Pieces of a message that arrived in several reads or frames, and their size.
        self._text_parts: list[str] = []
        self._byte_parts: list[bytes] = []
        self._partial = 0
        self._close: tuple[int, str] | None = None  # the server's close frame
        # What was wrong with the server's bytes, once wsproto found them malformed (with the
        # close code the RFC gives that failure): the socket is dead, never to be read again.
        self._violation: tuple[int, str] | None = None
        self._eof = False
        self._closed = create_event()
        self._closing = False
        #: the subprotocol the server accepted (None: none was offered or accepted)
        self.subprotocol: str | None = None

    def __repr__(self) -> str:
        state = "open" if self.usable else "closed"
        return f"<Connection #{self.id} {state} {urlsplit(self.url).netloc}>"

    # ----------------------------------------------------------------- state

    @property
    def usable(self) -> bool:
        """False once the socket is closed or closing, or the server hung up."""
        return (
            not self._closing
            and self._close is None
            and self._violation is None
            and not self._eof
            and self._ws.state is ConnectionState.OPEN
        )

    def seems_alive(self) -> bool:
        """For a socket that has been waiting unused: :attr:`usable`, and nothing has arrived
        since (a server closing an idle socket sends a close frame, then end-of-file).

        One non-blocking peek at the socket; a server's close is noticed without a task
        watching every idle socket.
        """
        if not self.usable:
            return False
        raw = self._stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        if raw is None:
            return True
        try:
            if hasattr(raw, "recv"):
                raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            else:
                # asyncio hands out a wrapper without recv(): peek through a duplicate.
                with socket.socket(fileno=os.dup(raw.fileno())) as duplicate:
                    duplicate.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True  # nothing pending: alive
        except OSError as exc:
            return exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
        return False  # end-of-file (b"") or an unexpected frame: not for a new stream

    @property
    def closed(self) -> bool:
        """True once the socket is closed on this side."""
        return self._closed.is_set()

    # ----------------------------------------------------------------- handshake

    async def _handshake(
        self, host_header: str, resource: str, subprotocols: list[str] | None = None
    ) -> None:
        headers = [(b"authorization", f"Bearer {self._api_key}".encode())]
        request = Request(
            host=host_header,
            target=resource,
            extra_headers=headers,
            subprotocols=subprotocols or [],
        )
        await self._stream.send(self._ws.send(request))
        while True:
            self._ws.receive_data(await self._stream.receive(RECEIVE_BUFFER_SIZE))
            events = self._ws.events()
            for event in events:
                if isinstance(event, AcceptConnection):
                    self.subprotocol = event.subprotocol
                    self._events = events  # frames that came with the answer stay queued
                    return
                if isinstance(event, RejectConnection):
                    body = await self._reject_body(event)
                    raise APIStatusError(event.status_code, body, server=server_name(self.url))

    async def _reject_body(self, rejection: RejectConnection) -> str:
        body = bytearray()
        finished = not rejection.has_body
        while not finished:
            for event in self._ws.events():
                if isinstance(event, RejectData):
                    body += event.data
                    finished = event.body_finished
            if not finished:
                try:
                    self._ws.receive_data(await self._stream.receive(RECEIVE_BUFFER_SIZE))
                except anyio.EndOfStream:
                    break
        return redact(body.decode("utf-8", "replace").strip(), self._api_key)

    # ----------------------------------------------------------------- traffic

    def redact(self, text: str) -> str:
        """*text* (the server's words) with the API key this socket carries taken out."""
        return redact(text, self._api_key)

    async def _send_bytes(self, data: bytes) -> None:
        async with self._send_lock:
            await self._stream.send(data)
            while self._reply:
                # A pong (or close reply) the reader left here while this write had the
                # socket: it goes out next, and the reader never waited for it.
                reply, self._reply = self._reply, b""
                await self._stream.send(reply)

    async def send(self, *frames: str | bytes, ping: bool = False) -> None:
        """Send frames (text for ``str``, binary for ``bytes``), in one write; with *ping*, a
        ping first (the server's pong shows in :attr:`heard`).

        :raises ConnectionLost: if the socket is closed or breaks.
        :raises APIStatusError: if the server had closed it with a status (1011 "400: ...").
        :raises ProtocolError: if the server had broken the WebSocket protocol.
        """
        with _map_errors(self._api_key, "sending failed"):
            if self._violation is not None:
                raise self._protocol_error()
            if self._close is not None:
                raise _close_error(*self._close, self._api_key, server_name(self.url))
            # wsproto picks the opcode by the data's type (str: text, bytes: binary); the
            # cast only satisfies Message's constrained type variable.
            data = b"".join(self._ws.send(Message(data=cast(str, frame))) for frame in frames)
            if ping:
                data = self._ws.send(Ping(b"rime-trio")) + data
            await self._send_bytes(data)

    async def receive(self) -> Received | None:
        """The next message (those already received first, even after the server closed).

        :returns: the message, or None once the server has closed normally (code 1000).
        :raises ConnectionLost: if the socket closed otherwise, or broke.
        :raises APIStatusError: if the server closed it with a status (1011 "400: ...").
        :raises ProtocolError: if the server broke the WebSocket protocol.
        """
        # Once per frame: a plain try, not a context manager, on this path.
        while True:
            if self._violation is not None:
                # What follows the malformed bytes cannot be framed: never read on.
                raise self._protocol_error()
            try:
                unsent: Exception | None = None
                if self._reply and not self._send_lock.locked():
                    # Before the next message is parsed, so that a cancel here (a deadline
                    # on this receive) loses no message: from the parse to the return there
                    # is no checkpoint. (A write in progress sends it when done: a pong never
                    # stalls the reader behind a write the server is slow to take.)
                    reply, self._reply = self._reply, b""
                    try:
                        await self._send_bytes(reply)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                        # A pong (or close reply) with nowhere to go: the server has gone,
                        # but what it sent before going is still its word. Deliver it; the
                        # next receive finds the end.
                        unsent = exc
                message = self._next_message()
                if message is not None:
                    return message
                if unsent is not None and self._close is None:
                    raise unsent
                if self._close is not None:
                    code, reason = self._close
                    if code == _NORMAL_CLOSE:
                        return None
                    raise _close_error(code, reason, self._api_key, server_name(self.url))
                try:
                    data = await self._stream.receive(RECEIVE_BUFFER_SIZE)
                except anyio.EndOfStream:
                    self._eof = True
                    raise
                self.heard += len(data)
                self._ws.receive_data(data)
                self._events = self._ws.events()
            except RimeError:
                raise
            except Exception as exc:
                error = _mapped(exc, self._api_key, "receiving failed")
                if error is None:
                    raise
                raise error from None

    def _next_message(self) -> Received | None:
        """The next complete message from the bytes received so far, or None.

        wsproto parses lazily: frames are decoded as the generator is pulled, so a read that
        brought many frames hands out the first before the rest are parsed (the first audio
        of a stream reaches its reader sooner). Pings and the server's close are answered
        through ``_reply``.
        """
        events = self._events
        if events is None:
            return None
        for event in events:
            if isinstance(event, TextMessage):
                if event.message_finished and not self._text_parts:
                    return event.data  # the common case: a message in one frame and one read
                self._grow(len(event.data))
                self._text_parts.append(event.data)
                if event.message_finished:
                    self._partial = 0
                    text = "".join(self._text_parts)
                    self._text_parts.clear()
                    return text
            elif isinstance(event, BytesMessage):
                self._grow(len(event.data))
                self._byte_parts.append(bytes(event.data))
                if event.message_finished:
                    self._partial = 0
                    data = b"".join(self._byte_parts)
                    self._byte_parts.clear()
                    return data
            elif isinstance(event, Ping):
                self._reply += self._ws.send(event.response())
            elif isinstance(event, CloseConnection):
                if self._ws.state in _VIOLATION_STATES:
                    # wsproto reports bytes it cannot parse (invalid UTF-8, a reserved opcode
                    # or bit, a bad length or close code) as a CloseConnection of its own,
                    # carrying the code we owe the server, and leaves the state alone; a close
                    # frame the server sent moves the state on. Taking the former for the
                    # latter made a broken server look like a hang-up, and retried.
                    self._violation = (event.code, event.reason or "")
                    self._events = None
                    raise self._protocol_error()
                self._close = (event.code, event.reason or "")
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    self._reply += self._ws.send(event.response())
        self._events = None
        return None

    def _protocol_error(self) -> ProtocolError:
        """The error for the violation recorded in ``_violation`` (a fresh one per raise)."""
        assert self._violation is not None
        code, reason = self._violation
        message = (
            f"the server broke the WebSocket protocol: {reason}; "
            f"closing the connection with code {code}"
        )
        return ProtocolError(redact(message, self._api_key))

    def _grow(self, size: int) -> None:
        """Count *size* more bytes of the message being assembled.

        :raises ProtocolError: past :data:`MAX_MESSAGE_SIZE` (the connection is then failed
            with 1009, as for any other violation).
        """
        self._partial += size
        if self._partial > MAX_MESSAGE_SIZE:
            self._violation = (_MESSAGE_TOO_BIG, f"a message larger than {MAX_MESSAGE_SIZE} bytes")
            self._events = None
            raise self._protocol_error()

    # ----------------------------------------------------------------- closing

    async def aclose(self, *, wait_for_close: float = 1.0) -> None:
        """Close the socket: a close frame (the hard stop: the server abandons whatever it
        was synthesizing), up to *wait_for_close* seconds for the server's reply, then the
        TCP stream.

        Shielded from cancellation and bounded by *wait_for_close*; failures are logged, never
        raised, so a teardown can never mask the error that caused it. Safe to call twice.
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            await self._close_handshake(wait_for_close)
        finally:
            # In a finally because asyncio's own Task.cancel() can get through the shield:
            # the TCP stream is closed whatever happened to the handshake.
            await self.abort()

    async def _close_handshake(self, wait_for_close: float) -> None:
        with anyio.move_on_after(wait_for_close, shield=True) as scope:
            try:
                if self._ws.state is ConnectionState.OPEN:
                    # After a protocol violation the close says which (1002, 1007), and no
                    # reply is awaited: the server's bytes can no longer be framed (RFC 6455
                    # 7.1.7, "fail the WebSocket connection").
                    code = self._violation[0] if self._violation else _NORMAL_CLOSE
                    await self._send_bytes(self._ws.send(CloseConnection(code=code)))
                while self._close is None and self._violation is None and not self._eof:
                    while self._next_message() is not None:
                        pass  # whatever was still on its way is no longer wanted
                    if self._close is not None:
                        break
                    try:
                        data = await self._stream.receive(RECEIVE_BUFFER_SIZE)
                    except anyio.EndOfStream:
                        break
                    self._ws.receive_data(data)
                    self._events = self._ws.events()
            except Exception:  # teardown must not raise; the caller may be handling another error
                logger.debug("error while closing %r", self, exc_info=True)
        if scope.cancelled_caught:
            logger.debug("%r: no close from the server within %.1fs", self, wait_for_close)

    async def abort(self) -> None:
        """Close the TCP stream now, with no close handshake (after the server's close, or
        when none can come). Shielded; safe to call twice."""
        self._closing = True
        if not self._closed.is_set():
            try:
                with anyio.CancelScope(shield=True):
                    await anyio.aclose_forcefully(self._stream)
            finally:
                # asyncio's own Task.cancel() gets through the shield, but only after the
                # transport was closed: the socket is gone either way.
                self._closed.set()
                logger.debug("%r closed", self)


async def open_connection(
    url: str,
    *,
    api_key: str | None,
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float = 10.0,
    subprotocols: list[str] | None = None,
) -> Connection:
    """Open a WebSocket: TCP, TLS for ``wss://``, and the WebSocket handshake (offering
    *subprotocols*, if any), all within *connect_timeout* seconds.

    :raises APIStatusError: if the handshake is refused (status and body text kept).
    :raises ConnectError: if the TCP or TLS connection cannot be made.
    :raises ConnectionLost: if the server hangs up during the handshake.
    :raises RimeTimeoutError: if opening takes longer than *connect_timeout*.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    resource = parts.path + (f"?{parts.query}" if parts.query else "")
    host_header = host if parts.port is None else f"{host}:{port}"
    what = f"connecting to {host}:{port} failed"
    stream: anyio.abc.ByteStream | None = None
    try:
        with _map_errors(api_key, what), anyio.fail_after(connect_timeout):
            stream = await anyio.connect_tcp(host, port)
            if secure:
                try:
                    stream = await TLSStream.wrap(
                        stream,
                        hostname=host,
                        ssl_context=ssl_context or ssl.create_default_context(),
                        standard_compatible=False,
                    )
                except anyio.BrokenResourceError as exc:
                    # A certificate failure, said as such (not as a lost connection).
                    raise ConnectError(
                        f"TLS handshake with {host}:{port} failed: {exc.__cause__ or exc}"
                    ) from None
            connection = Connection(url, api_key, stream)
            try:
                await connection._handshake(host_header, resource, subprotocols)
            except anyio.EndOfStream:
                raise ConnectionLost(
                    f"{host}:{port} closed the connection during the handshake"
                ) from None
    except BaseException:
        if stream is not None:
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(stream)
        raise
    logger.debug("%r opened", connection)
    return connection
