"""Embedding rime-trio in FastAPI on asyncio, served by uvicorn.

The pattern of embed_starlette.py, on the event loop most ASGI apps run on:

- one RimeClient per app, opened in the lifespan (pool prewarmed) and closed at shutdown;
  every WebSocket session shares it, and each utterance streams over a pooled socket;
- the browser protocol of ``rime-trio serve``, so its page (served here at ``/``) works as
  is: JSON in (``speak``, ``text``, ``end``, ``stop``); out, binary frames of raw 16-bit PCM
  for audio (no base64 on the last hop) and JSON for word timestamps and status
  (``started``, ``word``, ``done``, ``stopped``, ``error``);
- when the browser says stop or leaves, the utterance is cancelled: its socket is closed
  (eos teardown, shielded and bounded), no socket or task is leaked;
- only your own pages may connect: browsers do not apply CORS to WebSockets, so without
  the AccessGuard any site a user visits could speak on your API key. It refuses (403)
  handshakes whose Origin is neither this server's own nor in ``allowed_origins``, and
  requests whose Host does not name this server (DNS rebinding), before the app runs.
  Serving beyond loopback? Pass a ``token`` too (see AccessPolicy);
- each session is bounded: characters per utterance, utterances per minute, one utterance
  at a time, and the size of a message.

Nothing below is asyncio-specific (AnyIO task groups and cancel scopes): the same app runs
on trio under hypercorn. uvicorn is what makes it asyncio.

Run it:  pip install 'rime-trio[examples]'
         python examples/embed_fastapi.py --emulator     # offline, the bundled emulator
         RIME_API_KEY=... python examples/embed_fastapi.py  # Rime itself
and open the printed link (http://127.0.0.1:8000/).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import anyio
import uvicorn
from anyio.abc import TaskGroup, TaskStatus
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse
from starlette.middleware import Middleware

import rime_trio
from rime_trio.web import AccessGuard, AccessPolicy, SlidingWindow, select_subprotocol

MAX_TEXT_CHARS = 5_000  # per utterance: the text that would go over stops it, nothing is cut
MAX_MESSAGE_CHARS = 65_536  # per incoming message, checked before it is parsed
UTTERANCES_PER_MINUTE = 30  # per session
# rime-trio serve's page; it speaks the protocol below.
PAGE = resources.files("rime_trio.web").joinpath("static/index.html").read_text("utf-8")


@dataclass(eq=False)
class Utterance:
    number: int
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    stream: rime_trio.SpeechStream | None = None
    chars: int = 0


class Session:
    """One browser WebSocket: ``speak`` opens an utterance, ``text`` and ``end`` feed it,
    ``stop`` cancels it. One utterance at a time."""

    def __init__(self, websocket: WebSocket, client: rime_trio.RimeClient) -> None:
        self.websocket = websocket
        self.client = client
        self.current: Utterance | None = None
        self.count = 0
        self.rate = SlidingWindow(UTTERANCES_PER_MINUTE)
        self.send_lock = anyio.Lock()  # audio and replies are sent from two tasks

    async def send(self, data: bytes | dict[str, Any]) -> None:
        async with self.send_lock:
            if isinstance(data, bytes):
                await self.websocket.send_bytes(data)
            else:
                await self.websocket.send_text(json.dumps(data))

    async def error(self, code: str, message: str, **extra: Any) -> None:
        # Answered, and the connection stays usable.
        await self.send({"type": "error", "code": code, "message": message, **extra})

    async def run(self) -> None:
        async with anyio.create_task_group() as task_group:
            try:
                while True:
                    message = await self.websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        break
                    await self.handle(message.get("text"), task_group)
            finally:
                task_group.cancel_scope.cancel()  # the browser left: stop what is speaking

    async def handle(self, text: str | None, task_group: TaskGroup) -> None:
        if text is None:
            await self.error("bad_message", "messages are JSON text, not binary")
            return
        if len(text) > MAX_MESSAGE_CHARS:  # checked before a huge message costs a huge parse
            await self.error("message_too_long", f"at most {MAX_MESSAGE_CHARS} characters")
            return
        try:
            request = json.loads(text)
        except ValueError:
            request = None
        if not isinstance(request, dict):
            await self.error("bad_message", "messages are JSON objects")
            return
        kind, current = request.get("type"), self.current
        if kind == "speak":
            await self.speak(request, task_group)
        elif kind == "text":
            piece = request.get("text")
            if isinstance(piece, str) and current is not None and current.stream is not None:
                await self.push(current, current.stream, piece)  # else: text after a stop
        elif kind == "end":
            if current is not None and current.stream is not None:
                await current.stream.end_input()
        elif kind == "stop":
            if current is not None:
                self.cancel(current)
            await self.send({"type": "stopped"})
        else:
            await self.error("bad_message", f"unknown message type {kind!r}")

    async def speak(self, request: dict[str, Any], task_group: TaskGroup) -> None:
        if self.current is not None:
            await self.error("busy", "one utterance at a time: send stop first")
            return
        retry_after = self.rate.acquire(anyio.current_time())
        if retry_after:
            message = f"at most {UTTERANCES_PER_MINUTE} utterances a minute"
            await self.error("rate_limited", message, retryAfter=round(retry_after, 1))
            return
        # The page may pick the model and voice (RimeOptions validates them); nothing else.
        overrides = {
            name: request[name]
            for name in ("model", "speaker")
            if isinstance(request.get(name), str) and request[name]
        }
        await task_group.start(self.utterance, overrides)

    async def push(self, utterance: Utterance, stream: rime_trio.SpeechStream, text: str) -> None:
        utterance.chars += len(text)
        if utterance.chars > MAX_TEXT_CHARS:
            self.cancel(utterance)  # stopped, rather than spoken silently truncated
            await self.error(
                "text_too_long",
                f"an utterance holds at most {MAX_TEXT_CHARS} characters; it was stopped",
                utterance=utterance.number,
            )
            return
        with contextlib.suppress(rime_trio.StreamClosed):  # it just ended; its task says why
            await stream.push_text(text)

    def cancel(self, utterance: Utterance) -> None:
        utterance.scope.cancel()
        self.release(utterance)

    def release(self, utterance: Utterance) -> None:
        if self.current is utterance:
            self.current = None

    async def utterance(self, overrides: dict[str, Any], task_status: TaskStatus[None]) -> None:
        self.count += 1
        utterance = self.current = Utterance(self.count)
        number = utterance.number
        try:
            with utterance.scope:
                async with self.client.stream(**overrides) as stream:
                    utterance.stream = stream
                    task_status.started()  # speak() returns: text can be pushed now
                    rate = stream.options.sample_rate
                    await self.send({"type": "started", "utterance": number, "sampleRate": rate})
                    async for event in stream:
                        if isinstance(event, rime_trio.AudioChunk):
                            await self.send(event.data)
                        else:
                            word = {"word": event.word, "start": event.start, "end": event.end}
                            await self.send({"type": "word", "utterance": number, **word})
                    self.release(utterance)  # before "done": a speak right after is not busy
                    seconds = stream.audio_seconds
                    await self.send({"type": "done", "utterance": number, "audioSeconds": seconds})
        except rime_trio.RimeError as exc:
            self.release(utterance)
            await self.error("synthesis_failed", str(exc), utterance=number)
        finally:
            self.release(utterance)
            if utterance.stream is None:
                task_status.started()  # it never opened (bad options): speak() returns


def build_app(
    options: rime_trio.RimeOptions, allowed_origins: Iterable[str] = (), token: str | None = None
) -> FastAPI:
    """The app, speaking with *options* (its streams go to the WebSocket of their server,
    whatever its scheme). *allowed_origins* admit pages served elsewhere; *token*, if set, is
    required on every WebSocket (the page sends the one in its link's ``#token=...``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with rime_trio.RimeClient(options) as client:
            await client.prewarm()  # the first utterance skips the handshake; a bad key
            # fails here, at startup, rather than in the first user's face
            app.state.rime = client
            yield  # the client (and its sockets) close when the server stops

    policy = AccessPolicy(allowed_origins=frozenset(allowed_origins), token=token)
    app = FastAPI(lifespan=lifespan, middleware=[Middleware(AccessGuard, policy=policy)])

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    @app.websocket("/ws")
    async def speak(websocket: WebSocket) -> None:
        # AccessGuard has checked Host, Origin (and the token) by now. The page offers the
        # "rime-trio" subprotocol, and a browser fails a handshake that does not select it.
        await websocket.accept(subprotocol=select_subprotocol(websocket.scope))
        try:
            await Session(websocket, websocket.app.state.rime).run()
        except* WebSocketDisconnect:
            pass  # the browser left while it was being answered

    return app


async def main(args: argparse.Namespace) -> None:
    async with AsyncExitStack() as stack:
        if args.emulator:
            from rime_trio.testing import open_emulator

            emulator = await stack.enter_async_context(open_emulator())
            options = rime_trio.RimeOptions(
                base_url=emulator.ws_url, api_key=emulator.config.api_key
            )
        else:  # Rime itself (or --base-url), with the key in $RIME_API_KEY
            options = rime_trio.RimeOptions(base_url=args.base_url)
        app = build_app(options, args.allow_origin)
        # Bound here, so the link is known at once (--port 0 picks a free port). Loopback
        # only: to serve anywhere else, pass build_app a token too.
        listening = socket.create_server(("127.0.0.1", args.port))
        stack.callback(listening.close)
        # wsproto: uvicorn's default WebSocket layer logs a spurious ERROR for every handshake
        # the AccessGuard refuses (Kludex/uvicorn#3138); the wsproto one does not.
        config = uvicorn.Config(app, lifespan="on", ws="wsproto", log_level="warning")
        print(f"Speak page: http://127.0.0.1:{listening.getsockname()[1]}/", flush=True)
        await uvicorn.Server(config).serve(sockets=[listening])  # until Ctrl-C


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="rime-trio in FastAPI, served by uvicorn")
    parser.add_argument("--emulator", action="store_true", help="use the bundled emulator")
    parser.add_argument("--base-url", help="a Rime-compatible ws:// or wss:// URL")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN")
    try:
        asyncio.run(main(parser.parse_args()))  # anyio.run(..., backend="asyncio") works too
    except rime_trio.ConfigurationError as exc:
        sys.exit(f"embed_fastapi: {exc}")
    except KeyboardInterrupt:
        pass  # Ctrl-C: uvicorn has shut down (sessions, then the client), then re-raised it
