"""Audio helpers: durations per format, an incremental MP3 frame counter, WAV writing."""

from __future__ import annotations

import struct
from typing import BinaryIO, Final

from ._options import AudioFormat

__all__ = ["AudioClock", "Mp3FrameCounter", "bytes_per_second", "wav_header", "write_wav"]

_WAVE_FORMAT_PCM: Final = 1
_WAVE_FORMAT_MULAW: Final = 7


def bytes_per_second(audio_format: AudioFormat, sample_rate: int) -> int | None:
    """Bytes per second of mono audio, or None where the format is compressed (mp3)."""
    if audio_format in ("pcm", "wav"):
        return 2 * sample_rate
    if audio_format == "mulaw":
        return sample_rate
    return None


def wav_header(data_size: int, *, sample_rate: int, audio_format: AudioFormat = "pcm") -> bytes:
    """A 44-byte RIFF/WAVE header for *data_size* bytes of mono ``pcm`` or ``mulaw`` audio.

    :raises ValueError: for formats a WAV container cannot hold as-is (mp3, wav).
    """
    if audio_format == "pcm":
        fmt_tag, bits = _WAVE_FORMAT_PCM, 16
    elif audio_format == "mulaw":
        fmt_tag, bits = _WAVE_FORMAT_MULAW, 8
    else:
        raise ValueError(f"cannot wrap {audio_format!r} audio in a WAV header")
    block_align = bits // 8
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_size,
        b"WAVE",
        b"fmt ",
        16,
        fmt_tag,
        1,
        sample_rate,
        sample_rate * block_align,
        block_align,
        bits,
        b"data",
        data_size,
    )


def write_wav(
    file: BinaryIO, data: bytes, *, sample_rate: int, audio_format: AudioFormat = "pcm"
) -> None:
    """Write *data* (mono ``pcm`` or ``mulaw``) to *file* as a playable WAV file.

    :raises ValueError: for mp3 or already-wrapped wav audio.
    """
    file.write(wav_header(len(data), sample_rate=sample_rate, audio_format=audio_format))
    file.write(data)


# MPEG audio frame header tables (Layer III only: the only layer TTS services send).
_MP3_BITRATES_V1: Final = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_MP3_BITRATES_V2: Final = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
_MP3_RATES: Final = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


class Mp3FrameCounter:
    """Counts MPEG Layer III frames across arbitrary chunk boundaries to measure duration.

    ``feed(chunk)`` returns the seconds of audio whose frame headers the chunk completed.
    Bytes that are not a valid header (ID3 tags, garbage) are skipped one at a time until the
    next sync word, so a damaged stream under-counts instead of failing.
    """

    __slots__ = ("_buffer", "_skip")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._skip = 0  # bytes of the current frame body still to pass over

    def feed(self, chunk: bytes) -> float:
        seconds = 0.0
        buf = self._buffer
        buf += chunk
        pos = 0
        while True:
            if self._skip:
                step = min(self._skip, len(buf) - pos)
                pos += step
                self._skip -= step
                if self._skip:
                    break
            if len(buf) - pos < 10:
                break
            if buf[pos : pos + 3] == b"ID3":
                # ID3v2 size is "syncsafe": 7 bits per byte.
                size = 0
                for byte in buf[pos + 6 : pos + 10]:
                    size = (size << 7) | (byte & 0x7F)
                self._skip = 10 + size
                continue
            frame = self._frame_at(buf, pos)
            if frame is None:
                pos += 1
                continue
            length, duration = frame
            seconds += duration
            self._skip = length
        del buf[:pos]
        return seconds

    @staticmethod
    def _frame_at(buf: bytearray, pos: int) -> tuple[int, float] | None:
        b1, b2 = buf[pos + 1], buf[pos + 2]
        if buf[pos] != 0xFF or (b1 & 0xE0) != 0xE0:
            return None
        version = (b1 >> 3) & 0x03  # 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
        layer = (b1 >> 1) & 0x03  # 1: Layer III
        if version == 1 or layer != 1:
            return None
        bitrate_index = b2 >> 4
        rate_index = (b2 >> 2) & 0x03
        if bitrate_index in (0, 15) or rate_index == 3:
            return None
        padding = (b2 >> 1) & 0x01
        sample_rate = _MP3_RATES[version][rate_index]
        if version == 3:
            bitrate = _MP3_BITRATES_V1[bitrate_index] * 1000
            samples = 1152
        else:
            bitrate = _MP3_BITRATES_V2[bitrate_index] * 1000
            samples = 576
        length = samples // 8 * bitrate // sample_rate + padding
        return length, samples / sample_rate


class AudioClock:
    """Turns a stream's audio bytes into seconds, whatever the format.

    For ``pcm`` a chunk that ends mid-sample keeps its odd byte back until the next chunk, so
    every chunk the caller gets holds whole samples.
    """

    __slots__ = ("_bytes_per_second", "_carry", "_mp3", "_pcm", "seconds")

    def __init__(self, audio_format: AudioFormat, sample_rate: int) -> None:
        self._bytes_per_second = bytes_per_second(audio_format, sample_rate)
        self._pcm = audio_format in ("pcm", "wav")
        self._mp3 = Mp3FrameCounter() if self._bytes_per_second is None else None
        self._carry = b""
        self.seconds = 0.0

    def align(self, data: bytes) -> bytes:
        """Return the part of *data* (after any carried byte) that holds whole samples."""
        if not self._pcm:
            return data
        if self._carry:
            data = self._carry + data
            self._carry = b""
        if len(data) & 1:
            self._carry = data[-1:]
            data = data[:-1]
        return data

    def reset(self, seconds: float) -> None:
        """Count on from *seconds*; a carried byte or partial mp3 frame is dropped (it belonged
        to audio the caller will not get)."""
        self._carry = b""
        if self._mp3 is not None:
            self._mp3 = Mp3FrameCounter()
        self.seconds = seconds

    def take_carry(self) -> bytes:
        """The odd byte left at the end of the stream, if any (never silently dropped)."""
        carry, self._carry = self._carry, b""
        return carry

    def advance(self, data: bytes) -> float:
        """Account for *data*; return its duration in seconds."""
        if self._mp3 is not None:
            duration = self._mp3.feed(data)
        else:
            assert self._bytes_per_second is not None
            duration = len(data) / self._bytes_per_second
        self.seconds += duration
        return duration
