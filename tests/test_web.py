"""The embedded web app, end to end: emulator <- RimeClient <- Starlette app <- a WebSocket
client standing in for the browser, all over real sockets, on trio and on asyncio (the app
is served by hypercorn's worker for the test's backend)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest

from rime_trio import RimeClient
from rime_trio._serving import BoundConfig, hypercorn_serve, listen
from rime_trio.testing import EmulatorConfig, RimeEmulator, open_emulator, render_speech
from rime_trio.web import (
    AccessPolicy,
    SessionLimits,
    SlidingWindow,
    WebStats,
    create_app,
    is_loopback_host,
    normalize_origin,
)

from .conftest import API_KEY
from .ws_client import ConnectionRejected, WebSocket, open_websocket

RATE = 16000
TEXT = "Hello from the web page. A second sentence follows."
SENTENCES = ["Hello from the web page.", "A second sentence follows."]

pytestmark = pytest.mark.anyio


@dataclass
class App:
    url: str
    stats: WebStats
    emulator: RimeEmulator
    clients: list[RimeClient] = field(default_factory=list)


def lifespan_watched(app: Any, started: anyio.Event) -> Any:
    """*app*, setting *started* once its lifespan startup is complete."""

    async def watched(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            return await app(scope, receive, send)

        async def send_and_watch(message: dict[str, Any]) -> None:
            await send(message)
            if message["type"] == "lifespan.startup.complete":
                started.set()

        return await app(scope, receive, send_and_watch)

    return watched


@asynccontextmanager
async def running_app(
    config: EmulatorConfig | None = None, *, v1: bool = False, **app_options: Any
) -> AsyncIterator[App]:
    async with open_emulator(config) as emulator:
        stats = WebStats()
        clients: list[RimeClient] = []
        base_url = emulator.v1_url if v1 else emulator.ws_url

        def factory() -> RimeClient:
            client = RimeClient(base_url=base_url, api_key=API_KEY, sample_rate=RATE)
            clients.append(client)
            return client

        app = create_app(factory, stats=stats, **app_options)
        listening = await listen("127.0.0.1", 0, BoundConfig.backlog)
        try:
            # hypercorn's worker for the running backend, on a socket bound beforehand
            hyper = BoundConfig(listening)
            hyper.accesslog = None
            hyper.errorlog = logging.getLogger("tests.web")
            shutdown = anyio.Event()
            started = anyio.Event()
            async with anyio.create_task_group() as task_group:
                serve = hypercorn_serve()
                task_group.start_soon(
                    lambda: serve(
                        lifespan_watched(app, started),
                        hyper,
                        shutdown_trigger=shutdown.wait,
                    )
                )
                with anyio.fail_after(10):
                    await started.wait()  # the client is open and its socket prewarmed
                port = listening.getsockname()[1]
                try:
                    yield App(f"http://127.0.0.1:{port}", stats, emulator, clients)
                finally:
                    shutdown.set()
        finally:
            listening.close()


@asynccontextmanager
async def browser(
    app: App,
    origin: str | None = None,
    subprotocols: list[str] | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    host: str | None = None,
    address: str | None = None,
) -> AsyncIterator[WebSocket]:
    """A WebSocket client on the app's /ws, connected to *address* (default: the app's)
    with *host* as its Host header (default: that address) and no Origin unless given.

    :raises ConnectionRejected: if the server refuses the handshake.
    """
    app_address, port = app.url.removeprefix("http://").rsplit(":", 1)
    extra = list(headers or [])
    if origin is not None:
        extra.append((b"Origin", origin.encode()))
    async with open_websocket(
        address or app_address,
        int(port),
        "/ws",
        host=host,
        subprotocols=subprotocols,
        extra_headers=extra,
    ) as ws:
        yield ws


@dataclass
class Utterance:
    audio: bytes
    events: list[dict[str, Any]]

    @property
    def words(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "word"]


async def speak(ws: WebSocket, text: str, **choice: str) -> Utterance:
    await ws.send_message(json.dumps({"type": "speak", **choice}))
    await ws.send_message(json.dumps({"type": "text", "text": text}))
    await ws.send_message(json.dumps({"type": "end"}))
    return await receive_until(ws, {"done", "error"})


async def receive_until(ws: WebSocket, kinds: set[str]) -> Utterance:
    audio = bytearray()
    events: list[dict[str, Any]] = []
    with anyio.fail_after(20):
        while True:
            message = await ws.get_message()
            if isinstance(message, bytes):
                audio += message
                continue
            event = json.loads(message)
            events.append(event)
            if event["type"] in kinds:
                return Utterance(bytes(audio), events)


def expected(sentences: list[str], rate: int = RATE) -> bytes:
    return b"".join(render_speech(s + " ", rate).pcm for s in sentences)


async def test_the_page_is_served() -> None:
    async with running_app() as app, httpx.AsyncClient() as http:
        page = await http.get(app.url + "/")
    assert page.status_code == 200
    assert "Speak" in page.text
    assert API_KEY not in page.text


async def test_lifespan_prewarms_one_socket_and_shutdown_closes_it() -> None:
    async with running_app() as app:
        assert app.emulator.stats.handshakes == 1  # before any browser connected
        assert app.emulator.stats.open_sockets == 1
        emulator = app.emulator
    with anyio.fail_after(5):
        await emulator.wait_open_sockets(0)


async def test_browser_receives_exactly_the_emulators_audio_and_monotonic_words() -> None:
    async with running_app() as app, browser(app) as ws:
        result = await speak(ws, TEXT)
        assert result.events[0]["type"] == "started"
        assert result.events[0]["sampleRate"] == RATE
        assert result.events[-1]["type"] == "done"
        assert result.audio == expected(SENTENCES)
        assert result.audio == b"".join(bytes(a) for a in app.emulator.stats.audio.values())
        starts = [w["start"] for w in result.words]
        assert starts == sorted(starts)
        assert [w["word"] for w in result.words] == [
            "Hello", "from", "the", "web", "page", "A", "second", "sentence", "follows",
        ]  # fmt: skip
        assert result.events[-1]["audioSeconds"] == pytest.approx(len(result.audio) / 2 / RATE)
        assert app.emulator.stats.received[1]  # the socket prewarmed at startup served it


async def test_word_by_word_input_like_an_llm() -> None:
    async with running_app() as app, browser(app) as ws:
        await ws.send_message(json.dumps({"type": "speak"}))
        for token in TEXT.split(" "):
            await ws.send_message(json.dumps({"type": "text", "text": token + " "}))
        await ws.send_message(json.dumps({"type": "end"}))
        result = await receive_until(ws, {"done", "error"})
    assert result.audio == expected(SENTENCES)


async def test_stop_cancels_the_server_stream_and_the_next_utterance_starts_clean() -> None:
    slow = EmulatorConfig(real_time_factor=1.0)  # audio is still flowing when Stop comes
    async with running_app(slow) as app, browser(app) as ws:
        await ws.send_message(json.dumps({"type": "speak"}))
        await ws.send_message(json.dumps({"type": "text", "text": "A long sentence " * 20}))
        await ws.send_message(json.dumps({"type": "end"}))
        with anyio.fail_after(10):
            while not isinstance(await ws.get_message(), bytes):
                pass
        await ws.send_message(json.dumps({"type": "stop"}))
        stopped = await receive_until(ws, {"stopped"})
        assert stopped.events[-1]["type"] == "stopped"
        assert app.stats.stopped == 1
        # "stopped" goes out at once (barge-in must not wait); the cancelled stream's
        # teardown, bounded, may still be closing its socket.
        with anyio.fail_after(5):
            await app.stats.wait_idle()
        app.emulator.config.real_time_factor = 0.0
        result = await speak(ws, "Fresh start.")
        assert result.events[0]["type"] == "started"
        assert result.audio == expected(["Fresh start."])  # nothing of the stopped one
        pool = app.clients[0].pool
        assert pool.stats.reused >= 1  # on a pooled (re-prewarmed) socket
    with anyio.fail_after(5):
        await app.emulator.wait_open_sockets(0)


async def test_browser_disconnect_mid_stream_leaves_no_socket_beyond_the_pool() -> None:
    slow = EmulatorConfig(real_time_factor=1.0)
    async with running_app(slow) as app:
        async with browser(app) as ws:
            await ws.send_message(json.dumps({"type": "speak"}))
            await ws.send_message(json.dumps({"type": "text", "text": "Going away soon. " * 10}))
            with anyio.fail_after(10):
                while not isinstance(await ws.get_message(), bytes):
                    pass
        # the browser is gone mid-stream
        client = app.clients[0]
        with anyio.fail_after(10):
            await app.stats.wait_idle()
            await client.pool.wait_teardowns()
            await app.emulator.wait_open_sockets(client.pool.idle)
        assert app.emulator.stats.open_sockets <= client.pool.idle


async def test_two_concurrent_sessions_both_complete() -> None:
    async with running_app() as app:
        results: dict[int, Utterance] = {}

        async def session(n: int) -> None:
            async with browser(app) as ws:
                results[n] = await speak(ws, f"Session {n} speaks.")

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(session, 1)
            task_group.start_soon(session, 2)
    for n in (1, 2):
        assert results[n].audio == expected([f"Session {n} speaks."])


async def test_model_and_voice_choice_reach_the_stream() -> None:
    async with running_app() as app, browser(app) as ws:
        result = await speak(ws, "Another voice.", model="mistv3", speaker="luna")
        assert result.events[0]["model"] == "mistv3"
        assert result.events[0]["speaker"] == "luna"
        assert result.audio == expected(["Another voice."])
        refused = await speak(ws, "Unknown model.", model="nope")
        assert refused.events[0]["model"] == "coda"  # not an allowed choice: server default


async def test_bad_messages_get_an_error_not_a_crash() -> None:
    async with running_app() as app, browser(app) as ws:
        await ws.send_message("not json")
        error = json.loads(await ws.get_message())
        assert error["type"] == "error"
        result = await speak(ws, "Still fine.")
        assert result.audio == expected(["Still fine."])


async def test_missing_origin_is_accepted_because_only_non_browsers_omit_it() -> None:
    async with running_app() as app, browser(app) as ws:  # it sends no Origin
        result = await speak(ws, "No origin at all.")
    assert result.audio == expected(["No origin at all."])


# ------------------------------------------------------------------ who may connect


def synthesis(emulator: RimeEmulator) -> tuple[int, int, int]:
    """Handshakes, messages received and texts synthesized: any synthesis moves them."""
    stats = emulator.stats
    return (
        stats.handshakes,
        sum(len(messages) for messages in stats.received.values()),
        sum(len(texts) for texts in stats.texts.values()),
    )


async def refused_status(app: App, **handshake: Any) -> int:
    with pytest.raises(ConnectionRejected) as info:
        async with browser(app, **handshake) as ws:
            await ws.send_message(json.dumps({"type": "speak"}))  # pragma: no cover
    return info.value.status_code


async def test_a_foreign_origin_is_refused_before_any_synthesis(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running_app() as app:
        before = synthesis(app.emulator)
        with caplog.at_level(logging.DEBUG):
            assert await refused_status(app, origin="https://evil.example") == 403
        assert synthesis(app.emulator) == before  # nothing reached Rime, not even a handshake
        assert app.stats.sessions == 0
        assert app.stats.utterances == 0
        assert app.stats.refused == 1
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1
    assert "'https://evil.example' is not allowed" in refusals[0]
    assert API_KEY not in caplog.text


async def test_the_pages_own_origin_is_accepted() -> None:
    async with running_app() as app, browser(app, origin=app.url) as ws:
        result = await speak(ws, "Same origin.")
    assert result.audio == expected(["Same origin."])
    assert app.stats.refused == 0


async def test_localhost_and_127_0_0_1_are_each_their_own_origin() -> None:
    async with running_app() as app:
        port = app.url.rsplit(":", 1)[1]
        async with browser(app, origin=f"http://localhost:{port}", address="localhost") as ws:
            result = await speak(ws, "Through localhost.")
        assert result.audio == expected(["Through localhost."])
        # A page on localhost talking to 127.0.0.1 is cross-origin, as the browser says.
        assert await refused_status(app, origin=f"http://localhost:{port}") == 403
        # Same host, another port: another site.
        assert await refused_status(app, origin=f"http://127.0.0.1:{int(port) + 1}") == 403


async def test_a_dns_rebinding_page_is_refused_although_origin_matches_host() -> None:
    async with running_app() as app:
        port = app.url.rsplit(":", 1)[1]
        rebound = f"evil.example:{port}"  # the attacker's name, pointed at 127.0.0.1
        before = synthesis(app.emulator)
        with pytest.raises(ConnectionRejected) as info:
            async with browser(app, origin=f"http://{rebound}", host=rebound):
                pass  # pragma: no cover
        assert info.value.status_code == 403
        assert synthesis(app.emulator) == before
        async with httpx.AsyncClient() as http:
            page = await http.get(app.url + "/", headers={"Host": rebound})
            stats = await http.get(app.url + "/stats", headers={"Host": rebound})
        assert page.status_code == stats.status_code == 403
        assert app.stats.refused == 3


async def test_null_origin_is_refused() -> None:
    async with running_app() as app:
        assert await refused_status(app, origin="null") == 403  # sandboxed frames, file: pages


async def test_an_allowed_origin_and_its_host_are_accepted() -> None:
    async with running_app(allowed_origins=["https://App.example/"]) as app:
        async with browser(app, origin="https://app.example") as ws:
            assert (await speak(ws, "Embedded elsewhere.")).events[-1]["type"] == "done"
        async with browser(app, origin="https://app.example", host="app.example") as ws:
            assert (await speak(ws, "Under its name.")).events[-1]["type"] == "done"
        assert await refused_status(app, origin="https://other.example") == 403


TOKEN = "a-token-of-at-least-16-chars"


async def test_with_a_token_handshakes_need_it_and_it_is_never_echoed() -> None:
    async with running_app(token=TOKEN) as app:
        before = synthesis(app.emulator)
        assert await refused_status(app, origin=app.url) == 401
        assert await refused_status(app, subprotocols=["rime-trio", "rime-trio.token.wrong"]) == 401
        assert await refused_status(app, headers=[(b"Authorization", b"Bearer nope")]) == 401
        # The right token from a foreign page is still refused: Origin is checked too.
        assert (
            await refused_status(
                app, origin="https://evil.example", subprotocols=[f"rime-trio.token.{TOKEN}"]
            )
            == 403
        )
        assert synthesis(app.emulator) == before
        assert app.stats.refused == 4
        protocols = ["rime-trio", f"rime-trio.token.{TOKEN}"]
        async with browser(app, origin=app.url, subprotocols=protocols) as ws:
            assert ws.subprotocol == "rime-trio"  # the token is not sent back
            result = await speak(ws, "With the token.")
        assert result.audio == expected(["With the token."])
        bearer = [(b"Authorization", f"Bearer {TOKEN}".encode())]
        async with browser(app, headers=bearer) as ws:
            assert (await speak(ws, "Bearer.")).audio == expected(["Bearer."])
        async with httpx.AsyncClient() as http:
            assert (await http.get(app.url + "/stats")).status_code == 401
            authorized = await http.get(
                app.url + "/stats", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            assert authorized.status_code == 200
            assert (await http.get(app.url + "/")).status_code == 200  # the page holds no secret
    assert authorized.json()["refused"] == 4


# ------------------------------------------------------------------ limits per session


async def test_text_over_the_limit_stops_the_utterance_and_the_connection_stays_usable() -> None:
    limits = SessionLimits(max_text_chars=40)
    async with running_app(limits=limits) as app, browser(app) as ws:
        await ws.send_message(json.dumps({"type": "speak"}))
        await ws.send_message(json.dumps({"type": "text", "text": "Short enough. "}))
        await ws.send_message(json.dumps({"type": "text", "text": "But this makes it too long."}))
        await ws.send_message(json.dumps({"type": "end"}))
        error = (await receive_until(ws, {"error"})).events[-1]
        assert error["code"] == "text_too_long"
        assert "40 characters" in error["message"]
        assert app.stats.limited == 1
        result = await speak(ws, "Still usable.")
        assert result.events[0]["type"] == "started"
        assert result.audio == expected(["Still usable."])
        assert "But this makes it too long." not in str(dict(app.emulator.stats.texts))


async def test_utterances_per_minute_are_limited_and_the_connection_stays_usable() -> None:
    limits = SessionLimits(max_utterances_per_minute=2)
    async with running_app(limits=limits) as app, browser(app) as ws:
        for n in range(2):
            assert (await speak(ws, f"Number {n}.")).events[-1]["type"] == "done"
        texts_before = synthesis(app.emulator)[2]
        refused = await speak(ws, "One too many.")
        error = refused.events[-1]
        assert [e["type"] for e in refused.events] == ["error"]
        assert error["code"] == "rate_limited"
        assert 0 < error["retryAfter"] <= 60
        assert synthesis(app.emulator)[2] == texts_before  # nothing was synthesized
        # text and end without an utterance are ignored; the connection still answers
        await ws.send_message(json.dumps({"type": "stop"}))
        assert (await receive_until(ws, {"stopped"})).events[-1]["type"] == "stopped"


async def test_a_second_speak_while_speaking_is_busy_until_stop() -> None:
    slow = EmulatorConfig(real_time_factor=1.0)  # the first is still speaking
    async with running_app(slow) as app, browser(app) as ws:
        await ws.send_message(json.dumps({"type": "speak"}))
        await ws.send_message(json.dumps({"type": "text", "text": "A long sentence " * 20}))
        await ws.send_message(json.dumps({"type": "end"}))
        with anyio.fail_after(10):
            while not isinstance(await ws.get_message(), bytes):
                pass
        await ws.send_message(json.dumps({"type": "speak"}))
        error = (await receive_until(ws, {"error"})).events[-1]
        assert error["code"] == "busy"
        assert app.stats.active == 1  # the first one goes on
        await ws.send_message(json.dumps({"type": "stop"}))
        await receive_until(ws, {"stopped"})
        app.emulator.config.real_time_factor = 0.0
        result = await speak(ws, "After the stop.")
        assert result.events[0]["type"] == "started"
        assert result.audio == expected(["After the stop."])


async def test_an_oversized_message_is_refused_before_it_is_parsed() -> None:
    limits = SessionLimits(max_message_chars=100)
    async with running_app(limits=limits) as app, browser(app) as ws:
        await ws.send_message(json.dumps({"type": "text", "text": "x" * 200}))
        error = json.loads(await ws.get_message())
        assert error["code"] == "message_too_long"
        assert (await speak(ws, "Fits.")).audio == expected(["Fits."])


# ------------------------------------------------------------------ the checks, sans-IO


def scope(
    host: str = "127.0.0.1:8000",
    origin: str | None = "http://127.0.0.1:8000",
    server: tuple[str, int] | None = ("127.0.0.1", 8000),
    scheme: str = "ws",
    **extra: Any,
) -> dict[str, Any]:
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return {"type": "websocket", "scheme": scheme, "server": server, "headers": headers, **extra}


@pytest.mark.parametrize(
    ("host", "origin", "server"),
    [
        ("127.0.0.1:8000", "http://127.0.0.1:8000", ("127.0.0.1", 8000)),
        ("localhost:8000", "http://localhost:8000", ("127.0.0.1", 8000)),
        ("LOCALHOST:8000", "http://localhost:8000", ("127.0.0.1", 8000)),
        ("[::1]:8000", "http://[::1]:8000", ("::1", 8000)),
        ("localhost:8000", "http://localhost:8000", ("::1", 8000)),
        ("127.0.0.1:8000", "http://127.0.0.1:8000", ("::ffff:127.0.0.1", 8000)),  # dual stack
        ("192.0.2.7:8000", "http://192.0.2.7:8000", ("192.0.2.7", 8000)),
        ("127.0.0.1:8000", None, ("127.0.0.1", 8000)),  # not a browser
    ],
)
def test_own_origin_is_accepted(host: str, origin: str | None, server: tuple[str, int]) -> None:
    assert AccessPolicy().check_websocket(scope(host, origin, server)) is None


@pytest.mark.parametrize(
    ("host", "origin", "server"),
    [
        ("127.0.0.1:8000", "https://evil.example", ("127.0.0.1", 8000)),
        ("127.0.0.1:8000", "null", ("127.0.0.1", 8000)),
        ("127.0.0.1:8000", "https://127.0.0.1:8000", ("127.0.0.1", 8000)),  # other scheme
        ("127.0.0.1:8000", "http://127.0.0.1", ("127.0.0.1", 8000)),  # other port
        ("127.0.0.1:8000", "http://127.0.0.1:8000/path", ("127.0.0.1", 8000)),
        ("evil.example:8000", "http://evil.example:8000", ("127.0.0.1", 8000)),  # rebinding
        ("localhost:8000", "http://localhost:8000", ("192.0.2.7", 8000)),  # not loopback
        ("127.0.0.1:9000", "http://127.0.0.1:9000", ("127.0.0.1", 8000)),  # other port
        ("127.0.0.2:8000", "http://127.0.0.2:8000", ("127.0.0.1", 8000)),
        ("127.1:8000", "http://127.1:8000", ("127.0.0.1", 8000)),  # no odd spellings
        ("u@127.0.0.1:8000", "http://127.0.0.1:8000", ("127.0.0.1", 8000)),
        ("127.0.0.1:8000", "http://127.0.0.1:8000", None),  # unknown server address
    ],
)
def test_other_hosts_and_origins_are_refused(
    host: str, origin: str, server: tuple[str, int] | None
) -> None:
    refusal = AccessPolicy().check_websocket(scope(host, origin, server))
    assert refusal is not None
    assert refusal.status == 403


def test_duplicate_host_or_origin_headers_are_refused() -> None:
    doubled = scope()
    doubled["headers"] += [(b"origin", b"https://evil.example")]
    assert AccessPolicy().check_websocket(doubled) is not None
    doubled = scope()
    doubled["headers"] += [(b"host", b"evil.example")]
    assert AccessPolicy().check_websocket(doubled) is not None


def test_allowed_hosts_and_wildcard() -> None:
    rebound = scope("app.example", "http://app.example")
    assert AccessPolicy().check_host(rebound) is not None
    assert AccessPolicy(allowed_hosts=frozenset({"app.example"})).check_websocket(rebound) is None
    assert AccessPolicy(allowed_hosts=frozenset({"*"})).check_host(rebound) is None
    # A wildcard Host does not widen Origin: a foreign page is still refused.
    foreign = scope("app.example", "https://evil.example")
    assert AccessPolicy(allowed_hosts=frozenset({"*"})).check_websocket(foreign) is not None


def test_token_from_subprotocol_or_bearer_header() -> None:
    policy = AccessPolicy(token=TOKEN)
    assert "a-token" not in repr(policy)
    assert policy.check_websocket(scope()) == policy.check_websocket(scope(subprotocols=["x"]))
    refusal = policy.check_websocket(scope(subprotocols=[f"rime-trio.token.{TOKEN}x"]))
    assert refusal is not None
    assert refusal.status == 401
    assert TOKEN not in refusal.reason
    assert policy.check_websocket(scope(subprotocols=[f"rime-trio.token.{TOKEN}"])) is None
    bearer = scope()
    bearer["headers"].append((b"authorization", f"Bearer {TOKEN}".encode()))
    assert policy.check_websocket(bearer) is None


@pytest.mark.parametrize("token", ["short", "has space in it!!", "é" * 20, "x" * 257])
def test_weak_or_unsendable_tokens_are_refused(token: str) -> None:
    with pytest.raises(ValueError, match="16 to 256 characters"):
        AccessPolicy(token=token)


@pytest.mark.parametrize(
    ("origin", "normal"),
    [
        ("HTTP://Example.COM", "http://example.com"),
        ("http://example.com:80/", "http://example.com"),
        ("https://example.com:8443", "https://example.com:8443"),
        ("http://[::1]:8000", "http://[::1]:8000"),
    ],
)
def test_origins_are_normalized(origin: str, normal: str) -> None:
    assert normalize_origin(origin) == normal


@pytest.mark.parametrize(
    "origin", ["null", "*", "example.com", "http://example.com/path", "http://u@example.com"]
)
def test_what_is_not_an_origin_cannot_be_allowed(origin: str) -> None:
    with pytest.raises(ValueError, match="not an origin"):
        create_app(RimeClient, allowed_origins=[origin])


def test_a_single_string_is_not_taken_for_a_list_of_origins() -> None:
    with pytest.raises(TypeError):
        create_app(RimeClient, allowed_origins="https://app.example")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("myhost.lan", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_sliding_window_admits_the_limit_then_says_when_to_retry() -> None:
    window = SlidingWindow(2, window=60.0)
    assert window.acquire(0.0) == 0.0
    assert window.acquire(10.0) == 0.0
    assert window.acquire(30.0) == pytest.approx(30.0)  # the first frees at 60
    assert window.acquire(60.0) == 0.0  # it did, and the refused one was not recorded
    assert window.acquire(65.0) == pytest.approx(5.0)
    assert window.acquire(70.0) == 0.0


def test_limits_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="max_text_chars"):
        SessionLimits(max_text_chars=0)


async def test_the_page_speaks_over_websocket_v1_with_words_after_the_audio() -> None:
    async with running_app(v1=True) as app, browser(app) as ws:
        await ws.send_message(json.dumps({"type": "speak"}))
        for token in TEXT.split(" "):
            await ws.send_message(json.dumps({"type": "text", "text": token + " "}))
        await ws.send_message(json.dumps({"type": "end"}))
        result = await receive_until(ws, {"done", "error"})
        second = await speak(ws, "Another one.")
    assert result.audio == expected(SENTENCES)
    assert result.events[-1]["type"] == "done"
    words = [e["word"] for e in result.events if e["type"] == "word"]
    assert words == [w.strip(".!?,") for w in TEXT.split()]
    assert second.audio == expected(["Another one."])
    assert app.emulator.stats.handshakes == 1  # both utterances on the one v1 socket


def test_ttfa_percentiles_are_nearest_rank_in_milliseconds() -> None:
    from rime_trio.web._app import _percentiles_ms

    assert _percentiles_ms([]) == {"count": 0, "p50": None, "p90": None, "p99": None}
    values = [i / 1000 for i in range(1, 101)]  # 1 ms .. 100 ms
    assert _percentiles_ms(reversed(values)) == {
        "count": 100,
        "p50": 50.0,
        "p90": 90.0,
        "p99": 99.0,
    }
    assert _percentiles_ms([0.25]) == {"count": 1, "p50": 250.0, "p90": 250.0, "p99": 250.0}
