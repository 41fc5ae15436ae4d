"""The emulator's voices: its list served where Rime serves Rime's (no key), and an unknown
speaker refused under each reading of when Rime refuses one (issue 12)."""

from __future__ import annotations

import anyio
import anyio.abc
import httpx
import pytest

import rime_trio
from rime_trio import APIStatusError, ProtocolError, RimeClient, ServerError
from rime_trio._voices import VOICES_PATH, parse_voices
from rime_trio.testing import EmulatorConfig, open_emulator, render_speech

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("shape", ["v2", "legacy"])
async def test_the_voice_list_needs_no_key(shape: str) -> None:
    config = EmulatorConfig(voice_list_shape=shape)  # type: ignore[arg-type]
    async with open_emulator(config) as emulator, httpx.AsyncClient() as http:
        response = await http.get(emulator.http_url + VOICES_PATH)
    assert response.status_code == 200
    voices = parse_voices(response.json(), model="coda")
    assert "astra" in {v.speaker for v in voices}
    assert {v.language for v in voices} == ({"eng", "spa"} if shape == "v2" else {None})


async def test_http_refuses_an_unknown_speaker_naming_it() -> None:
    async with (
        open_emulator() as emulator,
        RimeClient(base_url=emulator.http_url, api_key=emulator.config.api_key) as client,
    ):
        with pytest.raises(APIStatusError) as info:
            await client.synthesize("Hello.", speaker="astro")
        assert (await client.synthesize("Hello.", speaker="luna")).audio
    assert info.value.status_code == 400
    assert "'astro' is not a voice of model 'coda'" in str(info.value)


async def test_streaming_refuses_an_unknown_speaker_at_the_handshake() -> None:
    async with (
        open_emulator(EmulatorConfig(unknown_speaker="reject")) as emulator,
        RimeClient(base_url=emulator.ws_url, api_key=emulator.config.api_key) as client,
    ):
        with pytest.raises(APIStatusError) as info:
            async with client.stream(speaker="astro") as stream:
                await stream.push_text("Hello.")
                await stream.end_input()
                async for _ in stream:
                    pass
    assert info.value.status_code == 400
    assert "astro" in str(info.value)


async def test_streaming_refuses_an_unknown_speaker_with_an_error_event() -> None:
    async with (
        open_emulator(EmulatorConfig(unknown_speaker="error_event")) as emulator,
        RimeClient(base_url=emulator.ws_url, api_key=emulator.config.api_key) as client,
    ):
        with pytest.raises(ServerError, match="'astro' is not a voice"):
            async with client.stream(speaker="astro") as stream:
                await stream.push_text("Hello.")
                await stream.end_input()
                async for _ in stream:
                    pass
        assert emulator.stats.handshakes >= 1


async def test_accept_speaks_any_name() -> None:
    async with (
        open_emulator(EmulatorConfig(unknown_speaker="accept")) as emulator,
        RimeClient(base_url=emulator.ws_url, api_key=emulator.config.api_key) as client,
    ):
        result = await client.synthesize("Hello.", speaker="anyone")
    assert result.audio == render_speech("Hello. ", 24000).pcm


async def test_the_library_reads_the_voice_list_of_its_server() -> None:
    async with open_emulator(EmulatorConfig(voice_list_shape="legacy")) as emulator:
        listed = await rime_trio.list_voices("coda", base_url=emulator.ws_url)
        async with RimeClient(base_url=emulator.ws_url, api_key=emulator.config.api_key) as c:
            assert await c.voices("coda") == listed
            assert {v.model for v in await c.voices()} == set(emulator.config.voices)
    assert [v.speaker for v in listed] == sorted(
        {s for names in emulator.config.voices["coda"].values() for s in names}
    )
    assert emulator.stats.handshakes == 0  # HTTP only, and no key was needed


@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        (b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nnot here\n", APIStatusError,
         r"the server at 127\.0\.0\.1:\d+ returned status 404: not here"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", ProtocolError, "not .*JSON"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]", ProtocolError, "keyed by model"),
    ],
)  # fmt: skip
async def test_a_server_without_a_voice_list_is_a_clear_error(
    answer: bytes, error: type[Exception], message: str
) -> None:
    async def serve(client: anyio.abc.SocketStream) -> None:
        async with client:
            await client.receive()
            await client.send(answer)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, serve)
        with pytest.raises(error, match=message):
            await rime_trio.list_voices(base_url=f"http://127.0.0.1:{port}")
        group.cancel_scope.cancel()
