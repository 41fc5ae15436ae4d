"""An ASGI app (Starlette) that speaks to browsers: text in, audio and word timestamps out.

One :class:`RimeClient` per app, opened in the ASGI lifespan (its pool prewarmed) and closed
at shutdown; the API key never leaves the server. Each browser WebSocket is one session; each
utterance in it is one ``client.stream()``. Audio goes to the browser as binary frames (raw
16-bit PCM, no base64 on the last hop), word timestamps and status as JSON.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from .._client import RimeClient
from .._errors import RimeError
from .._events import AudioChunk
from .._stream import SpeechStream

__all__ = ["WebStats", "create_app"]

logger = logging.getLogger("rime_trio.web")

#: What a browser may choose per utterance; everything else stays server-side.
ALLOWED_OVERRIDES = {"model": {"coda", "arcana", "mistv3", "mistv2", "mist"}, "speaker": None}


@dataclass
class WebStats:
    """Counters the app exposes at ``/stats`` (for operators and tests)."""

    sessions: int = 0
    utterances: int = 0
    stopped: int = 0
    active: int = 0
    errors: int = 0
    extra: dict[str, Callable[[], Any]] = field(default_factory=dict)
    _idle: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot, repr=False)

    def _utterance_ended(self) -> None:
        self.active -= 1
        self._idle.unpark_all()

    async def wait_idle(self) -> None:
        """Wait until no utterance is running (e.g. after a browser left mid-stream)."""
        while self.active:
            await self._idle.park()

    def snapshot(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "sessions": self.sessions,
            "utterances": self.utterances,
            "stopped": self.stopped,
            "activeStreams": self.active,
            "errors": self.errors,
        }
        for name, read in self.extra.items():
            data[name] = read()
        return data


class _Session:
    """One browser WebSocket: at most one utterance at a time; Stop cancels it."""

    def __init__(self, websocket: WebSocket, client: RimeClient, stats: WebStats) -> None:
        self.websocket = websocket
        self.client = client
        self.stats = stats
        self._send_lock = trio.Lock()
        self._stream: SpeechStream | None = None
        self._scope: trio.CancelScope | None = None

    async def send_json(self, data: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.websocket.send_text(json.dumps(data))

    async def send_bytes(self, data: bytes) -> None:
        async with self._send_lock:
            await self.websocket.send_bytes(data)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            try:
                while True:
                    message = await self.websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        break
                    try:
                        request = json.loads(message.get("text") or "{}")
                    except ValueError:
                        await self.send_json({"type": "error", "message": "messages are JSON"})
                        continue
                    await self._handle(request, nursery)
            finally:
                # The browser left (or the app is stopping): end whatever is speaking.
                nursery.cancel_scope.cancel()

    async def _handle(self, request: dict[str, Any], nursery: trio.Nursery) -> None:
        kind = request.get("type")
        if kind == "speak":
            self._stop_current()
            overrides = {
                name: request[name]
                for name, allowed in ALLOWED_OVERRIDES.items()
                if isinstance(request.get(name), str)
                and request[name]
                and (allowed is None or request[name] in allowed)
            }
            await nursery.start(self._utterance, overrides)
        elif kind == "text" and self._stream is not None:
            text = request.get("text")
            if isinstance(text, str):
                await self._stream.push_text(text)
        elif kind == "end" and self._stream is not None:
            await self._stream.end_input()
        elif kind == "stop":
            if self._stop_current():
                self.stats.stopped += 1
            await self.send_json({"type": "stopped"})
            # Barge-in retired the socket; have a warm one ready for the next utterance.
            nursery.start_soon(self._prewarm)

    def _stop_current(self) -> bool:
        if self._scope is None:
            return False
        self._scope.cancel()
        self._scope = None
        self._stream = None
        return True

    async def _prewarm(self) -> None:
        try:
            await self.client.prewarm()
        except RimeError as exc:
            logger.warning("prewarm after stop failed: %s", exc)

    async def _utterance(
        self, overrides: dict[str, Any], task_status: trio.TaskStatus[None]
    ) -> None:
        self.stats.utterances += 1
        self.stats.active += 1
        scope = trio.CancelScope()
        self._scope = scope
        started = False
        try:
            with scope:
                async with self.client.stream(**overrides) as stream:
                    self._stream = stream
                    task_status.started()
                    started = True
                    await self._forward(stream)
        except RimeError as exc:
            self.stats.errors += 1
            if not started:
                task_status.started()
            await self.send_json({"type": "error", "message": str(exc)})
        except WebSocketDisconnect:
            pass  # the browser left; its session cancels everything
        finally:
            self.stats._utterance_ended()
            if self._scope is scope:
                self._scope = None
                self._stream = None

    async def _forward(self, stream: SpeechStream) -> None:
        options = stream.options
        await self.send_json(
            {
                "type": "started",
                "sampleRate": options.sample_rate,
                "format": options.audio_format,
                "model": options.model,
                "speaker": options.speaker,
            }
        )
        async for event in stream:
            if isinstance(event, AudioChunk):
                await self.send_bytes(event.data)
            else:
                await self.send_json(
                    {"type": "word", "word": event.word, "start": event.start, "end": event.end}
                )
        await self.send_json({"type": "done", "audioSeconds": stream.audio_seconds})


def _page() -> str:
    return resources.files("rime_trio.web").joinpath("static/index.html").read_text("utf-8")


def create_app(
    client_factory: Callable[[], RimeClient], *, stats: WebStats | None = None
) -> Starlette:
    """Build the app. *client_factory* makes the one :class:`RimeClient` the app shares; it
    is entered in the lifespan (and prewarmed in streaming mode) and closed at shutdown."""
    app_stats = stats or WebStats()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with client_factory() as client:
            if client.capabilities.streaming:
                try:
                    await client.prewarm()
                except RimeError as exc:
                    logger.warning("prewarm at startup failed: %s", exc)
            app.state.client = client
            yield

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(_page())

    async def stats_endpoint(request: Request) -> JSONResponse:
        client: RimeClient = request.app.state.client
        data = app_stats.snapshot()
        data["pool"] = {"idle": client.pool.idle, "opened": client.pool.stats.opened}
        return JSONResponse(data)

    async def speak(websocket: WebSocket) -> None:
        await websocket.accept()
        app_stats.sessions += 1
        await _Session(websocket, websocket.app.state.client, app_stats).run()

    return Starlette(
        routes=[
            Route("/", page),
            Route("/stats", stats_endpoint),
            WebSocketRoute("/ws", speak),
        ],
        lifespan=lifespan,
    )
