"""Serving an ASGI app (the emulator, the speak page): the listening socket, and hypercorn for
the running backend.

The only module that knows hypercorn's worker APIs or asyncio. Hypercorn has one worker per
backend (``hypercorn.trio``, ``hypercorn.asyncio``) over one protocol layer; which one runs is
decided here by asking sniffio what runs the caller, so that AnyIO on trio gets the trio worker
and AnyIO on asyncio (or a plain ``asyncio.run``) the asyncio one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import sniffio
from hypercorn.config import Config, Sockets

__all__ = ["BoundConfig", "Serve", "hypercorn_serve", "listen", "quiet_tls_client_errors"]

logger = logging.getLogger("rime_trio.serving")

Serve = Callable[..., Coroutine[Any, Any, None]]


def hypercorn_serve() -> Serve:
    """Hypercorn's ``serve`` for the async library running the caller.

    :raises RuntimeError: under an async library other than trio and asyncio (AnyIO on either
        counts as that backend).
    :raises sniffio.AsyncLibraryNotFoundError: outside any event loop.
    """
    library = sniffio.current_async_library()
    if library == "trio":
        from hypercorn.trio import serve as trio_serve

        return trio_serve
    if library == "asyncio":
        from hypercorn.asyncio import serve as asyncio_serve

        return asyncio_serve
    raise RuntimeError(f"hypercorn serves on trio or asyncio, not on {library!r}")


async def listen(host: str, port: int, backlog: int) -> socket.socket:
    """A non-blocking TCP socket listening on *host*:*port* (0: a free port).

    It listens at once, so a client that connects before hypercorn accepts waits in the
    backlog rather than being refused.

    :raises OSError: when *host* does not resolve or the address cannot be bound.
    """
    # The family as hypercorn picks it for a ``host:port`` bind, so "localhost" stays IPv4.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    infos = await anyio.getaddrinfo(
        host.strip("[]"), port, family=family, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    address = infos[0][4]
    listening = socket.create_server(address[:2], family=family, backlog=backlog)
    listening.setblocking(False)
    return listening


class BoundConfig(Config):
    """Hypercorn settings that serve on a listening socket made beforehand.

    Binding it ourselves tells us the port on both backends before hypercorn starts (only its
    trio worker reports its binds). Overriding ``create_sockets``, which both workers call to
    make their listening sockets, hands hypercorn this very socket object: whoever closes it
    first (hypercorn when it stops serving, its owner in any case) closes it once, and
    closing the same object again does nothing. An ``fd://`` bind would instead give hypercorn
    a second socket object owning the same descriptor number, which then has to be detached or
    duplicated, and leaks if hypercorn is stopped before it picks it up.
    """

    def __init__(self, listening: socket.socket) -> None:
        super().__init__()
        self.listening = listening

    def create_sockets(self) -> Sockets:
        own = [self.listening]
        if self.ssl_enabled:
            return Sockets(secure_sockets=own, insecure_sockets=[], quic_sockets=[])
        return Sockets(secure_sockets=[], insecure_sockets=own, quic_sockets=[])


def _is_tls_client_error(context: dict[str, Any]) -> bool:
    """Whether an asyncio exception-handler *context* is a TLS error raised in a server's
    connection callback (``asyncio.start_server``, as hypercorn uses it).

    Told by asyncio's message, not by port: the TLS transport has dropped its socket by the
    time the error is reported. If asyncio rewords it, the error is simply logged again.
    """
    return isinstance(context.get("exception"), ssl.SSLError) and context.get("message") == (
        "Unhandled exception in client_connected_cb"
    )


@contextmanager
def quiet_tls_client_errors(enabled: bool) -> Iterator[None]:
    """While a TLS emulator runs on asyncio, keep the loop from logging as unhandled the TLS
    errors a client's way of closing raises in the server's connection callback (such as
    ``APPLICATION_DATA_AFTER_CLOSE_NOTIFY`` when a ``wss://`` connection closes).

    Hypercorn's own asyncio runner installs a loop exception handler that ignores TLS errors;
    ``serve`` leaves the loop to its caller, so this does the same while the emulator runs,
    for errors of server connection callbacks only, passing everything else to the handler it
    wraps. Does nothing unless *enabled*, and nothing on trio, where hypercorn handles them.
    """
    if not enabled or sniffio.current_async_library() != "asyncio":
        yield
        return
    loop = asyncio.get_running_loop()
    wrapped = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if _is_tls_client_error(context):
            logger.debug("TLS client error: %r", context["exception"])
        elif wrapped is not None:
            wrapped(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    try:
        yield
    finally:
        # Restored only if nobody replaced it meanwhile (another emulator on the same loop
        # leaving in a different order); a handler left in place still passes the rest on.
        if loop.get_exception_handler() is handler:
            loop.set_exception_handler(wrapped)
