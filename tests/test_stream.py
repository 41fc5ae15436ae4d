"""Streaming over /ws3, end to end against the emulator with real sockets."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Sequence

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from rime_trio import (
    APIStatusError,
    AudioChunk,
    ConfigurationError,
    EmptyTextError,
    RimeClient,
    RimeTimeoutError,
    ServerError,
    SpeechEvent,
    SpeechStream,
    StreamClosed,
    StreamSettings,
    WordTimestamp,
)
from rime_trio._options import websocket_url
from rime_trio._pool import PooledSocket
from rime_trio._protocol import TextMessage
from rime_trio._retry import SocketLink
from rime_trio.testing import (
    EmulatorConfig,
    Fault,
    RimeEmulator,
    find_bursts,
    open_emulator,
    render_speech,
)

from .conftest import API_KEY, BACKENDS
from .speech import client_tasks, read_all, wire_prefix

RATE = 16000
TWO_SENTENCES = "The first sentence is here. And the second one follows it!"

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(rime_emulator: RimeEmulator) -> AsyncIterator[RimeClient]:
    async with RimeClient(
        base_url=rime_emulator.ws_url, api_key=API_KEY, sample_rate=RATE
    ) as client:
        yield client


async def collect(stream: SpeechStream) -> tuple[bytes, list[WordTimestamp]]:
    with anyio.fail_after(10):
        return await read_all(stream)


async def speak(client: RimeClient, *pieces: str) -> tuple[bytes, list[WordTimestamp], str]:
    async with client.stream() as stream:
        for piece in pieces:
            await stream.push_text(piece)
        await stream.end_input()
        audio, words = await collect(stream)
    return audio, words, wire_prefix(stream)


async def settle(emulator: RimeEmulator, at_most: int) -> None:
    """Wait (bounded) until the server sees at most *at_most* sockets open."""
    with anyio.fail_after(5):
        await emulator.wait_open_sockets(at_most)


async def quiesce(client: RimeClient, emulator: RimeEmulator) -> None:
    """Wait (bounded) for the pool's background opens and closes, then until the server
    sees exactly the pool's idle sockets open: nothing else may be left."""
    with anyio.fail_after(5):
        await client.pool.wait_teardowns()
    await settle(emulator, client.pool.idle)


# ----------------------------------------------------------------------------- audio


async def test_stream_delivers_exactly_the_emulators_audio(
    client: RimeClient, rime_emulator: RimeEmulator
) -> None:
    audio, words, context_id = await speak(client, TWO_SENTENCES)
    assert audio == rime_emulator.stats.audio_for(context_id)
    expected = (
        render_speech("The first sentence is here. ", RATE).pcm
        + render_speech("And the second one follows it! ", RATE).pcm
    )
    assert audio == expected
    assert [w.word for w in words] == [
        "The", "first", "sentence", "is", "here", "And", "the", "second", "one", "follows", "it",
    ]  # fmt: skip


async def test_timestamps_are_monotonic_and_match_the_bursts_in_the_audio(
    client: RimeClient,
) -> None:
    text = "One two three. Four five six seven. Eight nine."
    audio, words, _ = await speak(client, text)
    starts = [w.start for w in words]
    assert starts == sorted(starts)
    assert all(w.end > w.start for w in words)
    assert all(a.end <= b.start for a, b in itertools.pairwise(words))
    bursts = find_bursts(audio, RATE)
    assert len(bursts) == len(words) == 9
    for word, (start, end) in zip(words, bursts, strict=True):
        assert word.start == pytest.approx(start, abs=0.005)
        assert word.end == pytest.approx(end, abs=0.005)


async def test_chunks_carry_stream_offsets_and_metadata(client: RimeClient) -> None:
    async with client.stream() as stream:
        await stream.push_text(TWO_SENTENCES)
        await stream.end_input()
        chunks = [e async for e in stream if isinstance(e, AudioChunk)]
    position = 0.0
    for chunk in chunks:
        assert chunk.offset == pytest.approx(position)
        assert (chunk.audio_format, chunk.sample_rate, chunk.channels) == ("pcm", RATE, 1)
        assert chunk.context_id == stream.context_id
        position += chunk.duration
    assert position == pytest.approx(stream.audio_seconds)


async def test_raw_channel_pair_works_without_the_helpers(client: RimeClient) -> None:
    async with client.stream() as stream:
        async with stream.text_in as text_in:
            await text_in.send("Raw channels. ")
            await text_in.send("Work too.")
        events: list[SpeechEvent] = []
        with anyio.fail_after(10):
            async for event in stream.audio_out:
                events.append(event)
    assert any(isinstance(e, AudioChunk) for e in events)
    assert [e.word for e in events if isinstance(e, WordTimestamp)] == [
        "Raw",
        "channels",
        "Work",
        "too",
    ]


@pytest.mark.parametrize("segment", ["bySentence", "immediate", "never"])
async def test_every_segment_mode_delivers_all_the_audio(
    rime_emulator: RimeEmulator, segment: str
) -> None:
    async with RimeClient(
        base_url=rime_emulator.ws_url, api_key=API_KEY, sample_rate=RATE, segment=segment
    ) as client:
        audio, words, context_id = await speak(client, "Alpha beta. Gamma", " delta")
    assert audio == rime_emulator.stats.audio_for(context_id)
    assert [w.word for w in words] == ["Alpha", "beta", "Gamma", "delta"]


async def test_mulaw_stream(rime_emulator: RimeEmulator) -> None:
    async with RimeClient(
        base_url=rime_emulator.ws_url, api_key=API_KEY, sample_rate=8000, audio_format="mulaw"
    ) as client:
        result = await client.synthesize("Mu law audio.")
    assert len(result.audio) == len(render_speech("Mu law audio. ", 8000).pcm) // 2
    assert result.duration == pytest.approx(render_speech("Mu law audio. ", 8000).duration)


async def test_text_longer_than_the_message_limit_is_split(
    client: RimeClient, rime_emulator: RimeEmulator
) -> None:
    long_sentence = " ".join(["word"] * 400) + "."  # 2,000 characters, one sentence
    audio, words, context_id = await speak(client, long_sentence)
    assert len(words) == 400
    texts = [m for m in rime_emulator.stats.received[1] if isinstance(m, TextMessage)]
    assert len(texts) >= 2
    assert all(len(m.text) <= 1000 for m in texts)
    assert audio == rime_emulator.stats.audio_for(context_id)


# ----------------------------------------------------------------------------- latency behaviour


async def test_first_sentence_is_spoken_before_the_second_is_typed(
    client: RimeClient, rime_emulator: RimeEmulator
) -> None:
    async with client.stream() as stream:
        for token in ["The", " first", " sentence", ".", " The"]:
            await stream.push_text(token)
        # The space after the stop ended the sentence (nothing after "." could say otherwise
        # until then); no end of input: the first sentence must already be on its way.
        with anyio.fail_after(10):
            first = await stream.receive()
        assert isinstance(first, AudioChunk | WordTimestamp)
        sent = [m for m in rime_emulator.stats.received[1] if isinstance(m, TextMessage)]
        assert [m.text for m in sent] == ["The first sentence. "]  # exactly as typed
        await stream.push_text(" second one.")
        await stream.end_input()
        _, words = await collect(stream)
    assert [w.word for w in words][-3:] == ["The", "second", "one"]


async def test_the_input_task_forwards_a_sentence_without_waiting_for_more_text(
    client: RimeClient,
) -> None:
    """Deterministic ordering: once every task is blocked after the first
    sentence, the input task has already handed it to the send task."""
    async with client.stream() as stream:
        await stream.push_text("Hello there. ")
        await anyio.wait_all_tasks_blocked()
        assert stream._state.needs_new_socket  # the sentence's frames were made
        await stream.end_input()
        await collect(stream)


async def test_no_timeout_while_the_caller_is_simply_not_sending(
    rime_emulator: RimeEmulator,
) -> None:
    async with RimeClient(
        base_url=rime_emulator.ws_url,
        api_key=API_KEY,
        stream_settings=StreamSettings(audio_timeout=0.2),
    ) as client:
        async with client.stream() as stream:
            await stream.push_text("First. ")
            expected = len(render_speech("First. ", 24000).pcm)
            received = 0
            with anyio.fail_after(10):
                while received < expected:
                    event = await stream.receive()
                    if isinstance(event, AudioChunk):
                        received += len(event.data)
            await anyio.sleep(0.5)  # the caller thinks; nothing is owed, so nothing times out
            await stream.push_text("Second.")
            await stream.end_input()
            await collect(stream)


async def test_a_stalled_server_ends_in_a_timeout_not_a_hang() -> None:
    async with open_emulator(EmulatorConfig(time_to_first_chunk=30)) as emulator:
        async with RimeClient(
            base_url=emulator.ws_url,
            api_key=API_KEY,
            stream_settings=StreamSettings(audio_timeout=0.2),
        ) as client:
            with pytest.raises(RimeTimeoutError) as info, anyio.fail_after(10):
                await client.synthesize("Nobody answers.")
    assert info.value.audio_seconds_delivered == 0


# ----------------------------------------------------------------------------- pool


@pytest.mark.parametrize("segment", ["never", "bySentence"])
async def test_sequential_streams_each_find_a_fresh_socket_ready(
    client: RimeClient, rime_emulator: RimeEmulator, segment: str
) -> None:
    client.update_options(segment=segment)
    for text in ("Again.", "And again.", "Once more."):
        audio, _, prefix = await speak(client, text)
        assert audio == render_speech(text, RATE).pcm
        assert audio == rime_emulator.stats.audio_for(prefix)
    # One handshake in the first stream's path; every later stream took a socket opened in
    # the background while the previous one spoke, or (never) the one a stream before ended
    # on at its last done; under bySentence no socket carried two streams.
    assert client.pool.stats.reused == 2
    spoken_on = [n for n, messages in rime_emulator.stats.received.items() if messages]
    assert len(spoken_on) == (3 if segment == "bySentence" else 2)


async def test_concurrent_streams_get_separate_sockets_and_never_mix_audio(
    client: RimeClient, rime_emulator: RimeEmulator
) -> None:
    texts = [f"Stream number {n} speaks its own words." for n in range(4)]
    results: dict[int, tuple[bytes, list[WordTimestamp], str]] = {}

    async def one(n: int) -> None:
        results[n] = await speak(client, texts[n])

    async with anyio.create_task_group() as task_group:
        for n in range(4):
            task_group.start_soon(one, n)
    spoken_on = [n for n, messages in rime_emulator.stats.received.items() if messages]
    assert len(spoken_on) == 4
    for n, (audio, words, context_id) in results.items():
        assert audio == render_speech(texts[n] + " ", RATE).pcm
        assert audio == rime_emulator.stats.audio_for(context_id)
        assert [w.word for w in words][2] == str(n)


async def test_prewarm_opens_the_socket_ahead_of_the_stream(
    client: RimeClient, rime_emulator: RimeEmulator
) -> None:
    await client.prewarm()
    assert rime_emulator.stats.handshakes == 1
    await client.prewarm()  # an idle socket is ready: nothing more to do
    assert rime_emulator.stats.handshakes == 1
    await speak(client, "Warm start.")
    assert client.pool.stats.reused == 1
    assert rime_emulator.stats.received[1]  # the prewarmed socket carried the stream


async def test_update_options_retires_sockets_for_the_old_settings(
    client: RimeClient, rime_emulator: RimeEmulator
) -> None:
    await speak(client, "Old rate.")
    await client.pool.wait_teardowns()  # the spare opened for the old settings
    assert client.pool.idle == 2  # and the stream's own socket (segment="never")
    client.update_options(sample_rate=8000)
    await settle(rime_emulator, 0)  # ...is retired at once
    audio, _, _ = await speak(client, "New rate.")
    assert audio == render_speech("New rate.", 8000).pcm
    audio, _, _ = await speak(client, "New rate again.")
    assert audio == render_speech("New rate again.", 8000).pcm
    assert client.pool.stats.reused == 1  # the second took the spare for the new settings


async def test_running_stream_finishes_on_its_socket_after_update_options(
    client: RimeClient, rime_emulator: RimeEmulator
) -> None:
    async with client.stream() as stream:
        await stream.push_text("Started before the change. ")
        client.update_options(speaker="luna")
        await stream.push_text("Still the old speaker.")
        await stream.end_input()
        audio, _ = await collect(stream)
    assert audio == rime_emulator.stats.audio_for(wire_prefix(stream))
    assert stream.options.speaker == "astra"
    await settle(rime_emulator, 0)  # it was not kept: its URL is no longer wanted
    assert client.pool.idle == 0


async def test_per_stream_overrides_use_their_own_socket(
    client: RimeClient, rime_emulator: RimeEmulator
) -> None:
    async with client.stream(speaker="luna", sample_rate=8000) as stream:
        await stream.push_text("Override.")
        await stream.end_input()
        audio, _ = await collect(stream)
    assert audio == render_speech("Override. ", 8000).pcm
    assert client.options.speaker == "astra"


async def test_session_duration_retires_idle_sockets(rime_emulator: RimeEmulator) -> None:
    async with RimeClient(
        base_url=rime_emulator.ws_url, api_key=API_KEY, max_session_duration=1e-6
    ) as client:
        await speak(client, "One.")
        await client.pool.wait_teardowns()  # the spare is open and waiting, and too old
        await speak(client, "Two.")
        assert client.pool.stats.reused == 0  # so it was retired, not handed out


@pytest.mark.virtual_clock
async def test_spare_sockets_expire_after_the_session_duration(
    rime_emulator: RimeEmulator, jump_clock: Callable[[float], None]
) -> None:
    async with RimeClient(
        base_url=rime_emulator.ws_url, api_key=API_KEY, max_session_duration=300
    ) as client:
        await client.prewarm()
        jump_clock(299)
        await speak(client, "One.")  # still fresh: used
        assert client.pool.stats.reused == 1
        await client.pool.wait_teardowns()  # its replacement is open
        jump_clock(301)
        await speak(client, "Two.")  # the replacement expired: retired, a new socket opened
        assert client.pool.stats.reused == 1


async def test_pool_keeps_at_most_max_size_idle_sockets(rime_emulator: RimeEmulator) -> None:
    async with RimeClient(
        base_url=rime_emulator.ws_url, api_key=API_KEY, max_pool_size=2
    ) as client:
        url = websocket_url(client.options)
        leases = [await client.pool.get(url, PooledSocket, fresh=True) for _ in range(3)]
        for lease in leases:
            client.pool.release(lease, keep=True)  # never used: may wait for the next stream
        assert client.pool.idle == 2
        await settle(rime_emulator, 2)


async def test_max_pool_size_zero_keeps_no_spare(rime_emulator: RimeEmulator) -> None:
    async with RimeClient(
        base_url=rime_emulator.ws_url, api_key=API_KEY, max_pool_size=0
    ) as client:
        await speak(client, "One.")
        await speak(client, "Two.")
        assert client.pool.idle == 0
        assert client.pool.stats.opened == 2


async def test_idle_socket_closed_by_the_server_is_replaced_unnoticed() -> None:
    faults = [Fault("idle_close", frozenset({1}), code=1001, reason="idle", seconds=0.1)]
    async with open_emulator(EmulatorConfig(faults=faults)) as emulator:
        async with RimeClient(base_url=emulator.ws_url, api_key=API_KEY) as client:
            await client.prewarm()
            await settle(emulator, 0)  # the server closed the pooled socket while idle
            audio, _, prefix = await speak(client, "Still works.")
            assert audio == emulator.stats.audio_for(prefix)
            assert client.pool.stats.reused == 0  # the dead socket was never handed out


async def test_pooled_socket_dying_before_audio_is_retried_transparently(
    rime_emulator: RimeEmulator,
) -> None:
    async with RimeClient(base_url=rime_emulator.ws_url, api_key=API_KEY) as client:
        await client.prewarm()
        # The pooled socket dies when the stream's first message reaches it: the client only
        # learns it by using the socket, and must re-send on a new one.
        rime_emulator.config.faults = [
            Fault("close", frozenset({1}), code=1011, reason="", after_messages=1)
        ]
        audio, words, prefix = await speak(client, "Two words.")
        assert audio == rime_emulator.stats.audio_for(prefix)
        assert audio == render_speech("Two words.", 24000).pcm
        assert [w.word for w in words] == ["Two", "words"]
        assert client.pool.stats.reused == 1


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("fault", "status", "fragment"),
    [
        (Fault("reject", status=401, body="Unauthorized: bad key"), 401, "bad key"),
        (Fault("reject", status=400, body="Bad request: speaker"), 400, "speaker"),
        (Fault("reject", status=429, body="Currently at websocket limit"), 429, "limit"),
        (Fault("reject", status=500, body="Internal error"), 500, "Internal"),
    ],
)
async def test_handshake_rejections_keep_status_and_body(
    fault: Fault, status: int, fragment: str
) -> None:
    async with open_emulator(EmulatorConfig(faults=[fault])) as emulator:
        async with RimeClient(base_url=emulator.ws_url, api_key=API_KEY) as client:
            with pytest.raises(APIStatusError) as info:
                await speak(client, "Hello.")
    assert info.value.status_code == status
    assert fragment in info.value.message
    assert not isinstance(info.value, BaseExceptionGroup)


async def test_wrong_key_is_a_401_without_the_key_in_the_message(
    rime_emulator: RimeEmulator,
) -> None:
    async with RimeClient(base_url=rime_emulator.ws_url, api_key="sk-wrong-secret") as client:
        with pytest.raises(APIStatusError) as info:
            await speak(client, "Hello.")
    assert info.value.status_code == 401
    assert "sk-wrong-secret" not in str(info.value)


async def test_real_socket_limit_is_a_429() -> None:
    async with open_emulator(EmulatorConfig(max_sockets=1)) as emulator:
        async with RimeClient(base_url=emulator.ws_url, api_key=API_KEY) as client:
            async with client.stream() as first:
                await first.push_text("Holding the only socket. ")
                with anyio.fail_after(10):
                    await first.receive()
                with pytest.raises(APIStatusError) as info:
                    await speak(client, "No room.")
                await first.end_input()
                await collect(first)
    assert info.value.status_code == 429
    assert "websocket limit" in info.value.message


async def test_bad_parameter_rejected_by_the_server_is_a_400(rime_emulator: RimeEmulator) -> None:
    async with RimeClient(
        base_url=rime_emulator.ws_url, api_key=API_KEY, audio_format="mp3"
    ) as client:
        with pytest.raises(APIStatusError) as info:
            await speak(client, "The emulator cannot encode mp3.")
    assert info.value.status_code == 400


async def test_text_too_long_close_becomes_status_400() -> None:
    async with open_emulator(EmulatorConfig(max_text_chars=20)) as emulator:
        async with RimeClient(base_url=emulator.ws_url, api_key=API_KEY) as client:
            with pytest.raises(APIStatusError) as info:
                await speak(client, "This sentence is longer than twenty characters.")
    assert info.value.status_code == 400
    assert info.value.message == "text is too long"


async def test_server_error_event_becomes_server_error() -> None:
    fault = Fault("error_event", body="voice not available")
    async with open_emulator(EmulatorConfig(faults=[fault])) as emulator:
        async with RimeClient(base_url=emulator.ws_url, api_key=API_KEY) as client:
            with pytest.raises(ServerError, match="voice not available"):
                await speak(client, "Hello.")


async def test_empty_input_fails_at_once_without_a_connection(
    client: RimeClient, rime_emulator: RimeEmulator
) -> None:
    for pieces in ([], ["   ", "\n\t "]):
        with pytest.raises(EmptyTextError), anyio.fail_after(2):
            await speak(client, *pieces)
    with pytest.raises(EmptyTextError):
        await client.synthesize("  ")
    assert rime_emulator.stats.handshakes == 0


async def test_an_http_mode_client_streams_over_the_same_servers_websocket(
    rime_emulator: RimeEmulator,
) -> None:
    http = rime_emulator.http_url
    async with RimeClient(base_url=http, api_key=API_KEY, sample_rate=RATE) as client:
        assert not client.capabilities.streaming
        await client.prewarm()
        async with client.stream() as stream:
            await stream.push_text("Streamed from an HTTP client.")
            await stream.end_input()
            audio, words = await collect(stream)
        assert stream.options.endpoint == rime_emulator.ws_url + "/ws3"
        assert audio == render_speech("Streamed from an HTTP client. ", RATE).pcm
        assert [w.word for w in words] == ["Streamed", "from", "an", "HTTP", "client"]
        assert client.pool.stats.reused >= 1  # the prewarmed socket
        assert not (await client.synthesize("Still HTTP.")).word_timestamps
    assert rime_emulator.stats.http_requests == 1


async def test_an_http_mode_client_that_cannot_stream_says_why(http_url: str) -> None:
    async with RimeClient(base_url=http_url, api_key=API_KEY, audio_format="wav") as client:
        with pytest.raises(ConfigurationError, match="cannot be streamed"):
            async with client.stream():
                pass
        with pytest.raises(ConfigurationError, match="cannot be streamed"):
            await client.prewarm()


async def test_push_after_end_input_is_stream_closed(client: RimeClient) -> None:
    async with client.stream() as stream:
        await stream.push_text("Done.")
        await stream.end_input()
        with pytest.raises(StreamClosed):
            await stream.push_text("Too late.")
        await collect(stream)


# ----------------------------------------------------------------------------- teardown


async def test_foreign_audio_is_dropped(rime_emulator: RimeEmulator) -> None:
    rime_emulator.config.faults = [Fault("foreign_audio")]
    async with RimeClient(base_url=rime_emulator.ws_url, api_key=API_KEY) as client:
        async with client.stream() as stream:
            await stream.push_text("Second stream.")
            await stream.end_input()
            audio, _ = await collect(stream)
    assert audio == render_speech("Second stream.", 24000).pcm
    assert stream.foreign_events >= 1


async def test_two_streams_with_the_same_context_id_never_share_audio(
    client: RimeClient, rime_emulator: RimeEmulator
) -> None:
    outputs = []
    for text in ("The first stream has a long sentence here.", "The second."):
        async with client.stream(context_id="session-7") as stream:
            await stream.push_text(text)
            await stream.end_input()
            audio, _ = await collect(stream)
        outputs.append((audio, wire_prefix(stream)))
    (first, first_prefix), (second, second_prefix) = outputs
    assert first_prefix != second_prefix  # the label is not the wire tag
    assert first == render_speech("The first stream has a long sentence here.", RATE).pcm
    assert second == render_speech("The second.", RATE).pcm


async def test_callers_exception_passes_through_and_the_socket_is_not_reused(
    client: RimeClient, rime_emulator: RimeEmulator
) -> None:
    with pytest.raises(ZeroDivisionError):
        async with client.stream() as stream:
            await stream.push_text("Audio will be owed when this fails. ")
            with anyio.fail_after(10):
                await stream.receive()
            1 / 0  # noqa: B018
    await quiesce(client, rime_emulator)
    assert client.pool.stats.retired == 1  # the socket it spoke on was closed
    audio, _, _ = await speak(client, "Fresh socket, no stale audio.")
    assert audio == render_speech("Fresh socket, no stale audio. ", RATE).pcm


async def test_breaking_out_early_closes_the_socket(
    client: RimeClient, rime_emulator: RimeEmulator
) -> None:
    async with client.stream() as stream:
        await stream.push_text("A long sentence with many many words in it.")
        await stream.end_input()
        with anyio.fail_after(10):
            await stream.receive()
    await quiesce(client, rime_emulator)
    # the socket it spoke on is gone; only the untouched spare is left open
    assert client.pool.stats.retired == 1
    assert rime_emulator.stats.open_sockets == client.pool.idle == 1


CANCEL_POINTS = ["before_text", "after_text", "first_event", "mid_audio", "after_end", "body_end"]


async def use_until(point: str, stream: SpeechStream, cancel: Callable[[], object]) -> None:
    """Use *stream* as a caller does, and call *cancel* at *point*; the body goes on until
    the cancellation reaches it (at its next checkpoint)."""
    if point == "before_text":
        cancel()
    await stream.push_text("Cancel me somewhere. ")
    if point == "after_text":
        cancel()
    await stream.push_text("Please do it cleanly.")
    with anyio.fail_after(10):
        await stream.receive()
    if point == "first_event":
        cancel()
    with anyio.fail_after(10):
        await stream.receive()
        await stream.receive()
    if point == "mid_audio":
        cancel()
    await stream.end_input()
    if point == "after_end":
        cancel()
    await collect(stream)
    if point == "body_end":
        cancel()
        await anyio.lowlevel.checkpoint()


async def assert_pool_clean(client: RimeClient, emulator: RimeEmulator) -> None:
    """No socket beyond the pool's idle ones, no task of the client left, and whatever was
    left idle is clean: the next stream gets only its own audio."""
    await quiesce(client, emulator)
    assert emulator.stats.open_sockets <= client.pool.idle
    assert client_tasks() == []
    audio, _, _ = await speak(client, "Next.")
    assert audio == render_speech("Next. ", RATE).pcm


@pytest.mark.parametrize("point", CANCEL_POINTS)
async def test_cancellation_at_any_point_leaves_no_socket_beyond_the_pool(
    client: RimeClient, rime_emulator: RimeEmulator, point: str
) -> None:
    seen: list[BaseException] = []
    with anyio.CancelScope() as scope:
        try:
            async with client.stream() as stream:
                await use_until(point, stream, scope.cancel)
        except BaseException as exc:
            seen.append(exc)
            raise
    assert scope.cancelled_caught
    # the backend's own cancellation (trio.Cancelled, asyncio.CancelledError), bare
    assert [type(e) for e in seen] == [anyio.get_cancelled_exc_class()]
    await assert_pool_clean(client, rime_emulator)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("point", CANCEL_POINTS)
async def test_asyncio_task_cancel_at_any_point_leaves_no_socket_beyond_the_pool(
    client: RimeClient, rime_emulator: RimeEmulator, point: str
) -> None:
    """asyncio's own cancellation is edge-triggered: ``Task.cancel()`` raises CancelledError
    once, at the task's next await, and nothing re-raises it; the teardown must need no
    second one, and must not swallow the first."""
    seen: list[BaseException] = []

    async def caller() -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            async with client.stream() as stream:
                await use_until(point, stream, task.cancel)
        except BaseException as exc:
            seen.append(exc)
            raise

    task = asyncio.get_running_loop().create_task(caller())
    with anyio.fail_after(10):
        await asyncio.wait([task])
    assert task.cancelled()  # the cancellation went all the way out, not swallowed
    assert [type(e) for e in seen] == [asyncio.CancelledError]
    await assert_pool_clean(client, rime_emulator)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_task_cancel_while_the_stream_releases_its_socket(
    client: RimeClient, rime_emulator: RimeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The body is done and the block's exit is closing the socket of a complete stream when
    a Task.cancel() comes (an ``asyncio.timeout()`` expiring then, say)."""
    release = SocketLink.release

    async def cancelled_while_releasing(self: SocketLink, *, complete: bool) -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await release(self, complete=complete)

    streams: list[SpeechStream] = []

    async def caller() -> None:
        async with client.stream() as stream:
            streams.append(stream)
            await stream.push_text("Spoken to the end.")
            await stream.end_input()
            await collect(stream)
            monkeypatch.setattr(SocketLink, "release", cancelled_while_releasing)

    task = asyncio.get_running_loop().create_task(caller())
    with anyio.fail_after(10):
        await asyncio.wait([task])
    monkeypatch.undo()
    stream = streams.pop()
    assert task.cancelled()  # the cancellation still went out
    assert stream.finished.is_set()  # and the teardown ran to its end:
    tasks = stream._tasks
    for sender in (tasks.text_tx, tasks._outgoing_tx, tasks.audio_tx):
        with pytest.raises(anyio.ClosedResourceError):
            sender.send_nowait(None)  # type: ignore[arg-type]
    for receiver in (tasks.text_rx, tasks._outgoing_rx, tasks.audio_rx):
        with pytest.raises(anyio.ClosedResourceError):
            receiver.receive_nowait()
    await assert_pool_clean(client, rime_emulator)


async def test_cancellation_during_the_handshake() -> None:
    """A server that takes the TCP connection and the upgrade request but never answers: the
    stream is cancelled while its handshake is in progress (the server saw the request), and
    the half-open socket is closed, with no task of the client left."""
    requested = anyio.Event()
    closed_by_client = anyio.Event()

    async def never_answers(tcp: anyio.abc.SocketStream) -> None:
        async with tcp:
            request = b""
            while b"\r\n\r\n" not in request:
                request += await tcp.receive()
            assert request.startswith(b"GET /ws3")
            requested.set()
            try:
                await tcp.receive()  # nothing more comes: the client only closes
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                closed_by_client.set()

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as server:
            server.start_soon(listener.serve, never_answers)
            url = f"ws://127.0.0.1:{port}/ws3"
            async with RimeClient(base_url=url, api_key=API_KEY, max_pool_size=0) as client:
                with anyio.CancelScope() as scope:
                    async with client.stream() as stream:
                        await stream.push_text("Connecting. ")
                        with anyio.fail_after(10):
                            await requested.wait()  # the handshake is in progress now
                        scope.cancel()
                        await stream.receive()
                assert scope.cancelled_caught
                with anyio.fail_after(10):
                    await closed_by_client.wait()
                    # The handshake ran in the pool's task (a spare, had the pool kept any).
                    await client.pool.wait_teardowns()
                assert client_tasks() == []
                assert client.pool.sockets == []
            server.cancel_scope.cancel()


async def test_client_aclose_ends_running_streams_cleanly(rime_emulator: RimeEmulator) -> None:
    client = RimeClient(base_url=rime_emulator.ws_url, api_key=API_KEY)
    outcome: list[BaseException] = []

    async def run_stream(task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            async with client.stream() as stream:
                await stream.push_text("A stream that the client closes. ")
                with anyio.fail_after(10):
                    await stream.receive()
                task_status.started()
                await anyio.sleep_forever()
        except StreamClosed as exc:
            outcome.append(exc)

    async with client:
        async with anyio.create_task_group() as task_group:
            await task_group.start(run_stream)
            await client.aclose()
    assert len(outcome) == 1
    await settle(rime_emulator, 0)


async def test_client_aclose_inside_a_streams_own_block_does_not_wait_for_it(
    rime_emulator: RimeEmulator,
) -> None:
    # The stream cannot end before aclose() returns to its block; waiting for it would only
    # run out the teardown bound (here far beyond the fail_after) and then go on anyway.
    client = RimeClient(base_url=rime_emulator.ws_url, api_key=API_KEY, teardown_timeout=60)
    async with client:
        with pytest.raises(StreamClosed), anyio.fail_after(10):
            async with client.stream() as stream:
                await stream.push_text("The stream whose block closes the client. ")
                await stream.receive()
                await client.aclose()
                assert not stream.finished.is_set()
                await stream.receive()  # the client has ended the stream
    await settle(rime_emulator, 0)


async def test_client_aclose_closes_idle_sockets(rime_emulator: RimeEmulator) -> None:
    async with RimeClient(base_url=rime_emulator.ws_url, api_key=API_KEY) as client:
        await speak(client, "Pooled.")
        await quiesce(client, rime_emulator)
        # the spare, and the stream's own socket (segment="never": it ended at its done)
        assert client.pool.idle == rime_emulator.stats.open_sockets == 2
    await settle(rime_emulator, 0)


# ----------------------------------------------------------------------------- API


async def test_synthesize_in_streaming_mode_has_timestamps(client: RimeClient) -> None:
    result = await client.synthesize("Words with times.")
    assert result.audio == render_speech("Words with times. ", RATE).pcm
    assert [w.word for w in result.word_timestamps] == ["Words", "with", "times"]
    assert client.capabilities.streaming
    assert client.capabilities.aligned_transcript


async def test_synthesize_chunks_in_streaming_mode(client: RimeClient) -> None:
    async with client.synthesize_chunks("Chunks over the socket.") as chunks:
        data = b"".join([chunk.data async for chunk in chunks])
    assert data == render_speech("Chunks over the socket. ", RATE).pcm


async def test_custom_tokenizer(client: RimeClient, rime_emulator: RimeEmulator) -> None:
    def by_bar(text: str) -> list[str]:
        return text.split("|")

    async with client.stream(tokenizer=by_bar) as stream:
        await stream.push_text("first part|second part|third. ")
        await stream.end_input()
        await collect(stream)
    sent = [m.text for m in rime_emulator.stats.received[1] if isinstance(m, TextMessage)]
    # It decides where sentences end; what is sent is the caller's text, bars included.
    assert sent == ["first part", "|second part", "|third. "]


async def test_clear_mid_stream_drops_old_audio_and_keeps_timestamps_aligned(
    client: RimeClient,
) -> None:
    async with client.stream() as stream:
        await stream.push_text("Interrupted right away please. ")
        with anyio.fail_after(10):
            first = await stream.receive()
        taken = first.duration if isinstance(first, AudioChunk) else 0.0
        await stream.clear()
        await stream.push_text("After the interruption.")
        await stream.end_input()
        audio, words = await collect(stream)
    fresh = render_speech("After the interruption.", RATE)
    # everything delivered after the clear is the new text's audio, nothing of the old
    assert audio == fresh.pcm
    assert [w.word for w in words] == ["After", "the", "interruption"]
    # ...and its word times continue from the audio actually taken before the clear
    for word, start in zip(words, fresh.starts, strict=True):
        assert word.start == pytest.approx(taken + start)


@pytest.mark.parametrize("backend", BACKENDS)
def test_works_under_anyio_run(backend: str) -> None:
    async def main() -> Sequence[str]:
        async with open_emulator() as emulator:
            async with RimeClient(base_url=emulator.ws_url, api_key=API_KEY) as client:
                result = await client.synthesize("From anyio over a socket.")
                async with client.stream() as stream:
                    await stream.push_text("And a stream.")
                    await stream.end_input()
                    _, words = await collect(stream)
                assert result.audio
                return [w.word for w in words]

    assert anyio.run(main, backend=backend) == ["And", "a", "stream"]


async def test_keyboard_interrupt_passes_through_untouched(client: RimeClient) -> None:
    with pytest.raises(KeyboardInterrupt) as info:
        async with client.stream() as stream:
            await stream.push_text("Interrupted by the user. ")
            raise KeyboardInterrupt
    assert type(info.value) is KeyboardInterrupt


async def test_cancelled_client_teardown_still_closes_every_socket(
    rime_emulator: RimeEmulator,
) -> None:
    with anyio.CancelScope() as scope:
        async with RimeClient(base_url=rime_emulator.ws_url, api_key=API_KEY) as client:
            await speak(client, "Pooled socket.")
            async with client.stream() as stream:
                await stream.push_text("A stream still running. ")
                with anyio.fail_after(10):
                    await stream.receive()
                scope.cancel()  # cancels the body, the stream's exit and the client's exit
                await anyio.lowlevel.checkpoint()
    assert scope.cancelled_caught
    await settle(rime_emulator, 0)
    await client.aclose()  # a second close is harmless


@pytest.mark.parametrize(
    "kwargs",
    [{"audio_timeout": 0}, {"audio_buffer": 0}, {"text_buffer": 0}, {"retries": -1}],
)
def test_invalid_stream_settings_are_configuration_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        StreamSettings(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [{"max_pool_size": -1}, {"max_session_duration": 0}, {"connect_timeout": -1.0}],
)
def test_invalid_pool_settings_are_configuration_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        RimeClient(api_key="k", **kwargs)


async def test_retire_idle_then_prewarm_gives_a_fresh_warm_socket(
    client: RimeClient, rime_emulator: RimeEmulator
) -> None:
    await speak(client, "First.")
    client.pool.retire_idle()
    await settle(rime_emulator, 0)
    await client.prewarm()
    assert client.pool.idle == 1
    reused = client.pool.stats.reused
    await speak(client, "Second.")
    assert client.pool.stats.reused == reused + 1
