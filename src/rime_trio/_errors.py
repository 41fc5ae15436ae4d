"""Errors raised by rime-trio.

Every exception the library raises on purpose derives from :class:`RimeError`, so one
``except rime_trio.RimeError`` catches them all. Transport exceptions (AnyIO, wsproto, httpx,
``OSError``, ``ssl.SSLError``) are translated once, at the transport boundary, and never reach
the caller raw. Cancellation (``trio.Cancelled``, ``asyncio.CancelledError``) and
``KeyboardInterrupt`` are never wrapped.

The tree::

    RimeError
    ├── ConfigurationError (also ValueError)   invalid options or URL, found at construction
    ├── EmptyTextError     (also ValueError)   input ended with no speakable text
    ├── InvalidTextError   (also ValueError)   text that cannot be sent (a lone surrogate)
    ├── StreamClosed                           the stream was used after it ended
    ├── RimeConnectionError                    the network failed us
    │   ├── ConnectError                       could not open a connection (DNS, TCP, TLS)
    │   └── ConnectionLost                     an open connection died before the audio was complete
    ├── RimeTimeoutError   (also TimeoutError) the server did not answer in time
    ├── APIStatusError                         the server refused with a status (HTTP status,
    │                                          WebSocket handshake rejection, or a 1011 close
    │                                          whose reason carries a status such as "400: ...")
    ├── ServerError                            the server sent an ``error`` event on the socket
    ├── SlowReaderError                        a v1 stream's reader fell too far behind (the
    │                                          socket is shared: the others must go on)
    └── ProtocolError                          the server sent a frame we cannot understand

Warnings: :class:`RimeDeprecationWarning` (a :class:`DeprecationWarning`) says an option or
model Rime has retired was asked for, and what serves it now.

Messages never contain the API key: every message built from server-supplied text passes
through :func:`redact` with the key of the request that failed.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

__all__ = [
    "APIStatusError",
    "ConfigurationError",
    "ConnectError",
    "ConnectionLost",
    "EmptyTextError",
    "ProtocolError",
    "RimeConnectionError",
    "RimeDeprecationWarning",
    "RimeError",
    "RimeTimeoutError",
    "ServerError",
    "SlowReaderError",
    "StreamClosed",
    "redact",
    "server_name",
]

_REDACTED = "[redacted]"


class RimeDeprecationWarning(DeprecationWarning):
    """A model or option Rime has retired or renamed was asked for (``model="arcana"``, now
    served by coda; ``reduce_latency``, now ``no_text_normalization``). Each is said once per
    process; the request still goes out, as Rime still serves it."""


# A key this long is a random secret: any occurrence of it is the key. A shorter one (a test
# key, a typo) also spells ordinary words ("k" is in "not known"), so it is redacted only where
# a key can stand: as a whole token, in a header, a URL or echoed request text.
_ALWAYS_REDACT_LENGTH = 12
_TOKEN_CHARS = r"A-Za-z0-9_\-"


def redact(text: str, secret: str | None) -> str:
    """Return *text* with the API key *secret* replaced by ``[redacted]`` wherever it
    appears as the key: every occurrence of a key of 12 characters or more, and for a
    shorter key every occurrence that is a whole token (not part of a longer word)."""
    if not secret or secret not in text:
        return text
    if len(secret) >= _ALWAYS_REDACT_LENGTH:
        return text.replace(secret, _REDACTED)
    pattern = rf"(?<![{_TOKEN_CHARS}]){re.escape(secret)}(?![{_TOKEN_CHARS}])"
    return re.sub(pattern, _REDACTED, text)


def server_name(url: str) -> str:
    """Who answered a request to *url*, for error messages: "Rime" for Rime's own hosts,
    else "the server at HOST:PORT" (the bundled emulator, a proxy, a self-hosted model), so
    an error names the party that refused."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host == "rime.ai" or host.endswith(".rime.ai"):
        return "Rime"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"the server at {host}:{port}" if port else f"the server at {host}"


class RimeError(Exception):
    """Base class of every error raised by rime-trio.

    ``audio_seconds_delivered`` says how much audio of the failed stream had already reached
    the caller (0.0 when none, or when the error is not about a stream); a retry that is
    safe from duplicated audio is only possible while it is 0.
    """

    audio_seconds_delivered: float = 0.0

    def __str__(self) -> str:
        text = super().__str__()
        if self.audio_seconds_delivered > 0:
            text += (
                f" (after {self.audio_seconds_delivered:.2f} s of audio had been delivered; not"
                " retried, since a retry could duplicate audio)"
            )
        return text


class ConfigurationError(RimeError, ValueError):
    """An option or URL is invalid. Raised when options are built, never mid-stream."""


class EmptyTextError(RimeError, ValueError):
    """Input ended without any speakable text (empty or whitespace only)."""


class InvalidTextError(RimeError, ValueError):
    """Text that cannot be sent as UTF-8 (a lone surrogate, such as half of an emoji split
    across two LLM tokens). Raised before anything of that text is sent; the message names
    the position of the first offending character."""


class StreamClosed(RimeError):
    """The stream (or client) was used after it had been closed."""


class RimeConnectionError(RimeError):
    """The connection to the server could not be opened or was lost."""


class ConnectError(RimeConnectionError):
    """Opening the connection failed (name resolution, TCP connect, TLS)."""


class ConnectionLost(RimeConnectionError):
    """The connection closed while audio was still owed to the caller."""


class RimeTimeoutError(RimeError, TimeoutError):
    """The server did not answer within the configured timeout."""


class APIStatusError(RimeError):
    """The server refused the request with a status code.

    :ivar status_code: the HTTP status (for a WebSocket closed with code 1011 and a reason
        like ``"400: text is too long"``, the status parsed from the reason).
    :ivar message: the server's explanation (response body or close reason), redacted.
    """

    def __init__(self, status_code: int, message: str, *, server: str = "Rime") -> None:
        self.status_code = status_code
        self.message = message
        #: who refused: "Rime" or "the server at HOST:PORT" (see :func:`server_name`)
        self.server = server
        super().__init__(f"{server} returned status {status_code}: {message}")

    @property
    def retryable(self) -> bool:
        """True for statuses where retrying later may succeed (429 and 5xx)."""
        return self.status_code == 429 or self.status_code >= 500


class ServerError(RimeError):
    """The server reported an error event on an open stream.

    :ivar message: the server's message, redacted.
    """

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(f"Rime server error: {message}")


class SlowReaderError(RimeError):
    """A v1 stream's reader fell too far behind the server.

    v1 streams share a socket, so one slow reader cannot hold the server back (that would
    stall every stream on the socket). The stream stops sending text while
    ``max_buffered_audio_bytes`` wait; audio it had already asked for past eight times that
    ends it with this error, and its context is cancelled. Read faster, or raise
    ``StreamSettings.max_buffered_audio_bytes``.
    """


class ProtocolError(RimeError):
    """A frame from the server is malformed (bad JSON, missing field, bad base64...)."""
