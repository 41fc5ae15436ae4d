"""Stream fidelity over real sockets: exact audio, aligned words, nothing foreign or stale,
under every server reading of Rime's docs the emulator can play.

The first half pins each failure found in the first version (a test per failure); the
second runs hypothesis over the reading matrix, random texts, token splits and flushes,
over /ws3 and Rime's WebSocket v1, against one emulator that lives in its own thread for
the whole module.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import anyio
import anyio.abc
import pytest
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rime_trio import (
    AudioChunk,
    RimeClient,
    SpeechStream,
    StreamClosed,
    StreamSettings,
    WordTimestamp,
)
from rime_trio._protocol import EndOfStream, TextMessage
from rime_trio._retry import SocketLink
from rime_trio._segment import speakable
from rime_trio.testing import (
    EmulatorConfig,
    Fault,
    RimeEmulator,
    V1Readings,
    Ws3Readings,
    open_emulator,
    render_speech,
)

from .conftest import API_KEY, BACKENDS, PROTOCOLS
from .emulator_thread import emulator_in_thread, eventually
from .speech import (
    RATE,
    V1Records,
    Ws3Records,
    assert_words_on_the_audio,
    client_for,
    read_all,
    stream_records,
    synthesized,
    texts_sent,
    wire_prefix,
)

pytestmark = pytest.mark.anyio


Spoken = tuple[SpeechStream, bytes, list[WordTimestamp]]


async def speak(client: RimeClient, *pieces: str | None, **overrides: object) -> Spoken:
    """Push *pieces* (None: a flush), end the input, read everything."""
    async with client.stream(**overrides) as stream:  # type: ignore[arg-type]
        for piece in pieces:
            if piece is None:
                await stream.flush()
            else:
                await stream.push_text(piece)
        await stream.end_input()
        with anyio.fail_after(30):
            audio, words = await read_all(stream)
    return stream, audio, words


# ----------------------------------------------------------------------------- each failure


@pytest.mark.parametrize(
    ("done", "tagging", "run_sentences"),
    [
        ("per_run", "per_sentence", "all"),
        ("per_run", "later", "first"),
        ("when_empty", "per_sentence", "all"),
        ("when_empty", "later", "first"),
    ],
)
async def test_a_message_the_server_splits_in_two_still_delivers_all_its_audio(
    done: str, tagging: str, run_sentences: str
) -> None:
    """Failure 1: blingfire keeps "Dr. Smith arrived." and "p.m. then." whole, a naive
    server splits after "Dr." and "p.m."; the stream must not end at a run's done."""
    readings = Ws3Readings(
        done=done,  # type: ignore[arg-type]
        tagging=tagging,  # type: ignore[arg-type]
        run_sentences=run_sentences,  # type: ignore[arg-type]
        abbreviations_split=True,
    )
    async with open_emulator(EmulatorConfig(readings=readings)) as emulator:
        async with client_for(emulator) as client:
            stream, audio, words = await speak(
                client, "Dr. Smith arrived at noon. It was two p.m. then."
            )
    assert audio == synthesized(emulator, stream)
    assert [w.word for w in words] == [
        "Dr", "Smith", "arrived", "at", "noon", "It", "was", "two", "p.m", "then",
    ]  # fmt: skip
    assert_words_on_the_audio(audio, words)


@pytest.mark.parametrize("placement", ["before", "between", "after"])
async def test_word_times_land_on_the_audio_with_no_done_between_runs(placement: str) -> None:
    """Failure 2: under the current docs consecutive runs can have no done between them;
    each run's times restart at 0 and must still be placed after the runs before it."""
    readings = Ws3Readings(done="when_empty", timestamps=placement)  # type: ignore[arg-type]
    # Audio paced at a third of real time, so the second sentence arrives while the first
    # is still being spoken: it waits in the buffer, and no done comes between the runs.
    config = EmulatorConfig(readings=readings, real_time_factor=0.3, chunk_bytes=800)
    audio = bytearray()
    words: list[WordTimestamp] = []
    async with open_emulator(config) as emulator:
        async with client_for(emulator, segment="immediate") as client:
            async with client.stream() as stream:
                await stream.push_text("One two three. ")
                with anyio.fail_after(10):
                    async for event in stream:
                        if isinstance(event, AudioChunk):
                            audio += event.data
                            break
                        words.append(event)
                await stream.push_text("Four five. ")
                with anyio.fail_after(10):
                    async for event in stream:
                        if isinstance(event, AudioChunk):
                            audio += event.data
                        else:
                            words.append(event)
                        if words and words[-1].word == "Four":
                            break
                await stream.end_input()
                with anyio.fail_after(10):
                    more_audio, more_words = await read_all(stream)
    runs = emulator.stats.runs[1]
    assert [r.text for r in runs] == ["One two three. ", "Four five. "]
    assert not runs[0].done  # the runs followed each other with no done between them
    assert_words_on_the_audio(bytes(audio) + more_audio, words + more_words)


async def test_streams_sharing_a_context_id_never_take_each_others_audio() -> None:
    """Failure 3: the caller's context_id is a label; the wire tag has a random part."""
    async with open_emulator(EmulatorConfig(readings=Ws3Readings(done="per_run"))) as emulator:
        async with client_for(emulator, max_pool_size=1) as client:
            first, first_audio, _ = await speak(
                client, "Dr. Smith talks for a while here.", context_id="call-7"
            )
            second, second_audio, _ = await speak(client, "Short.", context_id="call-7")
    assert first_audio == synthesized(emulator, first)
    assert second_audio == render_speech("Short.", RATE).pcm
    assert first.context_id == second.context_id == "call-7"
    assert wire_prefix(first) != wire_prefix(second)


async def test_clear_drops_audio_already_buffered_for_the_reader() -> None:
    """Failure 4: audio sitting in the channel when clear() is called is never delivered."""
    async with open_emulator() as emulator:
        async with client_for(emulator) as client:
            async with client.stream() as stream:
                await stream.push_text("A long first sentence that nobody will hear at all. ")
                with anyio.fail_after(10):
                    await eventually(lambda: stream.buffered_audio_bytes > 4000)
                await stream.clear()
                assert stream.buffered_audio_bytes == 0
                await stream.push_text("Only this.")
                await stream.end_input()
                with anyio.fail_after(10):
                    audio, words = await read_all(stream)
    assert audio == render_speech("Only this.", RATE).pcm
    assert [(w.word, w.start) for w in words] == [
        (word, start)
        for word, start in zip(
            render_speech("Only this.", RATE).words,
            render_speech("Only this.", RATE).starts,
            strict=True,
        )
    ]


async def test_the_server_receives_exactly_the_callers_text() -> None:
    """Failure 5: messages are cut from the caller's text, never re-joined or padded."""
    text = 'He said "Stop."  Then\tleft… (quietly.) Dr. Who?!\n\nThe end'
    async with open_emulator() as emulator:
        async with client_for(emulator) as client:
            stream, audio, _ = await speak(
                client, *[text[i : i + 3] for i in range(0, len(text), 3)]
            )
    assert texts_sent(emulator, stream) == text
    assert audio == synthesized(emulator, stream)


async def test_a_stream_cancelled_during_a_retry_leaks_no_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Failure 6a: cancelled while a replacement socket re-sends the text."""
    resending = anyio.Event()
    original = SocketLink._get

    async def get_then_stall(self: SocketLink, *, fresh: bool) -> object:
        lease = await original(self, fresh=fresh)
        connection = lease.connection
        if fresh:  # the replacement: stall its first send so the cancel lands mid-resend
            send = connection.send

            async def stalled_send(*frames: str) -> None:
                resending.set()
                await anyio.sleep_forever()
                await send(*frames)  # pragma: no cover

            connection.send = stalled_send  # type: ignore[method-assign]
        return lease

    monkeypatch.setattr(SocketLink, "_get", get_then_stall)
    faults = [Fault("close", frozenset({1}), code=1011, reason="503: busy", after_messages=1)]
    async with open_emulator(EmulatorConfig(faults=faults)) as emulator:
        settings = StreamSettings(retries=2, retry_backoff=0)
        async with client_for(emulator, stream_settings=settings, max_pool_size=0) as client:
            with anyio.CancelScope() as scope:
                async with client.stream() as stream:
                    await stream.push_text("Hello there. ")
                    with anyio.fail_after(10):
                        await resending.wait()
                    scope.cancel()
            with anyio.fail_after(5):
                await client.pool.wait_teardowns()
                await emulator.wait_open_sockets(0)  # the replacement was closed, not leaked
    assert emulator.stats.handshakes == 2


async def test_closing_audio_out_ends_the_stream_cleanly() -> None:
    """Failure 6b: a reader that closes audio_out mid-stream gets a clean end."""
    async with open_emulator(EmulatorConfig(chunk_bytes=400)) as emulator:
        async with client_for(emulator) as client:
            async with client.stream() as stream:
                await stream.push_text("A sentence long enough to close in the middle of it.")
                await stream.end_input()
                with anyio.fail_after(10):
                    await stream.receive()
                await stream.audio_out.aclose()
                with pytest.raises(StreamClosed):
                    await stream.receive()
            with anyio.fail_after(5):
                await client.pool.wait_teardowns()
            assert client.pool.stats.retired == 1  # its socket was closed, never reused
            # the client goes on as if nothing happened
            _, after, _ = await speak(client, "Next.")
    assert after == render_speech("Next.", RATE).pcm


async def test_a_failing_tokenizer_fails_the_stream_for_a_reader_in_another_task() -> None:
    """Failure 6c: the reader must see the failure, not a normal end of the audio."""

    def broken(text: str) -> list[str]:
        raise ValueError("tokenizer exploded")

    seen: list[BaseException] = []

    async def reader(stream: SpeechStream) -> None:
        try:
            async for _ in stream:
                pass
        except ValueError as exc:
            seen.append(exc)

    async with open_emulator() as emulator, client_for(emulator) as client:
        with pytest.raises(ValueError, match="tokenizer exploded"):
            async with (
                client.stream(tokenizer=broken) as stream,
                anyio.create_task_group() as task_group,
            ):
                task_group.start_soon(reader, stream)
                await anyio.wait_all_tasks_blocked()  # the reader waits for audio
                await stream.push_text("Hello. ")
                await anyio.sleep_forever()
    assert [str(e) for e in seen] == ["tokenizer exploded"]


@pytest.mark.virtual_clock(autojump_threshold=0)
async def test_push_text_waits_when_text_cannot_leave(
    virtual_clock: trio.testing.MockClock | None,
) -> None:
    """Failure 6d: text_buffer bounds the text in flight end to end."""

    async def never_answers(tcp: anyio.abc.SocketStream) -> None:
        async with tcp:
            await anyio.sleep_forever()

    # A push that has not gone through in this long is waiting (virtual seconds on trio).
    patience = 1.0 if virtual_clock is not None else 0.2
    async with (
        await anyio.create_tcp_listener(local_host="127.0.0.1") as listener,
        anyio.create_task_group() as task_group,
    ):
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        task_group.start_soon(listener.serve, never_answers)
        settings = StreamSettings(text_buffer=4, retries=0)
        async with RimeClient(
            base_url=f"ws://127.0.0.1:{port}", api_key=API_KEY, stream_settings=settings
        ) as client:
            with anyio.CancelScope() as scope:
                async with client.stream() as stream:
                    pushed = 0
                    for pushed in range(1, 200):
                        with anyio.move_on_after(patience) as waiting:
                            await stream.push_text(f"Sentence {pushed}. ")
                        if waiting.cancelled_caught:
                            break
                    scope.cancel()
        task_group.cancel_scope.cancel()
    assert pushed < 20  # a few in each bounded stage, then push_text waits


# ----------------------------------------------------------------------------- properties


@pytest.fixture(scope="module")
def shared_emulator() -> Iterator[RimeEmulator]:
    with emulator_in_thread(EmulatorConfig(chunk_bytes=900)) as emulator:
        yield emulator


# Each property runs over both streaming protocols: over /ws3 every stream has a socket of
# its own, over Rime's WebSocket v1 (/ws) the streams of a client share one socket, each on
# contexts of its own. The readings of v1 a client can meet here are how a cancel that
# crossed its context's done is answered. Word times are from the run's start over /ws3 and
# from the context's over v1 (the docs): either way they must land on the audio exactly
# (v1's per-run times are tested in test_v1_stream.py).
ws3_readings = st.builds(
    Ws3Readings,
    done=st.sampled_from(["when_empty", "per_run"]),
    tagging=st.sampled_from(["later", "per_sentence"]),
    run_sentences=st.sampled_from(["all", "first"]),
    timestamps=st.sampled_from(["before", "between", "after"]),
    lowercase_splits=st.booleans(),
    abbreviations_split=st.booleans(),
    hold_unspaced_end=st.booleans(),
    flush_empty_done=st.booleans(),
    eos_empty_done=st.booleans(),
    clear_stops_synthesis=st.booleans(),
)
v1_readings = st.builds(V1Readings, cancel_finished=st.sampled_from(["silent", "cancelled"]))
READINGS: dict[str, st.SearchStrategy[Ws3Readings | V1Readings]] = {
    "ws3": ws3_readings,
    "v1": v1_readings,
}

SEGMENTS = st.sampled_from(["bySentence", "immediate", "never"])

# Streams at once, at most: each opens a socket of its own over /ws3, all share one over v1.
MOST_AT_ONCE = {"ws3": 4, "v1": 5}


def play(emulator: RimeEmulator, reading: Ws3Readings | V1Readings) -> None:
    """Have *emulator* answer the sockets opened from now on with *reading*."""
    if isinstance(reading, V1Readings):
        emulator.config.v1_readings = reading
    else:
        emulator.config.readings = reading


SENTENCES = [
    "Hello there.",
    "Dr. Smith arrived at noon.",
    "It costs 2.5 dollars.",
    "Wait… what happened?",
    'He said "Stop." and left.',
    "it was fine. then it rained.",
    "Is it 5 p.m. already?!",
    "¿Qué tal? Bien, gracias.",
    "The U.S. team won e.g. twice.",
    "No punctuation here",
    "Ends in brackets (really.)",
    "long " * 220 + "sentence.",
]


@st.composite
def utterances(draw: st.DrawFn) -> list[str | None]:
    """A text as the caller pushes it: pieces (tokens) and flush markers (None)."""
    chosen = draw(st.lists(st.sampled_from(SENTENCES), min_size=1, max_size=4))
    text = "".join(s + draw(st.sampled_from([" ", "  ", "\n", ""])) for s in chosen)
    cuts = draw(st.lists(st.integers(1, max(1, len(text) - 1)), max_size=10))
    bounds = sorted({0, len(text), *cuts})
    pieces: list[str | None] = [text[a:b] for a, b in itertools.pairwise(bounds)]
    for _ in range(draw(st.integers(0, 2))):
        pieces.insert(draw(st.integers(0, len(pieces))), None)
    return pieces


def _check(records: Ws3Records | V1Records, spoken: Spoken, pieces: list[str | None]) -> None:
    stream, audio, words = spoken
    text = "".join(p for p in pieces if p is not None)
    # exactly what the server synthesized for it (over v1: its own contexts' audio)
    assert audio == b"".join(bytes(r.audio) for r in records.runs(stream))
    # the caller's text, exactly (whitespace at the very end has nothing to say)
    sent = records.text_sent(stream)
    assert text.startswith(sent)
    assert not speakable(text[len(sent) :])  # nothing to say was left: no letter or digit
    assert stream.foreign_events == 0
    assert_words_on_the_audio(audio, words)


def _sockets_are_never_shared(emulator: RimeEmulator) -> None:
    """A socket carries one stream at a time: a stream's messages on it are one unbroken
    run (under ``segment="never"`` a socket may carry the next stream once one has ended at
    its last done; a stream that ended with ``eos`` leaves its socket closed)."""
    for messages in emulator.stats.received.values():
        tags = [m.context_id.split("#")[0] for m in messages if isinstance(m, TextMessage)]
        runs = [tag for index, tag in enumerate(tags) if index == 0 or tags[index - 1] != tag]
        assert len(runs) == len(set(runs)), runs  # no stream came back after another
        eos = [index for index, m in enumerate(messages) if isinstance(m, EndOfStream)]
        assert eos in ([], [len(messages) - 1])  # after an eos the socket carries nothing


PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY
@given(
    st.data(),
    SEGMENTS,
    st.lists(utterances(), min_size=1, max_size=3),
    st.sampled_from([0.0, 0.003]),
)
def test_streams_in_sequence_get_exactly_their_audio_under_any_reading(
    protocol: str,
    backend: str,
    shared_emulator: RimeEmulator,
    data: st.DataObject,
    segment: str,
    texts: list[list[str | None]],
    server_delay: float,
) -> None:
    play(shared_emulator, data.draw(READINGS[protocol], label="reading"))
    shared_emulator.config.time_to_first_chunk = server_delay
    handshakes = shared_emulator.stats.handshakes

    async def main() -> None:
        with stream_records(shared_emulator, protocol) as records:
            async with client_for(shared_emulator, protocol, segment=segment) as client:
                spoken = [await speak(client, *pieces) for pieces in texts]
        for result, pieces in zip(spoken, texts, strict=True):
            _check(records, result, pieces)

    anyio.run(main, backend=backend)
    if protocol == "ws3":
        _sockets_are_never_shared(shared_emulator)
    else:
        assert shared_emulator.stats.handshakes == handshakes + 1  # one socket for all of them


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY
@given(st.data())
def test_concurrent_streams_on_one_client_never_mix_audio_under_any_reading(
    protocol: str,
    backend: str,
    shared_emulator: RimeEmulator,
    data: st.DataObject,
) -> None:
    play(shared_emulator, data.draw(READINGS[protocol], label="reading"))
    texts = data.draw(
        st.lists(utterances(), min_size=2, max_size=MOST_AT_ONCE[protocol]), label="texts"
    )
    shared_emulator.config.time_to_first_chunk = 0.0
    handshakes = shared_emulator.stats.handshakes

    async def main() -> None:
        spoken: dict[int, Spoken] = {}

        async def one(client: RimeClient, n: int) -> None:
            spoken[n] = await speak(client, *texts[n])

        with stream_records(shared_emulator, protocol) as records:
            async with client_for(shared_emulator, protocol) as client:
                async with anyio.create_task_group() as task_group:
                    for n in range(len(texts)):
                        task_group.start_soon(one, client, n)
        for n, result in spoken.items():
            _check(records, result, texts[n])

    anyio.run(main, backend=backend)
    if protocol == "ws3":
        _sockets_are_never_shared(shared_emulator)
    else:
        assert shared_emulator.stats.handshakes == handshakes + 1  # one socket for all of them


CLEAR_HERE = "<clear>"


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY
@given(
    st.data(),
    SEGMENTS,
    utterances(),
    st.lists(st.integers(0, 40), min_size=1, max_size=2),
)
def test_clear_at_random_points_leaves_exactly_the_text_said_after_it(
    protocol: str,
    backend: str,
    shared_emulator: RimeEmulator,
    data: st.DataObject,
    segment: str,
    pieces: list[str | None],
    clear_points: list[int],
) -> None:
    play(shared_emulator, data.draw(READINGS[protocol], label="reading"))
    shared_emulator.config.time_to_first_chunk = 0.0
    ops: list[str | None] = list(pieces)
    for point in clear_points:
        ops.insert(min(point, len(ops)), CLEAR_HERE)
    after = ops[len(ops) - ops[::-1].index(CLEAR_HERE) :]
    spoken_after = "".join(p for p in after if p is not None)

    async def main() -> None:
        with stream_records(shared_emulator, protocol) as records:
            async with client_for(shared_emulator, protocol, segment=segment) as client:
                async with client.stream() as stream:
                    for op in ops:
                        if op is None:
                            await stream.flush()
                        elif op == CLEAR_HERE:
                            await stream.clear()
                        else:
                            await stream.push_text(op)
                    await stream.end_input()
                    with anyio.fail_after(30):
                        audio, words = await read_all(stream)
        # Nothing was read before the last clear, so everything delivered is from after it:
        # exactly the runs of the messages sent after it (over /ws3, those tagged past the
        # clear; over v1, those of the context started after it, the stream's last).
        runs = records.runs_after_last_clear(stream)
        assert audio == b"".join(bytes(r.audio) for r in runs)
        assert "".join("".join(r.text for r in runs).split()) == "".join(spoken_after.split())
        assert_words_on_the_audio(audio, words)

    anyio.run(main, backend=backend)


# ----------------------------------------------------------------------------- review findings


async def test_a_retry_after_a_clear_resends_only_the_new_text() -> None:
    """The socket taken after a clear() fails before its first audio: the text said since
    the clear goes again on another socket, and the stream's clock keeps its place."""
    faults = [Fault("close", frozenset({2}), code=1011, reason="503: busy", after_messages=1)]
    async with open_emulator(EmulatorConfig(faults=faults)) as emulator:
        settings = StreamSettings(retries=2, retry_backoff=0)
        async with client_for(emulator, stream_settings=settings, max_pool_size=0) as client:
            async with client.stream() as stream:
                await stream.push_text("Hello there, this is heard in part. ")
                with anyio.fail_after(10):
                    first = await stream.receive()
                taken = stream.audio_seconds
                await stream.clear()
                await stream.push_text("Second sentence.")
                await stream.end_input()
                with anyio.fail_after(10):
                    audio, words = await read_all(stream)
    fresh = render_speech("Second sentence.", RATE)
    assert audio == fresh.pcm
    assert stream.retries == 1
    assert [w.start for w in words] == pytest.approx([taken + s for s in fresh.starts])
    assert isinstance(first, AudioChunk | WordTimestamp)
    assert emulator.stats.handshakes == 3  # the first, the one that failed, its replacement


@pytest.mark.virtual_clock(autojump_threshold=0)
async def test_a_flush_with_nothing_new_to_say_never_times_out(
    virtual_clock: trio.testing.MockClock | None,
) -> None:
    """After its audio, a flush() answers nothing (the docs: no done for an empty flush);
    a caller who then just waits is not owed anything."""
    unit = 1.0 if virtual_clock is not None else 0.2  # virtual seconds on trio
    settings = StreamSettings(audio_timeout=unit)
    async with (
        open_emulator() as emulator,
        client_for(emulator, stream_settings=settings) as client,
    ):
        async with client.stream() as stream:
            await stream.push_text("Hello there. ")
            expected = len(render_speech("Hello there. ", RATE).pcm)
            received = 0
            with anyio.fail_after(10):
                while received < expected:
                    event = await stream.receive()
                    if isinstance(event, AudioChunk):
                        received += len(event.data)
            await anyio.sleep(unit / 2)  # the run's done has come too: nothing is owed
            await stream.flush()
            await anyio.sleep(10 * unit)  # ten timeouts of the caller thinking
            await stream.push_text("More.")
            await stream.end_input()
            with anyio.fail_after(10):
                audio, _ = await read_all(stream)
    assert audio == render_speech("More.", RATE).pcm


@pytest.mark.virtual_clock(autojump_threshold=0)
async def test_a_paused_reader_is_not_a_server_timeout(
    virtual_clock: trio.testing.MockClock | None,
) -> None:
    unit = 1.0 if virtual_clock is not None else 0.2  # virtual seconds on trio
    settings = StreamSettings(audio_timeout=unit, max_buffered_audio_bytes=2000)
    text = "A fairly long sentence that makes a good number of chunks for us. " * 3
    async with open_emulator(EmulatorConfig(chunk_bytes=800)) as emulator:
        async with client_for(emulator, stream_settings=settings) as client:
            async with client.stream() as stream:
                await stream.push_text(text)
                await stream.end_input()
                with anyio.fail_after(10):
                    first = await stream.receive()
                await anyio.sleep(5 * unit)  # the player is paused; the socket waits for it
                with anyio.fail_after(10):
                    audio, _ = await read_all(stream)
    head = first.data if isinstance(first, AudioChunk) else b""
    assert head + audio == synthesized(emulator, stream)


@pytest.mark.parametrize("how", ["audio_out", "client"])
async def test_push_text_fails_fast_once_the_stream_was_stopped(how: str) -> None:
    settings = StreamSettings(text_buffer=4)
    async with (
        open_emulator() as emulator,
        client_for(emulator, stream_settings=settings) as client,
    ):
        pushes = 0
        with pytest.raises(StreamClosed), anyio.fail_after(10):
            async with client.stream() as stream:
                await stream.push_text("Hello there. ")
                await stream.receive()
                if how == "audio_out":
                    await stream.audio_out.aclose()
                else:
                    await client.aclose()
                for pushes in range(1, 100):  # noqa: B007
                    await stream.push_text("More words that nobody will hear. ")
    assert pushes < 10


@pytest.mark.virtual_clock(autojump_threshold=0)
async def test_client_aclose_inside_its_block_cancels_none_of_the_callers_code(
    virtual_clock: trio.testing.MockClock | None,
) -> None:
    # aclose() waits at most teardown_timeout + 1 s (virtual seconds on trio); the caller's
    # own code then goes on well past that bound.
    teardown, thinking = (1.0, 5.0) if virtual_clock is not None else (0.1, 1.5)
    reached = False
    async with (
        open_emulator() as emulator,
        client_for(emulator, teardown_timeout=teardown) as client,
    ):
        await client.aclose()
        await anyio.sleep(thinking)
        reached = True
    assert reached


async def test_clear_right_after_end_input_ends_the_stream_at_once() -> None:
    async with open_emulator() as emulator, client_for(emulator, max_pool_size=0) as client:
        outcomes = []
        for _ in range(20):
            async with client.stream() as stream:
                await stream.push_text("Never mind. ")
                await stream.end_input()
                await stream.clear()
                with anyio.fail_after(10):
                    audio, _ = await read_all(stream)
            outcomes.append(audio)
        await client.pool.wait_teardowns()
    assert all(audio == b"" for audio in outcomes)  # no EmptyTextError, nothing said
    # no socket was opened just to end a stream that had nothing left to say
    assert emulator.stats.handshakes <= 20


async def test_a_stream_that_sent_nothing_leaves_one_spare_not_two() -> None:
    async with open_emulator() as emulator, client_for(emulator) as client:
        await client.prewarm()
        for _ in range(3):
            async with client.stream() as stream:
                # no sentence end: the socket is taken, nothing is sent on it
                await stream.push_text("An unfinished thought")
                await eventually(lambda: stream._tasks.link.connection is not None)
            await client.pool.wait_teardowns()
            assert client.pool.idle == 1
        assert emulator.stats.handshakes == 1  # the one socket went back each time


async def test_a_failure_racing_a_delivery_is_raised_not_replayed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The send task fails on the first socket and waits to retry while the recv task still
    delivers that socket's first audio: the retry must not go on (it could duplicate)."""
    from rime_trio import APIStatusError
    from rime_trio._transport import Connection

    original = Connection.send
    failing: list[int] = []

    async def send(self: Connection, *frames: str) -> None:
        if failing and self.id == failing[0] and any("Two" in f for f in frames):
            raise APIStatusError(503, "busy")
        await original(self, *frames)

    monkeypatch.setattr(Connection, "send", send)
    config = EmulatorConfig(time_to_first_chunk=0.01)
    settings = StreamSettings(retries=2, retry_backoff=1.0)
    async with open_emulator(config) as emulator:
        async with client_for(emulator, stream_settings=settings, max_pool_size=0) as client:
            with pytest.raises(APIStatusError) as info, anyio.fail_after(20):
                async with client.stream() as stream:
                    await stream.push_text("One. ")
                    # "One."'s first audio is taken before "Two." is pushed: on a loaded
                    # machine the failing send could otherwise come first (and a failure with
                    # nothing delivered is rightly retried); the retry's backoff then races
                    # the rest of that socket's audio
                    assert isinstance(await stream.receive(), AudioChunk)
                    assert stream._tasks.link.connection is not None
                    failing.append(stream._tasks.link.connection.id)
                    await stream.push_text("Two. ")
                    await stream.end_input()
                    await read_all(stream)
    assert info.value.status_code == 503
    assert info.value.audio_seconds_delivered > 0
