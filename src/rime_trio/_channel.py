"""A bounded in-memory channel that is safe to cancel on every backend.

AnyIO's memory object streams hand an item straight to a waiting receiver. On asyncio, a
native ``Task.cancel()`` (``asyncio.timeout()``, ``asyncio.wait_for()``, a framework
cancelling a request) that lands after the hand-over and before the receiver resumes drops
that item: the receiver raises ``CancelledError`` and the item is gone. A waiting sender has
the mirror image: its item was taken, yet it raises ``CancelledError``, so a caller who
retries sends it twice.

Here a waiter is only woken; the item stays in the buffer until the woken task itself takes
it (a receiver) or puts it (a sender), after its wait has returned. A cancelled ``receive()``
therefore leaves its item for the next one, and a cancelled ``send()`` has not queued its
item, on Trio and asyncio alike (``asyncio.Queue`` works the same way). Waiters are woken all
at once and each checks again, so a woken waiter that is cancelled never strands the others.

The errors are AnyIO's (``WouldBlock``, ``EndOfStream``, ``ClosedResourceError``,
``BrokenResourceError``), so code written against memory object streams reads the same.
"""

from __future__ import annotations

from collections import deque
from types import TracebackType
from typing import Generic, Self, TypeVar

import anyio

from ._concurrency import Event, cancellation_check, create_event

__all__ = ["ChannelReceiver", "ChannelSender", "create_channel"]

_T = TypeVar("_T")


class _State(Generic[_T]):
    __slots__ = ("buffer", "max_size", "readable", "receivers_open", "senders_open", "writable")

    def __init__(self, max_size: float) -> None:
        self.buffer: deque[_T] = deque()
        self.max_size = max_size
        self.senders_open = True
        self.receivers_open = True
        # Made by the first waiter and shared by every later one; set (and dropped) when
        # what they wait for may have happened.
        self.readable: Event | None = None
        self.writable: Event | None = None

    def wake_readers(self) -> None:
        if self.readable is not None:
            self.readable.set()
            self.readable = None

    def wake_writers(self) -> None:
        if self.writable is not None:
            self.writable.set()
            self.writable = None


class _End(Generic[_T]):
    """What both ends share: the state, closing (once), and use as a context manager."""

    __slots__ = ("_check_cancelled", "_closed", "_state")

    def __init__(self, state: _State[_T]) -> None:
        self._state = state
        self._closed = False
        self._check_cancelled = cancellation_check()

    def close(self) -> None:
        """Close this end (idempotent)."""
        if not self._closed:
            self._closed = True
            self._closing()

    def _closing(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        self.close()
        await anyio.lowlevel.checkpoint()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ChannelSender(_End[_T]):
    """The sending end (see the module docstring)."""

    __slots__ = ()

    def send_nowait(self, item: _T) -> None:
        """Queue *item* if there is room.

        :raises anyio.ClosedResourceError: if this end was closed.
        :raises anyio.BrokenResourceError: if the receiving end was closed.
        :raises anyio.WouldBlock: if the buffer is full.
        """
        state = self._state
        if self._closed:
            raise anyio.ClosedResourceError
        if not state.receivers_open:
            raise anyio.BrokenResourceError
        if len(state.buffer) >= state.max_size:
            raise anyio.WouldBlock
        state.buffer.append(item)
        if state.readable is not None:
            state.wake_readers()

    async def send(self, item: _T) -> None:
        """Queue *item*, waiting for room. A cancellation point; when it is cancelled, the
        item was not queued. No scheduling round when there is room at once.

        :raises anyio.ClosedResourceError: if this end was closed.
        :raises anyio.BrokenResourceError: if the receiving end was closed.
        """
        await self._check_cancelled()
        while True:
            try:
                self.send_nowait(item)
            except anyio.WouldBlock:
                state = self._state
                if state.writable is None:
                    state.writable = create_event()
                await state.writable.wait()
            else:
                return

    def _closing(self) -> None:
        """Once the buffer is empty, receivers get ``EndOfStream``."""
        self._state.senders_open = False
        self._state.wake_readers()
        self._state.wake_writers()  # a sender of ours waiting for room


class ChannelReceiver(_End[_T]):
    """The receiving end (see the module docstring)."""

    __slots__ = ()

    def receive_nowait(self) -> _T:
        """Take the next item if one is buffered.

        :raises anyio.ClosedResourceError: if this end was closed.
        :raises anyio.EndOfStream: if the buffer is empty and the sending end was closed.
        :raises anyio.WouldBlock: if the buffer is empty.
        """
        state = self._state
        if self._closed:
            raise anyio.ClosedResourceError
        if state.buffer:
            item = state.buffer.popleft()
            if state.writable is not None:
                state.wake_writers()
            return item
        if not state.senders_open:
            raise anyio.EndOfStream
        raise anyio.WouldBlock

    async def receive(self) -> _T:
        """The next item, waiting for one. A cancellation point; when it is cancelled, no item
        was taken. No scheduling round when an item is waiting.

        :raises anyio.ClosedResourceError: if this end was closed.
        :raises anyio.EndOfStream: once the buffer is empty and the sending end was closed.
        """
        await self._check_cancelled()
        while True:
            try:
                return self.receive_nowait()
            except anyio.WouldBlock:
                state = self._state
                if state.readable is None:
                    state.readable = create_event()
                await state.readable.wait()

    def drain(self) -> list[_T]:
        """Take every buffered item at once (closed or not: what a closed end still held
        can be accounted for)."""
        state = self._state
        if not state.buffer:
            return []
        items = list(state.buffer)
        state.buffer.clear()
        state.wake_writers()
        return items

    @property
    def sender_closed(self) -> bool:
        return not self._state.senders_open

    def _closing(self) -> None:
        """Senders get ``BrokenResourceError``; what was buffered stays for :meth:`drain`."""
        self._state.receivers_open = False
        self._state.wake_writers()
        self._state.wake_readers()  # a receiver of ours waiting for an item


def create_channel(max_size: float) -> tuple[ChannelSender[_T], ChannelReceiver[_T]]:
    """A channel holding at most *max_size* items (``math.inf``: unbounded; at least 1).

    :raises ValueError: if *max_size* is below 1.
    """
    if not max_size >= 1:
        raise ValueError(f"a channel holds at least one item, not {max_size!r}")
    state: _State[_T] = _State(max_size)
    return ChannelSender(state), ChannelReceiver(state)
