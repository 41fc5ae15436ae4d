"""An emulator running in its own thread (its own trio loop) for a whole test session.

Property tests run many examples, each in a fresh event loop; starting an emulator per
example would dominate their time. The emulator reads its config afresh for every new
connection, so a test sets the server reading it wants before each example.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
import trio

from rime_trio.testing import EmulatorConfig, RimeEmulator, open_emulator


@contextmanager
def emulator_in_thread(config: EmulatorConfig | None = None) -> Iterator[RimeEmulator]:
    """Run an emulator on 127.0.0.1 in a daemon thread for the body of the block."""
    ready = threading.Event()
    holder: dict[str, object] = {}

    async def main() -> None:
        stop = trio.Event()
        async with open_emulator(config) as emulator:
            holder["emulator"] = emulator
            holder["stop"] = stop
            holder["token"] = trio.lowlevel.current_trio_token()
            ready.set()
            await stop.wait()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # pragma: no cover - reported to the test below
            holder["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, name="rime-emulator", daemon=True)
    thread.start()
    if not ready.wait(30) or "error" in holder:
        raise RuntimeError(f"the emulator thread did not start: {holder.get('error')!r}")
    emulator = holder["emulator"]
    assert isinstance(emulator, RimeEmulator)
    try:
        yield emulator
    finally:
        stop = holder["stop"]
        assert isinstance(stop, trio.Event)
        trio.from_thread.run_sync(stop.set, trio_token=holder["token"])  # type: ignore[arg-type]
        thread.join(30)


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait until *condition* holds (callers bound the wait), on either backend: the emulator
    may live in another thread, so its own wait helpers cannot be awaited from here; poll."""
    while True:
        if condition():
            return
        await anyio.sleep(0.005)
