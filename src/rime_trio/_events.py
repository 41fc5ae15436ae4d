"""What a speech stream delivers to the caller: audio chunks and word timestamps.

These types know nothing of the wire protocol; every offset is relative to the start of the
stream the caller opened, whatever batches the server cut the speech into.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._options import AudioFormat

__all__ = ["AudioChunk", "SpeechEvent", "WordTimestamp"]


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """A piece of synthesized audio, in stream order.

    :ivar data: encoded audio bytes (16-bit little-endian mono for ``pcm``).
    :ivar audio_format: ``pcm``, ``mulaw``, ``mp3`` or ``wav``.
    :ivar sample_rate: samples per second.
    :ivar channels: always 1 (Rime synthesizes mono).
    :ivar context_id: the stream this audio belongs to.
    :ivar offset: seconds of audio delivered in this stream before this chunk.
    :ivar duration: seconds of audio in this chunk.
    """

    data: bytes
    audio_format: AudioFormat
    sample_rate: int
    context_id: str | None
    offset: float
    duration: float
    channels: int = 1

    def __repr__(self) -> str:
        return (
            f"AudioChunk({len(self.data)} bytes {self.audio_format}@{self.sample_rate}, "
            f"offset={self.offset:.3f}s, duration={self.duration:.3f}s, "
            f"context_id={self.context_id!r})"
        )


@dataclass(frozen=True, slots=True)
class WordTimestamp:
    """When a word is heard, in seconds from the start of the stream."""

    word: str
    start: float
    end: float
    context_id: str | None = None


SpeechEvent = AudioChunk | WordTimestamp
