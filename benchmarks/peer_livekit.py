"""Drives livekit-plugins-rime (ws3 mode) against the same emulator, for `nox -s bench_peers`.

Runs under asyncio in its own process; prints one JSON object with warm and cold TTFA samples.
Both sides measure the same thing: from handing the first sentence to the client until the
first audio reaches the caller.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp
from livekit.plugins import rime

SENTENCE = "Hello there, this is a short sentence. "


def make_tts(ws_url: str, api_key: str, session: aiohttp.ClientSession) -> rime.TTS:
    return rime.TTS(
        base_url=ws_url,
        api_key=api_key,
        model="coda",
        speaker="astra",
        sample_rate=24000,
        use_websocket=True,
        http_session=session,
        allow_custom_endpoint=True,
    )


async def first_audio(tts: rime.TTS) -> float:
    stream = tts.stream()
    try:
        start = time.perf_counter()
        stream.push_text(SENTENCE)
        stream.flush()  # marks the sentence complete: the plugin's fastest path
        async for _ in stream:
            elapsed = time.perf_counter() - start
            break
        stream.end_input()
        async for _ in stream:
            pass
    finally:
        await stream.aclose()
    return elapsed


async def main(ws_url: str, api_key: str, iterations: int, cold_iterations: int) -> None:
    async with aiohttp.ClientSession() as session:
        tts = make_tts(ws_url, api_key, session)
        tts.prewarm()
        warm = []
        for i in range(iterations + 5):
            sample = await first_audio(tts)
            if i >= 5:
                warm.append(sample)
        await tts.aclose()
        cold = []
        for i in range(cold_iterations + 3):
            fresh = make_tts(ws_url, api_key, session)  # a new pool: the stream must connect
            sample = await first_audio(fresh)
            await fresh.aclose()
            if i >= 3:
                cold.append(sample)
    print(json.dumps({"warm": warm, "cold": cold}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("ws_url")
    parser.add_argument("api_key")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--cold-iterations", type=int, default=25)
    args = parser.parse_args()
    asyncio.run(main(args.ws_url, args.api_key, args.iterations, args.cold_iterations))
