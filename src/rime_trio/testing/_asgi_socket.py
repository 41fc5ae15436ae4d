"""What both of the emulator's WebSocket kinds (``/ws3``, v1 ``/ws``) do alike over ASGI: a
reader and a speaker task per socket, a locked send, the close, and the live fault lookups.
Each kind adds its own reading loop, its frames and its server model."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

from ._config import EmulatorConfig, EmulatorStats
from ._faults import Fault, FaultKind, find_fault

__all__ = ["AsgiSocket", "Message", "Receive", "Send"]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class AsgiSocket:
    """One accepted WebSocket over ASGI *receive* / *send*. Subclasses provide ``_read``
    (the reader, run in the caller's task) and ``_speak`` (the speaker task).

    *drop_tcp* resets this socket's TCP connection without a close frame (``drop`` faults).
    Faults are read live, so a test can arm one at an exact point of a conversation.
    """

    def __init__(
        self,
        config: EmulatorConfig,
        stats: EmulatorStats,
        index: int,
        receive: Receive,
        send: Send,
        drop_tcp: Callable[[], None],
    ) -> None:
        self.config = config
        self.stats = stats
        self.index = index
        self._receive = receive
        self._send = send
        self._drop_tcp = drop_tcp
        self._scope: anyio.CancelScope | None = None
        self._send_lock = anyio.Lock()
        self._closed = False
        self._messages = 0  # client messages read so far (``close`` faults count them)
        self._changed = anyio.Event()  # set when a message may have given the speaker work

    def _fault(self, kind: FaultKind) -> Fault | None:
        return find_fault(self.config.faults, kind, self.index)

    async def run(self) -> None:
        """Serve the socket until it closes or the client leaves."""
        async with anyio.create_task_group() as tasks:
            self._scope = tasks.cancel_scope
            tasks.start_soon(self._speak)
            await self._read()

    async def _read(self) -> None:
        raise NotImplementedError

    async def _speak(self) -> None:
        raise NotImplementedError

    def _end(self) -> None:
        """Stop both tasks of this connection (the ASGI handler then returns)."""
        assert self._scope is not None
        self._scope.cancel()

    async def _hang_up(self, code: int, reason: str = "") -> None:
        await self._close(code, reason)
        self._end()

    async def _send_message(self, message: Message) -> None:
        """Send one ASGI ``websocket.send`` message, unless the socket was closed."""
        async with self._send_lock:
            if not self._closed:
                await self._send(message)

    async def _close(self, code: int, reason: str) -> None:
        async with self._send_lock:
            if not self._closed:
                self._closed = True
                await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def _next_message(self, idle: Fault | None) -> Message | None:
        """The client's next message; None when the socket is done: the client left, or
        *idle* (an ``idle_close`` fault) found it silent for its seconds and hung up."""
        with anyio.move_on_after(idle.seconds if idle else math.inf) as waiting:
            message = await self._receive()
        if waiting.cancelled_caught and idle is not None:
            await self._hang_up(idle.code, idle.reason)
            return None
        if message["type"] == "websocket.disconnect":
            self._end()
            return None
        return message

    async def _maybe_close(self) -> bool:
        """Carry out an armed ``close`` fault once enough messages were read; True if so."""
        fault = self._fault("close")
        if fault is not None and self._messages >= fault.after_messages:
            await self._hang_up(fault.code, fault.reason)
            return True
        return False
