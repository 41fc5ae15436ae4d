"""Concurrency helpers, backend-neutral (AnyIO): one exception out of a task group, never an
ExceptionGroup; and memory-stream operations that only yield when they must wait."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["leaf_exceptions", "receive_soon", "send_soon", "single_exception"]


def leaf_exceptions(error: BaseException) -> list[BaseException]:
    """The non-group exceptions inside *error* (itself, if it is not a group)."""
    if isinstance(error, BaseExceptionGroup):
        leaves: list[BaseException] = []
        for inner in error.exceptions:
            leaves.extend(leaf_exceptions(inner))
        return leaves
    return [error]


def _pick(leaves: list[BaseException], cancelled: type[BaseException]) -> BaseException | None:
    for leaf in leaves:
        if isinstance(leaf, KeyboardInterrupt | SystemExit):
            return leaf
    real: list[BaseException] = []
    for leaf in leaves:
        # The same error may arrive twice: raised to a reader and by the task that failed.
        if not isinstance(leaf, cancelled) and all(leaf is not r for r in real):
            real.append(leaf)
    if not real:
        return None
    first = real[0]
    if len(real) > 1:
        others = ", ".join(f"{type(e).__name__}: {e}" for e in real[1:])
        first.add_note(f"while handling it, {len(real) - 1} more error(s) occurred: {others}")
    return first


@contextmanager
def single_exception() -> Iterator[None]:
    """Turn an ExceptionGroup leaving a task group into the one exception that matters.

    ``KeyboardInterrupt`` wins; then the first exception that is not the backend's
    cancellation (``trio.Cancelled``, ``asyncio.CancelledError``; the others are added to it
    as a note). A group made only of cancellations is re-raised as it is, so that the cancel
    scope that owns it absorbs it. Use it inside a running event loop.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        chosen = _pick(leaf_exceptions(group), anyio.get_cancelled_exc_class())
        if chosen is None:
            raise
        context = chosen.__context__
        try:
            raise chosen from chosen.__cause__
        finally:
            # Do not chain the group (which contains `chosen` itself) as its context.
            chosen.__context__ = context
            del chosen, context


# Memory streams make every send and receive a scheduling point, even one that completes at
# once; on a stream's hot path that is a round of the event loop (every other runnable task
# steps) per hop. These are still cancellation points, but only wait, and so only yield,
# when they must.

_T = TypeVar("_T")


async def send_soon(stream: MemoryObjectSendStream[_T], item: _T) -> None:
    """``await stream.send(item)``, without a scheduling round when there is room.

    :raises anyio.BrokenResourceError, anyio.ClosedResourceError: as ``send``.
    """
    await anyio.lowlevel.checkpoint_if_cancelled()
    try:
        stream.send_nowait(item)
    except anyio.WouldBlock:
        await stream.send(item)


async def receive_soon(stream: MemoryObjectReceiveStream[_T]) -> _T:
    """``await stream.receive()``, without a scheduling round when an item is waiting.

    :raises anyio.EndOfStream, anyio.ClosedResourceError: as ``receive``.
    """
    await anyio.lowlevel.checkpoint_if_cancelled()
    try:
        return stream.receive_nowait()
    except anyio.WouldBlock:
        return await stream.receive()
