"""Running `rime-trio` commands as real processes in tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def rime_trio_process(*args: str, lines: int) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """Start `python -m rime_trio.cli ARGS`, read the first *lines* it prints (its URLs), and
    yield the process with them; it is stopped afterwards if still running."""
    process = subprocess.Popen(
        [sys.executable, "-m", "rime_trio.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        yield process, [process.stdout.readline() for _ in range(lines)]
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
