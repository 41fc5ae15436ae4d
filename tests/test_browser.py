"""A real browser (Debian's headless Chromium, driven by Playwright) against `rime-trio serve
--emulator`, on both backends (`--backend trio` and `--backend asyncio`): audio arrives
byte-exact, is scheduled gaplessly, words light up in order, and Stop silences playback and
cancels the server's stream. The page's own origin is accepted; a page from another origin is
refused before anything is spoken; the printed token link connects and a page without the
token is refused.

The same page against examples/embed_fastapi.py (FastAPI served by uvicorn on asyncio, run as
a script in front of an emulator in this process): byte-exact audio, words in order, Stop, and
a foreign page refused with the emulator untouched.

Playwright's own browser download cannot work here, so it drives the system Chromium. Without
/usr/bin/chromium the test is skipped locally; under CI (CI set) it fails instead.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from rime_trio.testing import EmulatorConfig, RimeEmulator, render_speech, speech_words

from .emulator_thread import emulator_in_thread
from .processes import rime_trio_process
from .test_embed_fastapi import example_process

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TEXT = "The browser hears this first sentence. Then a second one, word by word."
SENTENCES = ["The browser hears this first sentence.", "Then a second one, word by word."]
CHROMIUM_ARGS = [
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Chromium now blocks public sites from reaching loopback itself (Local Network Access);
    # Firefox and Safari do not. Off here, so the cross-origin test reaches the server and
    # shows that the server refuses on its own.
    "--disable-features=LocalNetworkAccessChecks",
]

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        pytest.fail("CI must run the browser test: install Debian's chromium", pytrace=False)
    pytest.skip("needs Debian's chromium at /usr/bin/chromium", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


def serve(backend: str, *extra: str) -> Iterator[str]:
    """`rime-trio serve --emulator --backend BACKEND EXTRA`; yields the printed link."""
    args = ("serve", "--emulator", "--backend", backend, "--port", "0", *extra)
    with rime_trio_process(*args, lines=1) as (_, lines):
        assert lines[0].startswith("Speak page:"), lines
        yield lines[0].split()[2]


@pytest.fixture(scope="module", params=["trio", "asyncio"])
def backend(request: pytest.FixtureRequest) -> str:
    """The event loop `rime-trio serve` runs on: the page must not see a difference."""
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def page_url(backend: str) -> Iterator[str]:
    for link in serve(backend):
        yield link.rstrip("/")


@pytest.fixture(scope="module")
def paced_url(backend: str) -> Iterator[str]:
    for link in serve(backend, "--emulator-real-time-factor", "1.0"):
        yield link.rstrip("/")


@pytest.fixture(scope="module")
def token_link(backend: str) -> Iterator[str]:
    yield from serve(backend, "--token")  # http://127.0.0.1:PORT/#token=...


def server_stats(url: str) -> dict[str, int]:
    with httpx.Client() as http:
        stats: dict[str, int] = http.get(url + "/stats").json()
    return stats


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Frames:
    """Every WebSocket frame the browser received, as Chromium saw it on the wire."""

    def __init__(self) -> None:
        self.received: list[str | bytes] = []

    def attach(self, page: object) -> None:
        def on_frame(payload: str | bytes) -> None:
            self.received.append(payload)

        def on_socket(ws: object) -> None:
            ws.on("framereceived", on_frame)  # type: ignore[attr-defined]

        page.on("websocket", on_socket)  # type: ignore[attr-defined]

    def audio(self) -> bytes:
        """The binary frames after the last ``started``: the last utterance's audio."""
        starts = [
            i
            for i, frame in enumerate(self.received)
            if isinstance(frame, str) and json.loads(frame).get("type") == "started"
        ]
        assert starts, "no utterance started"
        return b"".join(f for f in self.received[starts[-1] :] if isinstance(f, bytes))


def open_page(chromium: object, url: str, frames: Frames | None = None):  # type: ignore[no-untyped-def]
    page = chromium.new_page()  # type: ignore[attr-defined]
    if frames is not None:
        frames.attach(page)
    page.goto(url + "/")
    page.wait_for_function("window.rimeStats.connected === true", timeout=10_000)
    return page


def speaks_two_sentences(chromium: object, url: str, screenshot: str) -> None:
    """The page at *url* speaks TEXT word by word: the exact audio, every word in order."""
    frames = Frames()
    page = open_page(chromium, url, frames)
    page.fill("#text", TEXT)
    page.check("#trickle")  # word by word, as an LLM would send it
    page.click("#speak")
    page.wait_for_function("window.rimeStats.state === 'done'", timeout=20_000)
    page.wait_for_function(
        "window.rimeStats.highlighted.length === window.rimeStats.words.length", timeout=20_000
    )
    stats = page.evaluate(
        "({bytes: rimeStats.bytesReceived, scheduled: rimeStats.scheduledSeconds,"
        " audio: rimeStats.audioSeconds, words: rimeStats.words.map(w => w.word),"
        " highlighted: rimeStats.highlighted, ttfa: rimeStats.ttfaMs, errors: rimeStats.errors})"
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / screenshot))
    origin = page.evaluate("location.origin")
    assert origin == url  # Chromium sent this Origin, and the server accepted it
    expected = b"".join(render_speech(s + " ", 24000).pcm for s in SENTENCES)
    assert stats["errors"] == []
    assert frames.audio() == expected  # byte for byte, as Chromium received it
    assert stats["bytes"] == len(expected)
    assert stats["audio"] == pytest.approx(len(expected) / 2 / 24000)
    assert stats["scheduled"] == pytest.approx(stats["audio"], abs=1e-6)  # covers all of it
    words = [w for s in SENTENCES for w in speech_words(s)]
    assert stats["words"] == words
    assert stats["highlighted"] == words  # each word, in order, as it was heard
    assert stats["ttfa"] is not None
    assert stats["ttfa"] > 0
    page.close()


def eventually(condition: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop_cancels(
    chromium: object,
    url: str,
    server_speaking: Callable[[], bool],
    server_cancelled: Callable[[], bool],
) -> None:
    """Stop mid-utterance on the page at *url* (a paced server): playback is silenced at
    once, the server goes from *server_speaking* to *server_cancelled*, nothing more
    arrives, and the next utterance is exact."""
    frames = Frames()
    page = open_page(chromium, url, frames)
    page.fill("#text", "This is a long utterance that will be cut off. " * 6)
    page.click("#speak")
    page.wait_for_function("window.rimeStats.bytesReceived > 20000", timeout=20_000)
    assert eventually(server_speaking)
    page.click("#stop")
    assert page.evaluate("window.rimeStats.playing") == 0  # silenced at once
    page.wait_for_function("window.rimeStats.state === 'stopped'")
    assert eventually(server_cancelled)  # the server's stream was cancelled
    scheduled = page.evaluate("window.rimeStats.scheduledSeconds")
    page.wait_for_timeout(500)
    assert page.evaluate("window.rimeStats.scheduledSeconds") == scheduled  # nothing more
    assert page.evaluate("window.rimeStats.playing") == 0
    # the next utterance starts cleanly
    page.fill("#text", "And now a fresh one.")
    page.click("#speak")
    page.wait_for_function("window.rimeStats.state === 'done'", timeout=20_000)
    fresh = render_speech("And now a fresh one. ", 24000).pcm
    assert page.evaluate("window.rimeStats.bytesReceived") == len(fresh)
    assert frames.audio() == fresh
    page.close()


EVIL_PAGE = """<!doctype html><script>
window.result = "pending";
const ws = new WebSocket("WS_URL");
ws.onopen = () => {
  window.result = "open";
  ws.send(JSON.stringify({ type: "speak" }));
  ws.send(JSON.stringify({ type: "text", text: "Speaking on your key." }));
  ws.send(JSON.stringify({ type: "end" }));
};
ws.onmessage = () => { window.result = "answered"; };
ws.onclose = () => { if (window.result === "pending") window.result = "refused"; };
</script>"""


def foreign_page_result(chromium: object, url: str) -> str:
    """What became of a WebSocket that a page on http://evil.example opened to *url*."""
    page = chromium.new_page()  # type: ignore[attr-defined]
    ws_url = url.replace("http://", "ws://") + "/ws"
    # The attacker's site, served by Playwright: no DNS, a real cross-origin page.
    page.route(
        "http://evil.example/**",
        lambda route: route.fulfill(
            content_type="text/html", body=EVIL_PAGE.replace("WS_URL", ws_url)
        ),
    )
    page.goto("http://evil.example/")
    page.wait_for_function("window.result !== 'pending'", timeout=10_000)
    result: str = page.evaluate("window.result")
    page.close()
    return result


def test_speaks_two_sentences_with_every_word_highlighted(
    chromium: object, page_url: str, backend: str
) -> None:
    speaks_two_sentences(chromium, page_url, f"browser-page-{backend}.png")


def test_the_page_speaks_over_websocket_v1(chromium: object) -> None:
    # The page is the same; the server's client speaks Rime's v1 (words after the audio).
    for link in serve("trio", "--protocol", "v1"):
        speaks_two_sentences(chromium, link.rstrip("/"), "browser-page-v1.png")


def test_stop_silences_playback_and_cancels_the_server_stream(
    chromium: object, paced_url: str
) -> None:
    stops: list[dict[str, int]] = []

    def cancelled() -> bool:
        stops.append(server_stats(paced_url))
        return stops[-1]["activeStreams"] == 0

    stop_cancels(
        chromium, paced_url, lambda: server_stats(paced_url)["activeStreams"] == 1, cancelled
    )
    assert stops[-1]["stopped"] == 1


def test_a_page_from_another_origin_is_refused_and_speaks_nothing(
    chromium: object, page_url: str
) -> None:
    before = server_stats(page_url)
    assert foreign_page_result(chromium, page_url) == "refused"
    after = server_stats(page_url)
    assert after["refused"] == before["refused"] + 1  # it reached the server, which refused
    assert after["sessions"] == before["sessions"]
    assert after["utterances"] == before["utterances"]


def test_the_token_link_connects_and_a_page_without_it_is_refused(
    chromium: object, token_link: str
) -> None:
    url, _, token = token_link.partition("/#token=")
    page = chromium.new_page()  # type: ignore[attr-defined]
    page.goto(url + "/")  # no token
    page.wait_for_function("window.rimeStats.refused === true", timeout=10_000)
    assert "refused" in page.inner_text("#status")
    page.goto(token_link)  # pasted into the same tab: only the fragment changes
    page.wait_for_function("window.rimeStats.connected === true", timeout=10_000)
    assert token not in page.url  # taken out of the address bar
    page.fill("#text", "Spoken with the token.")
    page.click("#speak")
    page.wait_for_function("window.rimeStats.state === 'done'", timeout=20_000)
    expected = render_speech("Spoken with the token. ", 24000).pcm
    assert page.evaluate("window.rimeStats.bytesReceived") == len(expected)
    page.reload()  # the tab keeps its token
    page.wait_for_function("window.rimeStats.connected === true", timeout=10_000)
    with httpx.Client() as http:
        stats = http.get(url + "/stats", headers={"Authorization": f"Bearer {token}"}).json()
    assert stats["refused"] == 1
    assert stats["sessions"] == 2
    page.close()


# examples/embed_fastapi.py: FastAPI under uvicorn on asyncio, the same page, the same checks.


def fastapi_example(config: EmulatorConfig) -> Iterator[tuple[str, RimeEmulator]]:
    """The example as a user runs it (``python examples/embed_fastapi.py --base-url ...``),
    in front of an emulator in this process, so the test can count what it synthesizes."""
    with emulator_in_thread(config) as emulator:
        key = {"RIME_API_KEY": emulator.config.api_key}
        with example_process("--base-url", emulator.ws_url, env=key) as url:
            assert eventually(lambda: emulator.stats.handshakes == 1)  # prewarmed at startup
            yield url, emulator


@pytest.fixture(scope="module")
def fastapi_server() -> Iterator[tuple[str, RimeEmulator]]:
    yield from fastapi_example(EmulatorConfig(real_time_factor=0.0))


@pytest.fixture(scope="module")
def fastapi_paced_server() -> Iterator[tuple[str, RimeEmulator]]:
    yield from fastapi_example(EmulatorConfig(real_time_factor=1.0))


def test_fastapi_example_speaks_in_the_browser(
    chromium: object, fastapi_server: tuple[str, RimeEmulator]
) -> None:
    url, emulator = fastapi_server
    speaks_two_sentences(chromium, url, "browser-page-fastapi.png")
    assert emulator.stats.runs[1]  # spoken on the socket the lifespan prewarmed


def test_fastapi_example_stop_cancels_the_server_stream(
    chromium: object, fastapi_paced_server: tuple[str, RimeEmulator]
) -> None:
    url, emulator = fastapi_paced_server
    # While it speaks, its stream's socket and the pool's spare are open; once the stream
    # is cancelled (its socket closed), only the spare.
    stats = emulator.stats
    stop_cancels(chromium, url, lambda: stats.open_sockets == 2, lambda: stats.open_sockets == 1)


def test_fastapi_example_refuses_a_page_from_another_origin(
    chromium: object, fastapi_server: tuple[str, RimeEmulator]
) -> None:
    url, emulator = fastapi_server
    before = (emulator.stats.handshakes, dict(emulator.stats.texts), emulator.stats.open_sockets)
    assert foreign_page_result(chromium, url) == "refused"
    time.sleep(0.2)  # anything it set off would have reached the emulator by now
    after = (emulator.stats.handshakes, dict(emulator.stats.texts), emulator.stats.open_sockets)
    assert after == before  # nothing synthesized, no socket opened for it
