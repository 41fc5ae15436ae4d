"""The task runner, replay, the pool's policy and v1's shared sockets over in-memory connections
(``tests/memory_server.py``): the library's own code from the stream down to the interface of
``Connection``, against a server speaking real frames, with no socket. Each test takes
milliseconds, on trio and asyncio.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import anyio
import anyio.lowlevel
import pytest
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from rime_api import text_to_speech_pb2 as tts

from rime_trio import (
    APIStatusError,
    AudioChunk,
    ConnectError,
    ConnectionLost,
    EmptyTextError,
    ProtocolError,
    RimeError,
    RimeTimeoutError,
    ServerError,
    SlowReaderError,
    StreamSettings,
    _retry,
    _stream_tasks,
)
from rime_trio._options import RimeOptions, websocket_url
from rime_trio._pool import ConnectionPool, PooledSocket
from rime_trio._protocol import (
    AudioEvent,
    DoneEvent,
    EndOfStream,
    ErrorEvent,
    Flush,
    StreamState,
    TextMessage,
    TimestampsEvent,
    decode_server_event,
)
from rime_trio._protocol_v1 import SUBPROTOCOL_BINARY
from rime_trio._retry import SocketLink
from rime_trio._segment import speakable
from rime_trio._stream import SpeechStream, open_stream
from rime_trio._v1_link import V1Link
from rime_trio.testing._synth import render_speech, speech_words

from .conftest import BACKENDS
from .memory_server import GARBAGE, Faults, MemoryConnection, MemoryServer, open_pool
from .speech import read_all

pytestmark = pytest.mark.anyio

API_KEY = "memory-key"
RATE = 24_000
WS3 = "ws://memory/ws3"
V1 = "ws://memory/ws"
# Retries at once (no backoff) and a short watchdog: a silent server is caught in 0.1 s.
QUICK = StreamSettings(retry_backoff=0.0, audio_timeout=0.1)
CHUNK = 4800  # the server's chunk size (the emulator's default)


def options(base_url: str = WS3) -> RimeOptions:
    return RimeOptions(api_key=API_KEY, base_url=base_url, sample_rate=RATE)


URL = websocket_url(options())


def pcm(text: str) -> bytes:
    """What the server synthesizes for *text* as one run."""
    return render_speech(text, RATE).pcm


def new_stream(
    pool: ConnectionPool,
    base_url: str = WS3,
    settings: StreamSettings = QUICK,
    **changes: Any,
) -> SpeechStream:
    return SpeechStream(options=options(base_url).replace(**changes), pool=pool, settings=settings)


async def speak(
    pool: ConnectionPool, text: str, base_url: str = WS3, **changes: Any
) -> tuple[SpeechStream, bytes, list[str]]:
    """Say *text* on a stream of its own: the stream, its audio and its words."""
    stream = new_stream(pool, base_url, **changes)
    with anyio.fail_after(5):
        async with open_stream(stream):
            await stream.push_text(text)
            await stream.end_input()
            audio, words = await read_all(stream)
    return stream, audio, [w.word for w in words]


async def until(condition: Callable[[], bool]) -> None:
    """Wait until *condition* holds (looking once per scheduling round, 5 s at most)."""
    with anyio.fail_after(5):
        while not condition():
            await anyio.lowlevel.checkpoint()


async def connection_of(stream: SpeechStream) -> MemoryConnection:
    """The ``/ws3`` stream's connection, once it has one."""
    link = cast(SocketLink, stream._tasks.link)
    await until(lambda: link.connection is not None)
    return cast(MemoryConnection, link.connection)


def first_text(stream: SpeechStream, text: str) -> TextMessage:
    """The ``/ws3`` stream's first text message, *text*, as the server decodes it."""
    return TextMessage(text, f"{cast(StreamState, stream._state).tag}#1")


# ----------------------------------------------------------------------------- the fake itself


async def test_the_fake_speaks_ws3_frames_and_closes_with_1000_after_eos() -> None:
    async with MemoryServer() as server:
        connection = await server.connect(URL, api_key=API_KEY)
        await connection.send('{"text": "Hi there.", "contextId": "t#1"}', '{"operation": "eos"}')
        events = []
        with anyio.fail_after(5):
            while (frame := await connection.receive()) is not None:
                events.append(decode_server_event(frame))
        assert b"".join(e.data for e in events if isinstance(e, AudioEvent)) == pcm("Hi there.")
        # the default readings: word times after the first chunk, a done after the run
        assert [type(e) for e in events[:2]] == [AudioEvent, TimestampsEvent]
        assert isinstance(events[-1], DoneEvent)
        assert {e.context_id for e in events if not isinstance(e, ErrorEvent | None)} == {"t#1"}
        assert server.sockets[0].received == [TextMessage("Hi there.", "t#1"), EndOfStream()]
        assert server.sockets[0].close_code == 1000
        assert not connection.usable
        assert await connection.receive() is None  # and again: the close stays
        with pytest.raises(ConnectionLost, match="code 1000"):
            await connection.send('{"text": "more"}')
        await connection.aclose()
        assert connection.closed


async def test_the_fake_drops_a_connection_as_a_tcp_reset() -> None:
    async with MemoryServer() as server:
        server.faults[1] = Faults(drop_after_chunks=2)
        connection = await server.connect(URL, api_key=API_KEY)
        await connection.send('{"text": "Hi there."}', '{"operation": "flush"}')
        events = []
        with pytest.raises(ConnectionLost, match="1006"), anyio.fail_after(5):
            while True:  # what was sent before the reset, then the reset
                events.append(decode_server_event(cast(str, await connection.receive())))
        audio = b"".join(e.data for e in events if isinstance(e, AudioEvent))
        assert audio == pcm("Hi there.")[: 2 * CHUNK]
        assert not connection.usable
        with pytest.raises(ConnectionLost):
            await connection.send('{"operation": "eos"}')
        assert server.sockets[0].dropped
        assert not server.sockets[0].closed_by_client
        await connection.aclose()


# ----------------------------------------------------------------------------- /ws3 streams


async def test_a_ws3_stream_gives_exactly_the_synthesized_audio_and_words() -> None:
    text = "Hello there, how are you?"
    async with MemoryServer() as server, open_pool(server) as pool:
        stream, audio, words = await speak(pool, text, segment="bySentence")
        await pool.wait_teardowns()
        assert pool.idle == 1  # the spare opened once the first audio was taken
    assert audio == pcm(text)
    assert words == speech_words(text)
    assert stream.retries == 0
    assert server.connects == 2
    talked, spare = server.sockets
    # the last sentence goes with the end of the input (no flush: eos flushes it)
    assert talked.received == [first_text(stream, text), EndOfStream()]
    assert talked.close_code == 1000
    assert spare.received == []
    assert spare.closed_by_client  # by the pool's aclose()


async def test_under_never_a_ws3_stream_ends_at_its_last_done_and_leaves_its_socket_open() -> None:
    text = "Hello there, how are you?"
    async with MemoryServer() as server, open_pool(server) as pool:
        stream, audio, words = await speak(pool, text)  # segment="never", the default
        await pool.wait_teardowns()
        # the spare opened once the first audio was taken, and the stream's own socket: it
        # ended at its last flush's done, idle and open
        assert pool.idle == 2
        _, second, _ = await speak(pool, "And again.")
        assert server.connects == 2  # no handshake for the second stream
    assert audio == pcm(text)
    assert second == pcm("And again.")
    assert words == speech_words(text)
    talked = next(s for s in server.sockets if s.received)
    assert talked.received[:2] == [first_text(stream, text), Flush()]
    assert EndOfStream() not in talked.received
    assert talked.closed_by_client  # by the pool's aclose(), not after the stream


SENTENCES = [
    "Hello there.",
    "How are you today?",
    "It is two p.m. now.",
    "Numbers like 3.14 stay whole.",
    "Fine, thanks!",
    "And then",
]


@st.composite
def pushes(draw: st.DrawFn) -> list[str | None]:
    """A text as a caller pushes it: pieces cut anywhere, and flushes (None)."""
    chosen = draw(st.lists(st.sampled_from(SENTENCES), min_size=1, max_size=4))
    text = "".join(s + draw(st.sampled_from([" ", "  ", "\n", ""])) for s in chosen)
    cuts = draw(st.lists(st.integers(1, max(1, len(text) - 1)), max_size=6))
    bounds = sorted({0, len(text), *cuts})
    items: list[str | None] = [text[a:b] for a, b in itertools.pairwise(bounds)]
    for _ in range(draw(st.integers(0, 2))):
        items.insert(draw(st.integers(0, len(items))), None)
    return items


@pytest.mark.parametrize("backend", BACKENDS)
@given(items=pushes())
def test_any_text_arrives_as_exactly_the_audio_the_server_sent(
    backend: str, items: list[str | None]
) -> None:
    async def main() -> tuple[MemoryServer, SpeechStream, bytes, list[str]]:
        async with MemoryServer() as server, open_pool(server, max_size=0) as pool:
            stream = new_stream(pool)
            with anyio.fail_after(5):
                async with open_stream(stream):
                    for item in items:
                        await (stream.flush() if item is None else stream.push_text(item))
                    await stream.end_input()
                    audio, words = await read_all(stream)
        return server, stream, audio, [w.word for w in words]

    server, stream, audio, words = anyio.run(main, backend=backend)
    text = "".join(item for item in items if item is not None)
    [socket] = server.sockets
    assert audio == bytes(socket.audio)  # all of it, in order, once
    assert audio == b"".join(pcm(run.text) for run in socket.runs)
    sent = "".join(socket.texts())
    assert text.startswith(sent)
    assert not speakable(text[len(sent) :])  # all the text went out (bar a mark at the end)
    assert words == [word for run in socket.runs for word in speech_words(run.text)]
    assert stream.retries == 0
    assert stream.foreign_events == 0


@pytest.mark.parametrize(
    "fault",
    [Faults(drop_after_messages=1), Faults(drop_after_chunks=0)],
    ids=["after-the-text", "before-the-first-chunk"],
)
async def test_a_connection_lost_before_any_audio_is_replaced_and_the_text_resent(
    fault: Faults,
) -> None:
    text = "Hello there, how are you?"
    async with MemoryServer() as server, open_pool(server, max_size=0) as pool:
        server.faults[1] = fault
        stream, audio, words = await speak(pool, text)
    assert audio == pcm(text)  # once
    assert words == speech_words(text)
    assert stream.retries == 1
    assert server.connects == 2
    lost, replacement = server.sockets
    assert lost.dropped
    assert audio == bytes(replacement.audio)
    tagged = first_text(stream, text)
    assert lost.received[0] == tagged
    # the same frames again, to the end
    assert replacement.received[: len(lost.received)] == lost.received
    assert replacement.received[-1] == Flush()  # segment="never": the last flush ends it


async def test_a_connection_lost_on_every_attempt_is_raised_once_the_retries_are_spent() -> None:
    async with MemoryServer() as server, open_pool(server, max_size=0) as pool:
        for number in (1, 2, 3):
            server.faults[number] = Faults(drop_after_messages=1)
        stream = new_stream(pool)  # retries=2
        with pytest.raises(ConnectionLost, match="1006"), anyio.fail_after(5):
            async with open_stream(stream):
                await stream.push_text("Hello there.")
                await stream.end_input()
                await read_all(stream)
    assert server.connects == 3
    assert stream.retries == 2
    assert [s.texts() for s in server.sockets] == [["Hello there."]] * 3


async def test_a_connection_lost_after_audio_was_delivered_fails_the_stream() -> None:
    text = "Hello there. How are you today?"
    async with MemoryServer() as server, open_pool(server, max_size=0) as pool:
        server.faults[1] = Faults(drop_after_chunks=2)
        stream = new_stream(pool)
        taken = bytearray()
        with pytest.raises(ConnectionLost) as info, anyio.fail_after(5):
            async with open_stream(stream):
                await stream.push_text(text)
                await stream.end_input()
                connection = await connection_of(stream)
                async for event in stream:
                    if isinstance(event, AudioChunk):
                        taken += event.data
        await pool.wait_teardowns()
        assert pool.sockets == []  # not reused
    [socket] = server.sockets  # no retry: audio had been delivered
    assert socket.dropped
    assert bytes(socket.audio) == pcm("Hello there.")[: 2 * CHUNK]
    assert socket.audio.startswith(taken)  # nothing twice, nothing out of order
    assert stream.retries == 0
    assert info.value.audio_seconds_delivered == stream.audio_seconds == len(taken) / 2 / RATE
    assert connection.closed


async def test_a_refused_connect_is_retried() -> None:
    async with MemoryServer() as server, open_pool(server, max_size=0) as pool:
        server.faults[1] = Faults(refuse=ConnectError("connecting to memory:80 failed"))
        stream, audio, _ = await speak(pool, "Hello there.")
    assert audio == pcm("Hello there.")
    assert stream.retries == 1
    assert server.connects == 2
    assert len(server.sockets) == 1


async def test_refused_connects_are_retried_with_backoff_then_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ceilings: list[float] = []

    def longest(low: float, high: float) -> float:
        ceilings.append(high)
        return high

    monkeypatch.setattr(_retry, "random", SimpleNamespace(uniform=longest))
    settings = StreamSettings(retries=2, retry_backoff=0.01)
    async with MemoryServer() as server, open_pool(server, max_size=0) as pool:
        for number in (1, 2, 3):
            server.faults[number] = Faults(refuse=APIStatusError(503, "overloaded"))
        stream = new_stream(pool, settings=settings)
        started = anyio.current_time()
        with pytest.raises(APIStatusError) as info, anyio.fail_after(5):
            async with open_stream(stream):
                await stream.push_text("Hello there.")
                await stream.end_input()
                await read_all(stream)
        waited = anyio.current_time() - started
    assert info.value.status_code == 503
    assert info.value.message == "overloaded"
    assert server.connects == 3
    assert server.sockets == []
    assert stream.retries == 2
    assert ceilings == [0.01, 0.02]  # exponential
    assert waited >= 0.03


async def test_a_refusal_no_retry_can_change_is_raised_at_once() -> None:
    async with MemoryServer() as server, open_pool(server, max_size=0) as pool:
        server.faults[1] = Faults(refuse=APIStatusError(401, "Unauthorized"))
        stream = new_stream(pool)
        with pytest.raises(APIStatusError) as info, anyio.fail_after(5):
            async with open_stream(stream):
                await stream.push_text("Hello there.")
                await stream.end_input()
                await read_all(stream)
    assert info.value.status_code == 401
    assert server.connects == 1
    assert stream.retries == 0


@pytest.mark.parametrize("at", [0, 2], ids=["first", "after-audio"])
async def test_a_frame_that_is_not_json_fails_the_stream_with_protocol_error(at: int) -> None:
    async with MemoryServer() as server, open_pool(server, max_size=0) as pool:
        server.faults[1] = Faults(garbage_at=at)
        stream = new_stream(pool)
        with pytest.raises(ProtocolError, match="not valid JSON") as info, anyio.fail_after(5):
            async with open_stream(stream):
                await stream.push_text("Hello there.")
                await stream.end_input()
                await read_all(stream)
    assert GARBAGE[:10] in str(info.value)
    assert server.connects == 1  # never retried: the server would say it again
    assert stream.retries == 0
    # at most the audio before it (the first chunk, then the word times, then this)
    assert stream.audio_seconds <= (0 if at == 0 else CHUNK / 2 / RATE)


async def test_an_input_without_text_fails_without_a_connection() -> None:
    async with MemoryServer() as server, open_pool(server) as pool:
        stream = new_stream(pool)
        with pytest.raises(EmptyTextError), anyio.fail_after(5):
            async with open_stream(stream):
                await stream.push_text("  ...  ")
                await stream.end_input()
                await read_all(stream)
    assert server.connects == 0


async def test_a_silent_server_times_the_stream_out() -> None:
    async with MemoryServer() as server, open_pool(server, max_size=0) as pool:
        server.faults[1] = Faults(stall=True)
        stream = new_stream(pool)
        with pytest.raises(RimeTimeoutError), anyio.fail_after(5):
            async with open_stream(stream):
                await stream.push_text("Hello there.")
                await stream.end_input()
                await read_all(stream)
    [socket] = server.sockets
    assert socket.texts() == ["Hello there."]  # it heard, and said nothing
    assert socket.audio == b""


async def test_a_server_error_event_fails_the_stream_without_retry() -> None:
    async with MemoryServer(fail_text="Boom") as server, open_pool(server, max_size=0) as pool:
        stream = new_stream(pool)
        with pytest.raises(ServerError, match=r"cannot say 'Boom goes it\.'"), anyio.fail_after(5):
            async with open_stream(stream):
                await stream.push_text("Boom goes it.")
                await stream.end_input()
                await read_all(stream)
    assert server.connects == 1
    assert stream.retries == 0


# ----------------------------------------------------------------------------- pool policy


@pytest.mark.virtual_clock
async def test_a_spare_opens_once_the_first_audio_is_taken(
    virtual_clock: trio.testing.MockClock | None,
) -> None:
    async with MemoryServer() as server, open_pool(server) as pool:
        stream = new_stream(pool)
        with anyio.fail_after(5):
            async with open_stream(stream):
                await stream.push_text("Hello there.")
                await stream.end_input()
                if virtual_clock is not None:
                    # trio: time stands still, so the first event's head start never runs out
                    await anyio.wait_all_tasks_blocked()
                    assert server.connects == 1  # no handshake beside the first audio
                first = await stream.receive()
                assert isinstance(first, AudioChunk)
                await anyio.wait_all_tasks_blocked()
                assert server.connects == 2
                assert pool.idle == 1  # ready for the next stream, while this one holds its own
                audio, _ = await read_all(stream)
        assert first.data + audio == pcm("Hello there.")
        assert server.sockets[1].received == []


async def test_a_stream_that_sent_nothing_leaves_its_socket_to_the_next() -> None:
    async with MemoryServer() as server, open_pool(server) as pool:
        quiet = new_stream(pool)
        with anyio.fail_after(5):
            async with open_stream(quiet):
                await quiet.push_text("Hello")  # no sentence end yet: nothing goes out
                connection = await connection_of(quiet)
        assert pool.idle == 1
        assert not connection.closed
        assert quiet.metrics.characters_sent == 0
        stream, audio, _ = await speak(pool, "Hello there.")
    assert audio == pcm("Hello there.")
    assert stream.metrics.connection_reused is True
    assert stream.metrics.connect_seconds is None
    assert pool.stats.reused == 1
    assert server.talked() == [server.sockets[0]]  # the socket the quiet stream had
    assert server.sockets[0].texts() == ["Hello there."]


async def test_a_socket_that_carried_text_is_never_handed_out_again() -> None:
    async with MemoryServer() as server, open_pool(server) as pool:
        server.faults[1] = Faults(stall=True)  # no answer: the socket looks as good as new
        left = new_stream(pool)
        with anyio.fail_after(5):
            async with open_stream(left):
                await left.push_text("Hello there. How")
                connection = await connection_of(left)
                await until(lambda: bool(server.sockets[0].received))
                # and the caller leaves, audio owed, the socket open and quiet
        await pool.wait_teardowns()
        assert connection.closed
        _, audio, _ = await speak(pool, "Good bye.")
    assert audio == pcm("Good bye.")
    first, second = server.talked()
    assert first.texts() == ["Hello there. "]
    assert first.closed_by_client
    assert second.texts() == ["Good bye."]


async def test_max_pool_size_zero_keeps_no_socket() -> None:
    async with MemoryServer() as server, open_pool(server, max_size=0) as pool:
        quiet = new_stream(pool)
        with anyio.fail_after(5):
            async with open_stream(quiet):
                await quiet.push_text("Hello")
                connection = await connection_of(quiet)
        await pool.wait_teardowns()
        assert connection.closed  # unused, and still not kept
        stream, audio, _ = await speak(pool, "Hello there.")
        await pool.wait_teardowns()
        assert pool.idle == 0  # and no spare opened
        await pool.prewarm(URL, PooledSocket)  # nothing to do either
    assert audio == pcm("Hello there.")
    assert stream.metrics.connection_reused is False
    assert stream.metrics.connect_seconds is not None
    assert server.connects == 2
    assert [s.texts() for s in server.sockets] == [[], ["Hello there."]]


@pytest.mark.virtual_clock
async def test_an_expired_idle_socket_is_retired(jump_clock: Any) -> None:
    async with MemoryServer() as server, open_pool(server, max_session_duration=300) as pool:
        await pool.prewarm(URL, PooledSocket)
        jump_clock(299)
        fresh, _, _ = await speak(pool, "One.")  # still fresh: used
        await pool.wait_teardowns()
        assert [s.texts() for s in server.sockets] == [["One."], []]  # and a spare opened
        jump_clock(301)
        retired = pool.stats.retired
        late, audio, _ = await speak(pool, "Two.")  # the spare expired: a new socket
        assert pool.stats.retired > retired
    assert fresh.metrics.connection_reused is True
    assert late.metrics.connection_reused is False
    assert audio == pcm("Two.")
    expired = server.sockets[1]
    assert expired.received == []
    assert expired.closed_by_client
    assert server.sockets[2].texts() == ["Two."]


async def test_an_idle_socket_the_server_dropped_is_not_handed_out() -> None:
    async with MemoryServer() as server, open_pool(server, max_size=1) as pool:
        await pool.prewarm(URL, PooledSocket)
        server.sockets[0].vanish()
        await anyio.wait_all_tasks_blocked()
        stream, audio, _ = await speak(pool, "Hello there.")
    assert audio == pcm("Hello there.")
    assert stream.metrics.connection_reused is False
    assert pool.stats.reused == 0
    assert server.sockets[0].received == []
    assert server.talked() == [server.sockets[1]]


# ----------------------------------------------------------------------------- clear()


async def test_clear_after_text_went_out_moves_to_a_fresh_socket() -> None:
    async with MemoryServer() as server, open_pool(server, max_size=0) as pool:
        stream = new_stream(pool)
        with anyio.fail_after(5):
            async with open_stream(stream):
                await stream.push_text("Hello there. ")
                await until(lambda: stream.buffered_audio_bytes > 0)  # here, not yet taken
                await stream.clear()
                await stream.push_text("Good bye.")
                await stream.end_input()
                audio, words = await read_all(stream)
    assert audio == pcm("Good bye.")  # nothing from before the clear
    assert [w.word for w in words] == ["Good", "bye"]
    assert words[0].start == render_speech("Good bye.", RATE).starts[0]  # from the stream's 0
    assert server.connects == 2
    before, after = server.sockets
    assert before.texts() == ["Hello there. "]
    assert before.closed_by_client  # the hard stop
    assert after.texts() == ["Good bye."]


async def test_a_connection_lost_after_a_clear_resends_only_what_followed_it() -> None:
    async with MemoryServer() as server, open_pool(server, max_size=0) as pool:
        server.faults[2] = Faults(drop_after_messages=1)  # the socket the clear moved to
        stream = new_stream(pool)
        with anyio.fail_after(5):
            async with open_stream(stream):
                await stream.push_text("Hello there. ")
                await until(lambda: stream.buffered_audio_bytes > 0)
                await stream.clear()
                await stream.push_text("Good bye.")
                await stream.end_input()
                audio, words = await read_all(stream)
    assert audio == pcm("Good bye.")
    assert words[0].start == render_speech("Good bye.", RATE).starts[0]
    assert stream.retries == 1
    assert [s.texts() for s in server.sockets] == [["Hello there. "], ["Good bye."], ["Good bye."]]


async def test_clear_before_any_text_went_out_stays_on_the_socket() -> None:
    async with MemoryServer() as server, open_pool(server, max_size=0) as pool:
        stream = new_stream(pool)
        with anyio.fail_after(5):
            async with open_stream(stream):
                await stream.push_text("Hello")  # held for its sentence end: not sent
                await connection_of(stream)
                await stream.clear()
                await stream.push_text("Good bye.")
                await stream.end_input()
                audio, _ = await read_all(stream)
    assert audio == pcm("Good bye.")
    assert server.connects == 1
    assert server.sockets[0].texts() == ["Good bye."]


# ----------------------------------------------------------------------------- v1


async def say_all(pool: ConnectionPool, texts: list[str]) -> dict[str, bytes | RimeError]:
    """Say each text on a v1 stream of its own, all at once: each one's audio or error."""
    results: dict[str, bytes | RimeError] = {}

    async def say(text: str) -> None:
        try:
            results[text] = (await speak(pool, text, V1))[1]
        except RimeError as exc:
            results[text] = exc

    async with anyio.create_task_group() as task_group:
        for text in texts:
            task_group.start_soon(say, text)
    return results


async def test_v1_concurrent_streams_share_one_connection_and_get_their_own_audio() -> None:
    texts = ["Hello there, how are you?", "Fine thanks, and you?", "Numbers like 3.14 stay."]
    async with MemoryServer(chunk_bytes=960) as server, open_pool(server) as pool:
        results = await say_all(pool, texts)
        [session] = pool.sockets
        assert pool.idle == 1  # the shared socket stays open
        assert session.connection is not None
        assert session.connection.subprotocol == SUBPROTOCOL_BINARY  # the first offered
    assert results == {text: pcm(text) for text in texts}
    [socket] = server.sockets
    assert socket.encoding == "binary"
    assert sorted(socket.texts()) == sorted(texts)
    requests = [r for r in socket.received if isinstance(r, tts.WebSocketRequest)]
    assert len([r for r in requests if r.HasField("start")]) == 3  # a context each


async def test_a_v1_context_error_fails_only_its_stream() -> None:
    texts = ["Boom goes the dynamite.", "Hello there, how are you?"]
    async with MemoryServer(fail_text="Boom") as server, open_pool(server) as pool:
        results = await say_all(pool, texts)
        assert pool.idle == 1  # the socket is fine
        _, again, _ = await speak(pool, "Still here.", V1)
    failed = results[texts[0]]
    assert isinstance(failed, ServerError)
    assert "cannot say 'Boom goes the dynamite.'" in str(failed)
    assert results[texts[1]] == pcm(texts[1])
    assert again == pcm("Still here.")
    assert server.connects == 1


async def test_a_v1_clear_cancels_the_context_and_speaks_on_a_fresh_one() -> None:
    async with MemoryServer() as server, open_pool(server) as pool:
        stream = new_stream(
            pool, V1, segment="bySentence"
        )  # one context per flush, not per sentence
        with anyio.fail_after(5):
            async with open_stream(stream):
                await stream.push_text("Hello there. ")
                await until(lambda: stream.buffered_audio_bytes > 0)
                await stream.clear()
                await stream.push_text("Good bye.")
                await stream.end_input()
                audio, words = await read_all(stream)
    assert audio == pcm("Good bye.")
    assert [w.word for w in words] == ["Good", "bye"]
    assert words[0].start == pytest.approx(render_speech("Good bye.", RATE).starts[0])
    assert server.connects == 1
    requests = [r for r in server.sockets[0].received if isinstance(r, tts.WebSocketRequest)]
    assert [(r.WhichOneof("payload"), r.context_id) for r in requests] == [
        ("start", "c1"),
        ("text", "c1"),
        ("cancel", "c1"),
        ("start", "c2"),
        ("text", "c2"),
        ("end", "c2"),
    ]


async def test_v1_streams_lost_together_move_to_one_new_socket() -> None:
    # Found by this file: 62245ae had each stream of a lost v1 socket open its own.
    texts = ["Hello there, how are you?", "Fine thanks, and you?"]
    async with MemoryServer() as server, open_pool(server) as pool:
        server.faults[1] = Faults(drop_after_chunks=0)
        results = await say_all(pool, texts)
    assert results == {text: pcm(text) for text in texts}
    assert server.connects == 2  # the lost socket and one replacement


async def test_v1_audio_from_before_a_clear_never_follows_it_onto_a_new_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Found by this file: v1 context ids restart on every socket (c1, c2, ...), and the
    # inbox kept a lost socket's events, so its "c1" audio passed for the new socket's "c1".
    # The recv task waits (5 ms) for the caller to take the first event before it reads on;
    # a caller that clears instead leaves it parked that long, the old context's audio in the
    # inbox. Widened to 100 ms, so that the in-memory replacement always wins the race.
    monkeypatch.setattr(_stream_tasks, "_FIRST_EVENT_HEAD_START", 0.1)
    async with MemoryServer() as server, open_pool(server) as pool:
        stream = new_stream(pool, V1)
        link = cast(V1Link, stream._tasks.link)
        with anyio.fail_after(5):
            async with open_stream(stream):
                await stream.push_text("Hello there. ")
                await until(lambda: stream.buffered_audio_bytes > 0 and link.backlog > 0)
                session = link.session
                assert session is not None
                server.sockets[0].vanish()  # lost, with audio of context c1 in the inbox
                await until(lambda: session.error is not None)
                await stream.clear()
                await stream.push_text("Good bye.")  # on a new socket, as its context c1
                await stream.end_input()
                audio, _ = await read_all(stream)
    assert stream.retries == 1
    assert audio == pcm("Good bye.")  # it starts with "Hello there."'s second chunk


async def test_a_v1_connection_lost_before_any_audio_is_replaced() -> None:
    text = "Hello there, how are you?"
    async with MemoryServer() as server, open_pool(server) as pool:
        server.faults[1] = Faults(drop_after_chunks=0)
        stream, audio, words = await speak(pool, text, V1)
    assert audio == pcm(text)
    assert words == speech_words(text)
    assert stream.retries == 1
    lost, replacement = server.sockets
    assert lost.dropped
    assert lost.texts() == replacement.texts() == [text]


async def test_a_v1_socket_without_ready_is_replaced() -> None:
    async with MemoryServer() as server, open_pool(server, connect_timeout=0.1) as pool:
        server.faults[1] = Faults(stall=True)
        stream, audio, _ = await speak(pool, "Hello there.", V1)
    assert audio == pcm("Hello there.")
    assert stream.retries == 1
    assert server.connects == 2
    assert server.sockets[0].received == []  # no stream spoke on a socket that never got ready


async def test_a_v1_stream_that_leaves_early_cancels_only_its_context() -> None:
    async with MemoryServer() as server, open_pool(server) as pool:
        left = new_stream(pool, V1)
        with anyio.fail_after(5):
            async with open_stream(left):
                await left.push_text("Hello there. How are you")
                assert isinstance(await left.receive(), AudioChunk)
                # and the caller leaves, its context still open
        _, audio, _ = await speak(pool, "Still here.", V1)
    assert audio == pcm("Still here.")  # nothing of the other context
    assert server.connects == 1
    [socket] = server.sockets
    requests = [r for r in socket.received if isinstance(r, tts.WebSocketRequest)]
    started = [r.context_id for r in requests if r.HasField("start")]
    cancelled = [r.context_id for r in requests if r.HasField("cancel")]
    assert len(started) == 2
    assert cancelled == started[:1]


async def test_a_v1_reader_far_behind_fails_only_its_stream() -> None:
    settings = StreamSettings(max_buffered_audio_bytes=2000)  # at most 16,000 bytes behind
    async with MemoryServer() as server, open_pool(server) as pool:
        slow = new_stream(pool, V1, settings)
        with pytest.raises(SlowReaderError), anyio.fail_after(5):
            async with open_stream(slow):
                await slow.push_text("Hello there, how are you today?")  # 85,440 bytes of audio
                await slow.end_input()
                await until(lambda: slow._tasks.failure is not None)  # and never reads
        _, audio, _ = await speak(pool, "Still here.", V1)
    assert audio == pcm("Still here.")
    assert server.connects == 1  # the socket serves on


async def test_a_v1_frame_that_is_no_envelope_fails_with_protocol_error() -> None:
    async with MemoryServer() as server, open_pool(server) as pool:
        server.faults[1] = Faults(garbage_at=0)
        stream = new_stream(pool, V1)
        with pytest.raises(ProtocolError, match="not a v1"), anyio.fail_after(5):
            async with open_stream(stream):
                await stream.push_text("Hello there.")
                await stream.end_input()
                await read_all(stream)
    assert server.connects == 1
    assert stream.retries == 0


async def test_a_v1_frame_that_is_no_envelope_after_ready_is_a_protocol_error_never_retried() -> (
    None
):
    # The shared socket fails with it, and as on /ws3 the ProtocolError is not retried: a
    # server that sent it would send it again (foreign audio, by contrast, is retried: see
    # test_v1_stream).
    async with MemoryServer() as server, open_pool(server) as pool:
        server.faults[1] = Faults(garbage_at=1)
        stream = new_stream(pool, V1)
        with pytest.raises(ProtocolError, match="not a v1"), anyio.fail_after(5):
            async with open_stream(stream):
                await stream.push_text("Hello there.")
                await stream.end_input()
                await read_all(stream)
    assert stream.retries == 0
    assert server.connects == 1
