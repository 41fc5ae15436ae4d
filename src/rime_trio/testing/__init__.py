"""Test support: a Rime-compatible emulator server and helpers to check its audio.

``rime_trio.testing.pytest_plugin`` adds a ``rime_emulator`` fixture; list it in your
``conftest.py`` as ``pytest_plugins = ["rime_trio.testing.pytest_plugin"]``.
"""

from ._emulator import EmulatorConfig, EmulatorStats, Fault, RimeEmulator, open_emulator
from ._synth import SpeechAudio, encode_audio, find_bursts, render_speech, speech_words

__all__ = [
    "EmulatorConfig",
    "EmulatorStats",
    "Fault",
    "RimeEmulator",
    "SpeechAudio",
    "encode_audio",
    "find_bursts",
    "open_emulator",
    "render_speech",
    "speech_words",
]
