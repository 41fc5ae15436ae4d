"""A TCP proxy in front of the emulator that can drop one connection without a close frame.

ASGI gives an application no way to drop its TCP connection, so for ``drop`` faults the
emulator's public port is this proxy; the application asks it to reset the connection whose
upstream side is the ASGI ``client`` address it sees. Written against AnyIO listeners and
socket streams, so it runs on whichever backend (trio or asyncio) runs the emulator.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

__all__ = ["TcpFaultProxy"]


@dataclass(slots=True)
class _Link:
    downstream: SocketStream
    upstream: SocketStream
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    dropped: bool = False
    silent: bool = False  # a dead path: nothing goes either way, and nobody is told


class TcpFaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._links: dict[int, _Link] = {}
        self.dropped = 0

    async def serve(
        self, host: str, port: int, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on *host*:*port* (0: a free port), report the bound port through
        *task_status*, and forward each connection upstream until cancelled.

        :raises OSError: when the address cannot be bound.
        """
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        async with listener:
            task_status.started(listener.extra(SocketAttribute.local_port))
            await listener.serve(self._handle)

    async def _handle(self, downstream: SocketStream) -> None:
        try:
            upstream = await anyio.connect_tcp(*self._upstream)
        except OSError:
            await anyio.aclose_forcefully(downstream)
            return
        # Registered before any byte is forwarded, so before the emulator can see the
        # handshake and ask for this connection by its ASGI client port.
        local_port = upstream.extra(SocketAttribute.local_port)
        link = self._links[local_port] = _Link(downstream, upstream)
        try:
            with link.scope:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(self._pump, downstream, upstream, link)
                    tasks.start_soon(self._pump, upstream, downstream, link)
        finally:
            self._links.pop(local_port, None)
            await anyio.aclose_forcefully(upstream)
            # With SO_LINGER 0 set by drop(), this close sends RST, not FIN.
            await anyio.aclose_forcefully(downstream)

    @staticmethod
    async def _pump(source: SocketStream, sink: SocketStream, link: _Link) -> None:
        try:
            async for data in source:
                if link.dropped:
                    break  # nothing may reach the client after the drop, not even a close
                if link.silent:
                    continue  # swallowed: no FIN, no RST, no pong (a NAT that forgot it)
                await sink.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        link.scope.cancel()

    def silence_all(self) -> int:
        """Make every connection open now a dead path: bytes either way vanish, and neither
        end hears of it (what a NAT or a proxy that dropped an idle connection does).
        Returns how many."""
        for link in self._links.values():
            link.silent = True
        return len(self._links)

    def drop(self, client_port: int) -> bool:
        """Reset the client side of the connection whose upstream port is *client_port*.

        Synchronous, so the caller knows nothing more is forwarded once it returns; the
        connection's task closes the socket (with a reset) at its next checkpoint.
        """
        link = self._links.get(client_port)
        if link is None:
            return False
        # SO_LINGER 0: close sends RST, not FIN; the client sees a dead socket, no close frame.
        # The raw socket is the stdlib one on trio and asyncio's TransportSocket on asyncio;
        # both allow setsockopt, and closing stays with the stream that owns it.
        link.downstream.extra(SocketAttribute.raw_socket).setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        link.dropped = True
        link.scope.cancel()
        self.dropped += 1
        return True
