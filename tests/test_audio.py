from __future__ import annotations

import io
import wave

import pytest

from rime_trio import wav_header, write_wav
from rime_trio._audio import AudioClock, Mp3FrameCounter, bytes_per_second


def test_write_wav_is_readable_by_the_standard_library() -> None:
    pcm = bytes(range(256)) * 10
    buffer = io.BytesIO()
    write_wav(buffer, pcm, sample_rate=16000)
    buffer.seek(0)
    with wave.open(buffer) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
        assert wav.getnframes() == len(pcm) // 2
        assert wav.readframes(wav.getnframes()) == pcm


def test_mulaw_wav_header_declares_format_7() -> None:
    header = wav_header(100, sample_rate=8000, audio_format="mulaw")
    assert header[:4] == b"RIFF"
    assert header[8:12] == b"WAVE"
    assert int.from_bytes(header[20:22], "little") == 7
    assert int.from_bytes(header[34:36], "little") == 8


@pytest.mark.parametrize("fmt", ["mp3", "wav"])
def test_wav_header_refuses_formats_it_cannot_hold(fmt: str) -> None:
    with pytest.raises(ValueError, match=fmt):
        wav_header(10, sample_rate=8000, audio_format=fmt)  # type: ignore[arg-type]


def test_bytes_per_second() -> None:
    assert bytes_per_second("pcm", 24000) == 48000
    assert bytes_per_second("mulaw", 8000) == 8000
    assert bytes_per_second("mp3", 24000) is None


def mp3_frame(
    mpeg1: bool = True, bitrate_index: int = 9, rate_index: int = 0, padding: int = 0
) -> bytes:
    """A Layer III frame: header + zero body of the right length."""
    version_bits = 0b11 if mpeg1 else 0b10
    b1 = 0xE0 | (version_bits << 3) | (0b01 << 1) | 1
    b2 = (bitrate_index << 4) | (rate_index << 2) | (padding << 1)
    header = bytes([0xFF, b1, b2, 0xC4])
    if mpeg1:
        bitrate = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128][bitrate_index] * 1000
        rate = [44100, 48000, 32000][rate_index]
        length = 144 * bitrate // rate + padding
    else:
        bitrate = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80][bitrate_index] * 1000
        rate = [22050, 24000, 16000][rate_index]
        length = 72 * bitrate // rate + padding
    return header + bytes(length - 4)


def test_mp3_counter_measures_frames_across_any_chunking() -> None:
    frames = mp3_frame(rate_index=1) * 10  # 10 x 1152 samples at 48 kHz = 0.24 s
    id3 = b"ID3\x04\x00\x00\x00\x00\x00\x05" + b"12345"
    stream = id3 + frames
    for size in (1, 7, 100, len(stream)):
        counter = Mp3FrameCounter()
        total = sum(counter.feed(stream[i : i + size]) for i in range(0, len(stream), size))
        assert total == pytest.approx(0.24)


def test_mp3_counter_handles_mpeg2_and_skips_garbage() -> None:
    counter = Mp3FrameCounter()
    data = b"garbage!" + mp3_frame(mpeg1=False, rate_index=1) * 5  # 5 x 576 at 24 kHz
    assert counter.feed(data) == pytest.approx(0.12)


def test_audio_clock_keeps_pcm_chunks_whole_samples() -> None:
    clock = AudioClock("pcm", 8000)
    assert clock.align(b"\x01\x02\x03") == b"\x01\x02"
    assert clock.align(b"\x04") == b"\x03\x04"
    assert clock.align(b"\x05") == b""
    assert clock.take_carry() == b"\x05"
    assert clock.take_carry() == b""
    assert clock.advance(b"\x00" * 16000) == 1.0
    assert clock.seconds == 1.0


def test_audio_clock_does_not_touch_mulaw() -> None:
    clock = AudioClock("mulaw", 8000)
    assert clock.align(b"\x01\x02\x03") == b"\x01\x02\x03"
