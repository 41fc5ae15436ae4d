"""A TCP proxy in front of the emulator that can drop one connection without a close frame.

ASGI gives an application no way to drop its TCP connection, so for ``drop`` faults the
emulator's public port is this proxy; the application asks it to reset the connection whose
upstream side is the ASGI ``client`` address it sees.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

import trio

__all__ = ["TcpFaultProxy"]


@dataclass(slots=True)
class _Link:
    downstream: trio.SocketStream
    upstream: trio.SocketStream
    scope: trio.CancelScope


class TcpFaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._links: dict[int, _Link] = {}
        self.dropped = 0

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        task_status.started(bound)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, downstream: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream(*self._upstream)
        local_port = upstream.socket.getsockname()[1]
        try:
            with trio.CancelScope() as scope:
                self._links[local_port] = _Link(downstream, upstream, scope)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, downstream, upstream, nursery.cancel_scope)
                    nursery.start_soon(self._pump, upstream, downstream, nursery.cancel_scope)
        finally:
            self._links.pop(local_port, None)
            await trio.aclose_forcefully(upstream)
            await trio.aclose_forcefully(downstream)

    @staticmethod
    async def _pump(
        source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    def drop(self, client_port: int) -> bool:
        """Reset the client side of the connection whose upstream port is *client_port*."""
        link = self._links.get(client_port)
        if link is None:
            return False
        # SO_LINGER 0: close sends RST, not FIN; the client sees a dead socket, no close frame.
        link.downstream.socket.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        link.downstream.socket.close()
        link.scope.cancel()
        self.dropped += 1
        return True
