"""A read of HTTP synthesis that is cancelled takes nothing and loses nothing.

``synthesize_chunks()`` over HTTP is read by the caller one ``__anext__()`` at a time; a caller
who bounds each read (``asyncio.timeout``, ``asyncio.wait_for``, ``Task.cancel``, a Trio or
AnyIO cancel scope), to poll for barge-in say, must get the same audio, byte for byte and on
one clock, as one who never times a read out: for a text of one request and for a long text
cut into several. The body is read by a task of the synthesis into a channel that is safe to
cancel, and a read only takes from that channel.

The server here is :class:`~tests.test_http_mock.MockRime`, which sends each request's body in
pieces with pauses between them (milliseconds, so that timeouts land anywhere: while the
reader waits for the body, as a piece arrives, while pieces are buffered); one test per
backend reads the emulator over real sockets the same way.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
import sniffio
import trio
from hypothesis import given
from hypothesis import strategies as st

from rime_trio import AudioChunk, RimeClient, StreamClosed
from rime_trio._http import _BODY_BUFFER, http_pieces
from rime_trio.testing import EmulatorConfig, open_emulator

from .cancel_harness import MECHANISMS, Canceller, library_tasks
from .conftest import API_KEY, BACKENDS
from .test_http_mock import MockRime, audio_for

RATE = 8000
#: a hang guard, never a timing assertion
HANG = 30.0
SENTENCES = ["The first sentence is short.", "A second one runs on a little longer than that."]
SHORT = "Hello there. How are you doing today? Fine, thanks."
#: one request (of 538 characters)
ONE = " ".join(SENTENCES * 7)
#: three requests (of 191, 972 and 456 characters)
LONG = " ".join([*SENTENCES, "Hm?"] * 20)


def expected_audio(text: str) -> bytes:
    return b"".join(audio_for(piece) for piece in http_pieces(text, "coda"))


async def read_bounded(
    canceller: Canceller, mechanism: str, delay: float | None, read: Callable[[], Awaitable[Any]]
) -> tuple[bool, Any]:
    """``await read()`` bounded by *mechanism* after *delay* seconds (None: unbounded);
    (returned, its value). StopAsyncIteration and RimeError propagate."""
    if delay is None:
        return True, await read()
    if mechanism != "Task.cancel":
        return await canceller.around_op(mechanism, delay, read)
    # A timer cancels the reading task itself, which takes the cancellation back (as
    # asyncio.timeout() does).
    task = asyncio.current_task()
    assert task is not None
    timer = asyncio.get_running_loop().call_later(delay, task.cancel)
    try:
        return True, await read()
    except asyncio.CancelledError:
        if task.uncancel():  # someone else's cancellation
            raise
        return False, None
    finally:
        timer.cancel()


@dataclass
class Reading:
    chunks: list[AudioChunk] = field(default_factory=list)
    interrupted: int = 0
    outcome: str = ""
    #: the client's tasks still running once the synthesis block was left
    left: list[str] = field(default_factory=list)

    @property
    def audio(self) -> bytes:
        return b"".join(chunk.data for chunk in self.chunks)


async def read_with_timeouts(
    client: RimeClient, text: str, bounds: Sequence[tuple[str, float | None]]
) -> Reading:
    """Read all of *text*'s chunks, each read bounded as *bounds* say (cycled)."""
    reading = Reading()
    async with anyio.create_task_group() as helpers:
        canceller = Canceller(helpers)
        async with client.synthesize_chunks(text) as chunks:
            for mechanism, delay in itertools.cycle(bounds):
                try:
                    returned, chunk = await read_bounded(
                        canceller, mechanism, delay, chunks.__anext__
                    )
                except StopAsyncIteration:
                    break
                if returned:
                    reading.chunks.append(chunk)
                else:
                    reading.interrupted += 1
        helpers.cancel_scope.cancel()  # the cancel-scope mechanism's timers
    reading.outcome = chunks.metrics.outcome
    reading.left = library_tasks()
    return reading


def check_whole(reading: Reading, uninterrupted: bytes, text: str) -> None:
    """Exactly the audio of an uninterrupted read, on one clock, and nothing left running."""
    assert len(reading.audio) == len(uninterrupted), f"{reading.interrupted} reads interrupted"
    assert reading.audio == uninterrupted
    assert reading.audio == expected_audio(text)
    position = 0.0
    for chunk in reading.chunks:
        assert chunk.offset == pytest.approx(position)
        position += chunk.duration
    assert position == pytest.approx(len(uninterrupted) / (2 * RATE))
    assert reading.outcome == "completed"
    assert reading.left == []


# ----------------------------------------------------------------------------- the property


def bounds_for(backend: str) -> st.SearchStrategy[list[tuple[str, float | None]]]:
    """What bounds each read, cycled: a mechanism and its delay (None: a plain read); at
    least one read in a cycle has time enough, so the reading ends."""
    bound = st.tuples(
        st.sampled_from(MECHANISMS[backend]),
        st.sampled_from([0.0, 0.0002, 0.0005, 0.001, 0.002, 0.004, None]),
    )
    return st.lists(bound, min_size=1, max_size=12).map(
        lambda bounds: [*bounds, (bounds[0][0], None)]
    )


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    data=st.data(),
    long=st.booleans(),
    sizes=st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=6),
    pauses=st.lists(st.sampled_from([0.0, 0.0, 0.0003, 0.001, 0.003]), min_size=1, max_size=6),
)
def test_reads_timed_out_anywhere_lose_nothing(
    backend: str, data: st.DataObject, long: bool, sizes: list[int], pauses: list[float]
) -> None:
    bounds = data.draw(bounds_for(backend), label="bounds")
    text = LONG if long else ONE

    async def main() -> tuple[Reading, bytes]:
        server = MockRime(sizes, pauses, budget=0.0)
        with anyio.fail_after(HANG):
            async with server.client(sample_rate=RATE) as client:
                uninterrupted = (await client.synthesize(text)).audio
                server.budget = 0.01
                return await read_with_timeouts(client, text, bounds), uninterrupted

    reading, uninterrupted = anyio.run(main, backend=backend)
    check_whole(reading, uninterrupted, text)


# ----------------------------------------------------------------------------- pinned race


class CancelOnArrival:
    """Cancels the read that waits, from the server's side, as the client asks for the next
    piece of body: the piece before has just been put in the channel and the read woken, and
    the read has not run yet (Task.cancel() on asyncio, the read's own scope on trio)."""

    def __init__(self) -> None:
        self.waiting = False
        self.fired = 0
        self._cancel: Callable[[], object] | None = None

    def cancel(self) -> None:
        if self.waiting and self._cancel is not None:
            self.fired += 1
            self.waiting = False
            self._cancel()

    async def read(self, read: Callable[[], Awaitable[AudioChunk]]) -> AudioChunk | None:
        if sniffio.current_async_library() == "asyncio":
            task = asyncio.current_task()
            assert task is not None
            self._cancel = task.cancel
            self.waiting = True
            try:
                return await read()
            except asyncio.CancelledError:
                if task.uncancel():
                    raise
                return None
            finally:
                self.waiting = False
        with trio.CancelScope() as scope:
            self._cancel = scope.cancel
            self.waiting = True
            try:
                return await read()
            finally:
                self.waiting = False
        return None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("text", [ONE, LONG], ids=["one request", "several"])
def test_a_read_cancelled_as_its_chunk_arrives_loses_nothing(backend: str, text: str) -> None:
    async def main() -> tuple[Reading, bytes, int]:
        canceller = CancelOnArrival()
        server = MockRime(sizes=(60, 7, 200), before_piece=canceller.cancel)
        reading = Reading()
        with anyio.fail_after(HANG):
            async with server.client(sample_rate=RATE) as client:
                uninterrupted = (await client.synthesize(text)).audio
                async with client.synthesize_chunks(text) as chunks:
                    while True:
                        try:
                            chunk = await canceller.read(chunks.__anext__)
                        except StopAsyncIteration:
                            break
                        if chunk is None:
                            reading.interrupted += 1
                        else:
                            reading.chunks.append(chunk)
                reading.outcome = chunks.metrics.outcome
                reading.left = library_tasks()
        return reading, uninterrupted, canceller.fired

    reading, uninterrupted, fired = anyio.run(main, backend=backend)
    assert fired > 0, "the race was never set up"
    check_whole(reading, uninterrupted, text)


# ----------------------------------------------------------------------------- real sockets


@pytest.mark.parametrize("backend", BACKENDS)
def test_reads_timed_out_against_the_emulator_lose_nothing(backend: str) -> None:
    """End to end: a paced body over real sockets (a 200th of real time), every read
    bounded by each of the backend's mechanisms in turn, at once or after half a
    millisecond."""
    bounds = [(m, delay) for m in MECHANISMS[backend] for delay in (0.0, 0.0005)]
    texts = (SHORT, LONG[:1100])  # one request; two

    async def main() -> list[tuple[Reading, bytes]]:
        results = []
        with anyio.fail_after(HANG):
            async with (
                open_emulator(EmulatorConfig(chunk_bytes=400)) as emulator,
                RimeClient(base_url=emulator.http_url, api_key=API_KEY, sample_rate=RATE) as client,
            ):
                for text in texts:
                    emulator.config.real_time_factor = 0.0
                    uninterrupted = (await client.synthesize(text)).audio
                    emulator.config.real_time_factor = 0.005
                    results.append((await read_with_timeouts(client, text, bounds), uninterrupted))
        return results

    for reading, uninterrupted in anyio.run(main, backend=backend):
        assert reading.interrupted > 0
        assert len(reading.audio) == len(uninterrupted)
        assert reading.audio == uninterrupted
        position = 0.0
        for chunk in reading.chunks:
            assert chunk.offset == pytest.approx(position)
            position += chunk.duration
        assert reading.outcome == "completed"
        assert reading.left == []


# ----------------------------------------------------------------------------- what it keeps


@pytest.mark.anyio
async def test_the_body_is_read_ahead_only_a_few_chunks() -> None:
    # Bounded memory: a caller slower than the body holds the server back, as before.
    server = MockRime(sizes=(10,))
    text = "word " * 150
    assert len(audio_for(text)) > 10 * (_BODY_BUFFER + 2)  # one request, not all sent at once
    async with server.client(sample_rate=RATE) as client, client.synthesize_chunks(text) as chunks:
        await chunks.__anext__()
        await anyio.wait_all_tasks_blocked()
        # the chunk taken, a channel full, the one the reading task waits to put in
        assert server.sent <= _BODY_BUFFER + 2
        audio = b"".join([chunk.data async for chunk in chunks])
    assert len(server.texts) == 1
    assert audio == audio_for(text)[10:]


@pytest.mark.anyio
@pytest.mark.parametrize("text", [ONE, LONG], ids=["one request", "several"])
async def test_a_read_after_the_block_was_left_early_is_stream_closed(text: str) -> None:
    # Not a silent end of the audio: the caller left before it.
    async with MockRime(sizes=(100,)).client(sample_rate=RATE) as client:
        async with client.synthesize_chunks(text) as chunks:
            await chunks.__anext__()
        assert chunks.metrics.outcome == "cancelled"
        with pytest.raises(StreamClosed):
            await chunks.__anext__()
        assert library_tasks() == []
        async with client.synthesize_chunks(text) as chunks:
            audio = b"".join([chunk.data async for chunk in chunks])
        assert audio == expected_audio(text)
        with pytest.raises(StopAsyncIteration):  # read to its end: over, and stays so
            await chunks.__anext__()
