"""examples/embed_starlette.py works as the README says: served by hypercorn's trio worker
under anyio.run(..., backend="trio"), audio reaches the client, a disconnect mid-stream leaves
no socket beyond the pool."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from types import ModuleType

import anyio
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from trio_websocket import open_websocket_url

from rime_trio.testing import EmulatorConfig, open_emulator, render_speech

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
