"""pytest fixtures for code that uses rime-trio (needs pytest-trio).

Enable with ``pytest_plugins = ["rime_trio.testing.pytest_plugin"]`` in ``conftest.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ._emulator import EmulatorConfig, RimeEmulator, open_emulator

__all__ = ["emulator_config", "rime_emulator"]


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    """The config the ``rime_emulator`` fixture starts with; override to change it."""
    return EmulatorConfig()


@pytest.fixture
async def rime_emulator(emulator_config: EmulatorConfig) -> AsyncIterator[RimeEmulator]:
    """A running emulator on 127.0.0.1 with a free port, for one test."""
    async with open_emulator(emulator_config) as emulator:
        yield emulator
