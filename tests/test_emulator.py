"""The emulator checked with raw clients (trio-websocket, httpx), independent of rime-trio's."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected

from rime_trio.testing import (
    EmulatorConfig,
    RimeEmulator,
    find_bursts,
    open_emulator,
    render_speech,
)

from .raw_ws3 import (
    EOS,
    FLUSH,
    KEY,
    QUERY,
    audio_of,
    raw_socket,
    read_audio,
    read_for,
    read_until_close,
    read_until_done,
    send,
    text,
)


async def test_handshake_with_wrong_key_is_refused_with_401_plain_text(
    rime_emulator: RimeEmulator,
) -> None:
    with pytest.raises(ConnectionRejected) as info:
        async with raw_socket(rime_emulator, headers=[(b"authorization", b"Bearer nope")]):
            pass
    assert info.value.status_code == 401
    assert b"Unauthorized" in (info.value.body or b"")
    assert rime_emulator.stats.rejected == 1


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("modelId=nope", b"unknown model"),
        ("samplingRate=-1", b"sample_rate"),
        ("audioFormat=mp3", b"emulator streams"),
        ("frobnicate=1", b"unknown parameter"),
    ],
)
async def test_bad_query_parameters_are_refused_with_400(
    rime_emulator: RimeEmulator, query: str, fragment: bytes
) -> None:
    with pytest.raises(ConnectionRejected) as info:
        async with raw_socket(rime_emulator, query=query):
            pass
    assert info.value.status_code == 400
    assert fragment in (info.value.body or b"")


async def test_by_sentence_synthesizes_at_sentence_ends_with_context_echo(
    rime_emulator: RimeEmulator,
) -> None:
    first = render_speech("Hello there.", 8000).pcm
    async with raw_socket(rime_emulator) as ws:
        await send(ws, text("Hello there", "a"), text(". How are", "b"))
        messages = await read_audio(ws, len(first))
        messages += await read_for(ws, 0.2)
        # " How are" is still buffered: by the current docs no done follows the first run.
        assert [m["type"] for m in messages if m["type"] != "chunk"] == ["timestamps"]
        await send(ws, FLUSH)
        messages += await read_until_done(ws)
    assert {m["contextId"] for m in messages} == {"b"}
    assert rime_emulator.stats.texts["b"] == ["Hello there.", " How are"]
    runs = rime_emulator.stats.runs[1]
    assert [(r.text, r.context_id, r.done) for r in runs] == [
        ("Hello there.", "b", False),
        (" How are", "b", True),
    ]
    assert audio_of(messages) == rime_emulator.stats.connection_audio(1)
    assert bytes(runs[0].audio) == first
    assert bytes(runs[1].audio) == render_speech(" How are", 8000).pcm


async def test_immediate_synthesizes_each_message(rime_emulator: RimeEmulator) -> None:
    async with raw_socket(rime_emulator, QUERY + "&segment=immediate") as ws:
        await send(ws, text("no stop here", "x"))
        messages = await read_until_done(ws)
    assert audio_of(messages) == render_speech("no stop here", 8000).pcm


async def test_never_waits_for_flush(rime_emulator: RimeEmulator) -> None:
    async with raw_socket(rime_emulator, QUERY + "&segment=never") as ws:
        await send(ws, text("One. Two. ", "x"))
        with trio.move_on_after(0.2) as waited:
            await ws.get_message()
        assert waited.cancelled_caught
        await send(ws, FLUSH)
        messages = await read_until_done(ws)
    assert sum(m["type"] == "done" for m in messages) == 1
    assert rime_emulator.stats.texts["x"] == ["One. Two. "]


async def test_timestamps_restart_at_zero_per_run_and_match_bursts(
    rime_emulator: RimeEmulator,
) -> None:
    async with raw_socket(rime_emulator) as ws:
        await send(ws, text("First words here. ", "1"), text("Second batch. ", "2"), EOS)
        messages, _ = await read_until_close(ws)
    stamps = [m["word_timestamps"] for m in messages if m["type"] == "timestamps"]
    assert [s["words"] for s in stamps] == [["First", "words", "here"], ["Second", "batch"]]  # type: ignore[index]
    assert [s["start"][0] for s in stamps] == [pytest.approx(0.04)] * 2  # type: ignore[index]
    second_audio = audio_of([m for m in messages if m.get("contextId") == "2"])
    bursts = find_bursts(second_audio, 8000)
    assert [b[0] for b in bursts] == pytest.approx(stamps[1]["start"], abs=0.005)  # type: ignore[index]


async def test_too_long_text_closes_with_1011(rime_emulator: RimeEmulator) -> None:
    async with raw_socket(rime_emulator) as ws:
        await send(ws, "x" * 1001)
        with pytest.raises(ConnectionClosed) as info, trio.fail_after(5):
            await ws.get_message()
    assert info.value.reason is not None
    assert info.value.reason.code == 1011
    assert info.value.reason.reason == "400: text is too long"


async def test_eos_flushes_then_closes(rime_emulator: RimeEmulator) -> None:
    async with raw_socket(rime_emulator) as ws:
        await send(ws, text("Tail without stop", "t"), EOS)
        messages, closed = await read_until_close(ws)
    assert [m["type"] for m in messages][-1] == "done"
    assert audio_of(messages) == render_speech("Tail without stop", 8000).pcm
    assert closed.reason is not None
    assert closed.reason.code == 1000


async def test_clear_drops_buffered_text(rime_emulator: RimeEmulator) -> None:
    async with raw_socket(rime_emulator, QUERY + "&segment=never") as ws:
        await send(ws, text("Dropped words. ", "old"), {"operation": "clear"})
        await send(ws, text("Kept. ", "new"), FLUSH)
        messages = await read_until_done(ws)
    assert {m["contextId"] for m in messages} == {"new"}
    assert "old" not in rime_emulator.stats.texts


async def test_malformed_client_frame_gets_an_error_event_and_socket_stays_open(
    rime_emulator: RimeEmulator,
) -> None:
    async with raw_socket(rime_emulator, QUERY + "&segment=immediate") as ws:
        await ws.send_message("{not json")
        error = json.loads(await ws.get_message())
        assert error["type"] == "error"
        await send(ws, text("Still here.", "s"))
        assert await read_until_done(ws)


async def test_open_socket_count(rime_emulator: RimeEmulator) -> None:
    async with raw_socket(rime_emulator), raw_socket(rime_emulator):
        assert rime_emulator.stats.open_sockets == 2
    with trio.fail_after(5):
        await rime_emulator.wait_open_sockets(0)
    assert rime_emulator.stats.handshakes == 2


async def test_chunk_size_setting() -> None:
    async with open_emulator(EmulatorConfig(chunk_bytes=1000)) as emulator:
        async with raw_socket(emulator) as ws:
            await send(ws, "Chunk me up please. ")
            messages = await read_until_done(ws)
    sizes = [len(audio_of([m])) for m in messages if m["type"] == "chunk"]
    assert sizes[:-1] == [1000] * (len(sizes) - 1)
    assert 0 < sizes[-1] <= 1000


# ----------------------------------------------------------------------------- HTTP


async def post(
    emulator: RimeEmulator, body: object, accept: str = "audio/pcm", key: str = KEY
) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(
            f"{emulator.http_url}/v1/rime-tts",
            json=body,
            headers={"Authorization": f"Bearer {key}", "Accept": accept},
        )


BODY = {"text": "Hello world.", "speaker": "astra", "modelId": "mistv2", "samplingRate": 16000}


async def test_http_synthesizes_each_format(rime_emulator: RimeEmulator) -> None:
    pcm = render_speech("Hello world.", 16000).pcm
    response = await post(rime_emulator, BODY)
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/pcm"
    assert response.content == pcm
    wav = await post(rime_emulator, BODY, accept="audio/wav")
    assert wav.content[:4] == b"RIFF"
    assert wav.content[44:] == pcm
    mulaw = await post(rime_emulator, BODY, accept="audio/x-mulaw")
    assert len(mulaw.content) == len(pcm) // 2


async def test_http_accepts_http_only_fields(rime_emulator: RimeEmulator) -> None:
    response = await post(rime_emulator, {**BODY, "reduceLatency": True})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({**BODY, "text": ""}, 400, "text"),
        ({**BODY, "text": "x" * 1001}, 400, "too long"),
        ({**BODY, "modelId": "nope"}, 400, "unknown model"),
        ({**BODY, "segment": "never"}, 400, "unknown parameter"),
        ([1, 2], 400, "JSON object"),
    ],
)
async def test_http_validation_errors_are_400_plain_text(
    rime_emulator: RimeEmulator, body: object, status: int, fragment: str
) -> None:
    response = await post(rime_emulator, body)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/plain")
    assert fragment in response.text


async def test_http_wrong_key_is_401(rime_emulator: RimeEmulator) -> None:
    response = await post(rime_emulator, BODY, key="wrong")
    assert response.status_code == 401
    assert "Unauthorized" in response.text


async def test_http_unsupported_accept_is_400(rime_emulator: RimeEmulator) -> None:
    response = await post(rime_emulator, BODY, accept="audio/mp3")
    assert response.status_code == 400
