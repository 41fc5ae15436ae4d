"""Concurrency helpers: one exception out of a nursery (never an ExceptionGroup), and
channel and lock operations that only yield when they must wait."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TypeVar

import trio

__all__ = ["hold_soon", "leaf_exceptions", "receive_soon", "send_soon", "single_exception"]


def leaf_exceptions(error: BaseException) -> list[BaseException]:
    """The non-group exceptions inside *error* (itself, if it is not a group)."""
    if isinstance(error, BaseExceptionGroup):
        leaves: list[BaseException] = []
        for inner in error.exceptions:
            leaves.extend(leaf_exceptions(inner))
        return leaves
    return [error]


def _pick(leaves: list[BaseException]) -> BaseException | None:
    for leaf in leaves:
        if isinstance(leaf, KeyboardInterrupt | SystemExit):
            return leaf
    real: list[BaseException] = []
    for leaf in leaves:
        # The same error may arrive twice: raised to a reader and by the task that failed.
        if not isinstance(leaf, trio.Cancelled) and all(leaf is not r for r in real):
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
    """Turn an ExceptionGroup leaving a nursery into the one exception that matters.

    ``KeyboardInterrupt`` wins; then the first exception that is not ``trio.Cancelled`` (the
    others are added to it as a note). A group made only of ``Cancelled`` is re-raised as it
    is, so that the cancel scope that owns it absorbs it.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        chosen = _pick(leaf_exceptions(group))
        if chosen is None:
            raise
        context = chosen.__context__
        try:
            raise chosen from chosen.__cause__
        finally:
            # Do not chain the group (which contains `chosen` itself) as its context.
            chosen.__context__ = context
            del chosen, context


# Trio makes every channel operation and lock acquisition a scheduling point, even when it
# can complete at once; on a stream's hot path that is a round of the scheduler (every other
# runnable task steps) per hop. These are still cancellation points, but only wait, and so
# only yield, when they must.

_T = TypeVar("_T")


async def send_soon(channel: trio.MemorySendChannel[_T], item: _T) -> None:
    """``await channel.send(item)``, without a scheduling round when there is room.

    :raises trio.BrokenResourceError, trio.ClosedResourceError: as ``send``.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        channel.send_nowait(item)
    except trio.WouldBlock:
        await channel.send(item)


async def receive_soon(channel: trio.MemoryReceiveChannel[_T]) -> _T:
    """``await channel.receive()``, without a scheduling round when an item is waiting.

    :raises trio.EndOfChannel, trio.ClosedResourceError: as ``receive``.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        return channel.receive_nowait()
    except trio.WouldBlock:
        return await channel.receive()


@asynccontextmanager
async def hold_soon(lock: trio.Lock) -> AsyncIterator[None]:
    """``async with lock``, without a scheduling round when the lock is free."""
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()
    try:
        yield
    finally:
        lock.release()
