"""A real browser (Debian's headless Chromium, driven by Playwright) against `rime-trio serve
--emulator`: audio arrives byte-exact, is scheduled gaplessly, words light up in order, and
Stop silences playback and cancels the server's stream. The page's own origin is accepted;
a page from another origin is refused before anything is spoken; the printed token link
connects and a page without the token is refused.

Playwright's own browser download cannot work here, so it drives the system Chromium. Without
/usr/bin/chromium the test is skipped locally; under CI (CI set) it fails instead.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rime_trio.testing import render_speech, speech_words

from .processes import rime_trio_process

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


def serve(*extra: str) -> Iterator[str]:
    with rime_trio_process("serve", "--emulator", "--port", "0", *extra, lines=1) as (_, lines):
        assert lines[0].startswith("Speak page:"), lines
        yield lines[0].split()[2].rstrip("/")


@pytest.fixture(scope="module")
def page_url() -> Iterator[str]:
    yield from serve()


@pytest.fixture(scope="module")
def paced_url() -> Iterator[str]:
    yield from serve("--emulator-real-time-factor", "1.0")


@pytest.fixture(scope="module")
def token_link() -> Iterator[str]:
    with rime_trio_process("serve", "--emulator", "--port", "0", "--token", lines=1) as (
        _,
        lines,
    ):
        assert lines[0].startswith("Speak page:"), lines
        yield lines[0].split()[2]  # http://127.0.0.1:PORT/#token=...


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


def open_page(chromium: object, url: str):  # type: ignore[no-untyped-def]
    page = chromium.new_page()  # type: ignore[attr-defined]
    page.goto(url + "/")
    page.wait_for_function("window.rimeStats.connected === true", timeout=10_000)
    return page


def test_speaks_two_sentences_with_every_word_highlighted(chromium: object, page_url: str) -> None:
    page = open_page(chromium, page_url)
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
    page.screenshot(path=str(ARTIFACTS / "browser-page.png"))
    origin = page.evaluate("location.origin")
    assert origin == page_url  # Chromium sent this Origin, and the server accepted it
    expected = b"".join(render_speech(s + " ", 24000).pcm for s in SENTENCES)
    assert stats["errors"] == []
    assert stats["bytes"] == len(expected)
    assert stats["audio"] == pytest.approx(len(expected) / 2 / 24000)
    assert stats["scheduled"] == pytest.approx(stats["audio"], abs=1e-6)  # covers all of it
    words = [w for s in SENTENCES for w in speech_words(s)]
    assert stats["words"] == words
    assert stats["highlighted"] == words  # each word, in order, as it was heard
    assert stats["ttfa"] is not None
    assert stats["ttfa"] > 0
    page.close()


def test_stop_silences_playback_and_cancels_the_server_stream(
    chromium: object, paced_url: str
) -> None:
    page = open_page(chromium, paced_url)
    page.fill("#text", "This is a long utterance that will be cut off. " * 6)
    page.click("#speak")
    page.wait_for_function("window.rimeStats.bytesReceived > 20000", timeout=20_000)
    page.click("#stop")
    assert page.evaluate("window.rimeStats.playing") == 0  # silenced at once
    page.wait_for_function("window.rimeStats.state === 'stopped'")
    with httpx.Client() as http:
        deadline = time.monotonic() + 10
        while True:
            server = http.get(paced_url + "/stats").json()
            if server["activeStreams"] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert server["stopped"] == 1
    assert server["activeStreams"] == 0  # the server's stream was cancelled
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


def test_a_page_from_another_origin_is_refused_and_speaks_nothing(
    chromium: object, page_url: str
) -> None:
    before = server_stats(page_url)
    page = chromium.new_page()  # type: ignore[attr-defined]
    ws_url = page_url.replace("http://", "ws://") + "/ws"
    # The attacker's site, served by Playwright: no DNS, a real cross-origin page.
    page.route(
        "http://evil.example/**",
        lambda route: route.fulfill(
            content_type="text/html", body=EVIL_PAGE.replace("WS_URL", ws_url)
        ),
    )
    page.goto("http://evil.example/")
    page.wait_for_function("window.result !== 'pending'", timeout=10_000)
    assert page.evaluate("window.result") == "refused"
    after = server_stats(page_url)
    assert after["refused"] == before["refused"] + 1  # it reached the server, which refused
    assert after["sessions"] == before["sessions"]
    assert after["utterances"] == before["utterances"]
    page.close()


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
