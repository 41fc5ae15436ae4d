"""``python -m benchmarks.bench --profile warm|cold|throughput``: one rime-trio scenario
against the fast server, profiled.

* cProfile (stdlib) around the scenario's rounds only: ``benchmarks/profiles/<scenario>.pstats``
  and a text summary ``<scenario>.txt`` (per-round counts of tasks started, scheduler
  wake-ups, socket calls and rime-trio's own functions, then the top functions by own and by
  cumulative time);
* if ``py-spy`` is installed, a flame graph ``<scenario>.svg`` of the same scenario run
  without cProfile (``py-spy record --format flamegraph``, idle time left out).

The definitions are the bench's: warm = a stream that finds a prewarmed or spare socket,
cold = ``client.stream()`` on a new client (its creation included here), throughput = one
long stream.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from rime_trio import AudioChunk, RimeClient

from ._common import (
    ROOT,
    SENTENCE,
    ServerProcess,
    fast_server_process,
    git_revision,
    throughput_sentences,
)
from .scenarios import client_options, settle, speak

if TYPE_CHECKING:
    from .bench import Config

PROFILES = Path(__file__).resolve().parent / "profiles"

#: functions counted per round in the summary: (label, predicate on (file, line, name))
_COUNTED: tuple[tuple[str, str, str], ...] = (
    ("tasks started (trio spawn_impl)", "_run.py", "spawn_impl"),
    ("task wake-ups (trio reschedule)", "_run.py", "reschedule"),
    ("blocking waits (trio wait_task_rescheduled)", "_traps.py", "wait_task_rescheduled"),
    ("tasks started (asyncio create_task)", "base_events.py", "create_task"),
    ("callbacks scheduled (asyncio call_soon)", "base_events.py", "call_soon"),
    ("socket send", "~", "<method 'send' of '_socket.socket' objects>"),
    ("socket recv", "~", "<method 'recv' of '_socket.socket' objects>"),
    ("socket recv_into", "~", "<method 'recv_into' of '_socket.socket' objects>"),
    ("epoll waits", "~", "<method 'poll' of 'select.epoll' objects>"),
    ("json.loads", "__init__.py", "loads"),
    ("base64 decodes (binascii.a2b_base64)", "~", "<built-in method binascii.a2b_base64>"),
)


def rounds_for(name: str, cfg: Config) -> int:
    if name == "warm":
        return cfg.iterations * 5
    if name == "cold":
        return cfg.cold_iterations * 3
    return cfg.throughput_rounds


async def scenario(
    name: str, server: ServerProcess, cfg: Config, profiler: cProfile.Profile | None
) -> tuple[int, float, float]:
    """Run rime-trio's side of *name*; return (rounds, wall seconds, CPU seconds) of the
    profiled part."""
    rounds = rounds_for(name, cfg)
    text = "".join(throughput_sentences(cfg.throughput_sentences))
    async with RimeClient(**client_options(server)) as client:
        await client.prewarm()
        for _ in range(5):  # warm the caches up, unprofiled
            await speak(client, SENTENCE, time.perf_counter())
            await settle(client)
        wall, cpu = time.perf_counter(), time.process_time()
        if profiler is not None:
            profiler.enable()
        for _ in range(rounds):
            if name == "warm":
                await speak(client, SENTENCE, time.perf_counter())
                await settle(client)
            elif name == "cold":
                async with RimeClient(**client_options(server)) as cold:
                    await speak(cold, SENTENCE, time.perf_counter())
            else:
                async with client.stream() as stream:
                    await stream.push_text(text)
                    await stream.end_input()
                    async for event in stream:
                        if isinstance(event, AudioChunk):
                            pass
                await settle(client)
        if profiler is not None:
            profiler.disable()
        return rounds, time.perf_counter() - wall, time.process_time() - cpu


def summary(
    name: str, backend: str, stats: pstats.Stats, rounds: int, wall: float, cpu: float
) -> str:
    out = io.StringIO()
    out.write(
        f"rime-trio on {backend}, {name} scenario against the fast server: {rounds} rounds "
        "under cProfile, "
        f"{wall / rounds * 1000:.3f} ms wall and {cpu / rounds * 1000:.3f} ms CPU per round "
        f"(the profiler inflates both). rime-trio at {git_revision()}.\n"
        "cProfile counts each resumption of a coroutine as a call: for an async function, "
        "'calls' is how often it ran (started or woke up), not how often it was called.\n\n"
    )
    raw = stats.stats  # type: ignore[attr-defined]
    out.write("Per round:\n")
    for label, filename, function in _COUNTED:
        calls = sum(
            value[1]
            for (file, _, func), value in raw.items()
            if func == function and (file == filename or file.endswith("/" + filename))
        )
        out.write(f"  {calls / rounds:10.1f}  {label}\n")
    own = sorted(
        (
            (value[1] / rounds, value[2] / rounds, f"{Path(file).name}:{line} {func}")
            for (file, line, func), value in raw.items()
            if "rime_trio" in file
        ),
        reverse=True,
    )
    out.write("\nrime-trio functions, calls and own CPU per round (most called first):\n")
    for calls, own_time, where in own[:40]:
        out.write(f"  {calls:10.1f}  {own_time * 1e6:9.1f} us  {where}\n")
    for order in ("tottime", "cumulative"):
        out.write(f"\nTop 40 by {order} (whole profile):\n")
        stats.stream = out  # type: ignore[attr-defined]
        stats.sort_stats(order).print_stats(40)
    return out.getvalue()


def profile(name: str, cfg: Config, backend: str = "trio", *, py_spy: bool) -> int:
    PROFILES.mkdir(exist_ok=True)
    profiler = cProfile.Profile()
    with fast_server_process() as server:
        rounds, wall, cpu = anyio.run(scenario, name, server, cfg, profiler, backend=backend)
    stem = name if backend == "trio" else f"{name}-{backend}"
    pstats_path = PROFILES / f"{stem}.pstats"
    profiler.dump_stats(pstats_path)
    stats = pstats.Stats(profiler)
    text_path = PROFILES / f"{stem}.txt"
    text_path.write_text(summary(name, backend, stats, rounds, wall, cpu), encoding="utf-8")
    print(f"cProfile: {pstats_path}, {text_path}")
    if not py_spy:
        return 0
    binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(binary).exists():
        print("py-spy is not installed (pip install py-spy): no flame graph")
        return 0
    svg = PROFILES / f"{stem}.svg"
    command = [
        binary,
        "record",
        "--output",
        str(svg),
        "--format",
        "flamegraph",
        "--rate",
        "200",  # blocking samples; much faster and py-spy's ptrace stops slow the run down
        "--",
        sys.executable,
        "-m",
        "benchmarks.bench",
        "--profile-run",
        name,
        "--backend",
        backend,
        *(["--quick"] if cfg.quick else []),
        *(["--iterations", str(cfg.iterations)] if not cfg.quick else []),
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not svg.exists():
        reason = (result.stderr.strip().splitlines() or ["?"])[-1]
        print(f"py-spy failed ({reason}): no flame graph")
        return 0
    print(f"py-spy flame graph: {svg}")
    return 0


def run_plain(name: str, cfg: Config, backend: str = "trio") -> int:
    """The scenario without cProfile (what py-spy samples)."""
    with fast_server_process() as server:
        rounds, _, cpu = anyio.run(scenario, name, server, cfg, None, backend=backend)
    print(f"{name}: {rounds} rounds, {cpu / rounds * 1000:.3f} ms CPU per round")
    return 0
