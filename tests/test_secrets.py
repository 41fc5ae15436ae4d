"""The API key never shows: not in reprs, messages, logs (at DEBUG), URLs or errors."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import trustme

from rime_trio import (
    APIStatusError,
    ConnectError,
    ProtocolError,
    RimeClient,
    RimeOptions,
    ServerError,
    StreamSettings,
)
from rime_trio.testing import EmulatorConfig, Fault, RimeEmulator, open_emulator, render_speech

SECRET = "sk-live-do-not-leak-0123456789"

pytestmark = pytest.mark.anyio


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.DEBUG):  # every logger, every level
        yield caplog


async def test_key_never_appears_in_logs_reprs_or_errors(
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []
    config = EmulatorConfig(api_key=SECRET)
    async with open_emulator(config) as emulator:
        for base in (emulator.ws_url, emulator.http_url):
            async with RimeClient(base_url=base, api_key=SECRET) as client:
                seen += [repr(client), str(client), repr(client.options), str(client.options)]
                result = await client.synthesize("Hello there.")
                seen.append(repr(result))
                if client.options.streaming:
                    async with client.stream() as stream:
                        seen.append(repr(stream))
                        await stream.push_text("Logged at debug.")
                        await stream.end_input()
                        async for event in stream:
                            seen.append(repr(event))
        # failures: the server echoes the key it was given in its error text
        emulator.config.faults = [Fault("reject", status=401, body=f"bad key {SECRET}")]
        for base in (emulator.ws_url,):
            async with RimeClient(
                base_url=base, api_key=SECRET, stream_settings=StreamSettings(retries=0)
            ) as client:
                with pytest.raises(APIStatusError) as info:
                    await client.synthesize("Hello.")
                seen += [str(info.value), repr(info.value), info.value.message]
    async with open_emulator(EmulatorConfig(api_key="another-key")) as emulator:
        async with RimeClient(base_url=emulator.http_url, api_key=SECRET) as client:
            with pytest.raises(APIStatusError) as http_info:
                await client.synthesize("Hello.")
            seen += [str(http_info.value), repr(http_info.value)]
    assert seen
    for text in seen:
        assert SECRET not in text
    assert SECRET not in debug_logs.text
    for record in debug_logs.records:
        assert SECRET not in record.getMessage()
        assert SECRET not in repr(record.args)


def test_options_repr_and_urls_never_hold_the_key() -> None:
    options = RimeOptions(api_key=SECRET, base_url="wss://example.test")
    from rime_trio._options import http_body, websocket_url

    assert SECRET not in repr(options)
    assert SECRET not in websocket_url(options)
    assert SECRET not in repr(http_body(options.replace(base_url=None), "x"))


# ----------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_emulator(authority: trustme.CA, tmp_path: Path) -> Iterator[RimeEmulator]:  # type: ignore[misc]
    cert = authority.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    async with open_emulator(EmulatorConfig(), certfile=str(certfile), keyfile=str(keyfile)) as emu:
        yield emu


def trusting(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    authority.configure_trust(context)
    return context


async def test_wss_and_https_with_a_trusted_certificate(
    tls_emulator: RimeEmulator, authority: trustme.CA
) -> None:
    assert tls_emulator.ws_url.startswith("wss://")
    context = trusting(authority)
    for base in (tls_emulator.ws_url, tls_emulator.http_url):
        async with RimeClient(
            base_url=base, api_key="emulator-key", ssl_context=context, sample_rate=8000
        ) as client:
            result = await client.synthesize("Over TLS.")
        assert result.audio == render_speech("Over TLS.", 8000).pcm


async def test_certificate_verification_is_on_by_default(tls_emulator: RimeEmulator) -> None:
    for base in (tls_emulator.ws_url, tls_emulator.http_url):
        async with RimeClient(
            base_url=base,
            api_key="emulator-key",
            stream_settings=StreamSettings(retries=0),
        ) as client:
            with pytest.raises(ConnectError) as info, anyio.fail_after(5):
                await client.synthesize("Untrusted.")
        assert "certificate" in str(info.value).lower()
    assert tls_emulator.stats.handshakes == 0
    assert tls_emulator.stats.http_requests == 0


@pytest.mark.parametrize("protocol", ["ws3", "v1"])
async def test_an_error_event_quoting_the_key_is_redacted(protocol: str) -> None:
    # Found in review: the error event's text went into ServerError as the server sent it.
    config = EmulatorConfig(
        api_key=SECRET, faults=[Fault("error_event", body=f"bad request for key {SECRET}")]
    )
    async with open_emulator(config) as emulator:
        url = emulator.v1_url if protocol == "v1" else emulator.ws_url
        async with RimeClient(
            base_url=url, api_key=SECRET, stream_settings=StreamSettings(retries=0)
        ) as client:
            with pytest.raises(ServerError) as info:
                async with client.stream() as stream:
                    await stream.push_text("Hello there.")
                    await stream.end_input()
                    async for _ in stream:
                        pass
    assert "bad request for key [redacted]" in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)
    assert SECRET not in info.value.message


@pytest.mark.parametrize("protocol", ["ws3", "v1"])
async def test_a_frame_the_client_cannot_read_quoting_the_key_is_redacted(protocol: str) -> None:
    # Found in review (issue 22): the ProtocolError showed a piece of the frame, key and all.
    garbage = Fault("garbage", body=f"key {SECRET}")
    async with open_emulator(EmulatorConfig(api_key=SECRET, faults=[garbage])) as emulator:
        url = emulator.v1_url if protocol == "v1" else emulator.ws_url
        async with RimeClient(base_url=url, api_key=SECRET) as client:
            with pytest.raises(ProtocolError) as info:
                async with client.stream() as stream:
                    await stream.push_text("Hello there.")
                    await stream.end_input()
                    async for _ in stream:
                        pass
    assert "[redacted]" in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)
