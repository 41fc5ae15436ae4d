"""rime-trio benchmarks: time to first audio, throughput and concurrency, each beside a floor.

Run with ``nox -s bench`` (``-- --quick`` for a short run). The emulator runs in a separate
process. Every figure is measured in the same run as its floor, iterations interleaved, so
drift on a busy machine hits both sides alike.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gc
import json
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from rime_trio import AudioChunk, RimeClient, RimeError, StreamSettings
from rime_trio._options import websocket_url

from ._common import (
    API_KEY,
    SENTENCE,
    EmulatorProcess,
    Progress,
    emulator_process,
    machine,
    summarize,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


@dataclass
class Config:
    quick: bool
    iterations: int
    cold_iterations: int
    concurrency: tuple[int, ...]
    throughput_sentences: int


def config(quick: bool) -> Config:
    if quick:
        return Config(True, 60, 25, (1, 10, 50, 200), 60)
    return Config(False, 400, 100, (1, 10, 50, 200), 300)


@dataclass
class Report:
    scenario: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self, name: str, samples: list[float], floor: list[float] | None = None, **extra: Any
    ) -> None:
        row: dict[str, Any] = {"name": name, **summarize(samples), **extra}
        if floor:
            floor_summary = summarize(floor)
            row["floor"] = floor_summary
            row["ratio_median"] = row["median"] / floor_summary["median"]
            row["ratio_p99"] = row["p99"] / floor_summary["p99"]
        self.rows.append(row)


def client_options(emulator: EmulatorProcess, **extra: Any) -> dict[str, Any]:
    return {"base_url": emulator.ws_url, "api_key": emulator.api_key, **extra}


def raw_url(emulator: EmulatorProcess) -> str:
    options = RimeClient(**client_options(emulator)).options
    return websocket_url(options)


AUTH = [(b"authorization", f"Bearer {API_KEY}".encode())]


# ----------------------------------------------------------------------------- floors


@contextlib.asynccontextmanager
async def raw_websocket(url: str) -> AsyncIterator[WebSocketConnection]:
    """A bare trio-websocket client that owns (and always closes) its TCP stream:
    trio-websocket's own client leaves it open after the server closes."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    stream = await trio.open_tcp_stream(host, port)
    try:
        async with trio.open_nursery() as nursery:
            resource = f"{parts.path}?{parts.query}"
            ws = await wrap_client_stream(
                nursery, stream, f"{host}:{port}", resource, extra_headers=AUTH
            )
            try:
                yield ws
            finally:
                with trio.move_on_after(2):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


async def raw_first_audio(ws: WebSocketConnection, text: str, context_id: str) -> float:
    """The floor: send one JSON text message, wait for the first chunk, decode it; then drain
    the batch (untimed) so the socket is ready for the next round."""
    start = time.perf_counter()
    await ws.send_message(json.dumps({"text": text, "contextId": context_id}))
    while True:
        message = json.loads(await ws.get_message())
        if message["type"] == "chunk":
            base64.b64decode(message["data"])
            elapsed = time.perf_counter() - start
            break
    while message["type"] != "done":
        message = json.loads(await ws.get_message())
    return elapsed


# ----------------------------------------------------------------------------- rime-trio


async def trio_first_audio(client: RimeClient, text: str) -> float:
    async with client.stream() as stream:
        start = time.perf_counter()
        await stream.push_text(text)
        while not isinstance(await stream.receive(), AudioChunk):
            pass
        elapsed = time.perf_counter() - start
        await stream.end_input()
        async for _ in stream:
            pass
    return elapsed


async def trio_token_first_audio(client: RimeClient, tokens: list[str], rest: list[str]) -> float:
    """Tokens arrive one by one; time from the token that ends the first sentence."""
    async with client.stream() as stream:
        for token in tokens[:-1]:
            await stream.push_text(token)
            await trio.lowlevel.checkpoint()
        start = time.perf_counter()
        await stream.push_text(tokens[-1])
        while not isinstance(await stream.receive(), AudioChunk):
            pass
        elapsed = time.perf_counter() - start
        for token in rest:
            await stream.push_text(token)
        await stream.end_input()
        async for _ in stream:
            pass
    return elapsed


# ----------------------------------------------------------------------------- scenarios


async def warm_ttfa(emulator: EmulatorProcess, cfg: Config, report: Report) -> None:
    ours: list[float] = []
    floor: list[float] = []
    async with (
        raw_websocket(raw_url(emulator)) as ws,
        RimeClient(**client_options(emulator)) as client,
    ):
        await client.prewarm()
        for i in range(cfg.iterations + 5):  # the first rounds warm caches up
            our = await trio_first_audio(client, SENTENCE)
            raw = await raw_first_audio(ws, SENTENCE, f"raw#{i}")
            if i >= 5:
                ours.append(our)
                floor.append(raw)
        # every round found a socket opened ahead of time (prewarmed, then replaced)
        assert client.pool.stats.reused == cfg.iterations + 5, "warm rounds must be warm"
    report.add("warm TTFA", ours, floor)


async def cold_ttfa(emulator: EmulatorProcess, cfg: Config, report: Report) -> None:
    ours: list[float] = []
    floor: list[float] = []
    prewarmed: list[float] = []
    url = raw_url(emulator)
    # max_pool_size=0: every stream opens (and afterwards retires) its own socket.
    async with (
        RimeClient(**client_options(emulator), max_pool_size=0) as cold_client,
        RimeClient(**client_options(emulator), max_pool_size=1) as warm_client,
    ):
        for i in range(cfg.cold_iterations + 3):
            our = await trio_first_audio(cold_client, SENTENCE)
            await trio.sleep(0.005)  # let the retired socket's teardown finish, untimed
            start = time.perf_counter()
            async with raw_websocket(url) as ws:
                connected = time.perf_counter() - start
                raw = connected + await raw_first_audio(ws, SENTENCE, f"cold#{i}")
            # prewarm() ahead of the stream (untimed), then the first stream on that socket
            warm_client.pool.retire_idle()
            await trio.sleep(0.005)
            await warm_client.prewarm()
            pre = await trio_first_audio(warm_client, SENTENCE)
            if i >= 3:
                ours.append(our)
                floor.append(raw)
                prewarmed.append(pre)
    report.add("cold TTFA (with handshake)", ours, floor)
    report.add("first stream after prewarm()", prewarmed, floor, note="floor: raw cold")


async def token_ttfa(emulator: EmulatorProcess, cfg: Config, report: Report) -> None:
    tokens = ["Hello", " there", ",", " this", " is", " a", " short", " sentence", "."]
    rest = [" And", " here", " is", " more", "."]
    by_token: list[float] = []
    whole: list[float] = []
    async with RimeClient(**client_options(emulator)) as client:
        await client.prewarm()
        for i in range(cfg.iterations + 5):
            token = await trio_token_first_audio(client, tokens, rest)
            sentence = await trio_first_audio(client, SENTENCE)
            if i >= 5:
                by_token.append(token)
                whole.append(sentence)
    report.add("token-by-token TTFA (from the final '.')", by_token, whole, note="floor: warm TTFA")


async def http_ttfb(emulator: EmulatorProcess, cfg: Config, report: Report) -> None:
    ttfb: list[float] = []
    full: list[float] = []
    raw_ttfb: list[float] = []
    raw_full: list[float] = []
    body = {
        "text": SENTENCE,
        "speaker": "astra",
        "modelId": "coda",
        "lang": "eng",
        "samplingRate": 24000,
    }
    headers = {"Authorization": f"Bearer {emulator.api_key}", "Accept": "audio/pcm"}
    url = f"{emulator.http_url}/v1/rime-tts"
    async with (
        RimeClient(base_url=emulator.http_url, api_key=emulator.api_key) as client,
        httpx.AsyncClient() as raw,
    ):
        for i in range(cfg.iterations + 5):
            start = time.perf_counter()
            async with client.synthesize_chunks(SENTENCE) as chunks:
                async for _ in chunks:
                    first = time.perf_counter() - start
                    break
            start = time.perf_counter()
            await client.synthesize(SENTENCE)
            whole = time.perf_counter() - start

            start = time.perf_counter()
            async with (
                raw.stream("POST", url, json=body, headers=headers) as response,
                aclosing(response.aiter_bytes()) as raw_chunks,
            ):
                async for _ in raw_chunks:
                    raw_first = time.perf_counter() - start
                    break
            start = time.perf_counter()
            (await raw.post(url, json=body, headers=headers)).raise_for_status()
            raw_whole = time.perf_counter() - start
            if i >= 5:
                ttfb.append(first)
                full.append(whole)
                raw_ttfb.append(raw_first)
                raw_full.append(raw_whole)
    report.add("HTTP time to first byte", ttfb, raw_ttfb)
    report.add("HTTP full body", full, raw_full)


async def throughput(emulator: EmulatorProcess, cfg: Config, report: Report) -> None:
    sentences = [
        f"Sentence number {n} has a few more words in it. " for n in range(cfg.throughput_sentences)
    ]
    text = "".join(sentences)
    rates: list[float] = []
    floor_rates: list[float] = []
    transport_rates: list[float] = []
    async with RimeClient(**client_options(emulator)) as client:
        await client.prewarm()
        # The floor works on the very frames the server sends for this text.
        frames: list[str | bytes] = []
        async with raw_websocket(raw_url(emulator)) as ws:
            for n, sentence in enumerate(sentences):
                await ws.send_message(json.dumps({"text": sentence, "contextId": f"floor#{n}"}))
            await ws.send_message(json.dumps({"operation": "eos"}))
            with contextlib.suppress(ConnectionClosed):
                while True:
                    frames.append(await ws.get_message())
        for _ in range(3):
            cpu = time.process_time()
            audio_seconds = 0.0
            async with client.stream() as stream:
                await stream.push_text(text)
                await stream.end_input()
                async for event in stream:
                    if isinstance(event, AudioChunk):
                        audio_seconds += event.duration
            rates.append(audio_seconds / (time.process_time() - cpu))

            cpu = time.process_time()
            floor_bytes = 0
            for frame in frames:
                message = json.loads(frame)
                if message["type"] == "chunk":
                    floor_bytes += len(base64.b64decode(message["data"]))
            floor_seconds = floor_bytes / 48000
            floor_rates.append(floor_seconds / (time.process_time() - cpu))
            transport_rates.append(await raw_stream_rate(emulator, sentences))
    best, floor_best = max(rates), max(floor_rates)
    report.rows.append(
        {
            "name": "throughput (audio s per client CPU s)",
            "rime_trio": best,
            "floor": floor_best,
            "ratio": floor_best / best,
            "audio_seconds": round(audio_seconds, 1),
            "raw_trio_websocket": max(transport_rates),
        }
    )


async def raw_stream_rate(emulator: EmulatorProcess, sentences: list[str]) -> float:
    """A second reference: a bare trio-websocket loop consuming the same stream
    (wsproto framing + trio's reader task + JSON + base64), on an open socket."""
    async with raw_websocket(raw_url(emulator)) as ws:
        cpu = time.process_time()
        for n, sentence in enumerate(sentences):
            await ws.send_message(json.dumps({"text": sentence, "contextId": f"t#{n}"}))
        await ws.send_message(json.dumps({"operation": "eos"}))
        audio_bytes = 0
        with contextlib.suppress(ConnectionClosed):
            while True:
                message = json.loads(await ws.get_message())
                if message["type"] == "chunk":
                    audio_bytes += len(base64.b64decode(message["data"]))
        return audio_bytes / 48000 / (time.process_time() - cpu)


async def concurrency(
    emulator: EmulatorProcess, cfg: Config, report: Report, progress: Progress
) -> None:
    for n in cfg.concurrency:
        progress.step(f"concurrency {n}")
        samples: list[float] = []
        errors: list[str] = []
        async with RimeClient(
            **client_options(emulator),
            max_pool_size=n,
            stream_settings=StreamSettings(audio_timeout=60),
        ) as client:

            async def one(results: list[float], errors: list[str] = errors) -> None:
                try:
                    results.append(await trio_first_audio(client, SENTENCE))
                except RimeError as exc:
                    errors.append(repr(exc))

            cold: list[float] = []
            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(one, cold)
            for _ in range(2):  # warm rounds on pooled sockets
                async with trio.open_nursery() as nursery:
                    for _ in range(n):
                        nursery.start_soon(one, samples)

            memory = await idle_stream_memory(client, n)
        report.add(
            f"{n} concurrent streams, warm TTFA",
            samples,
            None,
            errors=len(errors),
            cold_median=summarize(cold)["median"],
            memory_per_idle_stream_kib=round(memory / 1024, 1),
            first_error=errors[0] if errors else None,
        )


async def idle_stream_memory(client: RimeClient, n: int) -> float:
    """Python memory held per open stream that has spoken a sentence and waits for more."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    ready = trio.Event()
    release = trio.Event()
    opened = 0

    async def idle_stream() -> None:
        nonlocal opened
        async with client.stream() as stream:
            await stream.push_text("Idle now. ")
            while not isinstance(await stream.receive(), AudioChunk):
                pass
            opened += 1
            if opened == n:
                ready.set()
            await release.wait()
            await stream.end_input()
            async for _ in stream:
                pass

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(idle_stream)
        await ready.wait()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
        release.set()
    tracemalloc.stop()
    return held / n


async def peer_livekit(emulator: EmulatorProcess, cfg: Config, report: Report) -> None:
    """livekit-plugins-rime in its WebSocket (ws3) mode, in its own asyncio process."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.peer_livekit",
        emulator.ws_url,
        emulator.api_key,
        "--iterations",
        str(cfg.iterations),
        "--cold-iterations",
        str(cfg.cold_iterations),
    ]
    result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    if result.returncode != 0:
        reason = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        report.rows.append({"name": "livekit-plugins-rime", "unavailable": reason[0]})
        return
    samples = json.loads(result.stdout)
    warm_row = next(r for r in report.rows if r["name"] == "warm TTFA")
    cold_row = next(r for r in report.rows if r["name"] == "cold TTFA (with handshake)")
    report.add(
        "livekit-plugins-rime warm TTFA",
        samples["warm"],
        None,
        note=f"rime-trio median {warm_row['median'] * 1000:.3f} ms",
        peer_over_rime_trio=round(summarize(samples["warm"])["median"] / warm_row["median"], 2),
    )
    report.add(
        "livekit-plugins-rime cold TTFA",
        samples["cold"],
        None,
        note=f"rime-trio median {cold_row['median'] * 1000:.3f} ms",
        peer_over_rime_trio=round(summarize(samples["cold"])["median"] / cold_row["median"], 2),
    )


# ----------------------------------------------------------------------------- output


def format_table(scenarios: list[Report]) -> str:
    lines = [
        "| scenario | measure | n | min ms | median ms | p90 ms | p99 ms | floor median ms "
        "| floor p99 ms | ratio median | ratio p99 | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for report in scenarios:
        for row in report.rows:
            if "rime_trio" in row:
                lines.append(
                    f"| {report.scenario} | {row['name']} | | | {row['rime_trio']:.0f} | | | "
                    f"{row['floor']:.0f} | | {row['ratio']:.2f} | | floor = JSON+base64 only; "
                    f"ratio = floor/ours; bare trio-websocket loop: "
                    f"{row['raw_trio_websocket']:.0f}; {row['audio_seconds']} s of audio |"
                )
                continue
            floor = row.get("floor") or {}
            notes = []
            if "unavailable" in row:
                lines.append(
                    f"| {report.scenario} | {row['name']} | | | | | | | | | | "
                    f"could not be driven: {row['unavailable']} |"
                )
                continue
            for key in (
                "note",
                "peer_over_rime_trio",
                "errors",
                "cold_median",
                "memory_per_idle_stream_kib",
                "first_error",
            ):
                if row.get(key) is not None:
                    value = row[key]
                    if key == "cold_median":
                        value = f"{value * 1000:.2f} ms"
                    notes.append(f"{key.replace('_', ' ')}: {value}")
            lines.append(
                f"| {report.scenario} | {row['name']} | {row['n']} | {row['min'] * 1000:.3f} | "
                f"{row['median'] * 1000:.3f} | {row['p90'] * 1000:.3f} | {row['p99'] * 1000:.3f} | "
                + (
                    f"{floor['median'] * 1000:.3f} | {floor['p99'] * 1000:.3f} | "
                    f"{row['ratio_median']:.2f} | {row['ratio_p99']:.2f} | "
                    if floor
                    else "| | | | "
                )
                + "; ".join(notes)
                + " |"
            )
    return "\n".join(lines)


async def run(cfg: Config, only: set[str] | None = None, peers: bool = False) -> dict[str, Any]:
    scenarios: list[Report] = []
    steps: list[tuple[str, float, Callable[..., Awaitable[None]]]] = [
        ("warm", 0.0, warm_ttfa),
        ("cold", 0.0, cold_ttfa),
        ("token", 0.0, token_ttfa),
        ("http", 0.0, http_ttfb),
        ("throughput", 0.0, throughput),
        ("warm", 0.040, warm_ttfa),
        ("cold", 0.040, cold_ttfa),
    ]
    if peers:
        steps.insert(2, ("peer", 0.0, peer_livekit))
        steps.append(("peer", 0.040, peer_livekit))
    steps = [s for s in steps if only is None or s[0] in only or s[0] == "peer"]
    progress = Progress(
        len(steps) + (len(cfg.concurrency) if only is None or "concurrency" in only else 0)
    )
    for ttfc in sorted(
        {s[1] for s in steps} | ({0.0} if only is None or "concurrency" in only else set())
    ):
        with emulator_process(ttfc) as emulator:
            report = Report(f"server TTFC {ttfc * 1000:.0f} ms")
            for name, step_ttfc, function in steps:
                if step_ttfc == ttfc:
                    progress.step(f"{name} (server TTFC {ttfc * 1000:.0f} ms)")
                    await function(emulator, cfg, report)
            if ttfc == 0.0 and (only is None or "concurrency" in only):
                await concurrency(emulator, cfg, report, progress)
            scenarios.append(report)
    return {
        "machine": machine(),
        "quick": cfg.quick,
        "iterations": cfg.iterations,
        "scenarios": [{"scenario": r.scenario, "rows": r.rows} for r in scenarios],
        "table": format_table(scenarios),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (under 3 minutes)")
    parser.add_argument("--iterations", type=int, help="override the iteration count")
    parser.add_argument(
        "--only", action="append", help="warm, cold, token, http, throughput, concurrency"
    )
    parser.add_argument("--out", type=Path, help="JSON result file (default: benchmarks/results/)")
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument(
        "--peers", action="store_true", help="also drive livekit-plugins-rime (nox -s bench_peers)"
    )
    parser.add_argument(
        "--readme", action="store_true", help="write the table into benchmarks/README.md"
    )
    args = parser.parse_args(argv)
    cfg = config(args.quick)
    if args.iterations:
        cfg.iterations = args.iterations
        cfg.cold_iterations = max(1, args.iterations // 4)
    started = time.perf_counter()
    result = trio.run(run, cfg, set(args.only) if args.only else None, args.peers)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(result["table"])
    print(f"\n{result['wall_seconds']} s; machine: {result['machine']}")
    if not args.no_save:
        out = args.out or RESULTS / time.strftime("bench-%Y%m%d-%H%M%S.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(f"results: {out}")
    if args.readme:
        write_readme(result)
    return 0


def write_readme(result: dict[str, Any]) -> None:
    readme = HERE / "README.md"
    text = readme.read_text(encoding="utf-8")
    begin, end = "<!-- results:begin -->", "<!-- results:end -->"
    m = result["machine"]
    block = (
        f"{begin}\n"
        f"Run: `{'quick' if result['quick'] else 'full'}`, {result['iterations']} iterations per "
        f"latency figure, {result['wall_seconds']} s. Machine: {m['cpu']}, {m['cores']} cores, "
        f"Python {m['python']}, {m['platform']}.\n\n{result['table']}\n{end}"
    )
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    readme.write_text(head + block + tail, encoding="utf-8")
    print(f"table written to {readme}")


if __name__ == "__main__":
    sys.exit(main())
