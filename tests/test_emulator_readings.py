"""Each reading of Rime's open /ws3 points, checked on a real socket with a raw client."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

import pytest
import trio

from rime_trio.testing import (
    EmulatorConfig,
    RimeEmulator,
    Ws3Readings,
    open_emulator,
    render_speech,
)

from .raw_ws3 import (
    CLEAR,
    EOS,
    FLUSH,
    QUERY,
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

NEVER = QUERY + "&segment=never"


def emulator_with(**readings: object) -> AbstractAsyncContextManager[RimeEmulator]:
    return open_emulator(EmulatorConfig(readings=Ws3Readings(**readings)))  # type: ignore[arg-type]


async def test_done_reading_is_read_afresh_by_each_connection(rime_emulator: RimeEmulator) -> None:
    rime_emulator.config.readings = Ws3Readings(run_sentences="first")
    async with raw_socket(rime_emulator) as ws:
        await send(ws, "One. Two. ")  # the first run leaves " Two. " buffered
        when_empty = await read_until_done(ws)
    rime_emulator.config.readings = Ws3Readings(run_sentences="first", done="per_run")
    async with raw_socket(rime_emulator) as ws:
        await send(ws, "One. Two. ")
        per_run = await read_until_done(ws, count=2)
    assert kinds(when_empty) == ["chunk", "timestamps", "chunk", "timestamps", "chunk", "done"]
    assert kinds(per_run) == ["chunk", "timestamps", "chunk", "done"] * 2
    assert [r.done for r in rime_emulator.stats.runs[1]] == [False, True]
    assert [r.done for r in rime_emulator.stats.runs[2]] == [True, True]


@pytest.mark.parametrize(
    ("run_sentences", "texts"), [("all", ["One. Two."]), ("first", ["One.", " Two."])]
)
async def test_run_sentences(run_sentences: str, texts: list[str]) -> None:
    async with emulator_with(run_sentences=run_sentences) as emulator:
        async with raw_socket(emulator) as ws:
            await send(ws, "One. Two. ")
            await read_until_done(ws)  # after the last run: only then is the buffer empty
    assert [r.text for r in emulator.stats.runs[1]] == texts


@pytest.mark.parametrize(("tagging", "tags"), [("later", ["b"]), ("per_sentence", ["a", "b"])])
async def test_tagging(tagging: str, tags: list[str]) -> None:
    async with emulator_with(tagging=tagging) as emulator:
        async with raw_socket(emulator, NEVER) as ws:
            await send(ws, text("A one. ", "a"), text("B two.", "b"), EOS)
            messages, _ = await read_until_close(ws)
    chunk_tags = [m["contextId"] for m in messages if m["type"] == "chunk"]
    assert list(dict.fromkeys(chunk_tags)) == tags
    assert [r.context_id for r in emulator.stats.runs[1]] == tags
    assert audio_of(messages) == emulator.stats.connection_audio(1)


@pytest.mark.parametrize(
    ("placement", "order"),
    [
        ("before", ["timestamps", "chunk", "done"]),
        ("between", ["chunk", "timestamps", "chunk", "done"]),
        ("after", ["chunk", "timestamps", "done"]),
    ],
)
async def test_timestamps_placement(placement: str, order: list[str]) -> None:
    async with emulator_with(timestamps=placement) as emulator:
        emulator.config.chunk_bytes = 1000
        async with raw_socket(emulator) as ws:
            await send(ws, "Several words to speak here. ")
            messages = await read_until_done(ws)
    assert kinds(messages) == order


async def test_lowercase_splits_false_waits_for_the_next_letter() -> None:
    async with emulator_with(lowercase_splits=False) as emulator:
        async with raw_socket(emulator) as ws:
            await send(ws, "Hi. ", "there. ")
            assert await read_for(ws, 0.2) == []
            await send(ws, "Bye", EOS)
            await read_until_close(ws)
    assert [r.text for r in emulator.stats.runs[1]] == ["Hi. there.", " Bye"]


async def test_abbreviations_split_false_keeps_dr_with_its_name() -> None:
    async with emulator_with(abbreviations_split=False) as emulator:
        async with raw_socket(emulator) as ws:
            await send(ws, "Ask Dr. ")
            assert await read_for(ws, 0.2) == []
            await send(ws, "Who. ")
            await read_until_done(ws)
    assert emulator.stats.texts[None] == ["Ask Dr. Who."]


async def test_hold_unspaced_end_until_a_flush() -> None:
    async with emulator_with(hold_unspaced_end=True) as emulator:
        async with raw_socket(emulator) as ws:
            await send(ws, "The end.")
            assert await read_for(ws, 0.2) == []
            await send(ws, FLUSH)
            messages = await read_until_done(ws)
    assert audio_of(messages) == render_speech("The end.", RATE).pcm


@pytest.mark.parametrize("empty_done", [False, True])
async def test_flush_on_an_empty_buffer(empty_done: bool) -> None:
    async with emulator_with(flush_empty_done=empty_done) as emulator:
        async with raw_socket(emulator, NEVER) as ws:
            await send(ws, text("", "e"), FLUSH)
            messages = await read_for(ws, 0.2)
    assert messages == ([{"type": "done", "contextId": "e"}] if empty_done else [])


@pytest.mark.parametrize("empty_done", [False, True])
async def test_eos_on_an_empty_buffer(empty_done: bool) -> None:
    async with emulator_with(eos_empty_done=empty_done) as emulator:
        async with raw_socket(emulator) as ws:
            await send(ws, EOS)
            messages, closed = await read_until_close(ws)
    assert kinds(messages) == (["done"] if empty_done else [])
    assert closed.reason is not None
    assert closed.reason.code == 1000


@pytest.mark.parametrize("stops", [False, True])
async def test_clear_during_a_run(stops: bool) -> None:
    sentence = "One two three four five six seven eight."
    full = render_speech(sentence, RATE).pcm
    config = EmulatorConfig(
        readings=Ws3Readings(clear_stops_synthesis=stops), real_time_factor=0.5, chunk_bytes=800
    )
    async with open_emulator(config) as emulator:
        async with raw_socket(emulator, NEVER) as ws:
            await send(ws, text(sentence, "old"), FLUSH)
            await read_audio(ws, 1)
            await send(ws, CLEAR, text("New.", "new"), FLUSH)
            with trio.fail_after(10):
                messages = await read_until_done(ws, 1 if stops else 2)
    old, new = emulator.stats.runs[1]
    # Current docs: the running run still finishes, with its done, after the clear.
    assert (old.abandoned, old.done) == (stops, not stops)
    assert (len(old.audio) < len(full)) if stops else (bytes(old.audio) == full)
    assert (new.text, new.context_id, new.done) == ("New.", "new", True)
    assert messages[-1] == {"type": "done", "contextId": "new"}
    assert ({"type": "done", "contextId": "old"} in messages) is not stops
