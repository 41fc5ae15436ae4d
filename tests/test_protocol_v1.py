"""The v1 sans-IO client protocol, with plain synchronous tests (no sockets, no event loop)."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rime_api import text_to_speech_pb2 as tts

from rime_trio import RimeOptions
from rime_trio._errors import ConfigurationError, ProtocolError, ServerError
from rime_trio._events import WordTimestamp
from rime_trio._protocol_v1 import (
    _REMEMBERED_FINISHED,
    MAX_CONTEXT_ID_BYTES,
    SUBPROTOCOL_BINARY,
    SUBPROTOCOL_JSON,
    Audio,
    Cancelled,
    Done,
    Encoding,
    ErrorEvent,
    Event,
    Frame,
    Ready,
    Started,
    V1Connection,
    decode_request,
    decode_response,
    encode_message,
    encoding_for,
    language_tag,
    mime_type,
    split_for,
    synthesis_request,
)

KEY = "test-key"
OPTIONS = RimeOptions(api_key=KEY, sample_rate=8000)
SUBPROTOCOLS = [SUBPROTOCOL_BINARY, SUBPROTOCOL_JSON]


def server(encoding: Encoding, context_id: str = "", **payload: object) -> Frame:
    """A server frame, encoded as a server answering in *encoding* would."""
    return encode_message(tts.WebSocketResponse(context_id=context_id, **payload), encoding)  # type: ignore[arg-type]


def ready_connection(subprotocol: str | None = SUBPROTOCOL_BINARY) -> V1Connection:
    conn = V1Connection(subprotocol)
    assert conn.receive(server(conn.encoding, ready=tts.WebSocketReady(protocol=1))) == [Ready(1)]
    return conn


def audio(conn: V1Connection, context_id: str, data: bytes) -> list[Event]:
    return conn.receive(server(conn.encoding, context_id, audio=data))


def done(conn: V1Connection, context_id: str, **fields: object) -> list[Event]:
    return conn.receive(server(conn.encoding, context_id, done=tts.WebSocketDone(**fields)))  # type: ignore[arg-type]


def pcm_of(events: list[Event]) -> bytes:
    return b"".join(e.chunk.data for e in events if isinstance(e, Audio))


# --------------------------------------------------------------------------- settings


def test_start_carries_the_settings_of_the_shared_options() -> None:
    conn = ready_connection()
    frame = conn.start("a", OPTIONS.replace(speaker="luna", lang="spa", audio_format="mulaw"))
    assert isinstance(frame, bytes)  # binary subprotocol: binary frames
    request = decode_request(frame)
    assert request.context_id == "a"
    start = request.start
    assert (start.speaker, start.language, start.text) == ("luna", "es", "")
    # v1's names (Rime's asyncapi, livekit's v1 client), not the HTTP Accept table's
    assert start.audio_parameters.audio_format == "audio/pcmu"
    assert start.audio_parameters.sampling_rate == 8000
    assert start.split_strategy == tts.SPLIT_STRATEGY_SENTENCE
    assert start.timestamps.enable
    assert not start.HasField("mist_parameters")


@pytest.mark.parametrize(
    ("audio_format", "mime"),
    [("pcm", "audio/pcm"), ("mulaw", "audio/pcmu"), ("mp3", "audio/mpeg")],
)
def test_audio_formats_use_v1_mime_types_not_the_http_accept_table(
    audio_format: str, mime: str
) -> None:
    request = synthesis_request(OPTIONS.replace(audio_format=audio_format))
    assert request.audio_parameters.audio_format == mime
    assert mime_type(audio_format) == mime  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="cannot be streamed"):
        mime_type("wav")


def test_segment_never_is_not_split_none() -> None:
    """segment="never" means nothing is spoken until a flush or the end; NONE would speak
    every text on arrival, so the stream layer holds the text and the split stays SENTENCE."""
    assert split_for("never") == "sentence"
    assert synthesis_request(OPTIONS.replace(segment="never")).split_strategy == (
        tts.SPLIT_STRATEGY_SENTENCE
    )


def test_model_parameters_go_to_their_v1_fields() -> None:
    mist = RimeOptions(
        api_key=KEY,
        model="mistv2",
        speed_alpha=1.25,
        pause_between_brackets=True,
        inline_speed_alpha="0.5, 1.5",
        segment="immediate",
    )
    request = synthesis_request(mist, timestamps=False)
    assert request.audio_parameters.time_scale_factor == 1.25
    assert request.mist_parameters.pause_between_brackets
    assert list(request.mist_parameters.inline_time_scale_factors) == [0.5, 1.5]
    assert request.split_strategy == tts.SPLIT_STRATEGY_NONE
    assert not request.HasField("timestamps")
    assert request.text == ""  # a streaming context: the text follows in text messages
    coda = synthesis_request(RimeOptions(api_key=KEY, time_scale_factor=0.75))
    assert coda.audio_parameters.time_scale_factor == 0.75


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (RimeOptions(api_key=KEY, audio_format="wav"), "cannot be streamed"),
        (RimeOptions(api_key=KEY, model="arcana", temperature=0.5), "no v1 equivalent"),
        (RimeOptions(api_key=KEY, model="mist", inline_speed_alpha="fast"), "comma"),
    ],
)
def test_settings_v1_cannot_carry_are_refused(options: RimeOptions, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        synthesis_request(options)


def test_languages_become_bcp47_tags() -> None:
    assert [language_tag(x) for x in ("eng", "SPA", "ger", "en-GB", "xyz")] == [
        "en",
        "es",
        "de",
        "en-GB",
        "xyz",
    ]


def test_subprotocol_decides_the_encoding() -> None:
    assert encoding_for(SUBPROTOCOL_BINARY) == "binary"
    assert encoding_for(SUBPROTOCOL_JSON) == "json"
    assert encoding_for(None) == "json"  # the server's default without a subprotocol
    with pytest.raises(ProtocolError):
        encoding_for("rime-trio")


def test_json_connection_sends_canonical_proto3_json() -> None:
    conn = ready_connection(SUBPROTOCOL_JSON)
    frame = conn.start("a", OPTIONS)
    assert isinstance(frame, str)
    message = json.loads(frame)
    assert message["contextId"] == "a"
    assert message["start"]["audioParameters"] == {"audioFormat": "audio/pcm", "samplingRate": 8000}
    assert message["start"]["splitStrategy"] == "SPLIT_STRATEGY_SENTENCE"
    assert json.loads(conn.end("a")) == {"contextId": "a", "end": {}}
    # Audio arrives as base64 in JSON; the odd byte is carried as in binary.
    events = conn.receive(json.dumps({"contextId": "a", "audio": "AQID"}))
    assert pcm_of(events) == b"\x01\x02"


# --------------------------------------------------------------------------- contexts


def test_start_waits_for_ready() -> None:
    conn = V1Connection()
    with pytest.raises(RuntimeError, match="ready"):
        conn.start("a", OPTIONS)


def test_context_ids_are_checked() -> None:
    conn = ready_connection()
    with pytest.raises(ValueError, match="default context"):
        conn.start("", OPTIONS)
    with pytest.raises(ValueError, match="128"):
        conn.start("x" * (MAX_CONTEXT_ID_BYTES + 1), OPTIONS)
    conn.start("é" * (MAX_CONTEXT_ID_BYTES // 2), OPTIONS)  # 128 bytes exactly
    conn.start("a", OPTIONS)
    with pytest.raises(ValueError, match="still open"):
        conn.start("a", OPTIONS)
    assert conn.open_contexts == 2


def test_next_context_id_never_repeats_an_open_id() -> None:
    conn = ready_connection()
    conn.start("c1", OPTIONS)
    ids = [conn.next_context_id() for _ in range(3)]
    assert "c1" not in ids
    assert len(set(ids)) == 3


def test_text_and_end_need_an_open_streaming_context() -> None:
    conn = ready_connection()
    with pytest.raises(RuntimeError, match="not open"):
        conn.send_text("a", "Hi.")
    conn.start("a", OPTIONS)
    assert conn.accepts_text("a")
    assert decode_request(conn.send_text("a", "Hi. ")).text == "Hi. "
    assert decode_request(conn.end("a")).HasField("end")
    assert not conn.accepts_text("a")
    with pytest.raises(RuntimeError, match="ended"):
        conn.end("a")
    with pytest.raises(RuntimeError, match="ended"):
        conn.send_text("a", "More.")
    # A cancel ends the input too.
    conn.start("b", OPTIONS)
    conn.cancel("b")
    assert not conn.accepts_text("b")
    with pytest.raises(RuntimeError, match="ended"):
        conn.send_text("b", "More.")
    with pytest.raises(RuntimeError, match="ended"):
        conn.end("b")


def test_a_context_runs_started_audio_done() -> None:
    conn = ready_connection()
    conn.start("a", OPTIONS, label="stream-1", offset=1.5)
    started = conn.receive(server("binary", "a", started=tts.WebSocketStarted(request_id="req-1")))
    assert started == [Started("a", "req-1")]
    [event] = audio(conn, "a", b"\x00\x01" * 800)  # 0.1 s at 8 kHz
    assert isinstance(event, Audio)
    chunk = event.chunk
    assert (chunk.context_id, chunk.offset, chunk.duration) == ("stream-1", 1.5, 0.1)
    [finished] = done(conn, "a")
    assert finished == Done("a", (), 0.1, "the server sent no timestamps")
    assert not conn.is_open("a")
    # Not reused while remembered: a late error for it would end the new context.
    with pytest.raises(ValueError, match="fresh id"):
        conn.start("a", OPTIONS)


def test_done_converts_span_timestamps_to_words_on_the_stream_clock() -> None:
    conn = ready_connection()
    conn.start("a", OPTIONS, label="s", offset=2.0)
    spans = [
        tts.SpanTimestamp(text="Hello", start={"nanos": 40_000_000}, end={"nanos": 500_000_000}),
        tts.SpanTimestamp(text="there", start={"seconds": 1}, end={"seconds": 1, "nanos": 5}),
    ]
    [event] = done(conn, "a", timestamps=tts.Timestamps(spans=spans))
    assert isinstance(event, Done)
    assert event.words == (
        WordTimestamp("Hello", 2.04, 2.5, "s"),
        WordTimestamp("there", 3.0, 3.000000005, "s"),
    )
    assert (event.timestamps_error, event.restarts) == (None, 0)


def span(text: str, start: float, end: float) -> tts.SpanTimestamp:
    return tts.SpanTimestamp(
        text=text,
        start={"seconds": int(start), "nanos": round(start % 1 * 1e9)},
        end={"seconds": int(end), "nanos": round(end % 1 * 1e9)},
    )


def test_word_times_that_restart_per_run_are_rebased_within_the_gap_and_counted() -> None:
    """Two runs, each timed from its own start; the second run's audio begins GAP after the
    first run's last word ends. The rebased times are early by at most that gap, never late."""
    gap = 0.17
    first = [("One", 0.04, 0.4), ("more", 0.45, 0.8)]
    second = [("Two", 0.04, 0.3), ("words", 0.35, 0.7)]
    truth = first + [(w, 0.8 + gap + a, 0.8 + gap + b) for w, a, b in second]
    conn = ready_connection()
    conn.start("a", OPTIONS)
    spans = [span(*word) for word in first + second]
    [event] = done(conn, "a", timestamps=tts.Timestamps(spans=spans))
    assert isinstance(event, Done)
    assert event.restarts == 1
    for word, (text, start, end) in zip(event.words, truth, strict=True):
        assert word.word == text
        assert start - gap - 1e-6 <= word.start <= start + 1e-6
        assert end - gap - 1e-6 <= word.end <= end + 1e-6


def test_overlapping_words_of_one_run_are_not_a_restart() -> None:
    """An aligner may let a word begin well before the previous one ended (here 200 ms):
    times are from the context's start, so nothing is shifted."""
    words = [("Well", 0.5, 1.0), ("then", 0.8, 1.3), ("go", 1.35, 1.5), ("on", 1.55, 1.8)]
    conn = ready_connection()
    conn.start("a", OPTIONS)
    [event] = done(conn, "a", timestamps=tts.Timestamps(spans=[span(*w) for w in words]))
    assert isinstance(event, Done)
    assert event.restarts == 0
    assert [(w.start, w.end) for w in event.words] == [pytest.approx(w[1:]) for w in words]


def test_a_one_word_run_timed_from_zero_is_a_restart() -> None:
    """ "Hi." then "Yo.": both words begin at the lead-in, 0.04 s."""
    conn = ready_connection()
    conn.start("a", OPTIONS)
    spans = [span("Hi", 0.04, 0.2), span("Yo", 0.04, 0.2)]
    [event] = done(conn, "a", timestamps=tts.Timestamps(spans=spans))
    assert isinstance(event, Done)
    assert event.restarts == 1
    assert event.words[1].start == pytest.approx(0.24)


@pytest.mark.parametrize("scale", [1.0, 1.5])
def test_a_word_beginning_before_the_previous_one_ended_is_passed_through(scale: float) -> None:
    """The review's case: ``I`` 0.02-0.12 then ``am`` 0.10-0.30, near 0 and overlapping,
    were taken for a restart (``am`` reported at 0.22, every later word 0.12 s late)."""
    words = [("I", 0.02, 0.12), ("am", 0.10, 0.30), ("here", 0.35, 0.6)]
    conn = ready_connection()
    conn.start("a", OPTIONS.replace(time_scale_factor=scale), offset=1.0)
    [event] = done(conn, "a", timestamps=tts.Timestamps(spans=[span(*w) for w in words]))
    assert isinstance(event, Done)
    assert event.restarts == 0
    assert [w.word for w in event.words] == [text for text, _, _ in words]
    assert [(w.start, w.end) for w in event.words] == [
        pytest.approx((1.0 + a * scale, 1.0 + b * scale)) for _, a, b in words
    ]


def test_a_start_a_little_before_the_previous_start_is_jitter_not_a_restart() -> None:
    words = [("so", 1.2, 1.4), ("then", 1.17, 1.5), ("on", 1.6, 1.8)]
    conn = ready_connection()
    conn.start("a", OPTIONS)
    [event] = done(conn, "a", timestamps=tts.Timestamps(spans=[span(*w) for w in words]))
    assert isinstance(event, Done)
    assert event.restarts == 0
    assert [(w.start, w.end) for w in event.words] == [pytest.approx(w[1:]) for w in words]


SCALES = st.sampled_from([0.5, 1.0, 1.5, 2.5])


@st.composite
def one_run(draw: st.DrawFn) -> list[tuple[str, float, float]]:
    """Spans of one run timed from the context's start: each begins after the previous one
    began (or at most 40 ms before it: jitter), and may begin before it ended; near 0
    strictly after it (two words both at the lead-in is the one-word-run case). Times are the
    server's, before *scale* (which does not change what is a restart)."""
    start = draw(st.floats(0.0, 5.0))
    spans: list[tuple[str, float, float]] = []
    for index in range(draw(st.integers(1, 12))):
        if index:
            step = draw(st.floats(-0.04, 1.0))
            if start + step < 0.26 and step < 0.001:
                step = draw(st.floats(0.001, 1.0))
            start = max(0.0, start + step)
        length = draw(st.floats(0.0, 1.0))
        spans.append((f"w{index}", round(start, 6), round(start + length, 6)))
    return spans


@given(one_run(), SCALES, st.floats(0, 100))
def test_spans_of_one_run_pass_through_scaled_however_they_overlap(
    spans: list[tuple[str, float, float]], scale: float, offset: float
) -> None:
    conn = ready_connection()
    conn.start("a", OPTIONS.replace(time_scale_factor=scale), offset=offset)
    [event] = done(conn, "a", timestamps=tts.Timestamps(spans=[span(*w) for w in spans]))
    assert isinstance(event, Done)
    assert event.restarts == 0
    for word, (text, start, end) in zip(event.words, spans, strict=True):
        assert word.word == text
        assert word.start == pytest.approx(offset + start * scale, abs=1e-6)
        assert word.end == pytest.approx(offset + end * scale, abs=1e-6)


@st.composite
def runs_timed_from_their_own_start(draw: st.DrawFn) -> list[list[tuple[str, float, float]]]:
    """Runs of one context as a server timing each from its own start gives them: every run
    begins at the same lead-in, its words one after another (gaps, no overlap)."""
    lead_in = draw(st.floats(0.0, 0.2))
    runs = []
    for run in range(draw(st.integers(1, 5))):
        cursor = lead_in
        words = []
        for index in range(draw(st.integers(1, 6))):
            length = draw(st.floats(0.01, 0.8))
            words.append((f"r{run}w{index}", round(cursor, 6), round(cursor + length, 6)))
            cursor += length + draw(st.floats(0.0, 0.3))
        runs.append(words)
    return runs


@given(runs_timed_from_their_own_start(), SCALES)
def test_word_times_restarting_with_each_run_are_rebased_run_by_run(
    runs: list[list[tuple[str, float, float]]], scale: float
) -> None:
    conn = ready_connection()
    conn.start("a", OPTIONS.replace(time_scale_factor=scale), offset=2.0)
    spans = [span(*w) for run in runs for w in run]
    [event] = done(conn, "a", timestamps=tts.Timestamps(spans=spans))
    assert isinstance(event, Done)
    assert event.restarts == len(runs) - 1
    words = iter(event.words)
    previous_end = 2.0
    for index, run in enumerate(runs):
        # Each run after the first begins where the previous word ended, plus its lead-in.
        base = 2.0 if index == 0 else previous_end
        for text, start, end in run:
            word = next(words)
            assert word.word == text
            assert word.start == pytest.approx(base + start * scale, abs=1e-6)
            assert word.end == pytest.approx(base + end * scale, abs=1e-6)
            previous_end = word.end


@given(
    st.lists(st.tuples(st.floats(0.0, 3.0), st.floats(0.0, 1.0)), max_size=15),
    SCALES,
)
def test_any_spans_keep_their_lengths_and_move_only_at_an_unambiguous_restart(
    spans: list[tuple[float, float]], scale: float
) -> None:
    """Whatever the spans: each word keeps its scaled length; a word moves (from its span's
    own time on the clock) only at a restart, by the previous word's end; and a restart is
    exactly a span beginning over 50 ms before the previous span began, or within 0.25 s of
    0 and no later than it."""
    named = [(f"w{i}", round(a, 6), round(a + n, 6)) for i, (a, n) in enumerate(spans)]
    conn = ready_connection()
    conn.start("a", OPTIONS.replace(time_scale_factor=scale))
    [event] = done(conn, "a", timestamps=tts.Timestamps(spans=[span(*w) for w in named]))
    assert isinstance(event, Done)
    restarts = 0
    base = 0.0
    for index, (word, (_, start, end)) in enumerate(zip(event.words, named, strict=True)):
        assert word.end - word.start == pytest.approx((end - start) * scale, abs=1e-6)
        if index:
            before = named[index - 1][1]  # the server's times decide, before the scale
            if start < before - 0.05 or (start < 0.25 and start <= before):
                restarts += 1
                base = event.words[index - 1].end
        assert word.start == pytest.approx(base + start * scale, abs=1e-6)
    assert event.restarts == restarts


def test_word_times_are_scaled_by_the_time_scale_factor() -> None:
    """Spans are "at the audio's native rate and before time_scale_factor" (the proto)."""
    conn = ready_connection()
    conn.start("a", OPTIONS.replace(time_scale_factor=1.5), offset=1.0)
    spans = [span("Slow", 0.1, 0.5), span("words", 0.6, 1.0)]
    [event] = done(conn, "a", timestamps=tts.Timestamps(spans=spans))
    assert isinstance(event, Done)
    assert [(w.start, w.end) for w in event.words] == [
        pytest.approx((1.15, 1.75)),
        pytest.approx((1.9, 2.5)),
    ]


def test_an_unsettled_alignment_is_reported_without_words() -> None:
    conn = ready_connection()
    conn.start("a", OPTIONS)
    status = {"code": 3, "message": "language not supported"}
    [event] = done(conn, "a", timestamps=tts.Timestamps(status=status))
    assert isinstance(event, Done)
    assert event.words == ()
    assert event.timestamps_error == "timestamps status 3: language not supported"
    conn.start("b", OPTIONS, timestamps=False)
    assert done(conn, "b") == [Done("b")]


def test_a_chunk_ending_mid_sample_keeps_its_odd_byte_until_the_next() -> None:
    conn = ready_connection()
    conn.start("a", OPTIONS)
    conn.start("b", OPTIONS)
    assert audio(conn, "a", b"\x01") == []
    assert pcm_of(audio(conn, "b", b"\x09\x08\x07")) == b"\x09\x08"
    assert pcm_of(audio(conn, "a", b"\x02\x03")) == b"\x01\x02"
    # At done the last odd byte is delivered, never dropped, then the done.
    events = done(conn, "b")
    assert pcm_of(events) == b"\x07"
    assert isinstance(events[-1], Done)


def test_cancel_drops_audio_in_flight_and_passes_the_terminal_event() -> None:
    conn = ready_connection()
    conn.start("a", OPTIONS)
    conn.start("b", OPTIONS)
    frame = conn.cancel("a")
    assert frame is not None
    assert decode_request(frame).HasField("cancel")
    assert conn.cancel("a") is None  # idempotent: one cancel on the wire
    assert audio(conn, "a", b"\x00\x00" * 10) == []
    assert pcm_of(audio(conn, "b", b"\x05\x06")) == b"\x05\x06"
    assert conn.receive(server("binary", "a", cancelled=tts.WebSocketCancelled())) == [
        Cancelled("a")
    ]
    assert conn.dropped_events == 1
    assert conn.cancel("a") is None  # finished: nothing to cancel


def test_a_cancel_that_crossed_done_leaves_a_stray_cancelled_that_is_dropped() -> None:
    conn = ready_connection()
    conn.start("a", OPTIONS)
    assert conn.cancel("a") is not None
    spans = [tts.SpanTimestamp(text="Hi", end={"nanos": 1})]
    [event] = done(conn, "a", timestamps=tts.Timestamps(spans=spans))
    assert event == Done("a")  # no words after a cancel
    # A server may or may not answer the crossed cancel; when it does, it is dropped.
    assert conn.receive(server("binary", "a", cancelled=tts.WebSocketCancelled())) == []
    assert conn.dropped_events == 1


def test_a_stray_error_cannot_end_a_new_context_because_ids_are_never_reused() -> None:
    """A text that crossed a context's done is answered with an error for that id; had the id
    been reused at once, the error would end the new context."""
    conn = ready_connection()
    first = conn.next_context_id()
    conn.start(first, OPTIONS)
    done(conn, first)
    second = conn.next_context_id()
    assert second != first
    conn.start(second, OPTIONS)
    with pytest.raises(ValueError, match="fresh id"):
        conn.start(first, OPTIONS)
    stray = tts.WebSocketError(kind="invalid_input", message="context is not open for input")
    assert conn.receive(server("binary", first, error=stray)) == []
    assert conn.is_open(second)


def test_finished_ids_are_remembered_up_to_the_bound_then_may_restart() -> None:
    conn = ready_connection()

    def finish_another() -> None:
        context_id = conn.next_context_id()
        conn.start(context_id, OPTIONS)
        done(conn, context_id)

    conn.start("q", OPTIONS)
    conn.cancel("q")
    done(conn, "q")  # the cancel crossed it: a stray cancelled may come
    for _ in range(_REMEMBERED_FINISHED - 1):
        finish_another()
    # Still remembered (the newest of the bound): late events dropped, the id not reused.
    assert conn.receive(server("binary", "q", cancelled=tts.WebSocketCancelled())) == []
    assert conn.dropped_events == 1
    with pytest.raises(ValueError, match="fresh id"):
        conn.start("q", OPTIONS)
    finish_another()
    # Evicted, the oldest: wholly forgotten, as if never started.
    with pytest.raises(ProtocolError, match="unknown context 'q'"):
        done(conn, "q")
    conn.start("q", OPTIONS)
    assert conn.is_open("q")


def test_events_after_a_terminal_event_are_dropped_and_counted() -> None:
    conn = ready_connection()
    conn.start("a", OPTIONS)
    done(conn, "a")
    assert done(conn, "a") == []
    assert audio(conn, "a", b"\x00\x00") == []
    assert conn.dropped_events == 2


def test_events_for_a_context_never_started_are_protocol_errors() -> None:
    conn = ready_connection()
    conn.start("a", OPTIONS)
    with pytest.raises(ProtocolError, match="unknown context 'b'"):
        audio(conn, "b", b"\x00\x00")
    with pytest.raises(ProtocolError, match="unknown context ''"):
        done(conn, "")


def test_an_error_without_context_concerns_the_connection_only() -> None:
    conn = ready_connection()
    conn.start("a", OPTIONS)
    [event] = conn.receive(
        server("binary", error=tts.WebSocketError(kind="invalid_input", message="bad config"))
    )
    assert event == ErrorEvent(None, "invalid_input", "bad config")
    assert conn.is_open("a")


def test_a_context_error_is_terminal() -> None:
    conn = ready_connection()
    conn.start("a", OPTIONS)
    error = tts.WebSocketError(kind="internal", message="boom", request_id="r")
    [event] = conn.receive(server("binary", "a", error=error))
    assert event == ErrorEvent("a", "internal", "boom", "r")
    assert isinstance(event.exception(), ServerError)
    assert "internal: boom" in str(event.exception())
    assert not conn.is_open("a")


def test_a_repeated_ready_changes_nothing() -> None:
    conn = ready_connection()
    assert conn.receive(server("binary", ready=tts.WebSocketReady(protocol=2))) == []
    assert conn.ready == Ready(1)


@pytest.mark.parametrize("version", [0, 2])
def test_a_ready_for_another_protocol_version_is_a_protocol_error(version: int) -> None:
    conn = V1Connection()
    with pytest.raises(ProtocolError, match=f"version {version}"):
        conn.receive(server("binary", ready=tts.WebSocketReady(protocol=version)))
    assert conn.ready is None


def test_an_unknown_subprotocol_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="unknown subprotocol"):
        V1Connection("rime.v2.binary")


@pytest.mark.parametrize(
    "frame", [b"\xff\xff\xff", "not json", "[1, 2]", '{"audio": "***"}', '{"contextId": 5}']
)
def test_malformed_frames_raise_protocol_error(frame: Frame) -> None:
    conn = ready_connection()
    with pytest.raises(ProtocolError):
        conn.receive(frame)


def test_frames_with_no_known_payload_are_skipped() -> None:
    conn = ready_connection()
    # Field 99 is unknown to this version: a newer server's payload kind.
    assert conn.receive(b"\xfa\x06\x00") == []
    assert conn.receive('{"contextId": "a", "telepathy": {}}') == []
    assert conn.skipped_frames == 2


def test_open_context_ids_are_the_contexts_without_a_terminal_event() -> None:
    conn = ready_connection()
    for context_id in ("a", "b", "c"):
        conn.start(context_id, OPTIONS)
    done(conn, "b")
    conn.cancel("c")  # cancelled, but its terminal event has not come
    assert conn.open_context_ids == ["a", "c"]
    assert conn.open_contexts == 2
    conn.receive(server("binary", "c", cancelled=tts.WebSocketCancelled()))
    assert conn.open_context_ids == ["a"]


# --------------------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(data=st.data(), subprotocol=st.sampled_from(SUBPROTOCOLS))
def test_interleaved_contexts_each_reassemble_their_exact_pcm(
    data: st.DataObject, subprotocol: str
) -> None:
    """Random interleavings of several contexts' frames, cut at random (odd) sizes: each
    context gets back exactly its bytes, every chunk before the last in whole samples, with
    offsets that add up."""
    conn = ready_connection(subprotocol)
    count = data.draw(st.integers(1, 5), label="contexts")
    originals: dict[str, bytes] = {}
    pieces: dict[str, list[bytes]] = {}
    for n in range(count):
        context_id = f"ctx-{n}"
        pcm = data.draw(st.binary(max_size=64), label=context_id)
        cuts = sorted(data.draw(st.sets(st.integers(0, len(pcm)), max_size=8)))
        bounds = [0, *cuts, len(pcm)]
        originals[context_id] = pcm
        pieces[context_id] = [pcm[a:b] for a, b in itertools.pairwise(bounds)]
        conn.start(context_id, OPTIONS, label=context_id)
    # Interleave: at each step one context with frames left sends its next one (or its done).
    queues = {cid: [*frames, None] for cid, frames in pieces.items()}
    received: dict[str, list[Audio]] = {cid: [] for cid in originals}
    finished: set[str] = set()
    while queues:
        context_id = data.draw(st.sampled_from(sorted(queues)))
        piece = queues[context_id].pop(0)
        if not queues[context_id]:
            del queues[context_id]
        events = done(conn, context_id) if piece is None else audio(conn, context_id, piece)
        for event in events:
            if isinstance(event, Audio):
                assert event.context_id == context_id == event.chunk.context_id
                assert context_id not in finished
                received[context_id].append(event)
            else:
                assert isinstance(event, Done)
                finished.add(event.context_id)
    assert finished == set(originals)
    for context_id, pcm in originals.items():
        chunks = [event.chunk for event in received[context_id]]
        assert b"".join(c.data for c in chunks) == pcm
        assert all(len(c.data) % 2 == 0 for c in chunks[:-1])
        offset = 0.0
        for chunk in chunks:
            assert chunk.offset == pytest.approx(offset)
            offset += chunk.duration
    assert conn.open_contexts == 0


_text = st.text(max_size=20)
_context_ids = st.text(max_size=10)


@st.composite
def responses(draw: st.DrawFn) -> tts.WebSocketResponse:
    context_id = draw(_context_ids)
    kind = draw(st.sampled_from(["ready", "started", "audio", "done", "cancelled", "error"]))
    if kind == "ready":
        return tts.WebSocketResponse(
            ready=tts.WebSocketReady(protocol=draw(st.integers(0, 9)), languages=["en", "es"])
        )
    if kind == "started":
        return tts.WebSocketResponse(
            context_id=context_id, started=tts.WebSocketStarted(request_id=draw(_text))
        )
    if kind == "audio":
        return tts.WebSocketResponse(context_id=context_id, audio=draw(st.binary(max_size=50)))
    if kind == "done":
        spans = [
            tts.SpanTimestamp(
                text=draw(_text),
                start={
                    "seconds": draw(st.integers(0, 100)),
                    "nanos": draw(st.integers(0, 10**9 - 1)),
                },
                end={"seconds": draw(st.integers(0, 100))},
            )
            for _ in range(draw(st.integers(0, 3)))
        ]
        return tts.WebSocketResponse(
            context_id=context_id, done=tts.WebSocketDone(timestamps=tts.Timestamps(spans=spans))
        )
    if kind == "cancelled":
        return tts.WebSocketResponse(context_id=context_id, cancelled=tts.WebSocketCancelled())
    return tts.WebSocketResponse(
        context_id=context_id,
        error=tts.WebSocketError(kind=draw(_text), message=draw(_text)),
    )


@st.composite
def requests(draw: st.DrawFn) -> tts.WebSocketRequest:
    context_id = draw(_context_ids)
    kind = draw(st.sampled_from(["start", "text", "end", "cancel"]))
    if kind == "start":
        options = RimeOptions(
            api_key=KEY,
            sample_rate=draw(st.sampled_from([8000, 16000, 24000])),
            audio_format=draw(st.sampled_from(["pcm", "mulaw", "mp3"])),
            segment=draw(st.sampled_from(["bySentence", "immediate", "never"])),
        )
        start = synthesis_request(options, timestamps=draw(st.booleans()))
        start.text = draw(_text)  # a one-shot start: this client sends none, servers take them
        return tts.WebSocketRequest(context_id=context_id, start=start)
    if kind == "text":
        return tts.WebSocketRequest(context_id=context_id, text=draw(_text))
    if kind == "end":
        return tts.WebSocketRequest(context_id=context_id, end=tts.WebSocketEnd())
    return tts.WebSocketRequest(context_id=context_id, cancel=tts.WebSocketCancel())


@settings(max_examples=200, deadline=None)
@given(message=st.one_of(responses(), requests()), encoding=st.sampled_from(["binary", "json"]))
def test_both_encodings_round_trip_every_envelope(
    message: tts.WebSocketResponse | tts.WebSocketRequest, encoding: Encoding
) -> None:
    frame = encode_message(message, encoding)
    assert isinstance(frame, bytes if encoding == "binary" else str)
    decode = decode_response if isinstance(message, tts.WebSocketResponse) else decode_request
    assert decode(frame) == message


def refuse(connection: V1Connection, wire_id: str, message: str) -> ErrorEvent:
    error = tts.WebSocketError(kind="invalid_input", message=message)
    frame = encode_message(tts.WebSocketResponse(context_id=wire_id, error=error), "binary")
    (event,) = connection.receive(frame)
    assert isinstance(event, ErrorEvent)
    return event


def test_a_refused_mulaw_name_is_followed_by_the_next_then_reaches_the_caller() -> None:
    connection = ready_connection()
    options = replace(OPTIONS, audio_format="mulaw")
    refused = []
    for wire_id in ("c1", "c2", "c3"):
        start = decode_request(connection.start(wire_id, options))
        name = start.start.audio_parameters.audio_format
        event = refuse(connection, wire_id, f"unknown audio format {name!r}")
        refused.append((name, event.format_refused))
    # the last name refused: nothing left to try, the error reaches the caller as it came
    assert refused == [
        ("audio/pcmu", True),
        ("audio/x-mulaw", False),
        ("audio/x-mulaw", False),
    ]
    with pytest.raises(ServerError, match="audio/x-mulaw"):
        raise event.exception()


def test_only_an_unanswered_context_naming_its_format_can_be_a_refusal() -> None:
    connection = ready_connection()
    mulaw = replace(OPTIONS, audio_format="mulaw")
    connection.start("c1", mulaw)
    audio = tts.WebSocketResponse(context_id="c1", audio=b"\x7f\x7f")
    assert connection.receive(encode_message(audio, "binary"))
    # audio came: the name was taken, whatever the error says
    assert not refuse(connection, "c1", "audio/pcmu broke").format_refused
    connection.start("c2", mulaw)
    assert not refuse(connection, "c2", "text is too long").format_refused
    connection.start("c3", OPTIONS)  # pcm has one name: nothing to try
    assert not refuse(connection, "c3", "unknown audio format 'audio/pcm'").format_refused
    start = decode_request(connection.start("c4", mulaw))
    assert start.start.audio_parameters.audio_format == "audio/pcmu"  # still the first
