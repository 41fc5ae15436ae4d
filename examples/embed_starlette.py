"""Embedding rime-trio in your own ASGI app: the pattern in about 60 lines.

- one RimeClient per app, opened in the lifespan (pool prewarmed) and closed at shutdown;
- every request shares it; each WebSocket session streams over a pooled socket;
- when the browser disconnects, the stream is cancelled: eos teardown, no leaked socket;
- only your own pages may connect: browsers do not apply CORS to WebSockets, so without
  the AccessGuard any site a user visits could speak on your API key. It refuses (403)
  handshakes whose Origin is neither this server's own nor in ``allowed_origins``, and
  requests whose Host does not name this server (DNS rebinding), before the app runs;
- text per session is capped, so one connection cannot queue unbounded speech.

The app is AnyIO code, so it runs on trio (as below, hypercorn's trio worker) and on asyncio
(hypercorn's asyncio worker, or uvicorn: see embed_fastapi.py) alike.

Run it against the bundled emulator:  python examples/embed_starlette.py
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

import rime_trio
from rime_trio.web import AccessGuard, AccessPolicy

MAX_TEXT_CHARS = 5_000  # per session: beyond it the session is closed, not spoken


def build_app(allowed_origins: Iterable[str] = (), **client_options: object) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with rime_trio.RimeClient(**client_options) as client:  # type: ignore[arg-type]
            await client.prewarm()  # the first utterance skips the handshake
            app.state.rime = client
            yield  # the client (and its sockets) close when the server stops

    async def tts(websocket: WebSocket) -> None:
        await websocket.accept()  # AccessGuard has checked Host and Origin by now
        client: rime_trio.RimeClient = websocket.app.state.rime
        async with anyio.create_task_group() as nursery, client.stream() as stream:

            async def forward_audio() -> None:
                async for event in stream:
                    if isinstance(event, rime_trio.AudioChunk):
                        await websocket.send_bytes(event.data)  # raw PCM, no base64
                    else:
                        await websocket.send_text(
                            json.dumps({"word": event.word, "start": event.start})
                        )
                await websocket.close()

            nursery.start_soon(forward_audio)
            sent = 0
            try:
                while sent <= MAX_TEXT_CHARS:
                    text = await websocket.receive_text()  # raises when the browser leaves
                    sent += len(text)
                    if sent <= MAX_TEXT_CHARS:
                        await stream.push_text(text)
                        # A message is what the page had to say: speak all of it now, even
                        # a last sentence with nothing after it yet.
                        await stream.flush()
            except WebSocketDisconnect:
                pass
            too_long = sent > MAX_TEXT_CHARS
            # Browser gone (or over the limit): cancel whatever is still speaking.
            nursery.cancel_scope.cancel()
        if too_long:  # closed after the audio task ended, so nothing sends after the close
            await websocket.close(code=1008, reason="text too long")  # policy violation

    policy = AccessPolicy(allowed_origins=frozenset(allowed_origins))
    return Starlette(
        routes=[WebSocketRoute("/tts", tts)],
        middleware=[Middleware(AccessGuard, policy=policy)],
        lifespan=lifespan,
    )


async def main() -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    from rime_trio.testing import open_emulator

    async with open_emulator() as emulator:
        app = build_app(base_url=emulator.ws_url, api_key=emulator.config.api_key)
        config = Config()
        config.bind = ["127.0.0.1:8000"]
        await serve(app, config)  # type: ignore[arg-type]


if __name__ == "__main__":
    anyio.run(main, backend="trio")  # plain trio.run(main) works the same
