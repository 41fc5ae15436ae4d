"""The emulator's voices: its list served where Rime serves Rime's (no key), and an unknown
speaker refused under each reading of when Rime refuses one (issue 12)."""

from __future__ import annotations

import httpx
import pytest

from rime_trio import APIStatusError, RimeClient, ServerError
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
