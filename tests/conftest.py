from __future__ import annotations

import pytest

from rime_trio.testing import RimeEmulator

pytest_plugins = ["rime_trio.testing.pytest_plugin"]

API_KEY = "emulator-key"


@pytest.fixture(autouse=True)
def _no_ambient_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests decide about RIME_API_KEY themselves; a developer's real key must never leak in.
    monkeypatch.delenv("RIME_API_KEY", raising=False)


@pytest.fixture
def http_url(rime_emulator: RimeEmulator) -> str:
    return rime_emulator.http_url
