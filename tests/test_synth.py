from __future__ import annotations

import numpy as np
import pytest

from rime_trio.testing import encode_audio, find_bursts, render_speech, speech_words
from rime_trio.testing._synth import SENTENCE_GAP, WORD_BASE, WORD_PER_CHAR


def test_rendering_is_deterministic() -> None:
    a = render_speech("The same words, twice.", 22050)
    b = render_speech("The same words, twice.", 22050)
    assert a == b


def test_one_burst_per_word_matching_the_timestamps() -> None:
    speech = render_speech("Hello there. How are you today?", 24000)
    assert speech.words == ("Hello", "there", "How", "are", "you", "today")
    bursts = find_bursts(speech.pcm, 24000)
    assert len(bursts) == len(speech.words)
    for (start, end), word_start, word_end in zip(bursts, speech.starts, speech.ends, strict=True):
        assert start == pytest.approx(word_start, abs=0.005)
        assert end == pytest.approx(word_end, abs=0.005)


def test_length_grows_with_the_words() -> None:
    short = render_speech("Hi.", 16000)
    longer = render_speech("Hi there, wonderful listener.", 16000)
    assert longer.duration > short.duration
    word = render_speech("abcd", 16000)
    assert word.ends[0] - word.starts[0] == pytest.approx(WORD_BASE + 4 * WORD_PER_CHAR, abs=1e-4)


def test_sentence_ends_add_a_pause() -> None:
    plain = render_speech("one two", 16000)
    stop = render_speech("one. two", 16000)
    gap_plain = plain.starts[1] - plain.ends[0]
    gap_stop = stop.starts[1] - stop.ends[0]
    assert gap_stop - gap_plain == pytest.approx(SENTENCE_GAP, abs=1e-3)


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 24000, 44100, 48000])
def test_rates(rate: int) -> None:
    speech = render_speech("Testing rates.", rate)
    assert len(speech.pcm) % 2 == 0
    assert speech.ends[-1] < speech.duration


def test_punctuation_only_tokens_are_not_words() -> None:
    assert speech_words('"Well," she said -- "fine."') == ["Well", "she", "said", "fine"]
    assert render_speech("... !", 8000).words == ()


def test_mulaw_encoding_of_known_values() -> None:
    pcm = np.array([0, -1, 32767, -32768, 1000, -1000], dtype="<i2").tobytes()
    # G.711 reference values (as produced by the former audioop.lin2ulaw)
    assert encode_audio(pcm, "mulaw", 8000) == bytes([0xFF, 0x7E, 0x80, 0x00, 0xCE, 0x4E])


def test_wav_encoding_has_header() -> None:
    pcm = render_speech("Hi.", 8000).pcm
    wav = encode_audio(pcm, "wav", 8000)
    assert wav[:4] == b"RIFF"
    assert wav[44:] == pcm


def test_mp3_is_refused() -> None:
    with pytest.raises(ValueError, match="mp3"):
        encode_audio(b"", "mp3", 8000)
