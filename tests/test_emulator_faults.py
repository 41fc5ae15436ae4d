"""Each emulator fault mode, checked on a real socket with a raw client."""

from __future__ import annotations

import base64

import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected

from rime_trio.testing import EmulatorConfig, Fault, open_emulator, render_speech

from .raw_ws3 import (
    RATE,
    audio_of,
    kinds,
    raw_socket,
    read_audio,
    read_for,
    read_until_close,
    read_until_done,
    send,
    text,
)

SENTENCE = "A sentence long enough for several chunks. "
PCM = render_speech(SENTENCE.rstrip(), RATE).pcm


def faulty(*faults: Fault, chunk_bytes: int = 1000) -> EmulatorConfig:
    return EmulatorConfig(faults=list(faults), chunk_bytes=chunk_bytes)


async def test_reject_refuses_only_the_connections_it_names() -> None:
    fault = Fault("reject", frozenset({1}), status=503, body="overloaded")
    async with open_emulator(faulty(fault)) as emulator:
        with pytest.raises(ConnectionRejected) as info:
            async with raw_socket(emulator):
                pass
        async with raw_socket(emulator) as ws:
            await send(ws, SENTENCE)
            await read_until_done(ws)
    assert info.value.status_code == 503
    assert info.value.body == b"overloaded"
    assert (emulator.stats.rejected, emulator.stats.handshakes) == (1, 1)


@pytest.mark.parametrize("after_messages", [0, 1])
async def test_close_after_messages(after_messages: int) -> None:
    fault = Fault("close", code=1011, reason="503: busy", after_messages=after_messages)
    async with open_emulator(faulty(fault)) as emulator:
        async with raw_socket(emulator) as ws:
            if after_messages:
                await send(ws, "Not a sentence yet")
            with pytest.raises(ConnectionClosed) as info, trio.fail_after(5):
                await ws.get_message()
    assert info.value.reason is not None
    assert (info.value.reason.code, info.value.reason.reason) == (1011, "503: busy")


async def test_idle_close() -> None:
    fault = Fault("idle_close", code=1000, reason="idle", seconds=0.1)
    async with open_emulator(faulty(fault)) as emulator:
        async with raw_socket(emulator) as ws:
            with pytest.raises(ConnectionClosed) as info, trio.fail_after(5):
                await ws.get_message()
    assert info.value.reason is not None
    assert info.value.reason.reason == "idle"


async def test_drop_resets_tcp_without_a_close_frame() -> None:
    config = faulty(Fault("drop", after_chunks=2))
    async with open_emulator(config, tcp_faults=True) as emulator:
        async with raw_socket(emulator) as ws:
            await send(ws, SENTENCE)
            messages, closed = await read_until_close(ws)
    # A reset may discard chunks still in flight: at most the first two arrive.
    assert PCM[:2000].startswith(audio_of(messages))
    assert emulator.stats.connection_audio(1) == PCM[:2000]
    assert closed.reason is not None
    assert closed.reason.code == 1006  # abnormal closure: no close frame came


async def test_stall_pauses_at_a_chunk() -> None:
    async with open_emulator(faulty(Fault("stall", seconds=0.3, after_chunks=1))) as emulator:
        async with raw_socket(emulator) as ws:
            await send(ws, SENTENCE)
            await read_audio(ws, 1)
            started = trio.current_time()
            await read_audio(ws, 1)
            assert trio.current_time() - started >= 0.25
            messages = await read_until_done(ws)
    assert emulator.stats.connection_audio(1) == PCM
    assert messages[-1]["type"] == "done"


async def test_error_event_replaces_the_audio_and_the_socket_stays_open() -> None:
    fault = Fault("error_event", body="synthesis failed")
    async with open_emulator(faulty(fault)) as emulator:
        async with raw_socket(emulator) as ws:
            await send(ws, SENTENCE)
            first = await read_for(ws, 0.2)
            await send(ws, "Again. ")
            second = await read_for(ws, 0.2)
    assert first == second == [{"type": "error", "message": "synthesis failed"}]
    assert [(r.done, bytes(r.audio)) for r in emulator.stats.runs[1]] == [(False, b"")] * 2


@pytest.mark.parametrize(("kind", "dones"), [("missing_done", 0), ("extra_done", 2)])
async def test_missing_or_extra_done(kind: str, dones: int) -> None:
    async with open_emulator(faulty(Fault(kind))) as emulator:  # type: ignore[arg-type]
        async with raw_socket(emulator) as ws:
            await send(ws, SENTENCE)
            messages = await read_audio(ws, len(PCM))
            messages += await read_for(ws, 0.2)
    assert kinds(messages).count("done") == dones
    assert emulator.stats.runs[1][0].done is bool(dones)


async def test_odd_chunks_split_samples() -> None:
    async with open_emulator(faulty(Fault("odd_chunks"))) as emulator:
        async with raw_socket(emulator) as ws:
            await send(ws, SENTENCE)
            messages = await read_until_done(ws)
    sizes = [len(base64.b64decode(m["data"])) for m in messages if m["type"] == "chunk"]
    assert 1 in sizes
    assert any(size % 2 for size in sizes)
    assert audio_of(messages) == PCM


async def test_foreign_audio_comes_before_each_run() -> None:
    async with open_emulator(faulty(Fault("foreign_audio"))) as emulator:
        async with raw_socket(emulator) as ws:
            await send(ws, text(SENTENCE, "mine"))
            messages = await read_until_done(ws)
    assert messages[0]["contextId"] == "stale-1#1"
    assert {m["contextId"] for m in messages[1:]} == {"mine"}
    assert emulator.stats.connection_audio(1) == PCM  # the stale chunk is not this run's


def test_timestamps_is_a_reading_not_a_fault() -> None:
    with pytest.raises(ValueError, match="Ws3Readings"):
        Fault("timestamps")  # type: ignore[arg-type]
