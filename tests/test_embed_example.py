"""examples/embed_starlette.py works as the README says: served by hypercorn's trio worker
under anyio.run(..., backend="trio"), audio reaches the client, a disconnect mid-stream leaves
no socket beyond the pool; pages from other origins are refused before anything is spoken,
and text per session is capped.

The app is AnyIO code: it is also served by hypercorn's asyncio worker, with the same audio,
refusal and teardown. Each test runs its own loop (``anyio.run``), since its server and client
are backend-specific (hypercorn's trio worker and trio-websocket, or hypercorn's asyncio worker
and websockets). The FastAPI example (uvicorn, asyncio) is tested in test_embed_fastapi.py."""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
    wrap_client_stream,
)

from rime_trio.testing import EmulatorConfig, RimeEmulator, open_emulator, render_speech

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "embed_starlette.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("embed_starlette", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_embedding_example_under_anyio_on_trio() -> None:
    example = load_example()

    async def main() -> tuple[bytes, int, int]:
        async with open_emulator(EmulatorConfig(real_time_factor=0.0)) as emulator:
            app = example.build_app(base_url=emulator.ws_url, api_key=emulator.config.api_key)
            config = Config()
            config.bind = ["127.0.0.1:0"]
            config.accesslog = None
            config.errorlog = logging.getLogger("tests.embed")
            shutdown = trio.Event()
            async with trio.open_nursery() as nursery:
                binds = await nursery.start(
                    lambda task_status: serve(
                        app, config, shutdown_trigger=shutdown.wait, task_status=task_status
                    )
                )
                url = binds[0].replace("http", "ws") + "/tts"
                audio = bytearray()
                async with open_websocket_url(url) as ws:
                    await ws.send_message("Embedded and streaming.")
                    with trio.fail_after(10):
                        while len(audio) < len(
                            render_speech("Embedded and streaming. ", 24000).pcm
                        ):
                            message = await ws.get_message()
                            if isinstance(message, bytes):
                                audio += message
                            else:
                                assert "word" in json.loads(message)
                # the browser left mid-session: its stream was cancelled and torn down
                with trio.fail_after(10):
                    await emulator.wait_open_sockets(1)  # only the pooled socket
                open_after_disconnect = emulator.stats.open_sockets
                shutdown.set()
            with trio.fail_after(10):
                await emulator.wait_open_sockets(0)
            return bytes(audio), open_after_disconnect, emulator.stats.open_sockets

    audio, open_after_disconnect, open_at_end = anyio.run(main, backend="trio")
    assert audio == render_speech("Embedded and streaming. ", 24000).pcm
    assert open_after_disconnect <= 1
    assert open_at_end == 0


def test_embedding_example_under_anyio_on_asyncio() -> None:
    """The same app on asyncio (hypercorn's asyncio worker): the same audio, the same refusal,
    the same teardown."""
    from hypercorn.asyncio import serve as asyncio_serve
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    from rime_trio._serving import BoundConfig, listen

    example = load_example()
    expected = render_speech("Embedded and streaming. ", 24000).pcm

    async def main() -> None:
        async with open_emulator(EmulatorConfig(real_time_factor=0.0)) as emulator:
            app = example.build_app(base_url=emulator.ws_url, api_key=emulator.config.api_key)
            with await listen("127.0.0.1", 0, backlog=16) as listening:
                config = BoundConfig(listening)
                config.accesslog = None
                config.errorlog = logging.getLogger("tests.embed")
                url = f"ws://127.0.0.1:{listening.getsockname()[1]}/tts"
                shutdown = anyio.Event()
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(
                        lambda: asyncio_serve(app, config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]
                    )
                    with anyio.fail_after(10):
                        while not emulator.stats.handshakes:  # noqa: ASYNC110 - no event for it
                            await anyio.sleep(0.01)  # the lifespan's prewarm
                    before = (emulator.stats.handshakes, dict(emulator.stats.texts))
                    with pytest.raises(InvalidStatus) as info:
                        async with connect(url, origin="https://evil.example"):  # type: ignore[arg-type]
                            pass  # pragma: no cover
                    assert info.value.response.status_code == 403
                    assert (emulator.stats.handshakes, dict(emulator.stats.texts)) == before
                    audio = bytearray()
                    async with connect(url, open_timeout=10) as ws:
                        await ws.send("Embedded and streaming.")
                        with anyio.fail_after(10):
                            while len(audio) < len(expected):
                                message = await ws.recv()
                                if isinstance(message, bytes):
                                    audio += message
                    assert audio == expected
                    # the browser left mid-session: its stream was cancelled and torn down
                    with anyio.fail_after(10):
                        await emulator.wait_open_sockets(1)  # only the pooled socket
                    shutdown.set()
            with anyio.fail_after(10):
                await emulator.wait_open_sockets(0)

    anyio.run(main, backend="asyncio")


@asynccontextmanager
async def served_example(**app_options: Any) -> AsyncIterator[tuple[str, RimeEmulator]]:
    """The example app on a free port, in front of an emulator: (its http URL, emulator)."""
    example = load_example()
    async with open_emulator(EmulatorConfig(real_time_factor=0.0)) as emulator:
        app = example.build_app(
            base_url=emulator.ws_url, api_key=emulator.config.api_key, **app_options
        )
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.errorlog = logging.getLogger("tests.embed")
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                lambda task_status: serve(
                    app, config, shutdown_trigger=shutdown.wait, task_status=task_status
                )
            )
            try:
                yield binds[0], emulator
            finally:
                shutdown.set()


@asynccontextmanager
async def page_socket(url: str, origin: str) -> AsyncIterator[WebSocketConnection]:
    """A WebSocket to the example's /tts sending *origin*, as a page there would.

    :raises ConnectionRejected: if the handshake is refused (the socket is closed then,
        which ``open_websocket_url`` does not do).
    """
    address, port = url.removeprefix("http://").rsplit(":", 1)
    async with await trio.open_tcp_stream(address, int(port)) as stream:
        try:
            async with trio.open_nursery() as nursery:
                ws = await wrap_client_stream(
                    nursery,
                    stream,
                    f"{address}:{port}",
                    "/tts",
                    extra_headers=[(b"Origin", origin.encode())],
                )
                try:
                    yield ws
                finally:
                    await ws.aclose()
        except* ConnectionRejected as group:
            raise group.exceptions[0] from None


def test_example_refuses_a_foreign_origin_before_any_synthesis() -> None:
    async def main() -> None:
        async with served_example() as (url, emulator):
            before = (emulator.stats.handshakes, dict(emulator.stats.texts))
            with pytest.raises(ConnectionRejected) as info:
                async with page_socket(url, "https://evil.example") as ws:
                    await ws.send_message("Speak on their key.")  # pragma: no cover
            assert info.value.status_code == 403
            assert (emulator.stats.handshakes, dict(emulator.stats.texts)) == before
            # its own pages, and an origin it was told to allow, are served
            async with page_socket(url, url) as ws:
                await ws.send_message("Same origin.")
                assert isinstance(await ws.get_message(), bytes)
        async with served_example(allowed_origins=["https://app.example"]) as (url, _):
            async with page_socket(url, "https://app.example") as ws:
                await ws.send_message("Allowed.")
                assert isinstance(await ws.get_message(), bytes)

    anyio.run(main, backend="trio")


def test_example_caps_the_text_of_a_session() -> None:
    async def main() -> None:
        async with served_example() as (url, emulator):
            async with page_socket(url, url) as ws:
                await ws.send_message("x" * (load_example().MAX_TEXT_CHARS + 1))
                with trio.fail_after(10), pytest.raises(ConnectionClosed) as info:
                    await ws.get_message()
            assert info.value.reason is not None
            assert (info.value.reason.code, info.value.reason.reason) == (1008, "text too long")
            assert not emulator.stats.texts  # refused, not spoken

    anyio.run(main, backend="trio")
