from __future__ import annotations

import pytest
import trio

from rime_trio._concurrency import leaf_exceptions, single_exception
from rime_trio.testing import open_emulator


async def test_one_error_from_a_nursery_comes_out_bare() -> None:
    async def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom") as info, single_exception():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)
            await trio.sleep_forever()
    assert not isinstance(info.value.__context__, BaseExceptionGroup)


async def test_several_errors_keep_the_first_and_note_the_rest() -> None:
    async def fail(message: str) -> None:
        raise RuntimeError(message)

    with pytest.raises(RuntimeError) as info, single_exception():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail, "a")
            nursery.start_soon(fail, "b")
    assert "1 more error" in "".join(getattr(info.value, "__notes__", []))


async def test_keyboard_interrupt_wins() -> None:
    async def interrupt() -> None:
        raise KeyboardInterrupt

    async def fail() -> None:
        raise ValueError

    with pytest.raises(KeyboardInterrupt), single_exception():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)
            nursery.start_soon(interrupt)


async def test_cancellation_passes_through_to_its_scope() -> None:
    with trio.move_on_after(0.01) as scope:
        with single_exception():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                await trio.sleep_forever()
    assert scope.cancelled_caught


def test_leaf_exceptions_flattens_nested_groups() -> None:
    a, b, c = ValueError(), KeyError(), OSError()
    group = BaseExceptionGroup("outer", [a, BaseExceptionGroup("inner", [b, c])])
    assert leaf_exceptions(group) == [a, b, c]


async def test_emulator_context_lets_the_bodys_exception_out_bare() -> None:
    with pytest.raises(ZeroDivisionError):
        async with open_emulator():
            1 / 0  # noqa: B018
