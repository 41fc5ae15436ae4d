"""Soak: thousands of streams with about 5% of connections faulty (`nox -s soak`).

Runs on trio and on asyncio. Reports streams completed, retried, failed with a clear error,
audio bytes lost or duplicated (both must be 0) and sockets leaked (must be 0); writes the
figures of each backend to benchmarks/results/soak-latest.json (an object keyed by backend)
for the README.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest

from rime_trio import AudioChunk, RimeClient, RimeError, StreamSettings
from rime_trio.testing import EmulatorConfig, Fault, open_emulator, render_speech

from .conftest import API_KEY
from .speech import client_tasks

RATE = 8000
STREAMS = int(os.environ.get("SOAK_STREAMS", "5000"))
CONCURRENCY = 8
FAULT_RATE = 0.05
RESULT = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "soak-latest.json"

FAULT_KINDS: list[Fault] = [
    Fault("drop", after_chunks=0),
    Fault("drop", after_chunks=2),
    Fault("reject", status=503, body="overloaded"),
    Fault("reject", status=429, body="Currently at websocket limit"),
    Fault("close", code=1011, reason="503: busy", after_messages=1),
    Fault("close", code=1000, after_messages=1),
    Fault("stall", seconds=3600, after_chunks=1),
    Fault("error_event", body="synthesis failed"),
    Fault("missing_done"),
    Fault("extra_done"),
    Fault("odd_chunks"),
    Fault("foreign_audio"),
    Fault("no_close"),
]


def fault_plan(rng: random.Random, connections: int) -> list[Fault]:
    """About FAULT_RATE of connection numbers get one fault, of a random kind."""
    chosen: dict[int, list[int]] = {}
    for number in range(1, connections + 1):
        if rng.random() < FAULT_RATE:
            chosen.setdefault(rng.randrange(len(FAULT_KINDS)), []).append(number)
    plan = []
    for kind_index, numbers in chosen.items():
        template = FAULT_KINDS[kind_index]
        plan.append(
            Fault(
                template.kind,
                frozenset(numbers),
                status=template.status,
                body=template.body,
                code=template.code,
                reason=template.reason,
                after_messages=template.after_messages,
                seconds=template.seconds,
                after_chunks=template.after_chunks,
            )
        )
    return plan


def record(backend: str, report: dict[str, object]) -> None:
    """Put *report* into the results file under *backend*, keeping the other backend's."""
    try:
        results = json.loads(RESULT.read_text())
    except (OSError, ValueError):
        results = {}
    if not isinstance(results, dict) or not set(results) <= {"trio", "asyncio"}:
        results = {}  # an older file: one flat report of unknown backend
    results[backend] = report
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(results, indent=2) + "\n")


@pytest.mark.soak
@pytest.mark.anyio
async def test_soak_with_injected_faults(anyio_backend_name: str) -> None:
    rng = random.Random(5)
    sentences = [f"Soak sentence {n} says a few words." for n in range(12)]
    counts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    lost = duplicated = 0
    started = time.perf_counter()
    # Every stream speaks on a socket of its own; the pooled client's are opened ahead of time.
    config = EmulatorConfig(faults=fault_plan(rng, STREAMS * 3), chunk_bytes=700)
    settings = StreamSettings(audio_timeout=1.0, retries=2, retry_backoff=0.01)
    async with open_emulator(config, tcp_faults=True) as emulator:
        # Half the streams open their socket when they start, half take one the pool opened in
        # the background (faults on spares, and on sockets that waited before use).
        async with (
            RimeClient(
                base_url=emulator.ws_url,
                api_key=API_KEY,
                sample_rate=RATE,
                max_pool_size=CONCURRENCY,
                stream_settings=settings,
            ) as pooled,
            RimeClient(
                base_url=emulator.ws_url,
                api_key=API_KEY,
                sample_rate=RATE,
                max_pool_size=0,
                stream_settings=settings,
            ) as fresh,
        ):

            async def one(seed: int) -> None:
                nonlocal lost, duplicated
                client = pooled if seed % 2 else fresh
                picked = random.Random(seed).sample(sentences, 2)
                expected = b"".join(render_speech(s + " ", RATE).pcm for s in picked)
                audio = bytearray()
                try:
                    async with client.stream() as stream:
                        await stream.push_text(" ".join(picked))
                        await stream.end_input()
                        async for event in stream:
                            if isinstance(event, AudioChunk):
                                audio += event.data
                except RimeError as exc:
                    counts["failed with a clear error"] += 1
                    errors[type(exc).__name__] += 1
                    if not expected.startswith(bytes(audio)):
                        duplicated += 1  # anything but a clean prefix is corruption
                    return
                counts["completed"] += 1
                if stream.retries:
                    counts["retried, then completed"] += 1
                if bytes(audio) != expected:
                    lost += max(0, len(expected) - len(audio))
                    duplicated += max(0, len(audio) - len(expected)) or int(
                        len(audio) == len(expected)
                    )

            for batch in range(0, STREAMS, CONCURRENCY):
                async with anyio.create_task_group() as task_group:
                    for n in range(batch, min(STREAMS, batch + CONCURRENCY)):
                        task_group.start_soon(one, n)
            with anyio.fail_after(30):
                for client in (pooled, fresh):
                    await client.pool.wait_teardowns()
                await emulator.wait_open_sockets(pooled.pool.idle)
            leaked_tasks = len(client_tasks())
        with anyio.fail_after(30):
            await emulator.wait_open_sockets(0)
        leaked_sockets = emulator.stats.open_sockets
        report = {
            "backend": anyio_backend_name,
            "streams": STREAMS,
            "concurrency": CONCURRENCY,
            "faulty_connections_planned": sum(len(f.connections or ()) for f in config.faults),
            "connections_opened": emulator.stats.handshakes,
            "handshakes_rejected": emulator.stats.rejected,
            "completed": counts["completed"],
            "retried_then_completed": counts["retried, then completed"],
            "failed_with_clear_error": counts["failed with a clear error"],
            "errors": dict(errors),
            "audio_bytes_lost": lost,
            "audio_streams_duplicated_or_corrupted": duplicated,
            "sockets_leaked": leaked_sockets,
            "tasks_leaked": leaked_tasks,
            "seconds": round(time.perf_counter() - started, 1),
        }
    print("\nsoak:", json.dumps(report, indent=2))
    record(anyio_backend_name, report)
    assert report["completed"] + report["failed_with_clear_error"] == STREAMS
    assert lost == 0
    assert duplicated == 0
    assert leaked_sockets == 0
    assert leaked_tasks == 0
