"""Reading a whole stream in tests (callers bound the wait with their own cancel scope)."""

from __future__ import annotations

from rime_trio import AudioChunk, SpeechStream, WordTimestamp


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
