"""v1 links failing while text keeps coming (issue 22, defect 4): what reaches the caller is
the link's own failure, never an internal error beside it. Over the in-memory server."""

from __future__ import annotations

import anyio
import pytest

from rime_trio import APIStatusError, AudioChunk, SpeechStream, StreamSettings
from rime_trio._stream import open_stream
from rime_trio.testing import EmulatorConfig, Fault, open_emulator, render_speech

from .memory_server import Faults, MemoryServer, open_pool
from .speech import RATE, client_for
from .test_in_memory import V1, new_stream

pytestmark = pytest.mark.anyio

RETRIES = StreamSettings(retries=2, retry_backoff=0.0, audio_timeout=1.0)


def busy() -> APIStatusError:
    return APIStatusError(429, "Currently at websocket limit")


async def keep_talking(stream: SpeechStream) -> None:
    for n in range(200):
        await stream.push_text(f"Sentence number {n} is here. ")
        await anyio.lowlevel.checkpoint()


@pytest.mark.parametrize("drop_after", [1, 2, 3])
async def test_a_lost_socket_whose_replacements_are_refused_fails_with_the_refusal_alone(
    drop_after: int,
) -> None:
    # Found in review: the send task, waiting for the link while the recv task replaced the
    # socket, found no socket once the replacement failed, and its AssertionError rode on
    # the 429 as a note ("while handling it, 1 more error(s) occurred").
    async with MemoryServer() as server, open_pool(server) as pool:
        server.faults[1] = Faults(drop_after_messages=drop_after)
        for n in range(2, 6):
            server.faults[n] = Faults(refuse=busy())
        stream = new_stream(pool, V1, RETRIES)
        with anyio.fail_after(5), pytest.raises(APIStatusError) as caught:
            async with open_stream(stream):
                await keep_talking(stream)
                await stream.end_input()
                async for _ in stream:
                    pass
    error = caught.value
    assert error.status_code == 429
    assert getattr(error, "__notes__", []) == []  # nothing else went wrong beside it
    assert stream.retries == 2
    assert stream.metrics.outcome == "failed"


@pytest.mark.parametrize("segment", ["never", "bySentence", "immediate"])
@pytest.mark.parametrize("speed", [10, 40])
async def test_a_reader_faster_than_real_time_never_falls_behind_on_a_long_pushed_text(
    speed: int, segment: str
) -> None:
    """Issue 22, defect 1: text pushed at once went out before any audio came back, and the
    audio the stream itself had asked for then tripped SlowReaderError on a reader far
    faster than real time. Text is now held back by the audio it will cause, message by
    message: also when a flush or the end lets much of it go at once (a review found
    ``never`` sending everything in one write)."""
    sentences = [f"Sentence number {n} is said here, at some length. " for n in range(12)]
    settings = StreamSettings(max_buffered_audio_bytes=16_000, audio_timeout=5.0)
    config = EmulatorConfig(time_to_first_chunk=0.005, chunk_bytes=1600)
    async with (
        open_emulator(config) as emulator,
        client_for(emulator, "v1", stream_settings=settings, segment=segment) as client,
    ):
        async with client.stream() as stream:
            for sentence in sentences:
                await stream.push_text(sentence)
            await stream.end_input()
            audio = bytearray()
            with anyio.fail_after(60):
                async for event in stream:
                    if isinstance(event, AudioChunk):
                        audio += event.data
                        await anyio.sleep(event.duration / speed)  # a player, sped up
    assert bytes(audio) == b"".join(render_speech(s.strip(), RATE).pcm for s in sentences)
    # Memory stayed bounded by the limit (give or take what one write of text asked for).
    assert stream.peak_buffered_audio_bytes < 8 * 16_000


async def test_a_replay_says_every_flushed_context_again_at_once() -> None:
    """Review of issue 22: the socket went away after two flushed contexts, before any
    audio; the replay said only the first again, and the second waited for the caller's
    next write (a caller waiting for its audio hung)."""
    fault = Fault("close", frozenset({1}), code=1001, reason="going away", after_messages=6)
    config = EmulatorConfig(time_to_first_chunk=0.5, faults=[fault])
    settings = StreamSettings(retries=2, retry_backoff=0.01, audio_timeout=3.0)
    want = b"".join(render_speech(s, RATE).pcm for s in ("One.", "Two."))
    async with (
        open_emulator(config) as emulator,
        client_for(emulator, "v1", stream_settings=settings, segment="bySentence") as client,
        client.stream() as stream,
    ):
        await stream.push_text("One. ")
        await stream.flush()
        await stream.push_text("Two. ")
        await stream.flush()
        audio = bytearray()
        with anyio.fail_after(10):  # before: "Two." never came
            while len(audio) < len(want):
                event = await stream.receive()
                if isinstance(event, AudioChunk):
                    audio += event.data
        await stream.end_input()
        with anyio.fail_after(10):
            async for event in stream:
                if isinstance(event, AudioChunk):
                    audio += event.data
        assert stream.retries == 1
    assert bytes(audio) == want
