"""Which event loop runs which test.

Tests marked ``pytest.mark.anyio`` (most modules set ``pytestmark``) run under AnyIO's pytest
plugin, once per backend: ``anyio_backend`` below is parametrized over trio and asyncio, and
async fixtures (``rime_emulator`` among them) run on the test's own loop. The remaining async
tests (the emulator's own, which drive it with a trio-websocket client) run under pytest-trio:
see :func:`pytest_collection_modifyitems`.

Virtual time exists on trio only. A test marked ``virtual_clock(**kwargs)`` runs on trio under
``trio.testing.MockClock(**kwargs)`` (the ``virtual_clock`` fixture hands it to the test), and
on asyncio in real time, where the fixture gives ``None`` and the test scales its waits down.
A test that only jumps the clock forward uses ``jump_clock``, which works on both.

Hypothesis runs under the profile named by ``HYPOTHESIS_PROFILE``: ``ci`` (the default) runs
a small, fixed budget with a derandomized seed, so CI is quick and reproducible; ``fuzz`` (what
``nox -s fuzz`` sets) a large one with fresh random examples. Tests that set ``max_examples``
themselves keep their own count under either.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from inspect import iscoroutinefunction
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings

from rime_trio.testing import RimeEmulator

pytest_plugins = ["rime_trio.testing.pytest_plugin"]

API_KEY = "emulator-key"

BACKENDS = ("trio", "asyncio")

# The streaming protocols a stream can speak: Rime's /ws3 (a socket per stream) and its
# WebSocket v1 (/ws: streams share a socket, each on contexts of its own).
PROTOCOLS = ("ws3", "v1")

settings.register_profile(
    "ci",
    settings.get_profile("ci"),  # hypothesis's own: derandomize, no database, print_blob
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz",
    max_examples=1000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str | tuple[str, dict[str, Any]]:
    marker = request.node.get_closest_marker("virtual_clock")
    if request.param == "trio" and marker is not None:
        # A clock of the test's own, passed to trio by AnyIO's runner.
        return "trio", {"clock": trio.testing.MockClock(*marker.args, **marker.kwargs)}
    return str(request.param)


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    """The streaming protocol the test runs over (see ``PROTOCOLS``). Hypothesis tests take
    ``@pytest.mark.parametrize("protocol", PROTOCOLS)`` instead, as they do for ``backend``:
    a function-scoped fixture trips hypothesis's health check."""
    return str(request.param)


@pytest.fixture
def virtual_clock(anyio_backend_options: dict[str, Any]) -> trio.testing.MockClock | None:
    """The test's MockClock on trio (see the ``virtual_clock`` marker); None on asyncio."""
    clock = anyio_backend_options.get("clock")
    assert clock is None or isinstance(clock, trio.testing.MockClock)
    return clock


@pytest.fixture
def jump_clock(
    virtual_clock: trio.testing.MockClock | None, anyio_backend_name: str
) -> Iterator[Callable[[float], None]]:
    """``jump(seconds)``: move the running loop's clock forward at once, as
    ``MockClock.jump`` does on trio (timers due by then fire). On asyncio the loop's
    ``time()`` gets an offset; only for tests that jump and never wait for time to pass."""
    if anyio_backend_name == "trio":
        assert virtual_clock is not None, "mark the test @pytest.mark.virtual_clock"
        yield virtual_clock.jump
        return
    offset = 0.0
    loops: list[asyncio.AbstractEventLoop] = []

    def jump(seconds: float) -> None:
        nonlocal offset
        if not loops:
            loop = asyncio.get_running_loop()
            real = loop.time
            loop.time = lambda: real() + offset  # type: ignore[method-assign]
            loops.append(loop)
        offset += seconds

    yield jump
    for loop in loops:
        del loop.time  # the instance attribute: the class's own time() again


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Async tests not marked for AnyIO run under pytest-trio (as with ``trio_mode``, which
    cannot be on: it would claim the AnyIO tests as well)."""
    for item in items:
        if not isinstance(item, pytest.Function) or item.get_closest_marker("anyio"):
            continue
        function = getattr(item.obj, "hypothesis", None)
        function = function.inner_test if function is not None else item.obj
        if iscoroutinefunction(function) and item.get_closest_marker("trio") is None:
            item.add_marker(pytest.mark.trio)


@pytest.fixture(autouse=True)
def _no_ambient_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests decide about RIME_API_KEY themselves; a developer's real key must never leak in.
    monkeypatch.delenv("RIME_API_KEY", raising=False)


@pytest.fixture
def http_url(rime_emulator: RimeEmulator) -> str:
    return rime_emulator.http_url
