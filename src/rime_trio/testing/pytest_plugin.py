"""pytest fixtures for code that uses rime-trio, with pytest-trio or AnyIO's pytest plugin.

Enable with ``pytest_plugins = ["rime_trio.testing.pytest_plugin"]`` in ``conftest.py``.

``rime_emulator`` is an async fixture with nothing backend-specific in it: the plugin that runs
the test runs it on the test's own event loop, so the emulator serves on the same backend as
the test (hypercorn's trio worker or its asyncio worker, see :func:`open_emulator`):

* with pytest-trio, in Trio tests (``@pytest.mark.trio``, or every async test under
  ``trio_mode = true``);
* with AnyIO's plugin, in tests marked ``@pytest.mark.anyio``, once per ``anyio_backend``
  (``"trio"``, ``"asyncio"``, or both through a parametrized ``anyio_backend`` fixture).

Like any function-scoped async fixture, it cannot be shared by tests on different backends.
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
    """A running emulator on 127.0.0.1 with a free port, for one test, on the test's backend.

    :raises OSError: when no local port can be bound.
    """
    async with open_emulator(emulator_config) as emulator:
        yield emulator
