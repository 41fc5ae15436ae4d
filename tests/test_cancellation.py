"""Cancellation at every await of a stream's life, by every mechanism of both event loops
(issue 20, "make them hard to bring back"): audio exact or an exact prefix, text never sent
by a push that raised, nothing left behind, the caller's own exceptions untouched.

Each example runs a :class:`~tests.cancel_harness.Plan` in an event loop and emulator of its
own (see ``tests/cancel_harness.py``); a failure prints the plan, and
``run_plan(plan, backend)`` replays it. The example budget is the hypothesis profile's
(``HYPOTHESIS_PROFILE``: ``ci`` by default, ``fuzz`` for ``nox -s fuzz``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import pytest
import sniffio
import trio
from hypothesis import example, given
from hypothesis import strategies as st

from rime_trio import AudioChunk, EndOfAudio, RimeClient, SpeechStream, StreamSettings
from rime_trio._protocol import TextMessage
from rime_trio._segment import blingfire_sentences
from rime_trio.testing import EmulatorConfig, open_emulator

from .cancel_harness import (
    API_KEY,
    MECHANISMS,
    RATE,
    ErrorPlan,
    error_plans,
    plans,
    run_error_plan,
    run_plan,
)
from .conftest import BACKENDS
from .speech import read_all, wire_prefix

T = TypeVar("T")

CASES = [(backend, mechanism) for backend, ms in MECHANISMS.items() for mechanism in ms]


@pytest.mark.parametrize(("backend", "mechanism"), CASES, ids=[f"{b}-{m}" for b, m in CASES])
@given(data=st.data())
def test_cancelling_any_await_keeps_the_audio_exact_and_leaves_nothing(
    backend: str, mechanism: str, data: st.DataObject
) -> None:
    run_plan(data.draw(plans(mechanism), label="plan"), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@example(plan=ErrorPlan("group"))  # issue 20, item 3: flattened to its KeyError
@example(plan=ErrorPlan("group", where="client_only"))  # ... inside `async with RimeClient()`
@example(plan=ErrorPlan("server_to_app"))  # issue 20, item 3: ServerError on trio
@example(plan=ErrorPlan("group", cancel_pending=True))  # trio's own scope copies the group
@given(plan=error_plans)
def test_the_callers_own_exception_leaves_the_block_unchanged(
    backend: str, plan: ErrorPlan
) -> None:
    run_error_plan(plan, backend)


# ----------------------------------------------------------------------------- pinned races
#
# The property above meets these races by chance (a timer that fires in the very loop
# iteration that hands an item over). Here they are aimed: a cancellation is set off exactly
# when the library has just handed an event to a waiting receive(), or taken the text of a
# waiting push_text(), before that call resumed; on asyncio with Task.cancel() (what
# asyncio.timeout() and wait_for() do when their timer fires then), on trio by cancelling the
# call's cancel scope.

TEXT = "Hello there. How are you today? It is two p.m. now. Fine, thanks!"


class Canceller:
    """Cancel one await of the current task from elsewhere, with the backend's own
    mechanism; ``cancelled`` says whether that await was interrupted."""

    def __init__(self) -> None:
        self.waiting = False
        self.fired = 0
        self._scope: trio.CancelScope | None = None
        self._task: asyncio.Task[Any] | None = None

    def cancel(self) -> None:
        if not self.waiting:
            return
        self.fired += 1
        self.waiting = False
        if self._task is not None:
            self._task.cancel()
        elif self._scope is not None:
            self._scope.cancel()

    async def call(self, fn: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        """(returned, value) of ``await fn()``, which cancel() may interrupt."""
        if sniffio.current_async_library() == "asyncio":
            self._task = asyncio.current_task()
            self.waiting = True
            try:
                return True, await fn()
            except asyncio.CancelledError:
                assert self._task is not None
                if self._task.uncancel():  # someone else's cancellation
                    raise
                return False, None
            finally:
                self.waiting = False
        with trio.CancelScope() as scope:
            self._scope = scope
            self.waiting = True
            try:
                return True, await fn()
            finally:
                self.waiting = False
        return False, None


async def _read_cancelled_on_arrival() -> None:
    config = EmulatorConfig(chunk_bytes=400, real_time_factor=0.05)
    async with open_emulator(config) as emulator:
        async with RimeClient(
            base_url=emulator.ws_url, api_key=API_KEY, sample_rate=RATE
        ) as client:
            audio = bytearray()
            interrupted = 0
            canceller = Canceller()

            async def watch(stream: SpeechStream) -> None:
                # Runs once per loop iteration: an audio event counted while the reader still
                # waits was just handed to it (or buffered for it).
                while True:
                    if canceller.waiting and stream.buffered_audio_bytes > 0:
                        canceller.cancel()
                    await anyio.lowlevel.checkpoint()

            with anyio.fail_after(30):
                async with client.stream() as stream:
                    await stream.push_text(TEXT)
                    await stream.end_input()
                    async with anyio.create_task_group() as task_group:
                        task_group.start_soon(watch, stream)
                        while True:
                            try:
                                returned, event = await canceller.call(stream.receive)
                            except EndOfAudio:
                                break
                            if not returned:
                                interrupted += 1
                            elif isinstance(event, AudioChunk):
                                audio += event.data
                        task_group.cancel_scope.cancel()
    synthesized = emulator.stats.audio_for(wire_prefix(stream))
    assert canceller.fired > 0, "the race was never set up"
    assert len(audio) == len(synthesized), (
        f"{interrupted} of {canceller.fired} receives interrupted"
    )
    assert bytes(audio) == synthesized
    assert stream.buffered_audio_bytes == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_receive_cancelled_as_its_event_arrives_loses_nothing(backend: str) -> None:
    """Issue 20, item 1: the event a cancelled receive() was handed is the next one returned."""
    anyio.run(_read_cancelled_on_arrival, backend=backend)


async def _push_cancelled_as_its_text_is_taken() -> None:
    canceller = Canceller()

    def tokenizer(text: str) -> list[str]:
        # The input task just took an item from the text channel, and with it (the channel
        # being full) the text of a push_text waiting for room: interrupt that push now.
        canceller.cancel()
        return blingfire_sentences(text)

    sentences = [f"Sentence number {n} is here. " for n in range(40)]
    settings = StreamSettings(text_buffer=1)
    async with open_emulator() as emulator:
        async with RimeClient(
            base_url=emulator.ws_url, api_key=API_KEY, sample_rate=RATE, stream_settings=settings
        ) as client:
            accepted: list[str] = []
            refused: list[str] = []
            with anyio.fail_after(30):
                async with client.stream(tokenizer=tokenizer) as stream:
                    for sentence in sentences:
                        returned, _ = await canceller.call(partial(stream.push_text, sentence))
                        (accepted if returned else refused).append(sentence)
                    await stream.end_input()
                    audio, _ = await read_all(stream)
    sent = "".join(
        m.text
        for messages in emulator.stats.received.values()
        for m in messages
        if isinstance(m, TextMessage) and (m.context_id or "").startswith(wire_prefix(stream))
    )
    assert canceller.fired > 0, "the race was never set up"
    raised_but_sent = [s for s in refused if s in sent]
    assert not raised_but_sent, f"push_text raised, yet the server got {raised_but_sent}"
    said = "".join(accepted)
    assert said.startswith(sent)
    assert not said[len(sent) :].strip()
    assert audio == emulator.stats.audio_for(wire_prefix(stream))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_push_text_cancelled_as_its_text_is_taken_did_not_queue_it(backend: str) -> None:
    """Issue 20, item 2: a push_text that raised did not queue its text (a caller who
    retries it must not send it twice)."""
    anyio.run(_push_cancelled_as_its_text_is_taken, backend=backend)


# ----------------------------------------------------------------------------- buffered bytes


async def _buffered_after(how: str) -> int:
    settings = StreamSettings(audio_buffer=1)
    async with open_emulator(EmulatorConfig(chunk_bytes=400)) as emulator:
        async with RimeClient(
            base_url=emulator.ws_url, api_key=API_KEY, sample_rate=RATE, stream_settings=settings
        ) as client:
            with anyio.fail_after(30):
                async with client.stream() as stream:
                    await stream.push_text("Hello there. ")
                    await stream.end_input()
                    for _ in range(2):  # an audio chunk and a word: the channel is full again
                        await stream.receive()
                    if how == "clear":
                        await stream.clear()  # after end_input: the audio ends at once
                        with pytest.raises(EndOfAudio):
                            while True:
                                await stream.receive()
                    else:
                        # Everything waits: the channel is full and the recv task holds the
                        # next chunk, waiting for room. Then the caller leaves.
                        await anyio.wait_all_tasks_blocked()
                await stream.finished.wait()
    return stream.buffered_audio_bytes


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_clear_after_end_input_leaves_no_audio_byte_counted(backend: str) -> None:
    """The recv task counts a chunk before waiting for room for it; the clear() cancels it
    there. The count must go with the chunk (read to EndOfAudio: nothing is buffered)."""
    assert anyio.run(_buffered_after, "clear", backend=backend) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stream_left_early_counts_no_buffered_byte_once_finished(backend: str) -> None:
    """Leaving the block with audio still buffered: once the stream has finished, nothing
    is buffered for anyone (rule 3 of the harness)."""
    assert anyio.run(_buffered_after, "leave", backend=backend) == 0
