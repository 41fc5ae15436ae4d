"""livekit-plugins-rime (ws3 mode) as a lockstep worker, for ``nox -s bench_peers``.

It runs under asyncio in its own process, against the same server as rime-trio, and does one
round per command read from stdin, answering one JSON line on stdout, so the bench
interleaves its rounds with rime-trio's and the floors' (drift on a busy machine hits all
alike). While it waits for a command the process is idle.

Commands (the definitions are rime-trio's, see benchmarks/README.md):

* ``warm``: one utterance on the prewarmed TTS, timed from ``tts.stream()`` to the first
  audio frame; ``{"ttfa", "cpu"}`` (process CPU of the whole utterance).
* ``cold``: a new ``TTS`` (untimed), then the same; CPU includes creating and closing it.
* ``construct``: ``{"cpu"}`` of ``rime.TTS(...)`` alone.
* ``throughput N``: one stream of N sentences; ``{"audio_seconds", "cpu"}``.
* ``concurrency N``: N streams started together (the two-sentence text); ``{"ttfa": [...],
  "cpu", "wall", "errors", "first_error"}``, TTFA from the start of the batch.
* ``quit``.

How the plugin speaks ws3 (livekit/plugins/rime/_legacy_websocket_adapter.py, 1.8.9): each
sentence its tokenizer cuts goes out as ``{"text": sentence + " ", "contextId": id}``; when
the input ends, one ``{"operation": "flush", "contextId": id}``; the stream ends at the first
``done``, and the socket goes back to its pool (closed later with ``eos``). The fast server
answers a flush with exactly one ``done`` after all the audio before it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from typing import Any

import aiohttp
from livekit.plugins import rime

from ._common import SENTENCE, TWO_SENTENCES, throughput_sentences

Reply = dict[str, Any]


class Worker:
    def __init__(self, ws_url: str, api_key: str, session: aiohttp.ClientSession) -> None:
        self.ws_url = ws_url
        self.api_key = api_key
        self.session = session
        self.tts = self.make_tts()
        self.tts.prewarm()

    def make_tts(self) -> rime.TTS:
        return rime.TTS(
            base_url=self.ws_url,
            api_key=self.api_key,
            model="coda",
            speaker="astra",
            sample_rate=24000,
            use_websocket=True,
            http_session=self.session,
            allow_custom_endpoint=True,
        )

    async def utterance(
        self, tts: rime.TTS, text: str, start: float, *, end_at_once: bool = True
    ) -> tuple[float, float]:
        """Speak *text*; return (time from *start* to the first audio, audio seconds).

        ``flush()`` marks the text complete (the plugin's tokenizer holds a last sentence
        until then); with *end_at_once* False the input ends only after the first audio,
        as rime-trio's warm and cold rounds do.
        """
        first = float("nan")
        seconds = 0.0
        started = False
        stream = tts.stream()
        try:
            stream.push_text(text)
            stream.flush()
            if end_at_once:
                stream.end_input()
            async for event in stream:
                if not started:
                    started = True
                    first = time.perf_counter() - start
                    if not end_at_once:
                        stream.end_input()
                seconds += event.frame.duration
        finally:
            await stream.aclose()
        return first, seconds

    async def warm(self) -> Reply:
        cpu = time.process_time()
        ttfa, _ = await self.utterance(self.tts, SENTENCE, time.perf_counter(), end_at_once=False)
        return {"ttfa": ttfa, "cpu": time.process_time() - cpu}

    async def cold(self) -> Reply:
        cpu = time.process_time()
        tts = self.make_tts()
        try:
            ttfa, _ = await self.utterance(tts, SENTENCE, time.perf_counter(), end_at_once=False)
        finally:
            await tts.aclose()
        return {"ttfa": ttfa, "cpu": time.process_time() - cpu}

    async def construct(self) -> Reply:
        cpu = time.process_time()
        tts = self.make_tts()
        elapsed = time.process_time() - cpu
        await tts.aclose()
        return {"cpu": elapsed}

    async def throughput(self, sentences: int) -> Reply:
        text = "".join(throughput_sentences(sentences))
        cpu = time.process_time()
        _, seconds = await self.utterance(self.tts, text, time.perf_counter())
        return {"audio_seconds": seconds, "cpu": time.process_time() - cpu}

    async def concurrency(self, n: int) -> Reply:
        errors: list[str] = []
        cpu = time.process_time()
        start = time.perf_counter()
        results = await asyncio.gather(
            *(self.utterance(self.tts, TWO_SENTENCES, start) for _ in range(n)),
            return_exceptions=True,
        )
        wall = time.perf_counter() - start
        ttfa = []
        for result in results:
            if isinstance(result, BaseException):
                errors.append(repr(result))
            else:
                ttfa.append(result[0])
        return {
            "ttfa": ttfa,
            "cpu": time.process_time() - cpu,
            "wall": wall,
            "errors": len(errors),
            "first_error": errors[0] if errors else None,
        }

    async def handle(self, command: str) -> Reply:
        name, *args = command.split()
        if name == "warm":
            return await self.warm()
        if name == "cold":
            return await self.cold()
        if name == "construct":
            return await self.construct()
        if name == "throughput":
            return await self.throughput(int(args[0]))
        if name == "concurrency":
            return await self.concurrency(int(args[0]))
        return {"error": f"unknown command {command!r}"}


async def main(ws_url: str, api_key: str) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with aiohttp.ClientSession() as session:
        worker = Worker(ws_url, api_key, session)
        print(json.dumps({"ready": True, "version": rime.__version__}), flush=True)
        while line := (await reader.readline()).decode().strip():
            if line == "quit":
                break
            try:
                reply = await worker.handle(line)
            except Exception as exc:  # the bench reports it and stops asking
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(reply), flush=True)
        await worker.tts.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("ws_url")
    parser.add_argument("api_key")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(main(args.ws_url, args.api_key))
