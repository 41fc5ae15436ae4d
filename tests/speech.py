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
