"""Reliability under the emulator's fault modes: retries, timeouts, exact audio, no leaks."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
import trio.testing

from rime_trio import (
    APIStatusError,
    AudioChunk,
    ConnectionLost,
    ProtocolError,
    RimeClient,
    RimeError,
    RimeTimeoutError,
    ServerError,
    StreamSettings,
    WordTimestamp,
)
from rime_trio.testing import (
    EmulatorConfig,
    Fault,
    RimeEmulator,
    Ws3Readings,
    find_bursts,
    open_emulator,
    render_speech,
)

from .conftest import API_KEY
from .speech import RATE, client_for, client_tasks, read_all, wire_prefix

TEXT = "The first sentence has words. The second one follows it."
SENTENCES = ["The first sentence has words.", "The second one follows it."]
FAST_RETRIES = StreamSettings(retries=2, retry_backoff=0.01, audio_timeout=2.0)

pytestmark = pytest.mark.anyio


def expected_audio(sentences: list[str], rate: int = RATE) -> bytes:
    """What one clean pass of the emulator synthesizes for a stream of these sentences."""
    return b"".join(render_speech(sentence + " ", rate).pcm for sentence in sentences)


# On trio, virtual time that only jumps after 50 ms of real idleness: real loopback I/O is not
# affected, but a stalled server's seconds pass at once. asyncio has no virtual time: there
# these tests run in real time, with the bounds scaled down (see `bound`).
stall_clock = pytest.mark.virtual_clock(autojump_threshold=0.05)


def bound(virtual_clock: trio.testing.MockClock | None, seconds: float) -> float:
    """*seconds* of virtual time under the stall clock; a small real bound on asyncio, for
    tests where nothing comes at all (a stalled server), so the bound is what they wait."""
    return seconds if virtual_clock is not None else 0.2


async def run_stream(
    client: RimeClient, text: str = TEXT
) -> tuple[bytes, list[WordTimestamp], int]:
    async with client.stream() as stream:
        await stream.push_text(text)
        await stream.end_input()
        with anyio.fail_after(60):  # virtual seconds under the stall clock
            audio, words = await read_all(stream)
    return audio, words, stream.retries


@pytest.fixture
async def faulty() -> AsyncIterator[RimeEmulator]:
    """An emulator behind the TCP fault proxy, so 'drop' faults are possible."""
    async with open_emulator(EmulatorConfig(), tcp_faults=True) as emulator:
        yield emulator


def retrying_client(emulator: RimeEmulator, protocol: str = "ws3", **kwargs: Any) -> RimeClient:
    """A client of *emulator* that retries at once (unless the test gives settings)."""
    return client_for(emulator, protocol, **{"stream_settings": FAST_RETRIES, **kwargs})


# ----------------------------------------------------------------------------- retries


async def test_tcp_drop_before_any_audio_is_retried_without_a_duplicate_byte(
    faulty: RimeEmulator,
) -> None:
    faulty.config.faults = [Fault("drop", frozenset({1}), after_chunks=0)]
    async with retrying_client(faulty) as client:
        audio, words, retries = await run_stream(client)
    assert retries == 1
    assert audio == expected_audio(SENTENCES)
    assert len(words) == 10
    assert faulty._proxy is not None
    assert faulty._proxy.dropped == 1


async def test_tcp_drop_mid_audio_fails_clearly_with_the_audio_delivered(
    faulty: RimeEmulator,
) -> None:
    faulty.config.faults = [Fault("drop", after_chunks=3)]
    delivered = bytearray()
    async with client_for(faulty, stream_settings=StreamSettings(retries=3)) as client:
        with pytest.raises(ConnectionLost) as info:
            async with client.stream() as stream:
                await stream.push_text(TEXT)
                await stream.end_input()
                with anyio.fail_after(30):
                    async for event in stream:
                        if isinstance(event, AudioChunk):
                            delivered += event.data
    error = info.value
    assert error.audio_seconds_delivered > 0
    assert error.audio_seconds_delivered == pytest.approx(len(delivered) / 2 / RATE)
    assert f"after {error.audio_seconds_delivered:.2f} s of audio" in str(error)
    assert "not retried" in str(error)
    # what was delivered is an exact prefix: no byte duplicated, reordered or invented
    assert expected_audio(SENTENCES).startswith(bytes(delivered))
    assert stream.retries == 0


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_retryable_handshake_rejection_on_first_connection_is_retried(
    status: int,
) -> None:
    fault = Fault("reject", frozenset({1}), status=status, body="try later")
    async with open_emulator(EmulatorConfig(faults=[fault])) as emulator:
        async with retrying_client(emulator) as client:
            audio, _, retries = await run_stream(client)
    assert retries == 1
    assert audio == expected_audio(SENTENCES)
    assert emulator.stats.rejected == 1


async def test_retries_are_bounded_and_the_last_status_is_raised() -> None:
    fault = Fault("reject", status=503, body="overloaded")
    async with open_emulator(EmulatorConfig(faults=[fault])) as emulator:
        async with retrying_client(emulator) as client:
            with pytest.raises(APIStatusError) as info:
                await run_stream(client)
    assert info.value.status_code == 503
    assert emulator.stats.rejected == 1 + FAST_RETRIES.retries


@pytest.mark.parametrize("status", [400, 401])
async def test_non_retryable_rejections_are_not_retried(status: int) -> None:
    fault = Fault("reject", status=status, body="no")
    async with open_emulator(EmulatorConfig(faults=[fault])) as emulator:
        async with retrying_client(emulator) as client:
            with pytest.raises(APIStatusError):
                await run_stream(client)
    assert emulator.stats.rejected == 1


async def test_1011_with_a_5xx_reason_before_audio_is_retried() -> None:
    fault = Fault("close", frozenset({1}), code=1011, reason="503: busy", after_messages=1)
    async with open_emulator(EmulatorConfig(faults=[fault])) as emulator:
        async with retrying_client(emulator) as client:
            audio, _, retries = await run_stream(client)
    assert retries == 1
    assert audio == expected_audio(SENTENCES)


async def test_retries_zero_means_no_retry() -> None:
    fault = Fault("reject", frozenset({1}), status=503)
    async with open_emulator(EmulatorConfig(faults=[fault])) as emulator:
        async with client_for(emulator, stream_settings=StreamSettings(retries=0)) as client:
            with pytest.raises(APIStatusError):
                await run_stream(client)


# ----------------------------------------------------------------------------- bounded waits


@stall_clock
async def test_stalled_server_before_audio_times_out(
    virtual_clock: trio.testing.MockClock | None,
) -> None:
    fault = Fault("stall", seconds=3600, after_chunks=0)
    settings = StreamSettings(audio_timeout=bound(virtual_clock, 5))
    async with open_emulator(EmulatorConfig(faults=[fault])) as emulator:
        async with client_for(emulator, stream_settings=settings) as client:
            with pytest.raises(RimeTimeoutError) as info:
                await run_stream(client)
    assert info.value.audio_seconds_delivered == 0


@stall_clock
async def test_stall_mid_audio_times_out_saying_how_much_was_delivered(
    virtual_clock: trio.testing.MockClock | None,
) -> None:
    fault = Fault("stall", seconds=3600, after_chunks=2)
    config = EmulatorConfig(faults=[fault], chunk_bytes=500)
    settings = StreamSettings(audio_timeout=bound(virtual_clock, 5))
    async with open_emulator(config) as emulator:
        async with client_for(emulator, stream_settings=settings) as client:
            with pytest.raises(RimeTimeoutError) as info:
                await run_stream(client)
    assert info.value.audio_seconds_delivered == pytest.approx(1000 / 2 / RATE)
    assert "not retried" in str(info.value)


async def test_missing_dones_do_not_matter_the_close_ends_the_stream() -> None:
    async with open_emulator(EmulatorConfig(faults=[Fault("missing_done")])) as emulator:
        async with retrying_client(emulator) as client:
            audio, words, _ = await run_stream(client)
    assert audio == expected_audio(SENTENCES)
    assert len(words) == 10


@stall_clock
async def test_no_close_after_eos_ends_in_a_timeout_not_a_hang(
    virtual_clock: trio.testing.MockClock | None,
) -> None:
    settings = StreamSettings(audio_timeout=bound(virtual_clock, 5))
    async with open_emulator(EmulatorConfig(faults=[Fault("no_close")])) as emulator:
        # bySentence: the stream ends with eos and the close (under never, at a done)
        async with client_for(emulator, stream_settings=settings, segment="bySentence") as client:
            with pytest.raises(RimeTimeoutError) as info:
                await run_stream(client)
    # all the audio came (and was delivered), only the close was missing
    assert info.value.audio_seconds_delivered == pytest.approx(
        len(expected_audio(SENTENCES)) / 2 / RATE
    )


@stall_clock
async def test_handshake_that_never_answers_times_out(
    virtual_clock: trio.testing.MockClock | None,
) -> None:
    """A listener that accepts TCP but never answers the WebSocket handshake."""
    async with (
        await anyio.create_tcp_listener(local_host="127.0.0.1") as listener,
        anyio.create_task_group() as task_group,
    ):
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        task_group.start_soon(listener.serve, hold_forever)
        async with RimeClient(
            base_url=f"ws://127.0.0.1:{port}",
            api_key=API_KEY,
            connect_timeout=bound(virtual_clock, 3),
            stream_settings=StreamSettings(retries=1, retry_backoff=0.01),
        ) as client:
            with pytest.raises(RimeTimeoutError):
                await run_stream(client)
        task_group.cancel_scope.cancel()


async def hold_forever(stream: anyio.abc.SocketStream) -> None:
    async with stream:
        await anyio.sleep_forever()


@stall_clock
async def test_very_slow_server_still_delivers_exact_audio(
    virtual_clock: trio.testing.MockClock | None,
) -> None:
    """Three times slower than real time: the whole stream takes longer than the audio
    timeout, which bounds only silence. On asyncio, in real time: one short sentence in small
    chunks, with a timeout well above the time between two chunks."""
    if virtual_clock is not None:
        sentences, chunk_bytes, timeout = SENTENCES, 800, 5.0  # 9.6 s in all, 0.15 s apart
    else:
        sentences, chunk_bytes, timeout = ["Slow words."], 160, 0.5  # 2.2 s, 0.03 s apart
    config = EmulatorConfig(real_time_factor=3.0, chunk_bytes=chunk_bytes)
    settings = StreamSettings(audio_timeout=timeout)
    async with open_emulator(config) as emulator:
        async with client_for(emulator, stream_settings=settings) as client:
            audio, _, _ = await run_stream(client, " ".join(sentences))
    assert audio == expected_audio(sentences)
    assert len(audio) / 2 / RATE * 3.0 > timeout


# ----------------------------------------------------------------------------- framing faults


async def test_extra_dones_are_harmless(protocol: str) -> None:
    async with open_emulator(EmulatorConfig(faults=[Fault("extra_done")])) as emulator:
        async with retrying_client(emulator, protocol) as client:
            first, first_words, _ = await run_stream(client)
            second, _, _ = await run_stream(client, "Another stream entirely.")
    assert first == expected_audio(SENTENCES)
    assert second == expected_audio(["Another stream entirely."])
    bursts = find_bursts(first, RATE)
    for word, (start, _) in zip(first_words, bursts, strict=True):
        assert word.start == pytest.approx(start, abs=0.005)


@pytest.mark.parametrize("after_chunks", [0, 2])
async def test_a_frame_no_client_can_read_is_one_protocol_error_never_retried(
    protocol: str, after_chunks: int
) -> None:
    """Garbage from the server (neither JSON nor protobuf), before any audio or mid-way, on
    either protocol: the caller gets a ProtocolError saying so, with the audio before it, and
    no second socket is tried (it would get the same)."""
    fault = Fault("garbage", after_chunks=after_chunks)
    delivered = bytearray()
    async with open_emulator(EmulatorConfig(faults=[fault])) as emulator:
        async with retrying_client(emulator, protocol) as client:
            with pytest.raises(ProtocolError) as info:
                async with client.stream() as stream:
                    await stream.push_text(TEXT)
                    await stream.end_input()
                    with anyio.fail_after(20):
                        async for event in stream:
                            if isinstance(event, AudioChunk):
                                delivered += event.data
    assert stream.retries == 0
    assert len(emulator.stats.runs) == 1  # nothing said on another socket
    assert expected_audio(SENTENCES).startswith(bytes(delivered))
    assert (len(delivered) > 0) == (after_chunks > 0)
    assert info.value.audio_seconds_delivered == pytest.approx(len(delivered) / (2 * RATE))


async def test_odd_sized_chunks_arrive_byte_exact_in_whole_samples(protocol: str) -> None:
    async with open_emulator(EmulatorConfig(faults=[Fault("odd_chunks")])) as emulator:
        async with retrying_client(emulator, protocol) as client:
            chunks: list[bytes] = []
            async with client.stream() as stream:
                await stream.push_text(TEXT)
                await stream.end_input()
                with anyio.fail_after(30):
                    chunks = [e.data async for e in stream if isinstance(e, AudioChunk)]
    assert b"".join(chunks) == expected_audio(SENTENCES)
    assert all(len(chunk) % 2 == 0 for chunk in chunks)


@pytest.mark.parametrize("position", ["before", "between", "after"])
async def test_timestamps_anywhere_in_a_batch_stay_aligned_with_the_audio(position: str) -> None:
    readings = Ws3Readings(timestamps=position)  # type: ignore[arg-type]
    async with open_emulator(EmulatorConfig(readings=readings)) as emulator:
        async with retrying_client(emulator) as client:
            audio, words, _ = await run_stream(client)
    bursts = find_bursts(audio, RATE)
    assert len(bursts) == len(words) == 10
    for word, (start, end) in zip(words, bursts, strict=True):
        assert word.start == pytest.approx(start, abs=0.005)
        assert word.end == pytest.approx(end, abs=0.005)


@pytest.mark.parametrize("sends_done", [False, True])
async def test_eos_teardown_works_whether_or_not_done_comes_first(sends_done: bool) -> None:
    config = EmulatorConfig(readings=Ws3Readings(eos_empty_done=sends_done))
    async with open_emulator(config) as emulator:
        async with retrying_client(emulator, segment="bySentence") as client:  # ends with eos
            await run_stream(client)
            assert emulator.stats.open_sockets == 1
        with anyio.fail_after(5):
            await emulator.wait_open_sockets(0)


async def test_error_event_mid_stream_is_a_server_error_and_the_socket_is_retired() -> None:
    async with open_emulator(EmulatorConfig(faults=[Fault("error_event")])) as emulator:
        async with retrying_client(emulator) as client:
            with pytest.raises(ServerError):
                await run_stream(client)
            emulator.config.faults = []
            audio, _, _ = await run_stream(client)
            await client.pool.wait_teardowns()
            assert client.pool.stats.retired == 1  # the socket of the failed stream
    assert audio == expected_audio(SENTENCES)


# ----------------------------------------------------------------------------- memory


async def test_slow_consumer_keeps_buffered_audio_under_the_limit() -> None:
    limit = 4000
    text = " ".join(f"Sentence {n} goes on for a while." for n in range(20))
    config = EmulatorConfig(chunk_bytes=700)
    settings = StreamSettings(max_buffered_audio_bytes=limit, audio_timeout=30)
    async with open_emulator(config) as emulator:
        async with client_for(emulator, stream_settings=settings) as client:
            audio = bytearray()
            async with client.stream() as stream:
                await stream.push_text(text)
                await stream.end_input()
                with anyio.fail_after(60):
                    async for event in stream:
                        if isinstance(event, AudioChunk):
                            audio += event.data
                            assert stream.buffered_audio_bytes <= limit + 700
                            await anyio.sleep(0.002)  # a consumer slower than the server
    assert stream.peak_buffered_audio_bytes <= limit + 700
    assert stream.peak_buffered_audio_bytes >= limit  # the bound was actually reached
    assert len(audio) > 20 * limit
    assert bytes(audio) == emulator.stats.audio_for(wire_prefix(stream))


# ----------------------------------------------------------------------------- interruption


@stall_clock
async def test_clear_mid_stream_drops_old_audio_and_keeps_timestamps_aligned() -> None:
    # Real-time pacing, so audio of the first sentence is still in flight at the clear.
    config = EmulatorConfig(real_time_factor=1.0, chunk_bytes=400)
    async with open_emulator(config) as emulator:
        async with client_for(emulator, stream_settings=StreamSettings(audio_timeout=5)) as client:
            before = bytearray()
            after = bytearray()
            after_words: list[WordTimestamp] = []
            async with client.stream() as stream:
                await stream.push_text("This first sentence will be interrupted soon enough. ")
                with anyio.fail_after(30):
                    while len(before) < 2000:
                        event = await stream.receive()
                        if isinstance(event, AudioChunk):
                            before += event.data
                await stream.clear()
                cleared_at = stream.audio_seconds
                await stream.push_text("After the interruption.")
                await stream.end_input()
                with anyio.fail_after(30):
                    async for event in stream:
                        if isinstance(event, AudioChunk):
                            after += event.data
                        else:
                            after_words.append(event)
    fresh = render_speech("After the interruption.", RATE)
    assert bytes(after) == fresh.pcm  # nothing from before the clear, nothing lost after
    assert [w.word for w in after_words] == ["After", "the", "interruption"]
    for word, start in zip(after_words, fresh.starts, strict=True):
        assert word.start == pytest.approx(cleared_at + start)
    assert cleared_at == pytest.approx(len(before) / 2 / RATE)


# ----------------------------------------------------------------------------- cancellation


async def test_random_cancellation_in_1000_streams_leaks_no_socket_and_no_task() -> None:
    rng = random.Random(20261125)
    pool_size = 4
    async with open_emulator(EmulatorConfig(chunk_bytes=600)) as emulator:
        async with retrying_client(emulator, max_pool_size=pool_size) as client:

            async def one(points: int) -> None:
                with anyio.CancelScope() as scope:
                    async with client.stream() as stream:
                        await stream.push_text("Cancel me at some point. ")
                        for n in range(40):
                            if n == points:
                                scope.cancel()
                            if n % 3 == 0:
                                await anyio.lowlevel.checkpoint()
                            else:
                                with anyio.move_on_after(1):
                                    await stream.receive()
                        await stream.end_input()
                        async for _ in stream:
                            pass

            for _ in range(250):
                async with anyio.create_task_group() as task_group:
                    for _ in range(4):
                        task_group.start_soon(one, rng.randrange(0, 45))
            with anyio.fail_after(10):
                await client.pool.wait_teardowns()
                await emulator.wait_open_sockets(client.pool.idle)
            assert emulator.stats.open_sockets <= client.pool.idle <= pool_size
            # sockets have no tasks; with the pool's background work done, nothing is left
            assert client_tasks() == []
        with anyio.fail_after(10):
            await emulator.wait_open_sockets(0)
    assert emulator.stats.handshakes >= 1


# ----------------------------------------------------------------------------- clean errors


async def test_every_fault_ends_in_a_rime_error_never_anything_else(
    faulty: RimeEmulator,
) -> None:
    faults: list[tuple[Fault, type[RimeError], str]] = [
        (Fault("drop", after_chunks=1), ConnectionLost, "code 1006"),
        (Fault("close", code=1011, reason="500: boom", after_messages=1), APIStatusError, "boom"),
        (Fault("close", code=1000, after_messages=1), ConnectionLost, "(code 1000)"),
        (Fault("error_event", body="no such voice"), ServerError, "no such voice"),
        (Fault("reject", status=401, body="bad key"), APIStatusError, "bad key"),
    ]
    for fault, kind, cause in faults:
        faulty.config.faults = [fault]
        async with client_for(faulty, stream_settings=StreamSettings(retries=0)) as client:
            with pytest.raises(RimeError) as info:
                await run_stream(client)
        # exactly one error of the documented kind, whose message names the cause
        assert type(info.value) is kind, fault
        assert cause in str(info.value)


@stall_clock
async def test_server_stalled_after_eos_still_sees_the_client_leave(
    virtual_clock: trio.testing.MockClock | None,
) -> None:
    """The client's teardown gives up on a stalled server after teardown_timeout and closes
    TCP; the server side must see the socket go (found by the soak run)."""
    fault = Fault("stall", seconds=3600, after_chunks=1)
    settings = StreamSettings(audio_timeout=bound(virtual_clock, 5))
    async with open_emulator(EmulatorConfig(faults=[fault], chunk_bytes=500)) as emulator:
        async with client_for(emulator, stream_settings=settings) as client:
            with pytest.raises(RimeTimeoutError):
                await run_stream(client)
            await client.pool.wait_teardowns()
        with anyio.fail_after(30):
            await emulator.wait_open_sockets(0)
