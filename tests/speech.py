"""Reading a whole stream in tests (callers bound the wait with their own cancel scope)."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from rime_trio import AudioChunk, SpeechStream, WordTimestamp
from rime_trio._protocol import TextMessage

if TYPE_CHECKING:
    from rime_trio.testing import RimeEmulator


async def read_all(stream: SpeechStream) -> tuple[bytes, list[WordTimestamp]]:
    """All audio and word timestamps of *stream*, in order."""
    audio = bytearray()
    words: list[WordTimestamp] = []
    async for event in stream:
        if isinstance(event, AudioChunk):
            audio += event.data
        else:
            words.append(event)
    return bytes(audio), words


def wire_prefix(stream: SpeechStream) -> str:
    """The prefix of every contextId *stream* put on the wire (its per-stream random tag)."""
    return stream._state.tag + "#"


def client_tasks() -> list[str]:
    """The names of the running tasks that belong to rime-trio's client (its streams and its
    pool), on any backend; the emulator's own are left out."""
    import anyio

    return [
        task.name
        for task in anyio.get_running_tasks()
        if task.name.startswith("rime_trio.") and not task.name.startswith("rime_trio.testing")
    ]


def synthesized(emulator: RimeEmulator, stream: SpeechStream) -> bytes:
    """Every byte of audio the emulator sent for *stream*, run by run, in order."""
    prefix = wire_prefix(stream)
    runs = itertools.chain.from_iterable(emulator.stats.runs.values())
    return b"".join(bytes(r.audio) for r in runs if (r.context_id or "").startswith(prefix))


def texts_sent(emulator: RimeEmulator, stream: SpeechStream) -> str:
    prefix = wire_prefix(stream)
    return "".join(
        m.text
        for messages in emulator.stats.received.values()
        for m in messages
        if isinstance(m, TextMessage) and (m.context_id or "").startswith(prefix)
    )
