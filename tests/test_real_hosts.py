"""A client configured for Rime itself (no base_url, the key from RIME_API_KEY), run against
a stand-in for Rime's real hosts: the emulator behind TLS with a certificate for
users-ws.rime.ai, TCP connections to that name sent to it (issue 12: the README's
"leave base_url out and set RIME_API_KEY" must work as written)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme

import rime_trio
from rime_trio import AudioChunk, RimeClient
from rime_trio.testing import EmulatorConfig, RimeEmulator, open_emulator, render_speech

pytestmark = pytest.mark.anyio

RIME_HOSTS = ("users.rime.ai", "users-ws.rime.ai")
KEY = "a-real-looking-key-0123456789"


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def context(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    authority.configure_trust(context)
    return context


@pytest.fixture
async def rime_stand_in(
    authority: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[RimeEmulator, list[tuple[str, int]]]]:
    cert = authority.issue_cert(*RIME_HOSTS)
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    dialled: list[tuple[str, int]] = []
    async with open_emulator(
        EmulatorConfig(api_key=KEY), certfile=str(certfile), keyfile=str(keyfile)
    ) as emulator:
        port = int(emulator.ws_url.rsplit(":", 1)[1])
        connect_tcp = anyio.connect_tcp

        async def to_stand_in(host: str, remote_port: int, **kwargs: Any) -> Any:
            dialled.append((host, remote_port))
            if host in RIME_HOSTS:
                return await connect_tcp("127.0.0.1", port, **kwargs)
            return await connect_tcp(host, remote_port, **kwargs)

        monkeypatch.setattr(anyio, "connect_tcp", to_stand_in)
        monkeypatch.setenv("RIME_API_KEY", KEY)
        yield emulator, dialled


async def test_no_base_url_streams_from_rimes_streaming_host(
    rime_stand_in: tuple[RimeEmulator, list[tuple[str, int]]], context: ssl.SSLContext
) -> None:
    emulator, dialled = rime_stand_in
    # The README's streaming example with base_url left out and the key in RIME_API_KEY.
    async with RimeClient(ssl_context=context) as client:
        assert client.options.endpoint == "https://users.rime.ai/v1/rime-tts"
        await client.prewarm()
        audio = bytearray()
        async with client.stream() as stream:
            for token in ["Hello", " there", ".", " How", " are", " you", "?"]:
                await stream.push_text(token)
            await stream.end_input()
            async for event in stream:
                if isinstance(event, AudioChunk):
                    audio += event.data
        assert stream.options.endpoint == "wss://users-ws.rime.ai/ws3"
    assert dialled[0] == ("users-ws.rime.ai", 443)
    assert {host for host, _ in dialled} == {"users-ws.rime.ai"}
    rate = rime_trio.RimeOptions(api_key=KEY).sample_rate
    expected = render_speech("Hello there. ", rate).pcm + render_speech("How are you?", rate).pcm
    assert bytes(audio) == expected
    assert emulator.stats.handshakes >= 1


async def test_the_real_hosts_certificate_is_checked(
    rime_stand_in: tuple[RimeEmulator, list[tuple[str, int]]],
) -> None:
    # Without trusting the stand-in's CA, the TLS handshake fails, as it must.
    async with RimeClient() as client:
        with pytest.raises(rime_trio.ConnectError, match="certificate"):
            await client.prewarm()
