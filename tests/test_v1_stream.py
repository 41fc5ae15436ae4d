"""Streams over Rime's WebSocket v1 (``/ws``) against the emulator, on trio and asyncio:
shared sockets, exact audio per context, nothing foreign, clean exits, retries, backpressure
per stream, and the review fixes of phase 1 seen from the stream layer."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from rime_api import text_to_speech_pb2 as tts

from rime_trio import (
    APIStatusError,
    AudioChunk,
    ConfigurationError,
    ConnectError,
    ConnectionLost,
    RimeClient,
    RimeError,
    RimeOptions,
    RimeTimeoutError,
    ServerError,
    SlowReaderError,
    SpeechStream,
    StreamClosed,
    StreamSettings,
    WordTimestamp,
)
from rime_trio._options import streaming_url
from rime_trio._v1_link import V1Link
from rime_trio._v1_session import V1Session
from rime_trio.testing import (
    EmulatorConfig,
    Fault,
    RimeEmulator,
    V1Readings,
    find_bursts,
    open_emulator,
    render_speech,
)

from .conftest import API_KEY
from .emulator_thread import eventually
from .speech import (
    RATE,
    assert_words_on_the_audio,
    client_for,
    client_tasks,
    read_all,
    v1_contexts,
)

pytestmark = pytest.mark.anyio

FAST_RETRIES = StreamSettings(retries=2, retry_backoff=0.01, audio_timeout=2.0)


def v1_client(emulator: RimeEmulator, **kwargs: Any) -> RimeClient:
    """A v1 client of *emulator* that retries at once (unless the test gives settings)."""
    return client_for(emulator, "v1", **{"stream_settings": FAST_RETRIES, **kwargs})


def speech(*sentences: str) -> bytes:
    """The audio the emulator renders for these sentences, one run each."""
    return b"".join(render_speech(s, RATE).pcm for s in sentences)


def sentences_of(n: int) -> list[str]:
    return [f"Stream {n} speaks first.", f"Then number {n} is done."]


def link_of(stream: SpeechStream) -> V1Link:
    link = stream._tasks.link
    assert isinstance(link, V1Link)
    return link


async def speak(client: RimeClient, text: str) -> tuple[SpeechStream, bytes, list[WordTimestamp]]:
    async with client.stream() as stream:
        await stream.push_text(text)
        await stream.end_input()
        with anyio.fail_after(20):
            audio, words = await read_all(stream)
    return stream, audio, words


def v1_sessions(client: RimeClient) -> list[V1Session]:
    return [s for s in client.pool.sockets if isinstance(s, V1Session)]


async def no_open_contexts(client: RimeClient) -> None:
    """Wait until every v1 socket of *client* has no context open (cancels answered)."""

    def settled() -> bool:
        for session in v1_sessions(client):
            protocol = session.protocol
            if session.routes or (protocol is not None and protocol.open_contexts):
                return False
        return True

    with anyio.fail_after(5):
        await eventually(settled)


@pytest.fixture
async def faulty() -> AsyncIterator[RimeEmulator]:
    """An emulator behind the TCP fault proxy, so 'drop' faults are possible."""
    async with open_emulator(EmulatorConfig(), tcp_faults=True) as emulator:
        yield emulator


# ----------------------------------------------------------------------------- selection


def test_the_path_selects_the_protocol_and_the_option_overrides() -> None:
    assert RimeOptions(api_key="k", base_url="ws://h:1/ws").stream_protocol == "v1"
    assert RimeOptions(api_key="k", base_url="ws://h:1/ws3").stream_protocol == "ws3"
    assert RimeOptions(api_key="k", base_url="ws://h:1").stream_protocol == "ws3"
    v1 = RimeOptions(api_key="k", base_url="ws://h:1", protocol="v1")
    assert (v1.endpoint, v1.stream_protocol) == ("ws://h:1/ws", "v1")
    custom = RimeOptions(api_key="k", base_url="wss://proxy.example/tts", protocol="v1")
    assert (custom.endpoint, custom.stream_protocol) == ("wss://proxy.example/tts", "v1")
    rime = RimeOptions(api_key="k", protocol="v1", model="mistv3")
    assert streaming_url(rime) == "wss://api.rime.ai/mistv3/ws"
    assert streaming_url(RimeOptions(api_key="k")) == "wss://users-ws.rime.ai/ws3"
    with pytest.raises(ConfigurationError, match="arcana"):
        streaming_url(RimeOptions(api_key="k", protocol="v1", model="arcana"))
    http = RimeOptions(api_key="k", base_url="http://h:1", protocol="v1")
    assert (http.streaming, http.stream_protocol) == (False, "v1")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"base_url": "ws://h:1/ws3", "protocol": "v1"}, "speaks ws3, but protocol='v1'"),
        ({"base_url": "ws://h:1/ws", "protocol": "ws3"}, "speaks v1, but protocol='ws3'"),
        ({"protocol": "v2"}, "unknown protocol 'v2'"),
        ({"word_timestamps": "yes"}, "word_timestamps"),
    ],
)
def test_contradictory_protocol_options_are_configuration_errors(
    kwargs: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        RimeOptions(api_key="k", **kwargs)  # type: ignore[arg-type]


async def test_capabilities_say_which_protocol_and_how_timestamps_arrive(
    rime_emulator: RimeEmulator,
) -> None:
    async with v1_client(rime_emulator) as client:
        caps = client.capabilities
        assert (caps.protocol, caps.word_timestamps) == ("v1", "after_audio")
        client.update_options(word_timestamps=False)
        assert client.capabilities.word_timestamps == "none"
    async with client_for(rime_emulator) as ws3:
        caps = ws3.capabilities
        assert (caps.protocol, caps.word_timestamps, caps.streaming) == ("ws3", "with_audio", True)
        # Rime times English and Spanish only: no word times to wait for in French.
        ws3.update_options(lang="fra")
        assert ws3.capabilities.word_timestamps == "none"
        assert not ws3.capabilities.aligned_transcript


def test_v1_asks_for_word_times_only_where_rime_has_them() -> None:
    from rime_trio._protocol_v1 import V1Connection, V1StreamState

    for lang, asked in (("eng", True), ("spa", True), ("fra", False)):
        connection = V1Connection(None)
        connection.receive('{"ready": {"protocol": 1}}')
        state = V1StreamState("s", RimeOptions(api_key="k", lang=lang, protocol="v1"))
        state.attach(connection)
        (start, *_) = state.frames(["Bonjour. "], end=True)
        assert isinstance(start, str)  # no subprotocol: JSON
        enabled = json.loads(start)["start"].get("timestamps", {}).get("enable", False)
        assert enabled == asked, lang


async def test_arcana_sampling_options_fail_when_the_stream_is_made(
    rime_emulator: RimeEmulator,
) -> None:
    async with v1_client(rime_emulator, model="arcana", temperature=0.5) as client:
        with pytest.raises(ConfigurationError, match="no v1 equivalent"):
            async with client.stream():
                pass


# ----------------------------------------------------------------------------- sharing


async def test_fifty_concurrent_streams_share_one_socket_each_with_exact_audio_and_words(
    rime_emulator: RimeEmulator,
) -> None:
    results: dict[int, tuple[SpeechStream, bytes, list[WordTimestamp]]] = {}
    async with v1_client(rime_emulator) as client:

        async def one(n: int) -> None:
            async with client.stream() as stream:
                for sentence in sentences_of(n):
                    await stream.push_text(sentence + " ")
                await stream.end_input()
                with anyio.fail_after(30):
                    audio, words = await read_all(stream)
            results[n] = (stream, audio, words)

        with v1_contexts() as started:
            async with anyio.create_task_group() as task_group:
                for n in range(50):
                    task_group.start_soon(one, n)
        assert rime_emulator.stats.handshakes == 1  # the count of sockets: one for all 50
        assert len(v1_sessions(client)) == 1
        # a context per sentence (segment="never": each is said and forced on its own)
        assert [len(ids) for ids in started.values()] == [2] * 50
    for n, (stream, audio, words) in results.items():
        assert audio == speech(*sentences_of(n))  # exactly its own, nothing foreign
        assert [w.word for w in words] == " ".join(sentences_of(n)).replace(".", "").split()
        assert all(w.context_id == stream.context_id for w in words)
        assert_words_on_the_audio(audio, words)
        assert stream.metrics.outcome == "completed"
    # Every stream waited for the one handshake: none took a socket that was ready.
    assert not any(s.metrics.connection_reused for s, _, _ in results.values())
    assert all(s.metrics.connect_seconds is not None for s, _, _ in results.values())


async def test_past_max_contexts_per_socket_another_socket_opens(
    rime_emulator: RimeEmulator,
) -> None:
    async with v1_client(rime_emulator, max_pool_size=8, max_contexts_per_socket=4) as client:
        async with anyio.create_task_group() as task_group:
            for n in range(10):
                task_group.start_soon(speak, client, " ".join(sentences_of(n)))
    assert rime_emulator.stats.handshakes == 3  # 4 + 4 + 2


async def test_sequential_streams_reuse_the_open_socket(rime_emulator: RimeEmulator) -> None:
    async with v1_client(rime_emulator) as client:
        await client.prewarm()
        streams = [await speak(client, f"Number {n} here.") for n in range(3)]
    assert rime_emulator.stats.handshakes == 1
    assert all(s.metrics.connection_reused for s, _, _ in streams)
    assert all(s.metrics.connect_seconds is None for s, _, _ in streams)
    assert [audio for _, audio, _ in streams] == [speech(f"Number {n} here.") for n in range(3)]


# ----------------------------------------------------------------------------- exits


async def test_leaving_a_stream_early_cancels_its_context_only(anyio_backend_name: str) -> None:
    config = EmulatorConfig(chunk_bytes=400, real_time_factor=0.2)
    long_text = "A sentence long enough to be left in the middle of it, by its reader."
    async with open_emulator(config) as emulator, v1_client(emulator) as client:
        finished: list[bytes] = []

        async def other() -> None:
            finished.append((await speak(client, "The other stream goes on."))[1])

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(other)
            async with client.stream() as stream:
                await stream.push_text(long_text)
                await stream.end_input()
                with anyio.fail_after(10):
                    await stream.receive()
                # leaving the block with audio owed: its context is cancelled
        await no_open_contexts(client)
        assert finished == [speech("The other stream goes on.")]
        after = await speak(client, "Still the same socket.")
        assert after[1] == speech("Still the same socket.")
        assert emulator.stats.handshakes == 1
    [record] = [r for r in emulator.stats.runs[1] if r.text.startswith("A sentence")]
    assert record.abandoned


class Boom(Exception):
    pass


@pytest.mark.parametrize("how", ["complete", "close_audio_out", "exception", "cancel", "error"])
async def test_every_exit_leaves_the_socket_usable_with_no_context_open(how: str) -> None:
    config = EmulatorConfig(chunk_bytes=400, real_time_factor=0.1)
    async with open_emulator(config) as emulator, v1_client(emulator) as client:
        if how == "error":
            emulator.config.faults = [Fault("error_event", body="engine failed")]
        with anyio.CancelScope() as scope:
            try:
                async with client.stream() as stream:
                    await stream.push_text("Some words to say before leaving. ")
                    await stream.end_input()
                    with anyio.fail_after(10):
                        if how in ("complete", "error"):
                            await read_all(stream)
                        else:
                            await stream.receive()
                    if how == "close_audio_out":
                        await stream.audio_out.aclose()
                    elif how == "exception":
                        raise Boom
                    elif how == "cancel":
                        scope.cancel()
                        await anyio.sleep_forever()
            except (Boom, ServerError):
                pass
        emulator.config.faults = []
        await no_open_contexts(client)
        _, audio, _ = await speak(client, "Next.")
        assert audio == speech("Next.")
        assert emulator.stats.handshakes == 1  # the same socket served on
        assert emulator.stats.open_sockets == 1


async def test_random_cancellation_in_1000_streams_leaks_no_context_socket_or_task() -> None:
    rng = random.Random(14)
    config = EmulatorConfig(chunk_bytes=300)
    async with open_emulator(config) as emulator, v1_client(emulator) as client:

        async def one(n: int) -> None:
            with anyio.CancelScope() as scope:
                async with client.stream() as stream:
                    await stream.push_text(f"Stream {n} says a few words. ")
                    if rng.random() < 0.5:
                        await stream.push_text("And some more. ")
                    await stream.end_input()
                    for _ in range(rng.randrange(4)):
                        await stream.receive()
                    scope.cancel()

        with anyio.fail_after(120):
            for batch in range(50):
                async with anyio.create_task_group() as task_group:
                    for n in range(20):
                        task_group.start_soon(one, batch * 20 + n)
                        if rng.random() < 0.3:
                            await anyio.lowlevel.checkpoint()
        await no_open_contexts(client)
        assert emulator.stats.open_sockets == 1
        assert emulator.stats.handshakes == 1
        [session] = v1_sessions(client)
        assert session.users == set()
        assert client_tasks() == [] or all("_run" in name for name in client_tasks())
        # and the socket still works
        assert (await speak(client, "After a thousand."))[1] == speech("After a thousand.")


# ----------------------------------------------------------------------------- clear


async def test_clear_cancels_the_context_and_goes_on_with_a_fresh_one_on_the_same_socket() -> None:
    config = EmulatorConfig(chunk_bytes=400, real_time_factor=0.2)
    with v1_contexts() as started:
        async with open_emulator(config) as emulator, v1_client(emulator) as client:
            async with client.stream() as stream:
                await stream.push_text("A long first sentence that nobody will hear in full. ")
                with anyio.fail_after(10):
                    first = await stream.receive()
                taken = stream.audio_seconds
                await stream.clear()
                await stream.push_text("Only this.")
                await stream.end_input()
                with anyio.fail_after(10):
                    audio, words = await read_all(stream)
    wire_ids = started[stream.context_id]
    assert isinstance(first, AudioChunk)
    assert audio == speech("Only this.")
    fresh = render_speech("Only this.", RATE)
    assert [w.start for w in words] == pytest.approx([taken + s for s in fresh.starts])
    assert len(set(wire_ids)) == len(wire_ids) == 2
    assert emulator.stats.handshakes == 1
    [cleared] = [r for r in emulator.stats.runs[1] if r.context_id == wire_ids[0]]
    assert cleared.abandoned


async def test_clear_after_end_input_ends_the_audio(rime_emulator: RimeEmulator) -> None:
    async with v1_client(rime_emulator) as client:
        async with client.stream() as stream:
            await stream.push_text("Never mind. ")
            await stream.end_input()
            await stream.clear()
            with anyio.fail_after(10):
                audio, _ = await read_all(stream)
        assert audio == b""
        await no_open_contexts(client)


# ----------------------------------------------------------------------------- failures


async def test_tcp_drop_before_any_audio_is_retried_on_a_new_socket(
    faulty: RimeEmulator,
) -> None:
    faulty.config.faults = [Fault("drop", frozenset({1}), after_chunks=0)]
    async with v1_client(faulty) as client:
        stream, audio, words = await speak(client, "The first sentence. The second one.")
    assert stream.retries == 1
    assert stream.metrics.retries == 1
    assert audio == speech("The first sentence.", " The second one.")
    assert_words_on_the_audio(audio, words)
    assert faulty.stats.handshakes == 2


async def test_tcp_drop_mid_context_fails_every_stream_on_the_socket_naming_the_cause(
    faulty: RimeEmulator,
) -> None:
    faulty.config.chunk_bytes = 300
    # Paced, so that every stream has audio in hand when the connection drops.
    faulty.config.real_time_factor = 0.2
    faulty.config.faults = [Fault("drop", frozenset({1}), after_chunks=20)]
    errors: list[BaseException] = []
    delivered: list[float] = []
    async with v1_client(faulty) as client:

        async def one(n: int) -> None:
            try:
                async with client.stream() as stream:
                    await stream.push_text(" ".join(sentences_of(n)))
                    await stream.end_input()
                    with anyio.fail_after(10):
                        await read_all(stream)
            except RimeError as exc:
                errors.append(exc)
                delivered.append(exc.audio_seconds_delivered)

        async with anyio.create_task_group() as task_group:
            for n in range(3):
                task_group.start_soon(one, n)
    assert len(errors) == 3
    assert all(isinstance(e, ConnectionLost) for e in errors)
    assert all("v1 socket was lost" in str(e) and "1006" in str(e) for e in errors)
    assert len({id(e) for e in errors}) == 3  # one exception object per stream
    assert all(seconds > 0 for seconds in delivered)  # audio had begun: not retried


async def test_a_429_on_the_handshake_is_retried() -> None:
    faults = [Fault("reject", frozenset({1}), status=429, body="Currently at websocket limit")]
    async with open_emulator(EmulatorConfig(faults=faults)) as emulator:
        async with v1_client(emulator) as client:
            stream, audio, _ = await speak(client, "After a refusal.")
    assert audio == speech("After a refusal.")
    assert stream.retries == 1
    assert (emulator.stats.rejected, emulator.stats.handshakes) == (1, 1)


async def test_a_429_on_every_handshake_fails_each_waiting_stream_with_its_own_status() -> None:
    faults = [Fault("reject", status=429, body="Currently at websocket limit")]
    async with open_emulator(EmulatorConfig(faults=faults)) as emulator:
        async with v1_client(emulator) as client:
            errors: list[APIStatusError] = []

            async def one() -> None:
                try:
                    await speak(client, "Refused.")
                except APIStatusError as exc:
                    errors.append(exc)

            async with anyio.create_task_group() as task_group:
                for _ in range(3):
                    task_group.start_soon(one)
    assert [e.status_code for e in errors] == [429] * 3
    assert len({id(e) for e in errors}) == 3


async def test_foreign_audio_fails_the_socket_and_nothing_foreign_is_delivered() -> None:
    """A chunk for a context never started means the server mixes contexts up: the socket is
    failed (ProtocolError), and a stream with no audio yet is retried on another."""
    config = EmulatorConfig(faults=[Fault("foreign_audio", frozenset({1}))])
    async with open_emulator(config) as emulator, v1_client(emulator) as client:
        stream, audio, _ = await speak(client, "Only mine.")
    assert audio == speech("Only mine.")
    assert stream.retries == 1
    assert stream.foreign_events == 0


async def test_an_error_event_is_a_server_error_not_retried() -> None:
    config = EmulatorConfig(faults=[Fault("error_event", body="engine failed")])
    async with open_emulator(config) as emulator, v1_client(emulator) as client:
        with pytest.raises(ServerError, match="internal: engine failed") as info:
            await speak(client, "Never heard.")
        assert emulator.stats.handshakes == 1
    assert info.value.audio_seconds_delivered == 0


async def test_a_1011_close_before_audio_is_retried() -> None:
    faults = [Fault("close", frozenset({1}), code=1011, reason="503: busy", after_messages=1)]
    async with open_emulator(EmulatorConfig(faults=faults)) as emulator:
        async with v1_client(emulator) as client:
            stream, audio, _ = await speak(client, "Second time lucky.")
    assert audio == speech("Second time lucky.")
    assert stream.retries == 1


async def test_an_idle_socket_closed_by_the_server_is_replaced_unnoticed() -> None:
    faults = [Fault("idle_close", frozenset({1}), seconds=0.05, code=1000)]
    async with open_emulator(EmulatorConfig(faults=faults)) as emulator:
        async with v1_client(emulator) as client:
            await client.prewarm()
            await emulator.wait_open_sockets(0)
            _, audio, _ = await speak(client, "A new socket.")
    assert audio == speech("A new socket.")
    assert emulator.stats.handshakes == 2


@pytest.mark.virtual_clock(autojump_threshold=0.05)
async def test_a_missing_done_is_a_timeout_and_the_socket_serves_on(
    virtual_clock: object,
) -> None:
    settings = StreamSettings(audio_timeout=1.0 if virtual_clock is not None else 0.3)
    config = EmulatorConfig(faults=[Fault("missing_done")])
    async with (
        open_emulator(config) as emulator,
        client_for(emulator, "v1", stream_settings=settings) as client,
    ):
        with pytest.raises(RimeTimeoutError):
            await speak(client, "No end in sight.")
        emulator.config.faults = []
        assert (await speak(client, "Then one."))[1] == speech("Then one.")
        assert emulator.stats.handshakes == 1


@pytest.mark.virtual_clock(autojump_threshold=0.05)
async def test_a_stall_after_the_input_ended_is_a_timeout(virtual_clock: object) -> None:
    timeout = 1.0 if virtual_clock is not None else 0.3
    config = EmulatorConfig(chunk_bytes=300, faults=[Fault("stall", seconds=60, after_chunks=2)])
    async with open_emulator(config) as emulator:
        settings = StreamSettings(audio_timeout=timeout)
        async with client_for(emulator, "v1", stream_settings=settings) as client:
            with pytest.raises(RimeTimeoutError, match="while audio was owed") as info:
                await speak(client, "A stall in the middle of this sentence.")
    assert info.value.audio_seconds_delivered > 0


# ----------------------------------------------------------------------------- backpressure


async def test_a_slow_reader_fails_alone_and_never_stalls_the_others() -> None:
    # A short sentence (about 25 KB here) fits under the hard limit (8 x 5,000 bytes), so a
    # reader that reads keeps up however fast the emulator sends; the slow one's 300 KB not.
    settings = StreamSettings(max_buffered_audio_bytes=5000, audio_timeout=5.0)
    config = EmulatorConfig(chunk_bytes=400)
    text = "A long sentence that its reader will never read, no matter how long it waits. "
    others: list[bytes] = []
    failures: list[BaseException] = []
    async with (
        open_emulator(config) as emulator,
        client_for(emulator, "v1", stream_settings=settings) as client,
    ):
        slow_stream: list[SpeechStream] = []

        async def slow() -> None:
            try:
                async with client.stream() as stream:
                    slow_stream.append(stream)
                    await stream.push_text(text * 4)
                    await stream.end_input()
                    await anyio.sleep_forever()  # never reads
            except SlowReaderError as exc:
                failures.append(exc)

        async def quick(n: int) -> None:
            others.append((await speak(client, f"Quick number {n}."))[1])

        with anyio.fail_after(20):
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(slow)
                for n in range(3):  # meanwhile, three others run to the end on the socket
                    task_group.start_soon(quick, n)
        await no_open_contexts(client)
        assert emulator.stats.handshakes == 1
        assert (await speak(client, "After it."))[1] == speech("After it.")
    assert sorted(others) == sorted(speech(f"Quick number {n}.") for n in range(3))
    [failure] = failures
    assert "fell 40000 bytes of audio behind" in str(failure)
    assert slow_stream[0].metrics.error_type == "SlowReaderError"


async def test_a_reader_behind_by_the_limit_holds_the_next_text_back(
    rime_emulator: RimeEmulator,
) -> None:
    """The server cannot be held back per stream on a shared socket; the stream's next text
    can: it waits while max_buffered_audio_bytes wait for the reader."""
    settings = StreamSettings(max_buffered_audio_bytes=20_000)
    first = "The first sentence says quite a lot of things, at length, for a while."
    async with client_for(rime_emulator, "v1", stream_settings=settings) as client:
        async with client.stream() as stream:
            await stream.push_text(first + " ")
            link = link_of(stream)
            with anyio.fail_after(10):
                await eventually(lambda: stream.buffered_audio_bytes + link.backlog > 20_000)
            await stream.push_text("The second. ")
            await stream.end_input()
            await anyio.sleep(0.2)
            texts = [t for ts in rime_emulator.stats.texts.values() for t in ts]
            assert texts == [first]  # held back: the reader is behind
            with anyio.fail_after(10):
                audio, _ = await read_all(stream)
    assert audio == speech(first, " The second.")


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("unfinished", ["speak", "hold"])
async def test_segment_never_says_each_whole_sentence_and_holds_part_of_one(
    unfinished: str,
) -> None:
    """Under ``never`` (as on /ws3) each sentence is said and forced once it is whole, on any
    server reading; part of one waits for the rest, a flush or the end."""
    config = EmulatorConfig(v1_readings=V1Readings(unfinished=unfinished))  # type: ignore[arg-type]
    async with open_emulator(config) as emulator:
        async with v1_client(emulator, segment="never") as client:
            async with client.stream() as stream:
                await stream.push_text("One sentence. Two sentences. Three")
                with anyio.fail_after(10):
                    head = await stream.receive()  # no flush needed
                audio = bytearray(head.data if isinstance(head, AudioChunk) else b"")
                while len(audio) < len(speech("One sentence.", "Two sentences.")):
                    with anyio.fail_after(10):
                        event = await stream.receive()
                    if isinstance(event, AudioChunk):
                        audio += event.data
                said = [t for ts in emulator.stats.texts.values() for t in ts]
                assert not any("Three" in t for t in said)  # part of a sentence: held
                await stream.flush()
                await stream.end_input()
                with anyio.fail_after(10):
                    rest, _ = await read_all(stream)
    assert bytes(audio) + rest == speech("One sentence.", "Two sentences.", "Three")


async def test_word_timestamps_can_be_turned_off(rime_emulator: RimeEmulator) -> None:
    async with v1_client(rime_emulator, word_timestamps=False) as client:
        _, audio, words = await speak(client, "No words please.")
    assert audio == speech("No words please.")
    assert words == []


async def test_word_timestamps_follow_the_audio_under_a_time_scale_factor(
    rime_emulator: RimeEmulator,
) -> None:
    async with v1_client(rime_emulator, time_scale_factor=1.5) as client:
        _, audio, words = await speak(client, "Scaled word times.")
    assert_words_on_the_audio(audio, words)


async def test_a_stream_completes_when_the_server_gives_no_word_times() -> None:
    """Word times are asked for, and a ``done`` without any still ends each context: the
    stream completes with every byte (livekit's v1 README says Rime's v1 sends none)."""
    config = EmulatorConfig(v1_readings=V1Readings(timestamps="none"))
    async with open_emulator(config) as emulator, v1_client(emulator) as client:
        async with client.stream() as stream:
            await stream.push_text("Words without times. ")
            await stream.flush()
            await stream.push_text("And a second context.")
            await stream.end_input()
            with anyio.fail_after(20):
                audio, words = await read_all(stream)
    assert audio == speech("Words without times.", "And a second context.")
    assert words == []
    assert stream.metrics.outcome == "completed"


async def test_per_sentence_word_times_land_on_the_audio() -> None:
    config = EmulatorConfig(v1_readings=V1Readings(timestamps="per_sentence"))
    async with open_emulator(config) as emulator, v1_client(emulator) as client:
        _, audio, words = await speak(client, "One two three. Four five. Six.")
    # Rebased to follow the previous word's end: each restart makes the words after it early
    # by at most the silence between the runs (0.17 s each here), never late.
    bursts = find_bursts(audio, RATE)
    assert len(words) == len(bursts)
    runs_before = [0, 0, 0, 1, 1, 2]
    for word, (start, _), runs in zip(words, bursts, runs_before, strict=True):
        assert start - 0.18 * runs - 0.005 <= word.start <= start + 0.005


async def test_mulaw_over_v1(rime_emulator: RimeEmulator) -> None:
    from rime_trio.testing import encode_audio

    async with v1_client(rime_emulator, audio_format="mulaw") as client:
        _, audio, _ = await speak(client, "In mu-law.")
    assert audio == encode_audio(render_speech("In mu-law.", RATE).pcm, "mulaw", RATE)


def started_formats(emulator: RimeEmulator) -> list[tuple[int, str]]:
    """(connection, audio format name) of every context start the emulator received."""
    return [
        (connection, request.start.audio_parameters.audio_format)
        for connection, requests in emulator.stats.received.items()
        for request in requests
        if isinstance(request, tts.WebSocketRequest) and request.HasField("start")
    ]


@pytest.mark.parametrize("mulaw_mime", ["audio/pcmu", "audio/x-mulaw"])
async def test_mulaw_is_spoken_under_either_name_the_server_takes(mulaw_mime: str) -> None:
    """Which name v1 takes for mu-law is open: a refused name costs a socket one ``start``,
    once; the text is said again under the next name, and every byte arrives once."""
    from rime_trio.testing import encode_audio

    config = EmulatorConfig(v1_readings=V1Readings(mulaw_mime=mulaw_mime))  # type: ignore[arg-type]
    texts = ["Named once.", "Then remembered.", "By the socket."]
    async with open_emulator(config) as emulator:
        async with v1_client(emulator, audio_format="mulaw") as client:
            for text in texts:
                _, audio, _ = await speak(client, text)
                assert audio == encode_audio(render_speech(text, RATE).pcm, "mulaw", RATE)
    refused = [] if mulaw_mime == "audio/pcmu" else [(1, "audio/pcmu")]
    assert started_formats(emulator) == [*refused, *[(1, mulaw_mime)] * len(texts)]


async def test_a_mulaw_name_refused_mid_stream_says_every_flushed_context_again() -> None:
    """A flush between two sentences (the second context may start before the refusal of the
    first comes): everything is said again, in order, under the other name."""
    from rime_trio.testing import encode_audio

    config = EmulatorConfig(
        time_to_first_chunk=0.05, v1_readings=V1Readings(mulaw_mime="audio/x-mulaw")
    )
    async with open_emulator(config) as emulator:
        async with v1_client(emulator, audio_format="mulaw") as client:
            async with client.stream() as stream:
                await stream.push_text("First part. ")
                await stream.flush()
                await stream.push_text("Second part. ")
                await stream.end_input()
                with anyio.fail_after(20):
                    audio, _ = await read_all(stream)
    pcm = speech("First part.", "Second part.")
    assert audio == encode_audio(pcm, "mulaw", RATE)


async def test_stream_closed_after_client_aclose(rime_emulator: RimeEmulator) -> None:
    async with v1_client(rime_emulator) as client:
        with pytest.raises(StreamClosed):
            async with client.stream() as stream:
                await stream.push_text("Hello there. ")
                with anyio.fail_after(10):
                    await stream.receive()
                await client.aclose()
                await read_all(stream)
    with anyio.fail_after(5):
        await rime_emulator.wait_open_sockets(0)


# ----------------------------------------------------------------------------- review fixes


async def test_a_context_error_is_never_hidden_behind_a_fresh_context() -> None:
    # Found in review: when the server ended the context with an error while the send task
    # was building its next frames, the task opened a fresh context; the recv task then
    # dropped the error as stale and the stream "completed" with audio missing.
    too_long = "This sentence is much too long for the server's configured text limit."
    async with (
        open_emulator(EmulatorConfig(max_text_chars=40)) as emulator,
        client_for(
            emulator,
            "v1",
            stream_settings=StreamSettings(audio_timeout=5),
            segment="bySentence",  # one context for all of it: the error is its end
        ) as client,
    ):
        for trial in range(24):
            with v1_contexts() as started, pytest.raises(ServerError), anyio.fail_after(10):
                async with client.stream() as stream:
                    await stream.push_text(too_long + " ")
                    for i in range(30):
                        await stream.push_text(f"Word {i}. ")
                        await anyio.sleep(0.0005 * (trial % 4))
                    await stream.end_input()
                    await read_all(stream)
            assert stream.metrics.outcome == "failed"
            assert len(started[stream.context_id]) == 1  # no context opened behind its back


async def test_clear_while_text_waits_for_the_reader_neither_hangs_nor_says_the_text() -> None:
    # Found in review: the send task, holding text back until the reader drained, was woken
    # only by the reader taking audio; a clear() dropped that audio instead, so the stream
    # hung (trio, about half the runs), and once woken the cleared text still went out.
    settings = StreamSettings(max_buffered_audio_bytes=10_000, audio_buffer=2, audio_timeout=5)
    async with (
        open_emulator(EmulatorConfig(chunk_bytes=400)) as emulator,
        client_for(emulator, "v1", stream_settings=settings) as client,
    ):
        for _ in range(10):
            async with client.stream() as stream:
                await stream.push_text("The first sentence is long enough to fill the buffer. ")
                link = link_of(stream)
                with anyio.fail_after(5):
                    await eventually(lambda: link.backlog >= 10_000)  # noqa: B023
                await stream.push_text("A second sentence that clear must drop. ")
                await anyio.sleep(0.05)  # the send task now waits for the reader
                await stream.clear()
                await stream.push_text("Only this.")
                await stream.end_input()
                with anyio.fail_after(10):
                    audio, _ = await read_all(stream)
            assert audio == render_speech("Only this.", RATE).pcm
        said = [text for texts in emulator.stats.texts.values() for text in texts]
        assert not any("clear must drop" in text for text in said)


async def test_a_refused_connect_is_a_connect_error_over_v1_too() -> None:
    with anyio.fail_after(20):
        async with RimeClient(
            base_url="ws://127.0.0.1:9/ws",
            api_key=API_KEY,
            stream_settings=StreamSettings(retries=0),
        ) as client:
            with pytest.raises(ConnectError):
                await client.prewarm()
            with pytest.raises(ConnectError):
                async with client.stream() as stream:
                    await stream.push_text("Nobody listens.")
                    await stream.end_input()
                    await read_all(stream)


async def test_a_context_still_winding_down_counts_against_the_socket_limit() -> None:
    # Found in review: the limit counted streams, so a new stream took the place of one that
    # had left while its cancelled context still ran on the server.
    async with (
        open_emulator() as emulator,
        client_for(emulator, "v1", max_contexts_per_socket=2) as client,
    ):
        await client.prewarm()
        (session,) = v1_sessions(client)
        protocol = session.protocol
        assert protocol is not None
        session.users.add(object())  # type: ignore[arg-type]  # one stream on the socket
        assert session.has_room()
        # A context the server still runs for no stream (left, its cancelled not yet back).
        protocol.start(protocol.next_context_id(), client.options)
        assert not session.has_room()
