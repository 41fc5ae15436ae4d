"""A minimal, fast Rime-compatible /ws3 server for benchmarks only.

The bundled emulator is a faithful server model, and its own work per message (about 3 ms a
round trip here) hides most of what a client costs. This server does next to nothing: it
answers each synthesis with frames rendered once and replayed, on asyncio and the
``websockets`` library (with its C speedups), in its own process. Against it, a floor of a few
hundred microseconds shows the network stack, and a client's own cost stands out.

Protocol subset: text messages (contextId echoed), ``flush``, ``clear``, ``eos``.

* Text ending in a sentence end is synthesized on arrival (``bySentence``): its chunks, with
  the ``timestamps`` message after the first chunk, tagged with the contextId of the latest
  text message.
* ``flush`` synthesizes whatever text is left, then always answers ``done`` (tagged with the
  flush's own contextId if it has one). So a client that sends several sentences and one
  flush (livekit-plugins-rime) gets one ``done`` after all of its audio, and one that flushes
  each sentence (rime-trio) gets one per sentence: what Rime's server does when text arrives
  faster than it synthesizes (its ``done`` follows a run only once no text is waiting).
* ``eos`` synthesizes the rest, answers ``done`` if audio went out since the last one, and
  closes the socket (code 1000).

``GET /stats`` answers ``{"handshakes": N, "open": M}``: WebSocket handshakes accepted since
the start, and sockets open now (to count the sockets a client opens).

Run: ``python -m benchmarks.fast_server [PORT]`` (prints ``ws://127.0.0.1:PORT``; SIGINT or
SIGTERM stops it).
"""

from __future__ import annotations

import asyncio
import base64
import http
import json
import re
import signal
import sys
from functools import lru_cache

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from rime_trio.testing import render_speech

API_KEY = "bench-key"
RATE = 24000
CHUNK_BYTES = 4800
_SENTENCE_END = re.compile(r"""[.?!…]["'”’)\]]*\s*$""")


class Counters:
    handshakes = 0
    open = 0


@lru_cache(maxsize=8192)
def frames_for(text: str) -> tuple[tuple[str, ...], str]:
    """The chunk frames and the timestamps frame of *text* (stripped), each split where the
    contextId goes (so a run costs string joins, not JSON work)."""
    speech = render_speech(text, RATE)
    pcm = speech.pcm
    chunks = tuple(
        '{"type": "chunk", "data": "'
        + base64.b64encode(pcm[i : i + CHUNK_BYTES]).decode("ascii")
        + '", "contextId": '
        for i in range(0, len(pcm), CHUNK_BYTES)
    )
    stamps = json.dumps(
        {"words": list(speech.words), "start": list(speech.starts), "end": list(speech.ends)}
    )
    return chunks, '{"type": "timestamps", "word_timestamps": ' + stamps + ', "contextId": '


def stats_request(connection: ServerConnection, request: Request) -> Response | None:
    """``GET /stats``: the counters, as plain HTTP (no WebSocket handshake)."""
    if request.path.split("?", 1)[0] != "/stats":
        return None
    body = json.dumps({"handshakes": Counters.handshakes, "open": Counters.open})
    return connection.respond(http.HTTPStatus.OK, body)


async def handle(ws: ServerConnection) -> None:
    request = ws.request
    if request is None or request.headers.get("Authorization") != f"Bearer {API_KEY}":
        await ws.close(1008, "unauthorized")
        return
    Counters.handshakes += 1
    Counters.open += 1
    try:
        await converse(ws)
    finally:
        Counters.open -= 1


async def converse(ws: ServerConnection) -> None:
    buffer: list[str] = []
    tag = "null"
    owed_done = False  # audio went out since the last done

    async def speak() -> None:
        nonlocal owed_done
        text = "".join(buffer).strip()
        buffer.clear()
        if not text:
            return
        chunks, stamps = frames_for(text)
        end = tag + "}"
        for n, chunk in enumerate(chunks):
            await ws.send(chunk + end)
            if n == 0:
                await ws.send(stamps + end)
        owed_done = True

    async def done() -> None:
        nonlocal owed_done
        owed_done = False
        await ws.send('{"type": "done", "contextId": ' + tag + "}")

    async for frame in ws:
        message = json.loads(frame)
        operation = message.get("operation")
        if "contextId" in message:
            tag = json.dumps(message["contextId"])
        if "text" in message:
            buffer.append(message["text"])
            if _SENTENCE_END.search(message["text"]):
                await speak()
        elif operation == "flush":
            await speak()
            await done()
        elif operation == "eos":
            await speak()
            if owed_done:
                await done()
            await ws.close()
            return
        elif operation == "clear":
            buffer.clear()


async def main(port: int = 0) -> None:
    async with serve(
        handle,
        "127.0.0.1",
        port,
        compression=None,
        max_size=2**22,
        process_request=stats_request,
    ) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        print(f"ws://127.0.0.1:{bound}", flush=True)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
