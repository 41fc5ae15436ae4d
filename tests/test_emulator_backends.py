"""The emulator on each backend: Trio, AnyIO on trio, AnyIO on asyncio and plain asyncio.run.

The other emulator tests use trio-websocket clients under pytest-trio; these start their own
event loops from synchronous tests and talk to the emulator with clients that run on asyncio
(the ``websockets`` asyncio client) or on both (httpx).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import sniffio
import trio
import trustme
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from rime_trio.testing import EmulatorConfig, Fault, RimeEmulator, open_emulator, render_speech

from .raw_ws3 import AUTH, QUERY, RATE

HEADERS = {name.decode(): value.decode() for name, value in AUTH}
SENTENCE = "A sentence long enough for several chunks. "
PCM = render_speech(SENTENCE.rstrip(), RATE).pcm

Main = Callable[[], Awaitable[None]]


def run_asyncio(main: Main) -> None:
    asyncio.run(main())  # type: ignore[arg-type]


def run_anyio_asyncio(main: Main) -> None:
    anyio.run(main, backend="asyncio")


def run_anyio_trio(main: Main) -> None:
    anyio.run(main, backend="trio")


def run_trio(main: Main) -> None:
    trio.run(main)


ASYNCIO_RUNNERS = [
    pytest.param(run_asyncio, id="asyncio.run"),
    pytest.param(run_anyio_asyncio, id="anyio-asyncio"),
]
ALL_RUNNERS = [
    pytest.param(run_trio, id="trio.run"),
    pytest.param(run_anyio_trio, id="anyio-trio"),
    *ASYNCIO_RUNNERS,
]


def ws3(emulator: RimeEmulator, query: str = QUERY) -> str:
    return f"{emulator.ws_url}/ws3?{query}"


async def read_audio_until_close(ws: ClientConnection) -> tuple[bytes, ConnectionClosed | None]:
    """Audio received up to the end of the connection, and how it ended (None: a clean
    close, after which ``ws.close_code`` tells the code)."""
    audio = b""
    try:
        with anyio.fail_after(5):
            async for message in ws:
                event = json.loads(message)
                if event["type"] == "chunk":
                    audio += base64.b64decode(event["data"])
    except ConnectionClosed as closed:
        return audio, closed
    return audio, None


async def post(
    emulator: RimeEmulator, text: str, *, verify: ssl.SSLContext | bool = True
) -> httpx.Response:
    body = {"text": text, "speaker": "astra", "modelId": "mistv2", "samplingRate": RATE}
    async with httpx.AsyncClient(verify=verify) as client:
        return await client.post(
            f"{emulator.http_url}/v1/rime-tts",
            json=body,
            headers={**HEADERS, "Accept": "audio/pcm"},
        )


# ----------------------------------------------------------------------------- every backend


@pytest.mark.parametrize("run", ALL_RUNNERS)
def test_http_synthesis_runs_on_each_backend(run: Callable[[Main], None]) -> None:
    seen: list[str | None] = []

    async def main() -> None:
        async with open_emulator() as emulator:
            response = await post(emulator, "Hello world.")
            seen.append(sniffio.current_async_library())
        assert response.status_code == 200
        assert response.content == render_speech("Hello world.", RATE).pcm
        assert emulator.stats.http_requests == 1

    run(main)
    assert len(seen) == 1


@pytest.mark.parametrize("run", ALL_RUNNERS)
def test_block_errors_leave_as_themselves(run: Callable[[Main], None]) -> None:
    async def main() -> None:
        with pytest.raises(KeyError, match="from the block"):
            async with open_emulator():
                raise KeyError("from the block")

    run(main)


@pytest.mark.parametrize("run", ALL_RUNNERS)
def test_a_cancelled_block_stops_the_server_within_its_bound(run: Callable[[Main], None]) -> None:
    async def main() -> None:
        started = anyio.current_time()
        with anyio.move_on_after(0.2) as scope:
            async with open_emulator():
                await anyio.sleep_forever()
        assert scope.cancelled_caught
        assert anyio.current_time() - started < 2

    run(main)


# ----------------------------------------------------------------------------- asyncio


@pytest.mark.parametrize("run", ASYNCIO_RUNNERS)
def test_streaming_on_asyncio_sends_the_rendered_speech(run: Callable[[Main], None]) -> None:
    async def main() -> None:
        async with open_emulator() as emulator:
            async with connect(ws3(emulator), additional_headers=HEADERS) as ws:
                await ws.send(json.dumps({"text": SENTENCE, "contextId": "a"}))
                await ws.send(json.dumps({"operation": "eos"}))
                audio, failure = await read_audio_until_close(ws)
                assert failure is None
                assert ws.close_code == 1000
            with anyio.fail_after(5):
                await emulator.wait_open_sockets(0)
        assert audio == PCM
        assert emulator.stats.audio_for("a") == PCM
        assert emulator.stats.handshakes == 1

    run(main)


@pytest.mark.parametrize("run", ASYNCIO_RUNNERS)
def test_refused_handshakes_on_asyncio_keep_status_and_body(run: Callable[[Main], None]) -> None:
    refusals: list[tuple[int, bytes | bytearray]] = []

    async def main() -> None:
        fault = Fault("reject", frozenset({2}), status=503, body="overloaded")
        async with open_emulator(EmulatorConfig(faults=[fault])) as emulator:
            for headers in ({"Authorization": "Bearer nope"}, HEADERS):
                with pytest.raises(InvalidStatus) as info:
                    async with connect(ws3(emulator), additional_headers=headers):
                        pass
                refusals.append((info.value.response.status_code, info.value.response.body))
        assert emulator.stats.rejected == 2

    run(main)
    assert refusals == [(401, b"Unauthorized: invalid or missing API key"), (503, b"overloaded")]


@pytest.mark.parametrize("run", ASYNCIO_RUNNERS)
def test_drop_on_asyncio_resets_tcp_without_a_close_frame(run: Callable[[Main], None]) -> None:
    async def main() -> None:
        config = EmulatorConfig(faults=[Fault("drop", after_chunks=2)], chunk_bytes=1000)
        async with open_emulator(config, tcp_faults=True) as emulator:
            async with connect(ws3(emulator), additional_headers=HEADERS) as ws:
                await ws.send(json.dumps({"text": SENTENCE}))
                audio, failure = await read_audio_until_close(ws)
            assert emulator._proxy is not None
            assert emulator._proxy.dropped == 1
        assert failure is not None
        assert failure.rcvd is None  # no close frame came
        assert isinstance(failure.__cause__, ConnectionResetError)
        # A reset may discard chunks still in flight: at most the first two arrive.
        assert PCM[:2000].startswith(audio)
        assert emulator.stats.connection_audio(1) == PCM[:2000]

    run(main)


def test_a_socket_left_open_is_ended_quietly_at_shutdown_on_asyncio() -> None:
    unhandled: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, c: unhandled.append(c))
        started = anyio.current_time()
        async with open_emulator() as emulator:
            ws = await connect(ws3(emulator), additional_headers=HEADERS)
        assert anyio.current_time() - started < 2
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        await ws.close()
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1011
        assert emulator.stats.open_sockets == 0

    asyncio.run(main())
    assert unhandled == []


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def cert_files(authority: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    cert = authority.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    return str(certfile), str(keyfile)


def test_tls_on_asyncio_serves_wss_and_https(
    authority: trustme.CA, cert_files: tuple[str, str]
) -> None:
    certfile, keyfile = cert_files
    context = ssl.create_default_context()
    authority.configure_trust(context)
    unhandled: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, c: unhandled.append(c))
        async with open_emulator(certfile=certfile, keyfile=keyfile) as emulator:
            assert emulator.ws_url.startswith("wss://")
            async with connect(ws3(emulator), additional_headers=HEADERS, ssl=context) as ws:
                await ws.send(json.dumps({"text": "Over TLS."}))
                await ws.send(json.dumps({"operation": "eos"}))
                audio, failure = await read_audio_until_close(ws)
            assert failure is None
            assert audio == render_speech("Over TLS.", RATE).pcm
            response = await post(emulator, "Over TLS.", verify=context)
            assert response.content == audio
            with pytest.raises(ssl.SSLCertVerificationError):
                await connect(ws3(emulator), additional_headers=HEADERS)
        assert emulator.stats.handshakes == 1

    asyncio.run(main())
    # The TLS close of a wss:// connection is not reported to the loop as an error.
    assert unhandled == []


# ----------------------------------------------------------------------------- configuration


async def test_certfile_without_keyfile_is_refused(cert_files: tuple[str, str]) -> None:
    with pytest.raises(ValueError, match="certfile and keyfile go together"):
        async with open_emulator(certfile=cert_files[0]):
            pass


async def test_unreadable_certificate_fails_before_serving(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(FileNotFoundError):
        async with open_emulator(certfile=missing, keyfile=missing):
            pass


# ----------------------------------------------------------------------------- pytest plugin

PLUGIN_CONFTEST = """
pytest_plugins = ["rime_trio.testing.pytest_plugin"]
"""

PLUGIN_TESTS = """
import httpx
import pytest
import sniffio

from rime_trio.testing import RimeEmulator, render_speech


async def speak(emulator: RimeEmulator) -> bytes:
    body = {"text": "Hi.", "speaker": "astra", "modelId": "mistv2", "samplingRate": 8000}
    headers = {"Authorization": f"Bearer {emulator.config.api_key}", "Accept": "audio/pcm"}
    async with httpx.AsyncClient() as client:
        url = f"{emulator.http_url}/v1/rime-tts"
        return (await client.post(url, json=body, headers=headers)).content


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


@pytest.mark.anyio
async def test_with_anyio_plugin(rime_emulator: RimeEmulator, anyio_backend: str) -> None:
    assert sniffio.current_async_library() == anyio_backend
    assert await speak(rime_emulator) == render_speech("Hi.", 8000).pcm


@pytest.mark.trio
async def test_with_pytest_trio(rime_emulator: RimeEmulator) -> None:
    assert sniffio.current_async_library() == "trio"
    assert await speak(rime_emulator) == render_speech("Hi.", 8000).pcm
"""


def test_pytest_fixture_works_with_anyio_plugin_on_both_backends_and_pytest_trio(
    tmp_path: Path,
) -> None:
    # A pytest session of its own, with the plugin's documented setup only (this suite's
    # conftest adds its own backend fixture and markers): AnyIO's plugin and pytest-trio
    # are both loaded, neither in a mode that takes every async test.
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    (tmp_path / "conftest.py").write_text(PLUGIN_CONFTEST)
    (tmp_path / "test_plugin.py").write_text(PLUGIN_TESTS)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
