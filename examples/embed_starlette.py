"""Embedding rime-trio in your own ASGI app: the pattern in about 40 lines.

- one RimeClient per app, opened in the lifespan (pool prewarmed) and closed at shutdown;
- every request shares it; each WebSocket session streams over a pooled socket;
- when the browser disconnects, the stream is cancelled: eos teardown, no leaked socket.

Run it against the bundled emulator:  python examples/embed_starlette.py
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

import rime_trio


def build_app(**client_options: object) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with rime_trio.RimeClient(**client_options) as client:  # type: ignore[arg-type]
            await client.prewarm()  # the first utterance skips the handshake
            app.state.rime = client
            yield  # the client (and its sockets) close when the server stops

    async def tts(websocket: WebSocket) -> None:
        await websocket.accept()
        client: rime_trio.RimeClient = websocket.app.state.rime
        async with trio.open_nursery() as nursery, client.stream() as stream:

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
            async for text in websocket.iter_text():  # ends when the browser leaves
                await stream.push_text(text)
            # Browser gone (or done sending): cancel whatever is still speaking.
            nursery.cancel_scope.cancel()

    return Starlette(routes=[WebSocketRoute("/tts", tts)], lifespan=lifespan)


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
    import anyio

    anyio.run(main, backend="trio")  # plain trio.run(main) works the same
