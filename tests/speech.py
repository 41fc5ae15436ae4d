"""Reading a whole stream in tests (callers bound the wait with their own cancel scope)."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rime_trio import AudioChunk, SpeechStream, WordTimestamp
from rime_trio._protocol import TextMessage
from rime_trio._protocol_v1 import Frame, V1StreamState

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


@contextmanager
def v1_contexts() -> Iterator[dict[str, list[str]]]:
    """While in the block, record the wire id of every v1 context each stream starts, by the
    stream's ``context_id`` (spying on the state's frames: the library keeps no such list)."""
    started: dict[str, list[str]] = defaultdict(list)
    original = V1StreamState.frames

    def frames(self: V1StreamState, messages: list[str], *, end: bool) -> list[Frame]:
        before = self.wire_id
        made = original(self, messages, end=end)
        if self.wire_id is not None and self.wire_id != before:
            started[self.context_id].append(self.wire_id)
        return made

    V1StreamState.frames = frames  # type: ignore[method-assign]
    try:
        yield started
    finally:
        V1StreamState.frames = original  # type: ignore[method-assign]
