"""examples/embed_fastapi.py works as the README says: FastAPI served by uvicorn on asyncio,
one prewarmed client in the lifespan, the bundled page's protocol (binary PCM, JSON words and
status) byte-exact against the emulator, stop and disconnects cancel the stream, foreign
origins and rebinding hosts are refused before anything is synthesized, sessions are bounded,
the script runs and stops on Ctrl-C, and the same app runs on trio under hypercorn.

uvicorn only runs on asyncio, so these tests run their own event loop (``anyio.run``) rather
than the suite's async test plugin. The real-browser test of the example is in
test_browser.py.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

import rime_trio
from rime_trio.testing import (
    EmulatorConfig,
    RimeEmulator,
    open_emulator,
    render_speech,
    speech_words,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "embed_fastapi.py"
SENTENCES = ["Served by uvicorn on asyncio.", "Every word, in order."]
TEXT = " ".join(SENTENCES)
# uvicorn's two WebSocket layers: the example picks wsproto; the default must work as well.
WS_LAYERS = ["wsproto", "websockets-sansio"]


@functools.cache
def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("embed_fastapi", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def expected_pcm(*sentences: str) -> bytes:
    """What the emulator synthesizes for *sentences*: each is a run of its own."""
    return b"".join(render_speech(sentence + " ", 24000).pcm for sentence in sentences)


@asynccontextmanager
async def served(
    ws: str = "wsproto", config: EmulatorConfig | None = None, **app_options: Any
) -> AsyncIterator[tuple[str, RimeEmulator]]:
    """The example app under uvicorn on a free port, in front of an emulator on the same
    asyncio loop: (its http URL, the emulator). Shut down gracefully afterwards."""
    example = load_example()
    async with open_emulator(config or EmulatorConfig(real_time_factor=0.0)) as emulator:
        options = rime_trio.RimeOptions(base_url=emulator.ws_url, api_key=emulator.config.api_key)
        app = example.build_app(options, **app_options)
        listening = socket.create_server(("127.0.0.1", 0))
        port = listening.getsockname()[1]
        # log_config=None: leave the test process's logging configuration alone.
        server = uvicorn.Server(
            uvicorn.Config(app, lifespan="on", ws=ws, log_config=None, log_level="warning")
        )
        with listening:  # uvicorn closes it when it stops; this, if it never started
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(server.serve, [listening])
                with anyio.fail_after(10):
                    while not server.started:  # noqa: ASYNC110 - uvicorn has no event for it
                        await anyio.sleep(0.01)
                try:
                    yield f"http://127.0.0.1:{port}", emulator
                finally:
                    server.should_exit = True
        with anyio.fail_after(10):
            await emulator.wait_open_sockets(0)  # shutdown closed the client's sockets


@asynccontextmanager
async def page_socket(
    url: str, origin: str | None = None, **options: Any
) -> AsyncIterator[ClientConnection]:
    """A WebSocket to the example's /ws as its page opens it (Origin: *origin*, default the
    page's own; the ``rime-trio`` subprotocol)."""
    ws_url = url.replace("http://", "ws://") + "/ws"
    options.setdefault("subprotocols", ["rime-trio"])
    async with connect(ws_url, origin=origin or url, open_timeout=10, **options) as ws:
        yield ws


async def receive_json(ws: ClientConnection, skip_audio: bool = False) -> dict[str, Any]:
    with anyio.fail_after(10):
        while True:
            message = await ws.recv()
            if isinstance(message, str):
                data: dict[str, Any] = json.loads(message)
                return data
            assert skip_audio, "audio where a JSON message was expected"


async def speak(ws: ClientConnection, *pieces: str) -> tuple[dict[str, Any], bytes, list[str]]:
    """Speak *pieces* as the page does; (the started message, audio, words), after done."""
    await ws.send(json.dumps({"type": "speak"}))
    for piece in pieces:
        await ws.send(json.dumps({"type": "text", "text": piece}))
    await ws.send(json.dumps({"type": "end"}))
    started = await receive_json(ws)
    assert started["type"] == "started", started
    audio = bytearray()
    words: list[str] = []
    with anyio.fail_after(10):
        while True:
            message = await ws.recv()
            if isinstance(message, bytes):
                audio += message
                continue
            event = json.loads(message)
            if event["type"] == "done":
                assert event["audioSeconds"] == pytest.approx(len(audio) / 2 / 24000)
                return started, bytes(audio), words
            assert event["type"] == "word", event
            assert event["utterance"] == started["utterance"]
            words.append(event["word"])


@pytest.mark.parametrize("ws_layer", WS_LAYERS)
def test_speaks_over_uvicorn_on_asyncio(ws_layer: str) -> None:
    async def main() -> None:
        async with served(ws_layer) as (url, emulator):
            # The lifespan prewarmed the client: one socket open before any page connected.
            assert (emulator.stats.handshakes, emulator.stats.open_sockets) == (1, 1)
            async with page_socket(url) as ws:
                assert ws.subprotocol == "rime-trio"
                # word by word, as an LLM (and the page's "trickle") sends it
                started, audio, words = await speak(ws, *re.findall(r"\S+\s*", TEXT))
                assert started == {"type": "started", "utterance": 1, "sampleRate": 24000}
                assert audio == expected_pcm(*SENTENCES)
                assert words == speech_words(TEXT)
                assert emulator.stats.runs[1]  # spoken on the prewarmed socket
                # the connection serves the next utterance
                started, audio, words = await speak(ws, "And a second one.")
                assert started["utterance"] == 2
                assert audio == expected_pcm("And a second one.")
                assert words == ["And", "a", "second", "one"]

    anyio.run(main, backend="asyncio")


def test_stop_and_leaving_cancel_the_stream() -> None:
    long_text = "This is a long utterance that will be cut off. " * 6

    async def main() -> None:
        paced = EmulatorConfig(real_time_factor=1.0)  # audio arrives as fast as it plays
        async with served(config=paced) as (url, emulator):
            async with page_socket(url) as ws:
                await ws.send(json.dumps({"type": "speak"}))
                await ws.send(json.dumps({"type": "text", "text": long_text}))
                await ws.send(json.dumps({"type": "end"}))
                assert (await receive_json(ws))["type"] == "started"
                with anyio.fail_after(10):
                    assert isinstance(await ws.recv(), bytes)  # speaking
                    while emulator.stats.open_sockets < 2:  # noqa: ASYNC110 - no event for it
                        await anyio.sleep(0.01)  # its socket, and the spare opened meanwhile
                await ws.send(json.dumps({"type": "stop"}))
                assert await receive_json(ws, skip_audio=True) == {"type": "stopped"}
                with anyio.fail_after(10):
                    await emulator.wait_open_sockets(1)  # its socket closed; the spare stays
                # nothing of the stopped utterance follows; the next one starts cleanly
                _, audio, _ = await speak(ws, "And now a fresh one.")
                assert audio == expected_pcm("And now a fresh one.")
                # the browser leaves mid-utterance
                await ws.send(json.dumps({"type": "speak"}))
                await ws.send(json.dumps({"type": "text", "text": long_text}))
                await ws.send(json.dumps({"type": "end"}))
                assert (await receive_json(ws))["type"] == "started"
                with anyio.fail_after(10):
                    assert isinstance(await ws.recv(), bytes)
            with anyio.fail_after(10):
                await emulator.wait_open_sockets(1)  # its stream was cancelled, torn down

    anyio.run(main, backend="asyncio")


@pytest.mark.parametrize("ws_layer", WS_LAYERS)
def test_refuses_other_origins_and_hosts_before_any_synthesis(ws_layer: str) -> None:
    async def main() -> None:
        async with served(ws_layer) as (url, emulator):
            port = int(url.rsplit(":", 1)[1])
            before = (emulator.stats.handshakes, dict(emulator.stats.texts))
            for origin in ("https://evil.example", "null", url.replace("127.0.0.1", "localhost")):
                with pytest.raises(InvalidStatus) as info:
                    async with page_socket(url, origin):
                        pass  # pragma: no cover
                assert info.value.response.status_code == 403, origin
            # DNS rebinding: a page at evil.example whose name now points at this server
            with pytest.raises(InvalidStatus) as info:
                async with connect(
                    f"ws://evil.example:{port}/ws",
                    origin=f"http://evil.example:{port}",  # type: ignore[arg-type]
                    host="127.0.0.1",
                    port=port,
                ):
                    pass  # pragma: no cover
            assert info.value.response.status_code == 403
            async with httpx.AsyncClient() as http:
                page = await http.get(url + "/", headers={"Host": f"evil.example:{port}"})
                assert page.status_code == 403
                page = await http.get(url + "/")
                assert page.status_code == 200
                assert "window.rimeStats" in page.text  # the bundled page, served here
            assert (emulator.stats.handshakes, dict(emulator.stats.texts)) == before
            async with page_socket(url) as ws:  # its own page is served
                _, audio, _ = await speak(ws, "Same origin.")
                assert audio == expected_pcm("Same origin.")
            async with page_socket(url, origin=None, subprotocols=None) as ws:
                pass  # no Origin at all: not a browser (a script), accepted
        async with served(ws_layer, allowed_origins=["https://app.example"]) as (url, _):
            async with page_socket(url, "https://app.example") as ws:
                _, audio, _ = await speak(ws, "Allowed.")
                assert audio == expected_pcm("Allowed.")

    anyio.run(main, backend="asyncio")


def test_a_token_is_required_when_set() -> None:
    token = "a-long-enough-secret-token"

    async def main() -> None:
        async with served(token=token) as (url, emulator):
            before = emulator.stats.handshakes
            with pytest.raises(InvalidStatus) as info:
                async with page_socket(url):
                    pass  # pragma: no cover
            assert info.value.response.status_code == 401
            assert emulator.stats.handshakes == before
            protocols = ["rime-trio", f"rime-trio.token.{token}"]
            async with page_socket(url, subprotocols=protocols) as ws:
                assert ws.subprotocol == "rime-trio"  # never the token
                _, audio, _ = await speak(ws, "With the token.")
                assert audio == expected_pcm("With the token.")
            bearer = {"Authorization": f"Bearer {token}"}
            async with page_socket(url, subprotocols=None, additional_headers=bearer) as ws:
                _, audio, _ = await speak(ws, "A script.")
                assert audio == expected_pcm("A script.")

    anyio.run(main, backend="asyncio")


def test_sessions_are_bounded_and_stay_usable() -> None:
    example = load_example()

    async def main() -> None:
        async with served() as (url, emulator):
            async with page_socket(url) as ws:
                # too much text: the utterance is stopped, nothing of it is spoken
                await ws.send(json.dumps({"type": "speak"}))
                assert (await receive_json(ws))["type"] == "started"
                text = "x" * (example.MAX_TEXT_CHARS + 1)
                await ws.send(json.dumps({"type": "text", "text": text}))
                error = await receive_json(ws)
                assert (error["type"], error["code"]) == ("error", "text_too_long")
                # one utterance at a time
                await ws.send(json.dumps({"type": "speak"}))
                assert (await receive_json(ws))["type"] == "started"
                await ws.send(json.dumps({"type": "speak"}))
                assert (await receive_json(ws))["code"] == "busy"
                await ws.send(json.dumps({"type": "stop"}))
                assert await receive_json(ws) == {"type": "stopped"}
                # messages: size checked before parsing, JSON objects only, text only
                await ws.send("[" * (example.MAX_MESSAGE_CHARS + 1))
                assert (await receive_json(ws))["code"] == "message_too_long"
                for bad in (b"binary", "not json", "[1]", json.dumps({"type": "sing"})):
                    await ws.send(bad)
                    assert (await receive_json(ws))["code"] == "bad_message"
                # a model the client does not know fails that utterance, not the session
                await ws.send(json.dumps({"type": "speak", "model": "nope"}))
                error = await receive_json(ws)
                assert (error["code"], error["utterance"]) == ("synthesis_failed", 3)
                # ending an utterance without text fails it, not the session
                await ws.send(json.dumps({"type": "speak"}))
                await ws.send(json.dumps({"type": "end"}))
                assert (await receive_json(ws))["type"] == "started"
                assert (await receive_json(ws))["code"] == "synthesis_failed"
                assert not emulator.stats.texts  # nothing was spoken
                _, audio, _ = await speak(ws, "Still usable.")
                assert audio == expected_pcm("Still usable.")
            async with page_socket(url) as ws:
                for _ in range(example.UTTERANCES_PER_MINUTE):
                    await ws.send(json.dumps({"type": "speak"}))
                    assert (await receive_json(ws))["type"] == "started"
                    await ws.send(json.dumps({"type": "stop"}))
                    assert await receive_json(ws) == {"type": "stopped"}
                await ws.send(json.dumps({"type": "speak"}))
                limited = await receive_json(ws)
                assert limited["code"] == "rate_limited"
                assert 0 < limited["retryAfter"] <= 60

    anyio.run(main, backend="asyncio")


def test_the_same_app_runs_on_trio_under_hypercorn() -> None:
    """Nothing in the app is asyncio's: served by hypercorn's trio worker, it speaks the same."""
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve
    from trio_websocket import open_websocket_url

    example = load_example()

    async def main() -> tuple[bytes, list[str]]:
        async with open_emulator(EmulatorConfig(real_time_factor=0.0)) as emulator:
            options = rime_trio.RimeOptions(
                base_url=emulator.ws_url, api_key=emulator.config.api_key
            )
            config = Config()
            config.bind = ["127.0.0.1:0"]
            config.accesslog = None
            config.errorlog = logging.getLogger("tests.embed")
            shutdown = trio.Event()
            async with trio.open_nursery() as nursery:
                binds = await nursery.start(
                    lambda task_status: serve(
                        example.build_app(options),
                        config,
                        shutdown_trigger=shutdown.wait,
                        task_status=task_status,
                    )
                )
                audio = bytearray()
                words: list[str] = []
                url = binds[0].replace("http", "ws") + "/ws"
                async with open_websocket_url(url, subprotocols=["rime-trio"]) as ws:
                    for message in ({"type": "speak"}, {"type": "text", "text": TEXT}):
                        await ws.send_message(json.dumps(message))
                    await ws.send_message(json.dumps({"type": "end"}))
                    with trio.fail_after(10):
                        while True:
                            message = await ws.get_message()
                            if isinstance(message, bytes):
                                audio += message
                            elif (event := json.loads(message))["type"] == "word":
                                words.append(event["word"])
                            elif event["type"] == "done":
                                break
                shutdown.set()
            return bytes(audio), words

    audio, words = anyio.run(main, backend="trio")
    assert audio == expected_pcm(*SENTENCES)
    assert words == speech_words(TEXT)


@contextmanager
def example_process(*args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run ``python examples/embed_fastapi.py ARGS --port 0`` as a user would; yield the page
    URL it prints (no trailing slash). Afterwards it gets Ctrl-C and must exit cleanly."""
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLE), *args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("Speak page: http://127.0.0.1:"), line + process.stderr.read()
        yield line.split()[2].rstrip("/")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr
        assert "ERROR" not in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


def test_the_script_serves_the_page_with_its_emulator_and_stops_on_ctrl_c() -> None:
    from websockets.sync.client import connect as connect_sync

    with example_process("--emulator") as url:
        page = httpx.get(url + "/")
        assert page.status_code == 200
        assert "window.rimeStats" in page.text
        with connect_sync(
            url.replace("http", "ws") + "/ws", origin=url, subprotocols=["rime-trio"]
        ) as ws:
            for message in ({"type": "speak"}, {"type": "text", "text": TEXT}, {"type": "end"}):
                ws.send(json.dumps(message))
            audio = bytearray()
            while True:
                message = ws.recv(timeout=10)
                if isinstance(message, bytes):
                    audio += message
                elif json.loads(message)["type"] == "done":
                    break
        assert bytes(audio) == expected_pcm(*SENTENCES)


def test_the_script_without_a_key_says_so() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RIME_API_KEY"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 1
    assert "no API key" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_example_is_mypy_strict_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", str(EXAMPLE.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
