"""The embedded web app, end to end: emulator <- RimeClient <- Starlette app <- a WebSocket
client standing in for the browser, all over real sockets."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from trio_websocket import WebSocketConnection, open_websocket_url

from rime_trio import RimeClient
from rime_trio.testing import EmulatorConfig, RimeEmulator, open_emulator, render_speech
from rime_trio.web import WebStats, create_app

from .conftest import API_KEY

RATE = 16000
TEXT = "Hello from the web page. A second sentence follows."
SENTENCES = ["Hello from the web page.", "A second sentence follows."]


@dataclass
class App:
    url: str
    stats: WebStats
    emulator: RimeEmulator
    clients: list[RimeClient] = field(default_factory=list)


@asynccontextmanager
async def running_app(config: EmulatorConfig | None = None) -> AsyncIterator[App]:
    async with open_emulator(config) as emulator:
        stats = WebStats()
        clients: list[RimeClient] = []

        def factory() -> RimeClient:
            client = RimeClient(base_url=emulator.ws_url, api_key=API_KEY, sample_rate=RATE)
            clients.append(client)
            return client

        app = create_app(factory, stats=stats)
        hyper = Config()
        hyper.bind = ["127.0.0.1:0"]
        hyper.accesslog = None
        hyper.errorlog = logging.getLogger("tests.web")
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(
                lambda task_status: serve(
                    app,  # type: ignore[arg-type]
                    hyper,
                    shutdown_trigger=shutdown.wait,
                    task_status=task_status,
                )
            )
            try:
                yield App(binds[0], stats, emulator, clients)
            finally:
                shutdown.set()


@asynccontextmanager
async def browser(app: App) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket_url(app.url.replace("http", "ws") + "/ws") as ws:
        yield ws


@dataclass
class Utterance:
    audio: bytes
    events: list[dict[str, Any]]

    @property
    def words(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "word"]


async def speak(ws: WebSocketConnection, text: str, **choice: str) -> Utterance:
    await ws.send_message(json.dumps({"type": "speak", **choice}))
    await ws.send_message(json.dumps({"type": "text", "text": text}))
    await ws.send_message(json.dumps({"type": "end"}))
    return await receive_until(ws, {"done", "error"})


async def receive_until(ws: WebSocketConnection, kinds: set[str]) -> Utterance:
    audio = bytearray()
    events: list[dict[str, Any]] = []
    with trio.fail_after(20):
        while True:
            message = await ws.get_message()
            if isinstance(message, bytes):
                audio += message
                continue
            event = json.loads(message)
            events.append(event)
            if event["type"] in kinds:
                return Utterance(bytes(audio), events)


def expected(sentences: list[str], rate: int = RATE) -> bytes:
    return b"".join(render_speech(s + " ", rate).pcm for s in sentences)


async def test_the_page_is_served() -> None:
    async with running_app() as app, httpx.AsyncClient() as http:
        page = await http.get(app.url + "/")
    assert page.status_code == 200
    assert "Speak" in page.text
    assert API_KEY not in page.text


async def test_lifespan_prewarms_one_socket_and_shutdown_closes_it() -> None:
    async with running_app() as app:
        assert app.emulator.stats.handshakes == 1  # before any browser connected
        assert app.emulator.stats.open_sockets == 1
        emulator = app.emulator
    with trio.fail_after(5):
        await emulator.wait_open_sockets(0)


async def test_browser_receives_exactly_the_emulators_audio_and_monotonic_words() -> None:
    async with running_app() as app, browser(app) as ws:
        result = await speak(ws, TEXT)
        assert result.events[0]["type"] == "started"
        assert result.events[0]["sampleRate"] == RATE
        assert result.events[-1]["type"] == "done"
        assert result.audio == expected(SENTENCES)
        assert result.audio == b"".join(bytes(a) for a in app.emulator.stats.audio.values())
        starts = [w["start"] for w in result.words]
        assert starts == sorted(starts)
        assert [w["word"] for w in result.words] == [
            "Hello", "from", "the", "web", "page", "A", "second", "sentence", "follows",
        ]  # fmt: skip
        assert result.events[-1]["audioSeconds"] == pytest.approx(len(result.audio) / 2 / RATE)
        assert app.emulator.stats.handshakes == 1  # the prewarmed socket served it


async def test_word_by_word_input_like_an_llm() -> None:
    async with running_app() as app, browser(app) as ws:
        await ws.send_message(json.dumps({"type": "speak"}))
        for token in TEXT.split(" "):
            await ws.send_message(json.dumps({"type": "text", "text": token + " "}))
        await ws.send_message(json.dumps({"type": "end"}))
        result = await receive_until(ws, {"done", "error"})
    assert result.audio == expected(SENTENCES)


async def test_stop_cancels_the_server_stream_and_the_next_utterance_starts_clean() -> None:
    slow = EmulatorConfig(real_time_factor=1.0)  # audio is still flowing when Stop comes
    async with running_app(slow) as app, browser(app) as ws:
        await ws.send_message(json.dumps({"type": "speak"}))
        await ws.send_message(json.dumps({"type": "text", "text": "A long sentence " * 20}))
        await ws.send_message(json.dumps({"type": "end"}))
        with trio.fail_after(10):
            while not isinstance(await ws.get_message(), bytes):
                pass
        await ws.send_message(json.dumps({"type": "stop"}))
        stopped = await receive_until(ws, {"stopped"})
        assert stopped.events[-1]["type"] == "stopped"
        assert app.stats.stopped == 1
        assert app.stats.active == 0
        app.emulator.config.real_time_factor = 0.0
        result = await speak(ws, "Fresh start.")
        assert result.events[0]["type"] == "started"
        assert result.audio == expected(["Fresh start."])  # nothing of the stopped one
        pool = app.clients[0].pool
        assert pool.stats.reused >= 1  # on a pooled (re-prewarmed) socket
    with trio.fail_after(5):
        await app.emulator.wait_open_sockets(0)


async def test_browser_disconnect_mid_stream_leaves_no_socket_beyond_the_pool() -> None:
    slow = EmulatorConfig(real_time_factor=1.0)
    async with running_app(slow) as app:
        async with browser(app) as ws:
            await ws.send_message(json.dumps({"type": "speak"}))
            await ws.send_message(json.dumps({"type": "text", "text": "Going away soon. " * 10}))
            with trio.fail_after(10):
                while not isinstance(await ws.get_message(), bytes):
                    pass
        # the browser is gone mid-stream
        client = app.clients[0]
        with trio.fail_after(10):
            await app.stats.wait_idle()
            await client.pool.wait_teardowns()
            await app.emulator.wait_open_sockets(client.pool.idle)
        assert app.emulator.stats.open_sockets <= client.pool.idle


async def test_two_concurrent_sessions_both_complete() -> None:
    async with running_app() as app:
        results: dict[int, Utterance] = {}

        async def session(n: int) -> None:
            async with browser(app) as ws:
                results[n] = await speak(ws, f"Session {n} speaks.")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(session, 1)
            nursery.start_soon(session, 2)
    for n in (1, 2):
        assert results[n].audio == expected([f"Session {n} speaks."])


async def test_model_and_voice_choice_reach_the_stream() -> None:
    async with running_app() as app, browser(app) as ws:
        result = await speak(ws, "Another voice.", model="mistv3", speaker="luna")
        assert result.events[0]["model"] == "mistv3"
        assert result.events[0]["speaker"] == "luna"
        assert result.audio == expected(["Another voice."])
        refused = await speak(ws, "Unknown model.", model="nope")
        assert refused.events[0]["model"] == "coda"  # not an allowed choice: server default


async def test_bad_messages_get_an_error_not_a_crash() -> None:
    async with running_app() as app, browser(app) as ws:
        await ws.send_message("not json")
        error = json.loads(await ws.get_message())
        assert error["type"] == "error"
        result = await speak(ws, "Still fine.")
        assert result.audio == expected(["Still fine."])
