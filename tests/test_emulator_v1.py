"""The emulator's WebSocket v1 endpoint (``/ws``) over real loopback sockets, on trio and
asyncio, checked with a bare client: wsproto over AnyIO (``ws_client``) plus the sans-IO
``_protocol_v1`` module, independent of rime-trio's stream and pool layers."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
from rime_api import text_to_speech_pb2 as tts

from rime_trio import RimeOptions
from rime_trio._errors import ProtocolError
from rime_trio._protocol_v1 import (
    SUBPROTOCOL_BINARY,
    SUBPROTOCOL_JSON,
    Audio,
    Cancelled,
    Done,
    ErrorEvent,
    Event,
    Frame,
    V1Connection,
    decode_response,
    encode_message,
    synthesis_request,
)
from rime_trio.testing import (
    EmulatorConfig,
    Fault,
    RimeEmulator,
    V1Readings,
    open_emulator,
    render_speech,
)

from .ws_client import ConnectionClosed, ConnectionRejected, WebSocket, open_websocket

pytestmark = pytest.mark.anyio

KEY = "emulator-key"
AUTH = [(b"authorization", f"Bearer {KEY}".encode())]
RATE = 8000
OPTIONS = RimeOptions(api_key=KEY, sample_rate=RATE)


class RawV1:
    """A bare v1 client: one socket, the sans-IO connection state, events kept per context."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.conn = V1Connection(ws.subprotocol)
        self.events: dict[str | None, list[Event]] = defaultdict(list)
        self.order: list[str] = []  # context id of every audio event, in arrival order
        self.frames: list[Frame] = []

    async def send(self, frame: Frame | None) -> None:
        if frame is not None:
            await self.ws.send_message(frame)

    async def speak(self, context_id: str, text: str) -> None:
        """Start a streaming context that says *text*, and end its input."""
        await self.send(self.conn.start(context_id, OPTIONS))
        await self.send(self.conn.send_text(context_id, text))
        await self.send(self.conn.end(context_id))

    async def send_one_shot(self, context_id: str, text: str) -> None:
        """A one-shot ``start`` (the whole input in one frame). The server takes them; this
        client's protocol sends none, so it does not know the context: no event for it may
        come back."""
        request = synthesis_request(OPTIONS)
        request.text = text
        start = tts.WebSocketRequest(context_id=context_id, start=request)
        await self.send(encode_message(start, self.conn.encoding))

    async def receive(self) -> list[Event]:
        frame = await self.ws.get_message()
        self.frames.append(frame)
        events = self.conn.receive(frame)
        for event in events:
            self.events[event.context_id].append(event)
            if isinstance(event, Audio):
                self.order.append(event.context_id)
        return events

    async def until(self, condition: Callable[[], bool], seconds: float = 10) -> None:
        with anyio.fail_after(seconds):
            while not condition():
                await self.receive()

    def terminal(self, context_id: str) -> Event | None:
        for event in self.events[context_id]:
            if isinstance(event, Done | Cancelled | ErrorEvent):
                return event
        return None

    def finished(self, *context_ids: str) -> Callable[[], bool]:
        return lambda: all(self.terminal(c) is not None for c in context_ids)

    def pcm(self, context_id: str) -> bytes:
        return b"".join(e.chunk.data for e in self.events[context_id] if isinstance(e, Audio))


@asynccontextmanager
async def v1_client(
    emulator: RimeEmulator,
    subprotocols: list[str] | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> AsyncIterator[RawV1]:
    """A raw v1 client on *emulator*'s ``/ws``, past ``ready``."""
    async with open_websocket(
        emulator.host,
        emulator.port,
        "/ws",
        subprotocols=[SUBPROTOCOL_BINARY] if subprotocols is None else subprotocols,
        extra_headers=AUTH if headers is None else headers,
    ) as ws:
        client = RawV1(ws)
        await client.until(lambda: client.conn.ready is not None)
        yield client


def pcm(*sentences: str) -> bytes:
    return b"".join(render_speech(s, RATE).pcm for s in sentences)


def sentences_of(n: int) -> list[str]:
    return [f"Context {n} speaks first. ", f"Then number {n} is done."]


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(chunk_bytes=500)


@pytest.mark.parametrize("subprotocol", [SUBPROTOCOL_BINARY, SUBPROTOCOL_JSON])
async def test_fifty_concurrent_contexts_on_one_socket_each_get_exact_audio_and_words(
    rime_emulator: RimeEmulator, subprotocol: str
) -> None:
    async with v1_client(rime_emulator, [subprotocol]) as client:
        assert client.ws.subprotocol == subprotocol
        ids = [f"ctx-{n}" for n in range(50)]
        for n, context_id in enumerate(ids):
            await client.send(client.conn.start(context_id, OPTIONS, label=f"stream-{n}"))
            for sentence in sentences_of(n):
                await client.send(client.conn.send_text(context_id, sentence))
            await client.send(client.conn.end(context_id))
        await client.until(client.finished(*ids))
    assert all(
        isinstance(f, bytes if subprotocol == SUBPROTOCOL_BINARY else str) for f in client.frames
    )
    assert rime_emulator.stats.handshakes == 1
    for n, context_id in enumerate(ids):
        first, second = sentences_of(n)
        assert client.pcm(context_id) == pcm(first, second)
        done = client.terminal(context_id)
        assert isinstance(done, Done)
        one, two = render_speech(first, RATE), render_speech(second, RATE)
        assert [w.word for w in done.words] == [*one.words, *two.words]
        expected = [*one.starts, *(one.duration + t for t in two.starts)]
        assert [w.start for w in done.words] == pytest.approx(expected, abs=1e-6)
        assert {w.context_id for w in done.words} == {f"stream-{n}"}
    # The contexts' audio was interleaved on the wire, not sent one context after another.
    switches = sum(a != b for a, b in zip(client.order, client.order[1:], strict=False))
    assert switches > 2 * len(ids)
    assert client.conn.open_contexts == 0
    assert client.conn.dropped_events == 0


async def test_cancel_mid_context_leaves_the_other_contexts_intact(
    anyio_backend_name: str,
) -> None:
    # Paced (0.2 s per second of audio) so that the cancel lands while audio is still owed.
    config = EmulatorConfig(chunk_bytes=400, real_time_factor=0.2)
    text = "A sentence long enough to be cut off in the middle. "
    async with open_emulator(config) as emulator:
        async with v1_client(emulator) as client:
            for context_id in ("a", "b", "c"):
                await client.speak(context_id, text)
            await client.until(lambda: len(client.pcm("b")) > 0)
            await client.send(client.conn.cancel("b"))
            assert client.conn.cancel("b") is None  # once on the wire
            await client.until(client.finished("a", "b", "c"))
            assert isinstance(client.terminal("b"), Cancelled)
            assert 0 < len(client.pcm("b")) < len(pcm(text))
            for context_id in ("a", "c"):
                assert isinstance(client.terminal(context_id), Done)
                assert client.pcm(context_id) == pcm(text)
            # The socket carries on: a new context (a fresh id, as the client protocol wants).
            await client.speak("b2", "Again.")
            await client.until(client.finished("b2"))
            assert client.pcm("b2") == pcm("Again.")
    runs = emulator.stats.runs[1]
    assert next(r.abandoned for r in runs if r.context_id == "b")


async def test_odd_chunks_split_samples_and_each_context_still_gets_exact_pcm() -> None:
    config = EmulatorConfig(chunk_bytes=50, faults=[Fault("odd_chunks")])
    async with open_emulator(config) as emulator:
        async with v1_client(emulator) as client:
            await client.speak("a", "Odd one.")
            await client.speak("b", "Odd two, longer.")
            await client.until(client.finished("a", "b"))
    assert client.pcm("a") == pcm("Odd one.")
    assert client.pcm("b") == pcm("Odd two, longer.")
    responses = [decode_response(frame) for frame in client.frames]
    assert any(len(r.audio) % 2 for r in responses if r.HasField("audio"))


async def test_tcp_drop_mid_context_leaves_the_context_unfinished() -> None:
    config = EmulatorConfig(chunk_bytes=400, faults=[Fault("drop", after_chunks=2)])
    async with open_emulator(config, tcp_faults=True) as emulator:
        async with v1_client(emulator) as client:
            await client.speak("a", "This one is dropped midway.")
            with pytest.raises(ConnectionClosed) as closed:
                await client.until(client.finished("a"))
            assert closed.value.code == 1006  # no close frame: the TCP connection was reset
            assert client.conn.open_context_ids == ["a"]  # no terminal event came
    full = pcm("This one is dropped midway.")
    # A reset may discard chunks still in flight: at most the first two arrive.
    assert full[:800].startswith(client.pcm("a"))
    assert emulator.stats.connection_audio(1) == full[:800]


@pytest.mark.parametrize(
    "config",
    [
        EmulatorConfig(max_sockets=1),
        EmulatorConfig(
            faults=[
                Fault(
                    "reject",
                    connections=frozenset({2}),
                    status=429,
                    body="Currently at websocket limit",
                )
            ]
        ),
    ],
    ids=["socket-limit", "reject-fault"],
)
async def test_a_handshake_past_the_limit_gets_429(config: EmulatorConfig) -> None:
    async with open_emulator(config) as emulator:
        async with v1_client(emulator):
            with pytest.raises(ConnectionRejected) as rejected:
                async with v1_client(emulator):
                    pass
    assert rejected.value.status_code == 429
    assert rejected.value.body == b"Currently at websocket limit"
    assert emulator.stats.rejected == 1


async def test_a_wrong_key_is_refused_with_401(rime_emulator: RimeEmulator) -> None:
    for headers in ([(b"authorization", b"Bearer nope")], [(b"authorization", b"")]):
        with pytest.raises(ConnectionRejected) as rejected:
            async with v1_client(rime_emulator, headers=headers):
                pass
        assert rejected.value.status_code == 401
    assert rime_emulator.stats.rejected == 2
    assert rime_emulator.stats.handshakes == 0


def config_auth(value: str | None) -> tts.WebSocketRequest:
    config = tts.WebSocketConfig() if value is None else tts.WebSocketConfig(authorization=value)
    return tts.WebSocketRequest(config=config)


async def test_a_browser_authenticates_with_config_as_its_first_message(
    rime_emulator: RimeEmulator,
) -> None:
    """Browsers cannot set headers: a handshake without Authorization is accepted, and the
    first message carries the key (the docs)."""
    async with v1_client(rime_emulator, headers=[]) as client:
        await client.send(encode_message(config_auth(f"Bearer {KEY}"), client.conn.encoding))
        await client.speak("a", "From a browser.")
        await client.until(client.finished("a"))
    assert client.pcm("a") == pcm("From a browser.")


@pytest.mark.parametrize("first", ["wrong", "no-auth", "start"])
async def test_wrong_or_missing_first_message_auth_is_unauthenticated_then_close(
    rime_emulator: RimeEmulator, first: str
) -> None:
    async with v1_client(rime_emulator, headers=[]) as client:
        if first == "start":
            await client.send_one_shot("a", "Sneaky.")
        else:
            value = "Bearer nope" if first == "wrong" else None
            await client.send(encode_message(config_auth(value), client.conn.encoding))
        with pytest.raises(ConnectionClosed) as closed:
            await client.until(lambda: False)
    [error] = client.events[None][1:]
    assert isinstance(error, ErrorEvent)
    assert error.kind == "unauthenticated"
    assert closed.value.code == 1008
    assert client.pcm("a") == b""
    assert rime_emulator.stats.audio == {}


# --------------------------------------------------------------------------- faults on v1


async def test_close_fault_closes_the_socket_with_its_code() -> None:
    faults = [Fault("close", code=1011, reason="503: busy", after_messages=1)]
    async with open_emulator(EmulatorConfig(faults=faults)) as emulator:
        async with v1_client(emulator) as client:
            await client.send_one_shot("a", "Never spoken.")
            with pytest.raises(ConnectionClosed) as closed:
                await client.until(lambda: False)
    assert (closed.value.code, closed.value.reason) == (1011, "503: busy")
    assert client.pcm("a") == b""


async def test_idle_close_fault_closes_a_socket_left_quiet() -> None:
    faults = [Fault("idle_close", seconds=0.05, code=1000, reason="idle")]
    async with open_emulator(EmulatorConfig(faults=faults)) as emulator:
        async with v1_client(emulator) as client:
            with pytest.raises(ConnectionClosed) as closed:
                await client.until(lambda: False)
    assert closed.value.code == 1000


async def test_stall_fault_holds_a_contexts_audio_back() -> None:
    faults = [Fault("stall", seconds=0.3, after_chunks=1)]
    async with open_emulator(EmulatorConfig(chunk_bytes=400, faults=faults)) as emulator:
        async with v1_client(emulator) as client:
            await client.speak("a", "Stalled for a while.")
            await client.until(lambda: len(client.pcm("a")) > 0)
            began = anyio.current_time()
            await client.until(client.finished("a"))
            assert anyio.current_time() - began >= 0.25
    assert client.pcm("a") == pcm("Stalled for a while.")


async def test_missing_done_fault_sends_no_terminal_event() -> None:
    async with open_emulator(EmulatorConfig(faults=[Fault("missing_done")])) as emulator:
        async with v1_client(emulator) as client:
            await client.speak("a", "No end.")
            await client.until(lambda: len(client.pcm("a")) == len(pcm("No end.")))
            with anyio.move_on_after(0.2):
                await client.until(client.finished("a"))
    assert client.terminal("a") is None


async def test_extra_done_fault_sends_two_and_the_client_drops_the_second() -> None:
    async with open_emulator(EmulatorConfig(faults=[Fault("extra_done")])) as emulator:
        async with v1_client(emulator) as client:
            await client.speak("a", "Twice done.")
            await client.until(lambda: client.conn.dropped_events >= 1)
    assert [type(e) for e in client.events["a"]].count(Done) == 1
    assert client.pcm("a") == pcm("Twice done.")


async def test_query_parameters_are_refused(rime_emulator: RimeEmulator) -> None:
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket(
            rime_emulator.host, rime_emulator.port, "/ws?modelId=coda", extra_headers=AUTH
        ):
            pass
    assert rejected.value.status_code == 400


@pytest.mark.parametrize(
    ("readings", "offered", "answered", "frame_type"),
    [
        (V1Readings(), [], None, str),
        (V1Readings(no_subprotocol="binary"), [], None, bytes),
        (V1Readings(), [SUBPROTOCOL_JSON, SUBPROTOCOL_BINARY], SUBPROTOCOL_JSON, str),
        (V1Readings(), ["other", SUBPROTOCOL_BINARY], SUBPROTOCOL_BINARY, bytes),
    ],
)
async def test_the_subprotocol_decides_the_frames(
    readings: V1Readings, offered: list[str], answered: str | None, frame_type: type
) -> None:
    async with open_emulator(EmulatorConfig(v1_readings=readings)) as emulator:
        async with open_websocket(
            emulator.host, emulator.port, "/ws", subprotocols=offered, extra_headers=AUTH
        ) as ws:
            assert ws.subprotocol == answered
            frame = await ws.get_message()
            assert isinstance(frame, frame_type)
            assert decode_response(frame).HasField("ready")


async def test_an_undecodable_frame_gets_a_connection_error_then_the_close(
    rime_emulator: RimeEmulator,
) -> None:
    async with v1_client(rime_emulator) as client:
        await client.ws.send_message(b"\xff\xff\xff")
        with pytest.raises(ConnectionClosed) as closed:
            await client.until(lambda: False)
        [error] = client.events[None][1:]  # connection-level: no context id
        assert isinstance(error, ErrorEvent)
        assert closed.value.code == 1007


async def test_a_connection_level_error_leaves_open_contexts_running(
    rime_emulator: RimeEmulator,
) -> None:
    async with v1_client(rime_emulator) as client:
        await client.send(client.conn.start("a", OPTIONS))
        late_config = tts.WebSocketRequest(config=tts.WebSocketConfig())
        await client.send(encode_message(late_config, client.conn.encoding))
        await client.send(client.conn.send_text("a", "Still speaking."))
        await client.send(client.conn.end("a"))
        await client.until(client.finished("a"))
    [error] = client.events[None][1:]  # connection-level: no context id
    assert isinstance(error, ErrorEvent)
    assert client.pcm("a") == pcm("Still speaking.")


async def test_foreign_audio_is_caught_by_the_client_protocol() -> None:
    config = EmulatorConfig(faults=[Fault("foreign_audio")])
    async with open_emulator(config) as emulator:
        async with v1_client(emulator) as client:
            await client.speak("a", "Mine.")
            with pytest.raises(ProtocolError, match="unknown context 'stale-1'"):
                await client.until(client.finished("a"))


async def test_error_event_fault_ends_each_context_with_an_error() -> None:
    config = EmulatorConfig(faults=[Fault("error_event", body="synthesis failed")])
    async with open_emulator(config) as emulator:
        async with v1_client(emulator) as client:
            await client.speak("a", "Never heard.")
            await client.until(client.finished("a"))
    error = client.terminal("a")
    assert isinstance(error, ErrorEvent)
    assert (error.kind, error.message) == ("internal", "synthesis failed")
    assert client.pcm("a") == b""


async def test_per_sentence_timestamps_are_rebased_by_the_client() -> None:
    config = EmulatorConfig(v1_readings=V1Readings(timestamps="per_sentence"))
    async with open_emulator(config) as emulator:
        async with v1_client(emulator) as client:
            await client.speak("a", "One two. Three four.")
            await client.until(client.finished("a"))
    done = client.terminal("a")
    assert isinstance(done, Done)
    assert done.restarts == 1
    starts = [w.start for w in done.words]
    assert starts == sorted(starts)
