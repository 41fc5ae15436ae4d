"""Deterministic, speech-shaped audio for the emulator.

Each word becomes one audible tone burst whose length grows with the word, separated by
silence, so that word timestamps can be checked against the samples themselves
(:func:`find_bursts`). The same text at the same rate always gives the same bytes.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from .._audio import wav_header
from .._options import AudioFormat

__all__ = ["SpeechAudio", "encode_audio", "find_bursts", "render_speech", "speech_words"]

LEAD_IN: Final = 0.04  # seconds of silence before the first word of a batch
WORD_BASE: Final = 0.08  # seconds of burst per word...
WORD_PER_CHAR: Final = 0.035  # ...plus this per character
WORD_GAP: Final = 0.05  # silence between words
SENTENCE_GAP: Final = 0.12  # extra silence after . ? !
AMPLITUDE: Final = 0.45

_WORD = re.compile(r"\S+")
_STRIP = "\"'“”‘’()[]{}<>,;:.?!…-—"


def speech_words(text: str) -> list[str]:
    """The words the emulator speaks (and timestamps) for *text*: whitespace-separated,
    surrounding punctuation removed, punctuation-only tokens dropped."""
    words = []
    for token in _WORD.findall(text):
        word = token.strip(_STRIP)
        if word:
            words.append(word)
    return words


@dataclass(frozen=True, slots=True)
class SpeechAudio:
    """One synthesized batch: 16-bit PCM samples and per-word times (seconds from 0)."""

    pcm: bytes
    sample_rate: int
    words: tuple[str, ...]
    starts: tuple[float, ...]
    ends: tuple[float, ...]

    @property
    def duration(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate


def _burst(word: str, n: int, sample_rate: int) -> npt.NDArray[np.float64]:
    t = np.arange(n, dtype=np.float64) / sample_rate
    f0 = 110.0 + 12.0 * (zlib.crc32(word.lower().encode()) % 10)
    wave = (
        np.sin(2 * np.pi * f0 * t)
        + 0.5 * np.sin(2 * np.pi * 2 * f0 * t)
        + 0.25 * np.sin(2 * np.pi * 3 * f0 * t)
    ) / 1.75
    envelope = np.sin(np.pi * (np.arange(n) + 0.5) / n)  # never exactly 0 inside the burst
    result: npt.NDArray[np.float64] = AMPLITUDE * wave * np.maximum(envelope, 0.2)
    return result


def render_speech(text: str, sample_rate: int) -> SpeechAudio:
    """Render *text* as speech-shaped 16-bit little-endian mono PCM at *sample_rate*."""
    words: list[str] = []
    starts: list[float] = []
    ends: list[float] = []
    pieces: list[npt.NDArray[np.float64]] = []
    cursor = round(LEAD_IN * sample_rate)
    pieces.append(np.zeros(cursor))
    for token in _WORD.findall(text):
        word = token.strip(_STRIP)
        if not word:
            continue
        n = max(1, round((WORD_BASE + WORD_PER_CHAR * len(word)) * sample_rate))
        words.append(word)
        starts.append(cursor / sample_rate)
        pieces.append(_burst(word, n, sample_rate))
        cursor += n
        ends.append(cursor / sample_rate)
        gap = WORD_GAP + (SENTENCE_GAP if token.rstrip("\"')”’]").endswith((".", "?", "!")) else 0)
        silence = round(gap * sample_rate)
        pieces.append(np.zeros(silence))
        cursor += silence
    samples = np.concatenate(pieces) if pieces else np.zeros(0)
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    return SpeechAudio(pcm, sample_rate, tuple(words), tuple(starts), tuple(ends))


def _mulaw(pcm: bytes) -> bytes:
    """G.711 mu-law encoding of 16-bit PCM, bit-exact with the former ``audioop.lin2ulaw``."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.int32) >> 2  # 14-bit, floor like C
    mask = np.where(x < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(x), 8159) + 0x21
    segment_ends = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
    segment = np.searchsorted(segment_ends, magnitude)
    value = np.where(
        segment >= 8, 0x7F, (segment << 4) | ((magnitude >> (np.minimum(segment, 7) + 1)) & 0x0F)
    )
    return ((value ^ mask) & 0xFF).astype(np.uint8).tobytes()


def encode_audio(pcm: bytes, audio_format: AudioFormat, sample_rate: int) -> bytes:
    """Encode 16-bit PCM as *audio_format*.

    :raises ValueError: for mp3, which the emulator cannot encode.
    """
    if audio_format == "pcm":
        return pcm
    if audio_format == "mulaw":
        return _mulaw(pcm)
    if audio_format == "wav":
        return wav_header(len(pcm), sample_rate=sample_rate) + pcm
    raise ValueError(f"the emulator cannot encode {audio_format!r}")


def find_bursts(
    pcm: bytes, sample_rate: int, *, threshold: float = 0.02, min_gap: float = 0.02
) -> list[tuple[float, float]]:
    """(start, end) seconds of each audible burst in 16-bit PCM: the test-side check that
    timestamps match the audio. Silences shorter than *min_gap* do not split a burst."""
    x = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.float64)) / 32767
    loud = np.flatnonzero(x > threshold)
    if loud.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(loud) > min_gap * sample_rate)
    first = np.concatenate(([loud[0]], loud[breaks + 1]))
    last = np.concatenate((loud[breaks], [loud[-1]]))
    return [
        (float(a) / sample_rate, float(b + 1) / sample_rate)
        for a, b in zip(first, last, strict=True)
    ]
