"""HTTP synthesis end to end against the emulator, over real sockets."""

from __future__ import annotations

import socket

import anyio
import httpx
import pytest

from rime_trio import (
    APIStatusError,
    ConfigurationError,
    ConnectError,
    EmptyTextError,
    RimeClient,
    RimeTimeoutError,
    StreamClosed,
)
from rime_trio.testing import EmulatorConfig, RimeEmulator, open_emulator, render_speech

from .conftest import API_KEY, BACKENDS

TEXT = "Hello there. This is a test of HTTP synthesis."

pytestmark = pytest.mark.anyio


async def test_synthesize_returns_the_emulators_audio(rime_emulator: RimeEmulator) -> None:
    async with RimeClient(
        base_url=rime_emulator.http_url, api_key=API_KEY, sample_rate=16000
    ) as client:
        result = await client.synthesize(TEXT)
    expected = render_speech(TEXT, 16000)
    assert result.audio == expected.pcm
    assert (result.audio_format, result.sample_rate) == ("pcm", 16000)
    assert result.duration == pytest.approx(expected.duration)


async def test_synthesize_overrides_apply_to_one_call(rime_emulator: RimeEmulator) -> None:
    async with RimeClient(base_url=rime_emulator.http_url, api_key=API_KEY) as client:
        result = await client.synthesize("Hi.", sample_rate=8000, audio_format="mulaw")
        assert client.options.sample_rate == 24000
    assert result.audio_format == "mulaw"
    assert len(result.audio) == len(render_speech("Hi.", 8000).pcm) // 2
    assert result.duration == pytest.approx(render_speech("Hi.", 8000).duration)


async def test_wav_format_keeps_the_header_and_counts_only_audio(
    rime_emulator: RimeEmulator,
) -> None:
    async with RimeClient(
        base_url=rime_emulator.http_url, api_key=API_KEY, audio_format="wav"
    ) as client:
        result = await client.synthesize("Hi.")
    assert result.audio[:4] == b"RIFF"
    assert result.duration == pytest.approx(render_speech("Hi.", 24000).duration)


async def test_chunks_arrive_incrementally_with_offsets() -> None:
    # Paced (a twentieth of real time), so that the chunks leave the server apart in time:
    # unpaced, hypercorn's asyncio worker writes them all at once, and they arrive together.
    config = EmulatorConfig(chunk_bytes=2000, real_time_factor=0.05)
    async with (
        open_emulator(config) as emulator,
        RimeClient(base_url=emulator.http_url, api_key=API_KEY, sample_rate=8000) as client,
        client.synthesize_chunks(TEXT) as chunks,
    ):
        received = [chunk async for chunk in chunks]
    assert len(received) > 3
    assert b"".join(c.data for c in received) == render_speech(TEXT, 8000).pcm
    position = 0.0
    for chunk in received:
        assert chunk.offset == pytest.approx(position)
        position += chunk.duration


@pytest.mark.parametrize(
    ("kwargs", "status", "fragment"),
    [
        ({"api_key": "wrong-key"}, 401, "Unauthorized"),
        (
            {"speaker": "luna", "lang": "es", "model": "mistv2", "no_text_normalization": True},
            None,
            None,
        ),
        ({"speaker": "x", "model": "mistv2"}, 400, "'x' is not a voice of model 'mistv2'"),
    ],
)
async def test_status_errors_keep_code_and_body(
    rime_emulator: RimeEmulator, kwargs: dict[str, object], status: int | None, fragment: str | None
) -> None:
    kwargs = {"api_key": API_KEY, **kwargs}
    async with RimeClient(base_url=rime_emulator.http_url, **kwargs) as client:
        if status is None:
            assert (await client.synthesize("Works.")).audio
            return
        with pytest.raises(APIStatusError) as info:
            await client.synthesize("Hello.")
    assert info.value.status_code == status
    assert fragment is not None
    assert fragment in info.value.message
    assert "wrong-key" not in str(info.value)


async def test_text_over_the_per_request_limit_is_spoken_not_refused(
    rime_emulator: RimeEmulator,
) -> None:
    # One request takes 1,000 characters (the emulator refuses more with a 400, as Rime
    # does); the client cuts longer text (tests/test_http_long_text.py has the details).
    async with RimeClient(base_url=rime_emulator.http_url, api_key=API_KEY) as client:
        result = await client.synthesize("word " * 210)
    assert result.audio
    assert all(len(text) <= 1000 for text in rime_emulator.stats.texts[None])


async def test_empty_text_fails_at_once_without_a_request(rime_emulator: RimeEmulator) -> None:
    async with RimeClient(base_url=rime_emulator.http_url, api_key=API_KEY) as client:
        for text in ("", "   \n\t"):
            with pytest.raises(EmptyTextError):
                await client.synthesize(text)
    assert rime_emulator.stats.http_requests == 0


async def test_connection_refused_is_a_connect_error() -> None:
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with RimeClient(base_url=f"http://127.0.0.1:{port}", api_key=API_KEY) as client:
        with pytest.raises(ConnectError):
            await client.synthesize("Hello.")


async def test_slow_server_is_a_timeout_error() -> None:
    async with open_emulator(EmulatorConfig(time_to_first_chunk=5.0)) as emulator:
        async with RimeClient(base_url=emulator.http_url, api_key=API_KEY, timeout=0.2) as client:
            with pytest.raises(RimeTimeoutError):
                await client.synthesize("Hello.")


async def test_injected_http_client_is_used_and_not_closed(rime_emulator: RimeEmulator) -> None:
    seen: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        seen.append(request)

    async with httpx.AsyncClient(event_hooks={"request": [record]}) as shared:
        async with RimeClient(
            base_url=rime_emulator.http_url, api_key=API_KEY, http_client=shared
        ) as client:
            await client.synthesize("Hello.")
        assert not shared.is_closed
        assert len(seen) == 1
        assert seen[0].headers["authorization"] == f"Bearer {API_KEY}"
        # The RFC name Rime's docs use now (api-reference/coda/http.mdx)
        assert seen[0].headers["accept"] == "audio/L16"


async def test_client_must_be_entered_and_not_reused_after_close(
    rime_emulator: RimeEmulator,
) -> None:
    client = RimeClient(base_url=rime_emulator.http_url, api_key=API_KEY)
    with pytest.raises(StreamClosed, match="async with"):
        await client.synthesize("Hi.")
    async with client:
        pass
    await client.aclose()  # idempotent
    with pytest.raises(StreamClosed):
        await client.synthesize("Hi.")
    with pytest.raises(StreamClosed):
        async with client:
            pass


async def test_invalid_override_is_configuration_error(rime_emulator: RimeEmulator) -> None:
    async with RimeClient(base_url=rime_emulator.http_url, api_key=API_KEY) as client:
        with pytest.raises(ConfigurationError):
            await client.synthesize("Hi.", model="nope")


def test_repr_hides_the_key() -> None:
    client = RimeClient(api_key="sk-very-secret")
    assert "sk-very-secret" not in repr(client)
    assert "http" in repr(client)


def test_capabilities_in_http_mode() -> None:
    caps = RimeClient(api_key="k").capabilities
    assert not caps.streaming
    assert not caps.aligned_transcript


@pytest.mark.parametrize("backend", BACKENDS)
def test_works_under_anyio_run(backend: str) -> None:
    async def main() -> bytes:
        async with open_emulator() as emulator:
            async with RimeClient(base_url=emulator.http_url, api_key=API_KEY) as client:
                return (await client.synthesize("From anyio.")).audio

    assert anyio.run(main, backend=backend) == render_speech("From anyio.", 24000).pcm


async def test_stopping_early_leaves_no_generator_of_ours_behind() -> None:
    import gc

    async with open_emulator(EmulatorConfig(chunk_bytes=100)) as emulator:
        async with RimeClient(base_url=emulator.http_url, api_key=API_KEY) as client:
            for _ in range(3):
                async with client.synthesize_chunks("A long enough text to stop early.") as chunks:
                    async for _chunk in chunks:
                        break
            gc.collect()  # under filterwarnings=error an unclosed rime_trio generator fails here
            result = await client.synthesize("The client still works.")
    assert result.audio
