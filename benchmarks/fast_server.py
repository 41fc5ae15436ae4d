"""A minimal, fast Rime-compatible /ws3 server for benchmarks only.

The bundled emulator is a faithful server model, and its own work per message (about 3 ms a
round trip here) hides most of what a client costs. This server does next to nothing: it
answers each synthesis with frames rendered once and replayed, on asyncio and the
``websockets`` library (with its C speedups), in its own process. Against it, a floor of a few
hundred microseconds shows the network stack, and a client's own cost stands out.

Protocol subset: text messages (contextId echoed), ``flush``, ``clear``, ``eos``. Text ending
in a sentence end is synthesized on arrival, the rest on ``flush``/``eos``; every run ends
with a ``done`` tagged like its audio; ``eos`` closes the socket after the last run.

Run: ``python -m benchmarks.fast_server`` (prints ``ws://127.0.0.1:PORT``; SIGINT stops it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import sys
from functools import lru_cache

import websockets
from websockets.asyncio.server import ServerConnection, serve

from rime_trio.testing import render_speech

API_KEY = "bench-key"
RATE = 24000
CHUNK_BYTES = 4800
_SENTENCE_END = re.compile(r"""[.?!…]["'”’)\]]*\s*$""")


@lru_cache(maxsize=256)
def frames_for(text: str) -> tuple[tuple[str, ...], str]:
    """The chunk frames and the timestamps frame of *text*, each split where the contextId
    goes (so a run costs string joins, not JSON work)."""
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


async def handle(ws: ServerConnection) -> None:
    request = ws.request
    if request is None or request.headers.get("Authorization") != f"Bearer {API_KEY}":
        await ws.close(1008, "unauthorized")
        return
    buffer: list[str] = []
    tag = "null"

    async def speak() -> None:
        if not buffer or not "".join(buffer).strip():
            buffer.clear()
            return
        chunks, stamps = frames_for("".join(buffer))
        buffer.clear()
        end = tag + "}"
        for n, chunk in enumerate(chunks):
            await ws.send(chunk + end)
            if n == 0:
                await ws.send(stamps + end)
        await ws.send('{"type": "done", "contextId": ' + end)

    async for frame in ws:
        message = json.loads(frame)
        if "text" in message:
            if "contextId" in message:
                tag = json.dumps(message["contextId"])
            buffer.append(message["text"])
            if _SENTENCE_END.search(message["text"]):
                await speak()
        elif message.get("operation") in ("flush", "eos"):
            await speak()
            if message["operation"] == "eos":
                await ws.close()
                return
        elif message.get("operation") == "clear":
            buffer.clear()


async def main(port: int = 0) -> None:
    async with serve(handle, "127.0.0.1", port, compression=None, max_size=2**22) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        print(f"ws://127.0.0.1:{bound}", flush=True)
        stop = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set_result, None)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
        await stop


if __name__ == "__main__":
    assert websockets.__version__
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
