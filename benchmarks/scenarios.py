"""The measured scenarios. Each takes a server (the fast server or the emulator, each in its
own process) and returns plain data; benchmarks/bench.py runs them and prints the tables.

Every latency figure is measured in the same run as its floors, rounds interleaved (and the
order rotated each round), so drift on a busy machine hits every side alike.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel
import httpx

from rime_trio import AudioChunk, RimeClient, RimeError, SpeechStream
from rime_trio._options import websocket_url

from . import floors
from ._common import (
    SENTENCE,
    TWO_SENTENCES,
    ServerProcess,
    mean,
    summarize,
    throughput_sentences,
)
from ._peer import Peer, PeerError

RIME_TRIO = "rime-trio"
# The same under segment="bySentence" (a socket per stream), beside the default "never".
RIME_TRIO_BY_SENTENCE = "rime-trio, segment=bySentence"
TRIO_WEBSOCKET = "bare trio-websocket"
WSPROTO = "bare wsproto"
WEBSOCKETS = "bare websockets"
WSPROTO_FRESH = "bare wsproto, a fresh socket per utterance"
LIVEKIT = "livekit-plugins-rime"

#: a round: (seconds to first audio, client CPU seconds of the whole round)
Round = Callable[[], Awaitable[tuple[float, float]]]
#: opens a bare loop's socket
Opener = Callable[[str], contextlib.AbstractAsyncContextManager[floors.Floor]]


@dataclass(frozen=True)
class Backend:
    """The event loop a run measures rime-trio on, and the bare loops set beside it there."""

    name: str
    #: the bare loop the backend's targets refer to
    floor: str
    #: every bare loop measured on this backend, the floor first
    floors: dict[str, Opener]


TRIO = Backend(
    "trio",
    TRIO_WEBSOCKET,
    {TRIO_WEBSOCKET: floors.open_trio_websocket, WSPROTO: floors.open_wsproto},
)
#: on asyncio the floor is rime-trio's own transport bare (wsproto over an AnyIO stream);
#: the ``websockets`` client beside it shows what the other choice would cost
ASYNCIO = Backend(
    "asyncio", WSPROTO, {WSPROTO: floors.open_wsproto, WEBSOCKETS: floors.open_websockets}
)
BACKENDS = {backend.name: backend for backend in (TRIO, ASYNCIO)}


@dataclass(frozen=True)
class Baseline:
    """rime-trio at another revision, measured beside this checkout (``--baseline REV``)."""

    name: str
    client: type[RimeClient]
    #: its own AudioChunk class
    chunk: type


@dataclass
class Series:
    """One contestant's rounds in a latency scenario."""

    ttfa: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {**summarize(self.ttfa), "cpu": mean(self.cpu)}


@dataclass
class Progress:
    """Rounds done, on stderr now and then (a long run shows where it is)."""

    label: str
    total: int
    every: float = 10.0
    _last: float = field(default_factory=time.monotonic)

    def tick(self, done: int) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            print(f"    {self.label}: {done}/{self.total}", flush=True, file=sys.stderr)


async def interleave(
    contestants: dict[str, Round], rounds: int, warmup: int, problems: list[str], label: str
) -> dict[str, dict[str, Any]]:
    """Run every contestant once per round, the order rotated each round; the first *warmup*
    rounds are discarded. A peer that fails is dropped (the reason kept in *problems*)."""
    series = {name: Series() for name in contestants}
    names = list(contestants)
    dropped: set[str] = set()
    progress = Progress(label, warmup + rounds)
    for i in range(warmup + rounds):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            if name in dropped:
                continue
            try:
                ttfa, cpu = await contestants[name]()
            except PeerError as exc:
                dropped.add(name)
                problems.append(f"{name} ({label}): {exc}")
                continue
            if i >= warmup:
                series[name].ttfa.append(ttfa)
                series[name].cpu.append(cpu)
        progress.tick(i + 1)
    return {name: s.summary() for name, s in series.items() if name not in dropped}


# ----------------------------------------------------------------------------- helpers


def client_options(server: ServerProcess, **extra: Any) -> dict[str, Any]:
    return {"base_url": server.ws_url, "api_key": server.api_key, **extra}


def raw_url(server: ServerProcess) -> str:
    """The /ws3 URL rime-trio uses (same query string), for the floors; but ``bySentence``:
    a floor sends a sentence and reads its audio, as rime-trio's ``never`` sends a sentence
    and its flush (the server speaks either at once)."""
    options = RimeClient(**client_options(server, segment="bySentence")).options
    return websocket_url(options)


async def settle(client: RimeClient) -> None:
    """Wait until the client's background work is done: the spare socket opened after a
    stream's first audio, and the closes of used sockets (in no TTFA; in the round's CPU
    where the caller counts it)."""
    with anyio.move_on_after(5):
        await client.pool.wait_teardowns()


async def server_stats(server: ServerProcess) -> dict[str, int] | None:
    """The fast server's counters (None for the emulator). A bare HTTP/1.0 GET: an HTTP
    client's own garbage would land in the next measured batch."""
    if server.stats_url is None:
        return None
    parts = urlsplit(server.stats_url)
    stream = await anyio.connect_tcp(parts.hostname or "", parts.port or 80)
    response = bytearray()
    async with stream:
        await stream.send(f"GET {parts.path} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode())
        with contextlib.suppress(anyio.EndOfStream):
            while True:
                response += await stream.receive(65536)
    _, _, body = bytes(response).partition(b"\r\n\r\n")
    counters: dict[str, int] = json.loads(body)
    return counters


async def speak(
    client: RimeClient,
    text: str,
    start: float,
    split: list[float | None] | None = None,
    chunk: type = AudioChunk,
) -> float:
    """One utterance as the issue defines it: enter ``client.stream()``, push *text*, wait
    for the first AudioChunk (time from *start*), then end the input and drain (untimed).
    *split*, if given, gets the times from *start* to the stream being open and to
    ``push_text`` returning. *chunk* is the audio event's class (a baseline revision has
    its own)."""
    async with client.stream() as stream:
        opened = time.perf_counter()
        await stream.push_text(text)
        pushed = time.perf_counter()
        while not isinstance(await stream.receive(), chunk):
            pass
        elapsed = time.perf_counter() - start
        await stream.end_input()
        async for _ in stream:
            pass
    if split is not None:
        # The client's own measure of the same span where it has one (StreamMetrics: first
        # text pushed to first audio taken, on the loop's clock); a baseline revision may not.
        metrics = getattr(stream, "metrics", None)
        measured = getattr(metrics, "time_to_first_audio", None)
        split += [opened - start, pushed - start, measured]
    return elapsed


# ----------------------------------------------------------------------------- rounds


def rime_trio_warm(
    client: RimeClient, splits: list[list[float | None]], chunk: type = AudioChunk
) -> Round:
    async def one() -> tuple[float, float]:
        cpu = time.process_time()
        split: list[float | None] = []
        ttfa = await speak(client, SENTENCE, time.perf_counter(), split, chunk)
        await settle(client)  # its spare socket is part of its cost
        splits.append([*split[:2], ttfa, split[2]])
        return ttfa, time.process_time() - cpu

    return one


def split_summary(splits: list[list[float | None]]) -> dict[str, float]:
    """Medians of a warm round's parts: entering ``client.stream()``, ``push_text``, and
    from there to the first audio."""
    if not splits:
        return {}
    opened = [s[0] for s in splits]
    pushed = [s[1] - s[0] for s in splits]
    rest = [s[2] - s[1] for s in splits]
    summary = {
        "stream_open": summarize(opened)["median"],
        "push_text": summarize(pushed)["median"],
        "to_first_audio": summarize(rest)["median"],
    }
    measured = [s[3] for s in splits if len(s) > 3 and s[3] is not None]
    if measured:
        # stream.metrics.time_to_first_audio: from the text pushed to the first chunk taken
        summary["metrics_ttfa"] = summarize(measured)["median"]
    return summary


def rime_trio_cold(server: ServerProcess, baseline: Baseline | None = None) -> Round:
    client_class = baseline.client if baseline else RimeClient
    chunk = baseline.chunk if baseline else AudioChunk

    async def one() -> tuple[float, float]:
        cpu = time.process_time()
        async with client_class(**client_options(server)) as client:
            ttfa = await speak(client, SENTENCE, time.perf_counter(), None, chunk)
        return ttfa, time.process_time() - cpu

    return one


def floor_warm(floor: floors.Floor) -> Round:
    count = 0

    async def one() -> tuple[float, float]:
        nonlocal count
        count += 1
        cpu = time.process_time()
        ttfa = await floors.first_audio(floor, SENTENCE, f"w#{count}", time.perf_counter())
        await floors.finish(floor)
        return ttfa, time.process_time() - cpu

    return one


class FreshSocketFloor:
    """The wsproto floor with rime-trio's socket discipline: every utterance on a socket of
    its own, opened during the previous round (its handshake counted in that round's CPU,
    not in any TTFA), ended with ``eos`` and the server's close."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._next: tuple[AsyncExitStack, floors.WsprotoFloor] | None = None
        self._count = 0

    async def _open_next(self) -> None:
        stack = AsyncExitStack()
        floor = await stack.enter_async_context(floors.open_wsproto(self._url))
        self._next = (stack, floor)

    async def round(self) -> tuple[float, float]:
        if self._next is None:
            await self._open_next()
        assert self._next is not None
        (stack, floor), self._next = self._next, None
        self._count += 1
        cpu = time.process_time()
        ttfa = await floors.first_audio(floor, SENTENCE, f"f#{self._count}", time.perf_counter())
        await floors.finish_with_eos(floor)
        await stack.aclose()
        await self._open_next()
        return ttfa, time.process_time() - cpu

    async def aclose(self) -> None:
        if self._next is not None:
            await self._next[0].aclose()
            self._next = None


def floor_cold(opener: Opener, url: str) -> Round:
    async def one() -> tuple[float, float]:
        cpu = time.process_time()
        start = time.perf_counter()  # from connect: TCP + WebSocket handshake
        async with opener(url) as floor:
            ttfa = await floors.first_audio(floor, SENTENCE, "cold", start)
            await floors.finish(floor)
        return ttfa, time.process_time() - cpu

    return one


def peer_round(peer: Peer, command: str) -> Round:
    async def one() -> tuple[float, float]:
        return await peer.round(command)

    return one


# ----------------------------------------------------------------------------- latency


async def _baseline_client(
    stack: AsyncExitStack, baseline: Baseline, server: ServerProcess, problems: list[str]
) -> RimeClient | None:
    """The baseline's client, entered and prewarmed; None (and why, in *problems*) if that
    revision cannot run here (say, a Trio-only one on asyncio)."""
    try:
        client = await stack.enter_async_context(baseline.client(**client_options(server)))
        await client.prewarm()
    except Exception as exc:  # any revision's failure, reported rather than fatal
        problems.append(f"{baseline.name} did not run: {type(exc).__name__}: {exc}")
        return None
    return client


async def warm_ttfa(
    server: ServerProcess,
    rounds: int,
    warmup: int,
    peer: Peer | None,
    problems: list[str],
    backend: Backend = TRIO,
    baseline: Baseline | None = None,
) -> dict[str, Any]:
    """Warm: a stream that finds a prewarmed (or spare) socket; floors on an open socket."""
    url = raw_url(server)
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(RimeClient(**client_options(server)))
        await client.prewarm()
        splits: list[list[float | None]] = []
        contestants = {RIME_TRIO: rime_trio_warm(client, splits)}
        if baseline is not None:
            old = await _baseline_client(stack, baseline, server, problems)
            if old is not None:
                contestants[baseline.name] = rime_trio_warm(old, [], baseline.chunk)
        for name, opener in backend.floors.items():
            contestants[name] = floor_warm(await stack.enter_async_context(opener(url)))
        fresh = FreshSocketFloor(url)
        stack.push_async_callback(fresh.aclose)
        contestants[WSPROTO_FRESH] = fresh.round
        if peer is not None:
            contestants[LIVEKIT] = peer_round(peer, "warm")
        label = f"warm ({server.name})"
        result = await interleave(contestants, rounds, warmup, problems, label)
        result[RIME_TRIO]["split"] = split_summary(splits[warmup:])
        stats = client.pool.stats
        if stats.reused < rounds + warmup:
            problems.append(
                f"{label}: only {stats.reused} of {rounds + warmup} rime-trio rounds found "
                "a socket opened ahead of time"
            )
    return result


async def cold_ttfa(
    server: ServerProcess,
    rounds: int,
    warmup: int,
    peer: Peer | None,
    problems: list[str],
    backend: Backend = TRIO,
    baseline: Baseline | None = None,
) -> dict[str, Any]:
    """Cold: a new client (created and entered untimed), timed from entering
    ``client.stream()``; floors timed from connect."""
    url = raw_url(server)
    contestants = {RIME_TRIO: rime_trio_cold(server)}
    if baseline is not None:
        async with AsyncExitStack() as stack:  # does that revision run on this backend?
            if await _baseline_client(stack, baseline, server, problems) is not None:
                contestants[baseline.name] = rime_trio_cold(server, baseline)
    for name, opener in backend.floors.items():
        contestants[name] = floor_cold(opener, url)
    if peer is not None:
        contestants[LIVEKIT] = peer_round(peer, "cold")
    # The TTFA of a cold rime-trio round starts after the client is entered.
    return await interleave(contestants, rounds, warmup, problems, f"cold ({server.name})")


async def construction_cpu(
    server: ServerProcess, rounds: int, peer: Peer | None, problems: list[str]
) -> dict[str, Any]:
    """CPU of ``RimeClient(...)`` plus ``__aenter__`` in WebSocket mode (exit untimed)."""
    samples: list[float] = []
    peer_samples: list[float] = []
    for i in range(rounds + 3):
        cpu = time.process_time()
        client = RimeClient(**client_options(server))
        await client.__aenter__()
        elapsed = time.process_time() - cpu
        await client.__aexit__(None, None, None)
        if i >= 3:
            samples.append(elapsed)
        if peer is not None and i < 3 + min(rounds, 50):
            try:
                reply = await peer.ask("construct")
            except PeerError as exc:
                problems.append(f"{LIVEKIT} (construction): {exc}")
                peer = None
                continue
            if i >= 3:
                peer_samples.append(float(reply["cpu"]))
    result: dict[str, Any] = {RIME_TRIO: summarize(samples)}
    if peer_samples:
        result[LIVEKIT] = summarize(peer_samples)
    return result


# ----------------------------------------------------------------------------- throughput


async def throughput(
    server: ServerProcess,
    sentences: int,
    rounds: int,
    peer: Peer | None,
    problems: list[str],
    backend: Backend = TRIO,
) -> dict[str, Any]:
    """One long stream of *sentences*: audio seconds per client CPU second (median of the
    rounds), rime-trio beside bare loops reading 64 KiB at a time, and the peer."""
    texts = throughput_sentences(sentences)
    text = "".join(texts)
    url = raw_url(server)
    rates: dict[str, list[float]] = {name: [] for name in (RIME_TRIO, *backend.floors)}
    audio: dict[str, float] = {}
    if peer is not None:
        rates[LIVEKIT] = []
    async with RimeClient(**client_options(server)) as client:
        await client.prewarm()

        async def ours() -> tuple[float, float]:
            seconds = 0.0
            cpu = time.process_time()
            async with client.stream() as stream:
                await stream.push_text(text)
                await stream.end_input()
                async for event in stream:
                    if isinstance(event, AudioChunk):
                        seconds += event.duration
            elapsed = time.process_time() - cpu
            await settle(client)
            return seconds, elapsed

        async def bare(opener: Opener) -> tuple[float, float]:
            async with opener(url) as floor:  # the socket is open before the CPU count
                cpu = time.process_time()
                seconds = await floors.long_stream(floor, texts)
                return seconds, time.process_time() - cpu

        async def livekit() -> tuple[float, float]:
            assert peer is not None
            reply = await peer.ask(f"throughput {sentences}")
            return float(reply["audio_seconds"]), float(reply["cpu"])

        contestants: dict[str, Callable[[], Awaitable[tuple[float, float]]]] = {RIME_TRIO: ours}
        for name, opener in backend.floors.items():
            contestants[name] = functools.partial(bare, opener)
        if peer is not None:
            contestants[LIVEKIT] = livekit
        names = list(contestants)
        for i in range(rounds):
            k = i % len(names)
            for name in names[k:] + names[:k]:
                if name not in rates:
                    continue
                try:
                    seconds, cpu = await contestants[name]()
                except PeerError as exc:
                    problems.append(f"{name} (throughput): {exc}")
                    del rates[name]
                    continue
                rates[name].append(seconds / cpu)
                audio[name] = seconds
    return {
        "rates": {name: summarize(values)["median"] for name, values in rates.items()},
        "audio_seconds": audio,
        "sentences": sentences,
        "rounds": rounds,
    }


# ----------------------------------------------------------------------------- concurrency


def batches_for(n: int, samples: int) -> int:
    """Batches of *n* concurrent streams so that a level has about *samples* streams."""
    return max(1, min(20, math.ceil(samples / n)))


async def concurrency(
    server: ServerProcess,
    levels: tuple[int, ...],
    samples: int,
    peer: Peer | None,
    peer_level: int,
    problems: list[str],
) -> list[dict[str, Any]]:
    """n streams started together on one (prewarmed) client, each speaking the two-sentence
    text; TTFA from the start of the batch. Several batches per level, on the same client
    (so at n=1, streams back to back). rime-trio under its default ``segment="never"``
    (a stream ends at its last done and leaves its socket to the next) and under
    ``bySentence`` (each stream ends with eos and the close: a socket each)."""
    rows: list[dict[str, Any]] = []
    # Untimed: the server renders this text's frames once, both clients warm their caches.
    async with RimeClient(**client_options(server)) as client:
        await _rime_trio_batch(client, 1, _Level(RIME_TRIO, 1))
    if peer is not None:
        try:
            await peer.ask("concurrency 1")
        except PeerError as exc:
            problems.append(f"{LIVEKIT} (concurrency): {exc}")
            peer = None
    for n in levels:
        batches = batches_for(n, samples)
        ours = _Level(RIME_TRIO, n)
        by_sentence = _Level(RIME_TRIO_BY_SENTENCE, n)
        theirs = _Level(LIVEKIT, n) if peer is not None and n == peer_level else None
        async with (
            RimeClient(**client_options(server)) as client,
            RimeClient(**client_options(server, segment="bySentence")) as other,
        ):
            await client.prewarm()
            await other.prewarm()
            for _ in range(batches):
                for level, rime in ((ours, client), (by_sentence, other)):
                    before = await server_stats(server)
                    opened = rime.pool.stats.opened
                    await _rime_trio_batch(rime, n, level)
                    level.sockets.append(rime.pool.stats.opened - opened)
                    level.add_handshakes(before, await server_stats(server))
                if theirs is not None and peer is not None:
                    before = await server_stats(server)
                    try:
                        reply = await peer.ask(f"concurrency {n}")
                    except PeerError as exc:
                        problems.append(f"{LIVEKIT} (concurrency {n}): {exc}")
                        theirs = None
                        continue
                    theirs.ttfa += [float(t) for t in reply["ttfa"]]
                    theirs.cpu.append(float(reply["cpu"]))
                    theirs.wall.append(float(reply["wall"]))
                    theirs.errors += int(reply["errors"])
                    theirs.first_error = theirs.first_error or reply["first_error"]
                    theirs.add_handshakes(before, await server_stats(server))
        print(f"    concurrency {n}: {batches} batches", flush=True, file=sys.stderr)
        rows.append(ours.row(batches))
        rows.append(by_sentence.row(batches))
        if theirs is not None:
            rows.append(theirs.row(batches))
    return rows


@dataclass
class _Level:
    client: str
    n: int
    ttfa: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # per batch
    wall: list[float] = field(default_factory=list)
    sockets: list[int] = field(default_factory=list)  # the client's own count, per batch
    handshakes: list[int] = field(default_factory=list)  # the server's count, per batch
    errors: int = 0
    first_error: str | None = None

    def add_handshakes(self, before: dict[str, int] | None, after: dict[str, int] | None) -> None:
        if before is not None and after is not None:
            self.handshakes.append(after["handshakes"] - before["handshakes"])

    def row(self, batches: int) -> dict[str, Any]:
        return {
            "client": self.client,
            "streams": self.n,
            "batches": batches,
            **summarize(self.ttfa),
            "cpu_per_stream": sum(self.cpu) / (self.n * len(self.cpu)) if self.cpu else math.nan,
            "wall": summarize(self.wall)["median"],
            "sockets_per_batch": mean(self.sockets) if self.sockets else None,
            "handshakes_per_batch": mean(self.handshakes) if self.handshakes else None,
            "errors": self.errors,
            "first_error": self.first_error,
        }


async def _rime_trio_batch(client: RimeClient, n: int, level: _Level) -> None:
    ttfa: list[float] = []

    async def one(start: float) -> None:
        first: float | None = None
        try:
            async with client.stream() as stream:
                await stream.push_text(TWO_SENTENCES)
                await stream.end_input()
                async for event in stream:
                    if first is None and isinstance(event, AudioChunk):
                        first = time.perf_counter() - start
        except RimeError as exc:
            level.errors += 1
            level.first_error = level.first_error or repr(exc)
            return
        if first is not None:
            ttfa.append(first)

    cpu = time.process_time()
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one, start)
    wall = time.perf_counter() - start
    await settle(client)  # the sockets' closes and the spare are part of the cost
    level.cpu.append(time.process_time() - cpu)
    level.wall.append(wall)
    level.ttfa += ttfa


# ----------------------------------------------------------------------------- emulator only


async def token_ttfa(server: ServerProcess, rounds: int, warmup: int) -> dict[str, Any]:
    """Words pushed one by one; time from the token that shows the first sentence ended (the
    one after its stop: until then, "sentence." may go on, as "rime.ai" does), beside the
    same sentence pushed at once (both timed from the push, on a prewarmed socket)."""
    tokens = ["Hello", " there", ",", " this", " is", " a", " short", " sentence", ".", " And"]
    rest = [" here", " is", " more", "."]
    by_token: list[float] = []
    whole: list[float] = []
    async with RimeClient(**client_options(server)) as client:
        await client.prewarm()
        for i in range(rounds + warmup):
            async with client.stream() as stream:
                for token in tokens[:-1]:
                    await stream.push_text(token)
                    await anyio.lowlevel.checkpoint()
                start = time.perf_counter()
                await stream.push_text(tokens[-1])
                while not isinstance(await stream.receive(), AudioChunk):
                    pass
                from_token = time.perf_counter() - start
                for word in rest:
                    await stream.push_text(word)
                await stream.end_input()
                async for _ in stream:
                    pass
            await settle(client)
            async with client.stream() as stream:
                sentence = await _from_push(stream)
            await settle(client)
            if i >= warmup:
                by_token.append(from_token)
                whole.append(sentence)
    return {"token": summarize(by_token), "sentence": summarize(whole)}


async def _from_push(stream: SpeechStream) -> float:
    start = time.perf_counter()
    await stream.push_text(SENTENCE)
    while not isinstance(await stream.receive(), AudioChunk):
        pass
    elapsed = time.perf_counter() - start
    await stream.end_input()
    async for _ in stream:
        pass
    return elapsed


async def http_ttfb(server: ServerProcess, rounds: int, warmup: int) -> dict[str, Any]:
    """HTTP mode: first chunk and whole body, beside raw httpx on a warm client."""
    assert server.http_url is not None
    series: dict[str, list[float]] = {"ttfb": [], "full": [], "raw_ttfb": [], "raw_full": []}
    body = {
        "text": SENTENCE,
        "speaker": "astra",
        "modelId": "coda",
        "lang": "eng",
        "samplingRate": 24000,
    }
    headers = {"Authorization": f"Bearer {server.api_key}", "Accept": "audio/pcm"}
    url = f"{server.http_url}/v1/rime-tts"
    async with (
        RimeClient(base_url=server.http_url, api_key=server.api_key) as client,
        httpx.AsyncClient() as raw,
    ):
        for i in range(rounds + warmup):
            sample: dict[str, float] = {}
            start = time.perf_counter()
            async with client.synthesize_chunks(SENTENCE) as chunks:
                async for _ in chunks:
                    sample["ttfb"] = time.perf_counter() - start
                    break
            start = time.perf_counter()
            await client.synthesize(SENTENCE)
            sample["full"] = time.perf_counter() - start
            start = time.perf_counter()
            async with (
                raw.stream("POST", url, json=body, headers=headers) as response,
                aclosing(cast("AsyncGenerator[bytes]", response.aiter_bytes())) as raw_chunks,
            ):
                async for _ in raw_chunks:
                    sample["raw_ttfb"] = time.perf_counter() - start
                    break
            start = time.perf_counter()
            (await raw.post(url, json=body, headers=headers)).raise_for_status()
            sample["raw_full"] = time.perf_counter() - start
            if i >= warmup:
                for key, value in sample.items():
                    series[key].append(value)
    return {key: summarize(values) for key, values in series.items()}


# ----------------------------------------------------------------------------- WebSocket v1

RIME_TRIO_V1 = "rime-trio over v1"
RIME_TRIO_WS3 = "rime-trio over ws3"


def _v1_url(server: ServerProcess) -> str:
    return server.ws_url + "/ws"


def _warm_round(client: RimeClient) -> Round:
    async def one() -> tuple[float, float]:
        cpu = time.process_time()
        ttfa = await speak(client, SENTENCE, time.perf_counter())
        await settle(client)
        return ttfa, time.process_time() - cpu

    return one


def _cold_round(base_url: str, api_key: str) -> Round:
    async def one() -> tuple[float, float]:
        cpu = time.process_time()
        async with RimeClient(base_url=base_url, api_key=api_key) as client:
            ttfa = await speak(client, SENTENCE, time.perf_counter())
        return ttfa, time.process_time() - cpu

    return one


async def v1_against_ws3(
    server: ServerProcess,
    rounds: int,
    cold_rounds: int,
    warmup: int,
    levels: tuple[int, ...],
    samples: int,
    problems: list[str],
    backend: Backend = TRIO,
) -> dict[str, Any]:
    """Rime's WebSocket v1 beside ws3, both through rime-trio, against the emulator (the
    fast server speaks ws3 only): warm and cold TTFA beside the raw ws3 floor, then streams
    started together, with the sockets each protocol used."""
    ws3_url, v1_url = server.ws_url, _v1_url(server)
    result: dict[str, Any] = {}
    async with AsyncExitStack() as stack:
        ws3 = await stack.enter_async_context(RimeClient(base_url=ws3_url, api_key=server.api_key))
        v1 = await stack.enter_async_context(RimeClient(base_url=v1_url, api_key=server.api_key))
        await ws3.prewarm()
        await v1.prewarm()
        contestants = {RIME_TRIO_WS3: _warm_round(ws3), RIME_TRIO_V1: _warm_round(v1)}
        floor = backend.floor
        contestants[floor] = floor_warm(
            await stack.enter_async_context(backend.floors[floor](raw_url(server)))
        )
        result["warm"] = await interleave(contestants, rounds, warmup, problems, "v1 warm")
    cold = {
        RIME_TRIO_WS3: _cold_round(ws3_url, server.api_key),
        RIME_TRIO_V1: _cold_round(v1_url, server.api_key),
        floor: floor_cold(backend.floors[floor], raw_url(server)),
    }
    result["cold"] = await interleave(cold, cold_rounds, min(warmup, 3), problems, "v1 cold")
    rows: list[dict[str, Any]] = []
    for n in levels:
        batches = batches_for(n, samples)
        for name, url in ((RIME_TRIO_V1, v1_url), (RIME_TRIO_WS3, ws3_url)):
            level = _Level(name, n)
            async with RimeClient(base_url=url, api_key=server.api_key) as client:
                await client.prewarm()
                for _ in range(batches):
                    opened = client.pool.stats.opened
                    await _rime_trio_batch(client, n, level)
                    level.sockets.append(client.pool.stats.opened - opened)
            rows.append(level.row(batches))
        print(f"    v1 concurrency {n}: {batches} batches", flush=True, file=sys.stderr)
    result["concurrency"] = rows
    return result
