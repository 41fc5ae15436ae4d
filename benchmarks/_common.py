"""Shared pieces of the benchmarks: the server processes, statistics, machine facts."""

from __future__ import annotations

import os
import platform
import signal
import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

API_KEY = "bench-key"
SENTENCE = "Hello there, this is a short sentence. "
#: the concurrency scenario's text: two sentences, so each stream sends two runs
TWO_SENTENCES = "Hello there, this is a short sentence. And here is a second one, a bit longer. "
ROOT = Path(__file__).resolve().parent.parent


def throughput_sentences(n: int) -> list[str]:
    """The throughput scenario's text, one sentence per item."""
    return [f"Sentence number {i} has a few more words in it. " for i in range(n)]


@dataclass(frozen=True)
class ServerProcess:
    """A server in its own process. ``ws_url`` has no path (clients add ``/ws3``)."""

    name: str
    ws_url: str
    api_key: str
    http_url: str | None = None  # the emulator's HTTP endpoint (the fast server has none)
    stats_url: str | None = None  # the fast server's handshake counter


# The emulator scenarios were written against this name.
EmulatorProcess = ServerProcess


def _stop(process: subprocess.Popen[str]) -> None:
    if process.stdout is not None:
        process.stdout.close()
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def fast_server_process() -> Iterator[ServerProcess]:
    """benchmarks/fast_server.py in its own process (its CPU never counts against the
    client)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.fast_server", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        ws_url = process.stdout.readline().strip()
        if not ws_url.startswith("ws://"):
            raise RuntimeError("the fast server did not start (python -m benchmarks.fast_server)")
        stats_url = "http" + ws_url.removeprefix("ws") + "/stats"
        yield ServerProcess("fast server", ws_url, API_KEY, stats_url=stats_url)
    finally:
        _stop(process)


@contextmanager
def emulator_process(time_to_first_chunk: float = 0.0) -> Iterator[ServerProcess]:
    """The emulator in its own process, so its CPU never counts against the client."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rime_trio.cli",
            "emulator",
            "--port",
            "0",
            "--api-key",
            API_KEY,
            "--time-to-first-chunk",
            str(time_to_first_chunk),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        ws_line = process.stdout.readline()
        http_line = process.stdout.readline()
        process.stdout.readline()
        ws_url = ws_line.split()[-1].removesuffix("/ws3")
        http_url = http_line.split()[-1].removesuffix("/v1/rime-tts")
        name = f"emulator, TTFC {time_to_first_chunk * 1000:.0f} ms"
        yield ServerProcess(name, ws_url, API_KEY, http_url=http_url)
    finally:
        _stop(process)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[rank]


def summarize(samples: Sequence[float]) -> dict[str, float]:
    values = sorted(samples)
    return {
        "n": len(values),
        "min": values[0] if values else float("nan"),
        "median": statistics.median(values) if values else float("nan"),
        "p90": percentile(values, 0.90),
        "p99": percentile(values, 0.99),
    }


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def git_revision() -> str:
    """The checkout the run measured: short commit, and whether src/ had local changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" + uncommitted changes in src/" if dirty else "")


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
    }


class Progress:
    """One line per step on stderr, so a long run shows where it is."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0

    def step(self, label: str) -> None:
        self.done += 1
        print(f"[{self.done}/{self.total}] {label}", file=sys.stderr, flush=True)
