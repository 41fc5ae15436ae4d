"""Shared pieces of the benchmarks: the emulator process, statistics, tables."""

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
from typing import Any

API_KEY = "bench-key"
SENTENCE = "Hello there, this is a short sentence. "


@dataclass(frozen=True)
class EmulatorProcess:
    http_url: str
    ws_url: str
    api_key: str


@contextmanager
def emulator_process(time_to_first_chunk: float = 0.0) -> Iterator[EmulatorProcess]:
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
        yield EmulatorProcess(http_url, ws_url, API_KEY)
    finally:
        if process.stdout is not None:
            process.stdout.close()
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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
