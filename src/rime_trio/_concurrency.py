"""Keeping nurseries an implementation detail: one exception out, never an ExceptionGroup."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio

__all__ = ["leaf_exceptions", "single_exception"]


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
