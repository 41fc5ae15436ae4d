"""The bench's side of a peer worker (benchmarks/peer_livekit.py): start it, ask for rounds."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc

from ._common import ROOT, ServerProcess


class PeerError(Exception):
    """The peer could not do what it was asked (it is dropped from the run)."""


class Peer:
    """A peer client in its own process, one round per :meth:`ask`."""

    name = "livekit-plugins-rime"

    def __init__(self, process: anyio.abc.Process, version: str) -> None:
        self._process = process
        self._buffer = bytearray()
        self.version = version

    async def _readline(self) -> bytes:
        stdout = self._process.stdout
        assert stdout is not None
        while b"\n" not in self._buffer:
            try:
                self._buffer += await stdout.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                raise PeerError("the peer process exited") from None
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return line

    async def ask(self, command: str) -> dict[str, Any]:
        stdin = self._process.stdin
        assert stdin is not None
        try:
            await stdin.send(command.encode() + b"\n")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise PeerError("the peer process exited") from None
        reply: dict[str, Any] = json.loads(await self._readline())
        if "error" in reply:
            raise PeerError(reply["error"])
        return reply

    async def round(self, command: str) -> tuple[float, float]:
        """A warm or cold round: (TTFA, CPU), both in seconds."""
        reply = await self.ask(command)
        return float(reply["ttfa"]), float(reply["cpu"])


@contextlib.asynccontextmanager
async def open_peer(server: ServerProcess, problems: list[str]) -> AsyncIterator[Peer | None]:
    """livekit-plugins-rime against *server*, or None (the reason appended to *problems*)."""
    try:
        installed = importlib.util.find_spec("livekit.plugins.rime") is not None
    except ImportError:  # no `livekit` package at all
        installed = False
    if not installed:
        problems.append("livekit-plugins-rime is not installed (use `nox -s bench_peers`)")
        yield None
        return
    with tempfile.TemporaryFile() as stderr:
        process = await anyio.open_process(
            [sys.executable, "-m", "benchmarks.peer_livekit", server.ws_url, server.api_key],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=ROOT,
        )
        peer = Peer(process, "?")
        try:
            with anyio.fail_after(60):
                hello = json.loads(await peer._readline())
            peer.version = str(hello.get("version", "?"))
        except (PeerError, TimeoutError, ValueError):
            process.kill()
            await process.aclose()
            stderr.seek(0)
            lines = stderr.read().decode(errors="replace").strip().splitlines() or ["?"]
            problems.append(f"livekit-plugins-rime did not start: {lines[-1]}")
            yield None
            return
        try:
            yield peer
        finally:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(
                    PeerError, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError
                ):
                    await process.stdin.send(b"quit\n")  # type: ignore[union-attr]
                with anyio.move_on_after(10):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                await process.aclose()
