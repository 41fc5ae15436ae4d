"""Concurrency helpers, backend-neutral (AnyIO): one exception out of a task group, never an
ExceptionGroup; and memory-stream operations that only yield when they must wait."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from types import TracebackType
from typing import Any, Protocol, cast

import anyio
import anyio.lowlevel
import sniffio
import trio

__all__ = [
    "CancelScope",
    "Event",
    "TaskGroup",
    "cancellation_check",
    "create_cancel_scope",
    "create_event",
    "create_task_group",
    "current_task",
    "finish_shielded",
    "leaf_exceptions",
    "open_task_group",
    "single_exception",
]


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
    as a note). A group made only of cancellations leaves as one bare cancellation (a Trio
    nursery groups them; AnyIO's task group would have unwrapped them too), which the cancel
    scope that owns it absorbs. Use it inside a running event loop.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = leaf_exceptions(group)
        chosen = _pick(leaves, anyio.get_cancelled_exc_class())
        if chosen is None:
            chosen = leaves[0]  # every leaf is a cancellation
        context = chosen.__context__
        try:
            raise chosen from chosen.__cause__
        finally:
            # Do not chain the group (which contains `chosen` itself) as its context.
            chosen.__context__ = context
            del chosen, context


logger = logging.getLogger("rime_trio")


def cancellation_check() -> Callable[[], Awaitable[None]]:
    """``anyio.lowlevel.checkpoint_if_cancelled`` resolved for the running event loop, for
    paths that run it per event (the channels of :mod:`._channel`: a cancellation point
    that yields only when it must wait): AnyIO's looks the backend up on every call, which
    on Trio costs three times the check itself (0.5 µs against 0.15 µs). Outside an event
    loop, AnyIO's own.
    """
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        library = None
    if library == "trio":
        return trio.lowlevel.checkpoint_if_cancelled
    return anyio.lowlevel.checkpoint_if_cancelled


# A stream starts four tasks, each in a cancel scope of its own, and makes half a dozen events,
# per utterance. AnyIO's wrappers around Trio's own primitives cost five times as much to make
# (an Event 0.7 us against 0.13 us, a CancelScope 1.6 us against 0.3 us; every task AnyIO
# starts gets a scope and an event of its own too), enough to show in time to first audio.
# So the hot path makes Trio's own on Trio, AnyIO's elsewhere: the same interface, typed by
# these protocols.


class Event(Protocol):
    """What the stream layers use of ``anyio.Event`` / ``trio.Event``."""

    def set(self) -> None: ...

    def is_set(self) -> bool: ...

    async def wait(self) -> None: ...


class CancelScope(Protocol):
    """What the stream layers use of ``anyio.CancelScope`` / ``trio.CancelScope``."""

    def __enter__(self) -> Any: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> bool: ...

    def cancel(self) -> None: ...

    @property
    def cancel_called(self) -> bool: ...

    @property
    def cancelled_caught(self) -> bool: ...


class TaskGroup(Protocol):
    """What the stream layers use of an AnyIO task group / a Trio nursery."""

    @property
    def cancel_scope(self) -> CancelScope: ...

    def start_soon(
        self, func: Callable[..., Awaitable[Any]], *args: Any, name: object = None
    ) -> None: ...

    async def start(
        self, func: Callable[..., Awaitable[Any]], *args: Any, name: object = None
    ) -> Any: ...


def _on_trio() -> bool:
    try:
        return sniffio.current_async_library() == "trio"
    except sniffio.AsyncLibraryNotFoundError:
        return False


def create_event() -> Event:
    """A new event: Trio's own on Trio, AnyIO's elsewhere."""
    return trio.Event() if _on_trio() else anyio.Event()


def create_cancel_scope(*, shield: bool = False) -> CancelScope:
    """A new cancel scope: Trio's own on Trio, AnyIO's elsewhere."""
    if _on_trio():
        return trio.CancelScope(shield=shield)
    return anyio.CancelScope(shield=shield)


def create_task_group() -> AbstractAsyncContextManager[TaskGroup]:
    """A new task group: a Trio nursery on Trio, AnyIO's elsewhere. Both raise an
    ExceptionGroup out of ``async with``; pass it through :func:`single_exception`."""
    if _on_trio():
        return cast(AbstractAsyncContextManager[TaskGroup], trio.open_nursery())
    return cast(AbstractAsyncContextManager[TaskGroup], anyio.create_task_group())


@asynccontextmanager
async def open_task_group() -> AsyncIterator[TaskGroup]:
    """A task group for the library's tasks beside the caller's code in the block's body.

    The tasks' failures leave as one exception (:func:`single_exception`). The caller's own
    exception leaves the block exactly as it was raised: it is kept out of the task group,
    which would wrap it in an ExceptionGroup with the tasks' failures (a Trio nursery putting
    theirs first, and a group the caller raised getting flattened). Cancellations do go
    through the task group, whose scope (or an outer one) owns them. Leaving the body, by
    any way, cancels the tasks.

    :raises BaseException: the caller's own exception, unchanged; else the tasks' failure.
    """
    body_error: BaseException | None = None
    try:
        with single_exception():
            async with create_task_group() as task_group:
                try:
                    yield task_group
                except anyio.get_cancelled_exc_class():
                    raise
                except BaseException as exc:
                    body_error = exc
                finally:
                    task_group.cancel_scope.cancel()
    except BaseException as exc:
        if body_error is None or (
            isinstance(exc, KeyboardInterrupt | SystemExit)
            and not isinstance(body_error, KeyboardInterrupt | SystemExit)
        ):
            raise
        # A task failed as the caller's own exception was on its way out (most often the
        # very failure the caller caught and turned into an error of its own): the caller's
        # exception is the one to see.
        logger.debug("a task failure behind the caller's own exception", exc_info=exc)
    if body_error is not None:
        raise body_error


def current_task() -> object:
    """The running task, Trio's or asyncio's: to compare, nothing more."""
    if sniffio.current_async_library() == "trio":
        return trio.lowlevel.current_task()
    return asyncio.current_task()


# Teardowns that asyncio's own Task.cancel() cut short, still running to their end.
_finishing: set[asyncio.Task[None]] = set()


async def finish_shielded(teardown: Callable[[], Awaitable[None]]) -> None:
    """Run *teardown* to its end, whatever cancels the caller.

    A shielded cancel scope is enough on Trio, and against AnyIO's cancellation on asyncio.
    asyncio's own ``Task.cancel()`` (``asyncio.timeout()``, ``wait_for``, a framework
    cancelling a request's task) goes through any cancel scope, though: there the teardown
    runs in a task of its own, which such a cancellation of the caller does not reach; the
    caller gets its ``CancelledError`` at once, and the teardown finishes in the background,
    bounded by its own timeouts.

    :raises Exception: whatever *teardown* raises (to the caller, if it is still waiting).
    """
    with anyio.CancelScope(shield=True):
        if sniffio.current_async_library() != "asyncio":
            await teardown()
            return

        async def run() -> None:
            with anyio.CancelScope(shield=True):
                await teardown()

        task = asyncio.get_running_loop().create_task(run())
        _finishing.add(task)
        task.add_done_callback(_finished)
        await asyncio.shield(task)


def _finished(task: asyncio.Task[None]) -> None:
    _finishing.discard(task)
    if not task.cancelled() and (error := task.exception()) is not None:
        # Raised to the caller if it was still waiting; otherwise nobody else will see it.
        logger.debug("error in a teardown", exc_info=error)
