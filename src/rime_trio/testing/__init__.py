"""Test support: a Rime-compatible emulator server and helpers to check its audio.

The emulator runs under Trio, AnyIO (on trio or asyncio) and plain asyncio.
``rime_trio.testing.pytest_plugin`` adds a ``rime_emulator`` fixture for pytest-trio and AnyIO's
pytest plugin; list it in your ``conftest.py`` as
``pytest_plugins = ["rime_trio.testing.pytest_plugin"]``.
"""

from ._catalog import RIME_VOICES_DATE, rime_voices
from ._config import EmulatorConfig, EmulatorStats, RunRecord
from ._emulator import RimeEmulator, open_emulator
from ._faults import Fault
from ._synth import SpeechAudio, encode_audio, find_bursts, render_speech, speech_words
from ._v1_readings import V1Readings
from ._ws3_readings import Ws3Readings

__all__ = [
    "RIME_VOICES_DATE",
    "EmulatorConfig",
    "EmulatorStats",
    "Fault",
    "RimeEmulator",
    "RunRecord",
    "SpeechAudio",
    "V1Readings",
    "Ws3Readings",
    "encode_audio",
    "find_bursts",
    "open_emulator",
    "render_speech",
    "rime_voices",
    "speech_words",
]
