"""``flush()`` over Rime's WebSocket v1, which has no flush: the stream ends the context with the
text it forces (the server then speaks everything it held) and goes on in a fresh one at the
same place on the clock.

A server may hold what it cannot yet tell is a finished sentence ("Hello there." with nothing
after it, a partial sentence) under ``SENTENCE``, and speak ``NONE`` only at ``end``
(``V1Readings(unfinished="hold")``); or speak everything on arrival (``"speak"``, the default).
Under both, a flush gives the audio of what was said, at once, in order and on one clock.

Against the emulator on trio and asyncio, and synchronously against its server model (a
hypothesis property, as in ``test_v1_state_model``).
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rime_trio import (
    AudioChunk,
    RimeClient,
    RimeOptions,
    SpeechStream,
    StreamSettings,
    WordTimestamp,
)
from rime_trio._options import Segment
from rime_trio._protocol_v1 import SUBPROTOCOL_BINARY, V1StreamState
from rime_trio._segment import speakable
from rime_trio.testing import EmulatorConfig, RimeEmulator, V1Readings, open_emulator, render_speech
from rime_trio.testing._config import RunRecord
from rime_trio.testing._faults import chunk_sizes
from rime_trio.testing._v1_model import V1ServerModel

from .speech import RATE, assert_words_on_the_audio, client_for, read_all, v1_contexts
from .test_v1_state_model import SETTINGS, Simulation, connected, tokens

pytestmark = pytest.mark.anyio

UNFINISHED = ["speak", "hold"]
# Fails a stream that waits for audio that never comes within a test's patience.
SETTINGS_FAST = StreamSettings(audio_timeout=2.0)


def speech(*texts: str) -> bytes:
    """The audio the emulator renders for these texts, one run each."""
    return b"".join(render_speech(t, RATE).pcm for t in texts)


def v1_client(emulator: RimeEmulator, **kwargs: Any) -> RimeClient:
    return client_for(emulator, "v1", **{"stream_settings": SETTINGS_FAST, **kwargs})


async def audio_of_length(stream: SpeechStream, size: int) -> bytes:
    """Read *stream* until *size* bytes of audio came (its words, if any, are passed over)."""
    audio = bytearray()
    with anyio.fail_after(5):
        while len(audio) < size:
            event = await stream.receive()
            if isinstance(event, AudioChunk):
                audio += event.data
    return bytes(audio)


# ----------------------------------------------------------------------------- streams


@pytest.mark.parametrize("unfinished", UNFINISHED)
@pytest.mark.parametrize(
    ("text", "segment"),
    [
        ("Hello there.", "bySentence"),  # no space after it: it may go on ("Hello there.5")
        ("Hello there", "bySentence"),  # a partial sentence
        ("Hello there. ", "immediate"),  # a whole sentence, under NONE
    ],
    ids=["unspaced-end", "partial", "immediate"],
)
async def test_flush_forces_the_speech_of_what_was_said(
    unfinished: str, text: str, segment: Segment
) -> None:
    """The review's cases: each gave no audio and then RimeTimeoutError under "hold"."""
    config = EmulatorConfig(v1_readings=V1Readings(unfinished=unfinished))  # type: ignore[arg-type]
    with v1_contexts() as started:
        async with (
            open_emulator(config) as emulator,
            v1_client(emulator, segment=segment) as client,
        ):
            async with client.stream() as stream:
                await stream.push_text(text)
                await stream.flush()
                head = await audio_of_length(stream, len(speech(text)))  # before any end
                await stream.push_text("Bye.")
                await stream.end_input()
                with anyio.fail_after(5):
                    rest, words = await read_all(stream)
    assert head == speech(text)
    audio = head + rest
    assert audio == speech(text, "Bye.")
    assert [w.word for w in words] == ["Hello", "there", "Bye"]
    assert_words_on_the_audio(audio, words)
    # The flush ended the first context; the text after it went on a fresh one.
    assert len(started[stream.context_id]) == 2


@pytest.mark.parametrize("unfinished", UNFINISHED)
async def test_flushes_one_after_another_give_one_stream_in_order_on_one_clock(
    unfinished: str,
) -> None:
    """Three contexts in flight at once (the next starts before the last one's done), their
    chunks interleaved on the wire: the caller gets each context's audio and words before the
    next's, on one contiguous clock."""
    config = EmulatorConfig(
        v1_readings=V1Readings(unfinished=unfinished),  # type: ignore[arg-type]
        chunk_bytes=400,
        real_time_factor=0.05,
    )
    parts = ["One little", " two more", " and three."]
    with v1_contexts() as started:
        async with open_emulator(config) as emulator, v1_client(emulator) as client:
            async with client.stream() as stream:
                for part in parts:
                    await stream.push_text(part)
                    await stream.flush()
                await stream.flush()  # nothing said since: nothing more to force
                await stream.end_input()
                audio = bytearray()
                words: list[WordTimestamp] = []
                with anyio.fail_after(10):
                    async for event in stream:
                        if isinstance(event, AudioChunk):
                            assert event.offset == pytest.approx(len(audio) / 2 / RATE)
                            audio += event.data
                        else:
                            words.append(event)
    assert bytes(audio) == speech(*parts)
    assert_words_on_the_audio(bytes(audio), words)
    assert [w.word for w in words] == ["One", "little", "two", "more", "and", "three"]
    assert len(started[stream.context_id]) == 3


@pytest.mark.parametrize("unfinished", UNFINISHED)
async def test_an_end_right_after_a_flush_completes_with_the_flushed_context(
    unfinished: str,
) -> None:
    config = EmulatorConfig(v1_readings=V1Readings(unfinished=unfinished))  # type: ignore[arg-type]
    async with open_emulator(config) as emulator, v1_client(emulator) as client:
        async with client.stream() as stream:
            await stream.push_text("Hello there")
            await stream.flush()
            await stream.end_input()
            with anyio.fail_after(5):
                audio, words = await read_all(stream)
    assert audio == speech("Hello there")
    assert_words_on_the_audio(audio, words)


# ----------------------------------------------------------------------------- the model


def settle(sim: Simulation, data: st.DataObject) -> None:
    """Run client and server, interleaved at random, until nothing moves (no more input)."""
    steps = 0
    while True:
        steps += 1
        assert steps < 50_000, "no progress"
        choices = []
        if sim.to_server:
            choices.append(sim.server_reads)
        if not sim.server_idle:
            choices.append(sim.server_speaks)
        if sim.to_client:
            choices.append(sim.client_reads)
        if sim.inbox:
            choices.append(sim.client_takes)
        if not choices:
            return
        data.draw(st.sampled_from(choices), label="step")()


def check_delivered(
    sim: Simulation,
    records: list[RunRecord],
    said: str,
    *,
    exact_times: bool,
    words_given: bool = True,
) -> None:
    """Everything said has been synthesized exactly once, and every byte of it delivered in
    the order of the contexts, on one clock, with the words of each ended context (on its
    audio exactly, with *exact_times*: the server times words from the context's start)."""
    runs = sim.runs_of(records, 0)
    assert _visible("".join(r.text for r in runs)) == _visible(said)
    audio = b"".join(e.data for _, e in sim.delivered if isinstance(e, AudioChunk))
    assert audio == b"".join(bytes(r.audio) for r in runs)
    assert audio == b"".join(render_speech(r.text, RATE).pcm for r in runs)
    position = 0.0
    for _, event in sim.delivered:
        if isinstance(event, AudioChunk):
            assert abs(event.offset - position) < 1e-9
            position = event.offset + event.duration
    words = [e for _, e in sim.delivered if isinstance(e, WordTimestamp)]
    if not words_given:
        assert words == []
        return
    expected: list[tuple[str, float, float]] = []
    start = 0.0
    for run in runs:
        spoken = render_speech(run.text, RATE)
        expected += [
            (word, start + a, start + b)
            for word, a, b in zip(spoken.words, spoken.starts, spoken.ends, strict=True)
        ]
        start += spoken.duration
    assert [w.word for w in words] == [word for word, _, _ in expected]
    if exact_times:
        for word, (_, a, b) in zip(words, expected, strict=True):
            assert abs(word.start - a) < 1e-6
            assert abs(word.end - b) < 1e-6


def _visible(text: str) -> str:
    return "".join(text.split())


SENTENCES = [
    "Hello there.",
    "Hello there",
    "Dr. Smith arrived at noon.",
    "It costs 2.5 dollars.",
    "No punctuation here",
    "你好。再见！",
    "it was fine. then it rained.",
]


@st.composite
def pieces_and_flushes(draw: st.DrawFn) -> list[str | None]:
    """Text as the caller pushes it (tokens), with flushes (None) among the tokens."""
    chosen = draw(st.lists(st.sampled_from(SENTENCES), min_size=1, max_size=4))
    separators = draw(st.lists(st.sampled_from([" ", "", "\n"]), min_size=4))
    text = "".join(s + sep for s, sep in zip(chosen, separators, strict=False))
    ops: list[str | None] = list(draw(tokens(text)))
    for _ in range(draw(st.integers(1, 4))):
        ops.insert(draw(st.integers(0, len(ops))), None)
    return ops


@SETTINGS
@given(
    st.sampled_from(UNFINISHED),
    st.sampled_from(["context", "per_sentence", "none"]),
    st.sampled_from(["bySentence", "immediate", "never"]),
    st.sampled_from([701, 4801]),
    pieces_and_flushes(),
    st.data(),
)
def test_every_flush_forces_all_that_was_said_and_the_stream_stays_whole(
    unfinished: str,
    timestamps: str,
    segment: Segment,
    chunk: int,
    ops: list[str | None],
    data: st.DataObject,
) -> None:
    """After each flush, once client and server settle (no more input): every text said so
    far was synthesized exactly once and all its audio and words delivered, in order, on one
    clock. At the end the same holds for the whole text, and the stream is complete."""
    records: list[RunRecord] = []
    reading = V1Readings(unfinished=unfinished, timestamps=timestamps)  # type: ignore[arg-type]
    model = V1ServerModel(
        reading, chunk_sizes=lambda total: chunk_sizes(total, chunk), records=records
    )
    conn = connected(SUBPROTOCOL_BINARY, model)
    state = V1StreamState("s", RimeOptions(api_key="k", sample_rate=RATE, segment=segment))
    state.attach(conn)
    sim = Simulation(state, conn, model)
    exact, worded = timestamps == "context", timestamps != "none"
    for op in ops:
        if op is not None:
            sim.push(op)
            continue
        sim.flush()
        settle(sim, data)
        if "".join(sim.said).strip():
            check_delivered(sim, records, "".join(sim.said), exact_times=exact, words_given=worded)
            assert not state.complete
            assert not state.audio_owed  # all answered: silence now is no stall
    sim.end()
    settle(sim, data)
    assert state.complete
    assert not state.audio_owed
    said = "".join(sim.said)
    pushed = "".join(op for op in ops if op is not None)
    assert _visible(pushed).startswith(_visible(said))
    assert not speakable(_visible(pushed)[len(_visible(said)) :])
    check_delivered(sim, records, said, exact_times=exact, words_given=worded)
    assert conn.open_contexts == 0
    assert model.open_contexts == []


@SETTINGS
@given(
    st.sampled_from(UNFINISHED),
    st.sampled_from(["bySentence", "immediate", "never"]),
    pieces_and_flushes(),
    st.data(),
)
def test_writes_that_carry_several_flushes_still_say_everything_once_in_order(
    unfinished: str, segment: Segment, ops: list[str | None], data: st.DataObject
) -> None:
    """A link that batches what the input queued into one write (texts and flushes): a write
    starts one context at most (the link routes only that one), so what needs another waits
    for the next write, and the end forces everything. The stream is whole all the same."""
    records: list[RunRecord] = []
    reading = V1Readings(unfinished=unfinished)  # type: ignore[arg-type]
    model = V1ServerModel(
        reading, chunk_sizes=lambda total: chunk_sizes(total, 701), records=records
    )
    conn = connected(SUBPROTOCOL_BINARY, model)
    state = V1StreamState("s", RimeOptions(api_key="k", sample_rate=RATE, segment=segment))
    state.attach(conn)
    sim = Simulation(state, conn, model)
    batch: list[str] = []
    for op in ops:
        if op is None:
            rest = sim.splitter.flush() if speakable(sim.splitter.pending) else ""
            batch += (sim.say(rest) if rest else []) + state.flush()
        else:
            for sentence in sim.splitter.feed(op):
                batch += sim.say(sentence)
        if not batch or not data.draw(st.booleans(), label="write now"):
            continue
        sim.write(batch, end=False)
        batch = []
        if data.draw(st.booleans(), label="settle"):
            settle(sim, data)
    rest = sim.splitter.flush()
    batch += sim.say(rest) if speakable(rest) else []
    sim.write(batch + state.end(), end=True)
    settle(sim, data)
    assert state.complete
    check_delivered(sim, records, "".join(sim.said), exact_times=True)
    assert conn.open_contexts == 0
