from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import pytest
import trio

from rime_trio._concurrency import create_task_group, leaf_exceptions, single_exception
from rime_trio.testing import open_emulator

from .conftest import BACKENDS

pytestmark = pytest.mark.anyio


async def test_one_error_from_a_task_group_comes_out_bare() -> None:
    async def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom") as info, single_exception():
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(fail)
            await anyio.sleep_forever()
    assert not isinstance(info.value.__context__, BaseExceptionGroup)


async def test_several_errors_keep_the_first_and_note_the_rest() -> None:
    async def fail(message: str) -> None:
        raise RuntimeError(message)

    with pytest.raises(RuntimeError) as info, single_exception():
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(fail, "a")
            task_group.start_soon(fail, "b")
    assert "1 more error" in "".join(getattr(info.value, "__notes__", []))


@pytest.mark.parametrize("backend", BACKENDS)
def test_keyboard_interrupt_wins(backend: str) -> None:
    # Run by hand: on asyncio, a KeyboardInterrupt raised in a task leaves the event loop at
    # once (asyncio re-raises it from the task's step), so it ends the loop itself.
    async def interrupt() -> None:
        raise KeyboardInterrupt

    async def fail() -> None:
        raise ValueError

    async def main() -> None:
        with single_exception():
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(fail)
                task_group.start_soon(interrupt)

    with pytest.raises(KeyboardInterrupt) as info:
        anyio.run(main, backend=backend)
    assert type(info.value) is KeyboardInterrupt


async def test_cancellation_passes_through_to_its_scope() -> None:
    with anyio.move_on_after(0.01) as scope:
        with single_exception():
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(anyio.sleep_forever)
                await anyio.sleep_forever()
    assert scope.cancelled_caught


async def a_cancellation() -> BaseException:
    """A real cancellation exception of the running backend, caught on its way out."""
    caught: list[BaseException] = []
    with anyio.CancelScope() as scope:
        scope.cancel()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class() as exc:
            caught.append(exc)
            raise
    return caught[0]


async def test_the_backends_cancellation_is_never_chosen_over_an_error(
    anyio_backend_name: str,
) -> None:
    cancelled = await a_cancellation()
    expected = {"trio": trio.Cancelled, "asyncio": asyncio.CancelledError}[anyio_backend_name]
    assert type(cancelled) is expected
    error = ValueError("boom")
    with pytest.raises(ValueError, match="boom") as info, single_exception():
        raise BaseExceptionGroup("both", [cancelled, error])
    assert info.value is error
    assert not getattr(error, "__notes__", [])  # a cancellation is not another error
    # only cancellations: one bare cancellation goes on, for the scope that owns it to absorb
    only = BaseExceptionGroup("only", [cancelled, BaseExceptionGroup("inner", [cancelled])])
    with pytest.raises(expected) as bare, single_exception():
        raise only
    assert bare.value is cancelled


async def test_a_stream_cancelled_on_trio_raises_a_bare_cancelled_out_of_its_nursery() -> None:
    # On trio the stream's tasks run in a trio nursery, which groups its tasks' Cancelled;
    # the caller must see one bare cancellation, as it would from AnyIO's task group.
    async def sleeper() -> None:
        await anyio.sleep_forever()

    seen: list[BaseException] = []
    with anyio.CancelScope() as scope:
        try:
            with single_exception():
                async with create_task_group() as group:
                    group.start_soon(sleeper)
                    group.start_soon(sleeper)
                    await anyio.lowlevel.checkpoint()
                    scope.cancel()
                    await anyio.sleep_forever()
        except BaseException as exc:
            seen.append(exc)
            raise
    assert scope.cancelled_caught
    assert [type(e) for e in seen] == [anyio.get_cancelled_exc_class()]


def test_leaf_exceptions_flattens_nested_groups() -> None:
    a, b, c = ValueError(), KeyError(), OSError()
    group = BaseExceptionGroup("outer", [a, BaseExceptionGroup("inner", [b, c])])
    assert leaf_exceptions(group) == [a, b, c]


async def test_emulator_context_lets_the_bodys_exception_out_bare() -> None:
    with pytest.raises(ZeroDivisionError):
        async with open_emulator():
            1 / 0  # noqa: B018
