"""The sans-IO core, tested synchronously: no sockets, no trio."""

from __future__ import annotations

import base64
import json
import logging
import sys

import pytest

from rime_trio import AudioChunk, ConnectionLost, ProtocolError, ServerError, WordTimestamp
from rime_trio._protocol import (
    AudioEvent,
    Clear,
    DoneEvent,
    EndOfStream,
    ErrorEvent,
    Flush,
    StreamState,
    TextMessage,
    TimestampsEvent,
    decode_client_message,
    decode_server_event,
    encode_client_message,
    encode_server_event,
)


def test_no_trio_import() -> None:
    import pathlib

    import rime_trio._protocol as protocol

    source = pathlib.Path(protocol.__file__).read_text(encoding="utf-8")
    assert "import trio" not in source
    assert "trio_websocket" not in source


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (TextMessage("Hello. "), {"text": "Hello. "}),
        (TextMessage("Hi", "ctx#1"), {"text": "Hi", "contextId": "ctx#1"}),
        (Flush(), {"operation": "flush"}),
        (Clear(), {"operation": "clear"}),
        (EndOfStream(), {"operation": "eos"}),
    ],
)
def test_client_messages_encode_to_documented_json(message: object, wire: dict[str, str]) -> None:
    frame = encode_client_message(message)  # type: ignore[arg-type]
    assert json.loads(frame) == wire
    assert decode_client_message(frame) == message


def test_text_keeps_non_ascii_characters() -> None:
    frame = encode_client_message(TextMessage("¿Qué tal? 你好"))
    assert "¿Qué tal? 你好" in frame


@pytest.mark.parametrize(
    "frame",
    ["nope", "[1]", '{"operation": "explode"}', '{"text": 5}', '{"text": "a", "contextId": 3}'],
)
def test_bad_client_frames_raise_protocol_error(frame: str) -> None:
    with pytest.raises(ProtocolError):
        decode_client_message(frame)


@pytest.mark.parametrize(
    "event",
    [
        AudioEvent(b"\x00\x01\xff", "c#1"),
        AudioEvent(b"", None),
        TimestampsEvent(("Hello", "there"), (0.0, 0.4), (0.3, 0.8), "c#2"),
        DoneEvent("c#3"),
        DoneEvent(None),
        ErrorEvent("something broke"),
    ],
)
def test_server_events_round_trip(event: object) -> None:
    assert decode_server_event(encode_server_event(event)) == event  # type: ignore[arg-type]


def test_decode_documented_chunk_frame() -> None:
    frame = json.dumps(
        {"type": "chunk", "data": base64.b64encode(b"abc").decode(), "contextId": None}
    )
    assert decode_server_event(frame) == AudioEvent(b"abc", None)
    assert decode_server_event(frame.encode()) == AudioEvent(b"abc", None)


@pytest.mark.parametrize(
    "frame",
    [
        "",
        "not json",
        b"\xff\xfe",
        "[]",
        '"chunk"',
        "{}",
        '{"type": 7}',
        '{"type": "chunk"}',
        '{"type": "chunk", "data": 12}',
        '{"type": "chunk", "data": "!!!notbase64"}',
        '{"type": "chunk", "data": "QUJD", "contextId": 5}',
        '{"type": "timestamps"}',
        '{"type": "timestamps", "word_timestamps": {"words": ["a"], "start": [0], "end": []}}',
        '{"type": "timestamps", "word_timestamps": {"words": [1], "start": [0], "end": [1]}}',
        '{"type": "timestamps", "word_timestamps": {"words": ["a"], "start": [true], "end": [1]}}',
        '{"type": "timestamps", "word_timestamps": {"words": ["a"], "start": ["0"], "end": [1]}}',
        '{"type": "error"}',
        "[" * 100_000,
    ],
)
def test_malformed_server_frames_raise_protocol_error(frame: str | bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_server_event(frame)


def _stamps(words: object, start: object, end: object, **extra: object) -> str:
    """A timestamps frame whose fields hold exactly what the test says."""
    stamps = {"words": words, "start": start, "end": end}
    return json.dumps({"type": "timestamps", "word_timestamps": stamps, **extra})


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        # numbers json reads but no time can be (10**400: OverflowError from float())
        (_stamps(["a"], [10**400], [1]), r"start\[0\] is an integer beyond the range of a float"),
        (_stamps(["a"], [0], [-(10**400)]), r"end\[0\] is an integer beyond the range"),
        (_stamps(["a"], [0], [1e400]), r"end\[0\] is not a finite number: inf"),
        (_stamps(["a"], [float("nan")], [1]), r"start\[0\] is not a finite number: nan"),
        (_stamps(["a"], [float("-inf")], [1]), r"start\[0\] is not a finite number: -inf"),
        (_stamps(["a"], [-0.5], [1]), r"start\[0\] is negative: -0.5"),
        (_stamps(["a", "b"], [0, 1], [0.5, -1]), r"end\[1\] is negative"),
        (_stamps(["a"], [[0.1]], [1]), r"start\[0\] is not a number: \[0.1\]"),
        (_stamps(["a"], [None], [1]), r"start\[0\] is not a number: None"),
        (_stamps(["a"], [False], [1]), r"start\[0\] is not a number: False"),
        # times out of order within one event
        (_stamps(["a", "b"], [0.5, 0.2], [0.6, 0.7]), r"start goes back in time at \[1\]"),
        (_stamps(["a", "b"], [0.1, 0.2], [0.9, 0.3]), r"end goes back in time at \[1\]"),
        (_stamps(["a"], [0.5], [0.4]), r"word 0 \('a'\) ends at 0.4, before it starts at 0.5"),
        # arrays that do not line up with the words
        (_stamps(["a", "b"], [0], [1, 2]), r"start holds 1 times for 2 words"),
        (_stamps(["a"], [0], [1, 2]), r"end holds 2 times for 1 words"),
        (_stamps([], [0], []), r"start holds 1 times for 0 words"),
        (_stamps(["a"], {"0": 0}, [1]), r"start must be a list of numbers, got dict"),
        (_stamps(["a"], [0], None), r"end must be a list of numbers, got NoneType"),
        # words
        (_stamps(["a", 7], [0, 1], [1, 2]), r"words\[1\] is not a string: 7"),
        (_stamps([None], [0], [1]), r"words\[0\] is not a string: None"),
        (_stamps([["a"]], [0], [1]), r"words\[0\] is not a string: \['a'\]"),
        (_stamps("a b", [0], [1]), r"words must be a list of strings, got str"),
        (json.dumps({"type": "timestamps", "word_timestamps": [1]}), r"'word_timestamps' object"),
        # audio
        ('{"type": "chunk", "data": 12}', r"base64 'data' string, got int"),
        ('{"type": "chunk", "data": ["QUJD"]}', r"base64 'data' string, got list"),
        ('{"type": "chunk", "data": null}', r"base64 'data' string, got NoneType"),
        ('{"type": "chunk", "data": true}', r"base64 'data' string, got bool"),
        ('{"type": "chunk", "data": "QUJ"}', r"'data' is not valid base64"),
        ('{"type": "chunk", "data": "QU JD"}', r"'data' is not valid base64"),
        ('{"type": "chunk", "data": "QUJD\\u00e9"}', r"'data' is not valid base64"),
        # contextId, on every event that carries one
        ('{"type": "chunk", "data": "QUJD", "contextId": 5}', r"contextId .* got int 5"),
        ('{"type": "done", "contextId": ["t#1"]}', r"contextId .* got list"),
        ('{"type": "done", "contextId": false}', r"contextId .* got bool"),
        (_stamps(["a"], [0], [1], contextId={"id": 1}), r"contextId .* got dict"),
        # the others
        ('{"type": "error", "message": 3}', r"'message' string, got int"),
        ('{"type": 1e400}', r"without a string 'type', got inf"),
    ],
)
def test_each_bad_value_from_the_server_is_a_protocol_error_naming_it(
    frame: str, problem: str
) -> None:
    with pytest.raises(ProtocolError, match=problem) as info:
        decode_server_event(frame)
    assert "the frame: '{" in str(info.value)  # the start of the frame, to find it in a log
    with pytest.raises(ProtocolError, match=problem):
        decode_server_event(frame.encode())


def test_a_huge_integer_time_is_not_echoed_in_full() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_server_event(_stamps(["a"], [0], [10**400]))
    assert len(str(info.value)) < 300


@pytest.mark.parametrize(
    ("starts", "ends"),
    [
        ((0, 0), (0, 0)),  # zero-length words at the very start
        ((0.25, 0.25), (0.5, 0.5)),  # equal times are in order
        ((0, 1), (2, 2)),  # integers, and a word ending with the next
        ((0.1, 0.2), (0.9, 0.9)),  # words may overlap
    ],
)
def test_word_times_in_order_are_accepted(
    starts: tuple[float, float], ends: tuple[float, float]
) -> None:
    event = decode_server_event(_stamps(["a", "b"], list(starts), list(ends)))
    assert event == TimestampsEvent(("a", "b"), starts, ends)
    assert decode_server_event(_stamps([], [], [])) == TimestampsEvent((), (), ())


def test_unknown_message_types_are_skipped_with_a_debug_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="rime_trio"):
        assert decode_server_event('{"type": "metrics", "value": 1}') is None
    assert "metrics" in caplog.text


# ----------------------------------------------------------------------------- stream state


def make_state(**kw: object) -> StreamState:
    kw.setdefault("audio_format", "pcm")
    kw.setdefault("sample_rate", 8000)
    kw.setdefault("tag", "t")
    return StreamState("s1", **kw)  # type: ignore[arg-type]


def sent(frames: list[str]) -> list[dict[str, str]]:
    return [json.loads(f) for f in frames]


def test_each_message_gets_the_next_tag_under_a_random_per_stream_part() -> None:
    state = make_state()
    assert sent(state.say("One. Two", sentence=False)) == [
        {"text": "One. ", "contextId": "t#1"},
        {"text": "Two", "contextId": "t#2"},
    ]
    a = StreamState("same-label", audio_format="pcm", sample_rate=8000)
    b = StreamState("same-label", audio_format="pcm", sample_rate=8000)
    assert a.tag != b.tag
    assert len(a.tag) == 16


def test_by_sentence_flushes_each_complete_sentence() -> None:
    state = make_state()
    assert sent(state.say("Hello there.", sentence=True)) == [
        {"text": "Hello there.", "contextId": "t#1"},
        {"operation": "flush"},
    ]
    assert sent(state.say(" And more", sentence=False)) == [
        {"text": " And more", "contextId": "t#2"}
    ]


def test_immediate_mode_is_never_flushed_automatically() -> None:
    state = make_state(segment="immediate")
    frames = state.say("Hello there. ", sentence=True)
    assert sent(frames) == [{"text": "Hello there. ", "contextId": "t#1"}]


def test_end_of_input_is_eos_and_the_close_completes_the_stream() -> None:
    state = make_state()
    state.say("Hi.", sentence=True)
    assert state.end() == ['{"operation": "eos"}']
    state.receive(AudioEvent(b"\x00\x00", "t#1"))
    assert not state.complete
    assert state.finish() == []
    assert state.complete


def test_a_close_that_answered_none_of_the_text_is_connection_lost() -> None:
    state = make_state()
    state.say("Hi.", sentence=True)
    state.end()
    with pytest.raises(ConnectionLost, match="without answering"):
        state.finish()
    empty = make_state()
    empty.end()  # nothing was said: a bare close is the end
    assert empty.finish() == []


def test_a_close_before_the_input_ended_is_connection_lost() -> None:
    state = make_state()
    state.say("Hi.", sentence=True)
    with pytest.raises(ConnectionLost):
        state.finish()


def test_audio_is_owed_after_a_flush_until_a_done_and_always_after_eos() -> None:
    state = make_state()
    assert not state.audio_owed
    state.say("Unfinished", sentence=False)
    assert not state.audio_owed  # the caller has simply not finished the sentence
    state.say(" sentence.", sentence=True)
    assert state.audio_owed
    state.receive(DoneEvent("t#2"))
    assert not state.audio_owed
    state.end()
    assert state.audio_owed
    state.receive(DoneEvent("t#2"))
    assert state.audio_owed  # only the close ends the stream
    state.finish()
    assert not state.audio_owed


def test_never_segment_owes_audio_only_after_flush_and_immediate_after_text() -> None:
    never = make_state(segment="never")
    never.say("Hello", sentence=False)
    assert not never.audio_owed
    never.flush()
    assert never.audio_owed
    immediate = make_state(segment="immediate")
    immediate.say("Hello", sentence=False)
    assert immediate.audio_owed


def test_audio_chunks_carry_stream_offsets_and_the_label() -> None:
    state = make_state()
    state.say("Hi. ", sentence=False)
    (a,) = state.receive(AudioEvent(b"\x00" * 8000, "t#1"))
    (b,) = state.receive(AudioEvent(b"\x00" * 4000, "t#1"))
    assert isinstance(a, AudioChunk)
    assert isinstance(b, AudioChunk)
    assert (a.offset, a.duration, b.offset, b.duration) == (0.0, 0.5, 0.5, 0.25)
    assert (a.context_id, a.sample_rate, a.audio_format, a.channels) == ("s1", 8000, "pcm", 1)
    assert state.audio_seconds == 0.75


def _second(n: float) -> bytes:
    return b"\x00" * int(16000 * n)


@pytest.mark.parametrize("placement", ["before", "between", "after"])
@pytest.mark.parametrize("dones", [True, False])
def test_timestamps_are_rebased_at_each_run_wherever_they_arrive(
    placement: str, dones: bool
) -> None:
    """Runs start where the tag changes or after a done; with no done between runs (the
    current docs) the tag change alone must place them."""
    state = make_state()
    state.say("One two. Three. Four. ", sentence=False)
    runs = [
        ("t#1", TimestampsEvent(("One", "two"), (0.0, 0.5), (0.4, 0.9), "t#1"), [1.0]),
        ("t#2", TimestampsEvent(("Three",), (0.1,), (0.4,), "t#2"), [0.25, 0.25]),
        ("t#3", TimestampsEvent(("Four",), (0.0,), (0.3,), "t#3"), [0.5]),
    ]
    words: list[WordTimestamp] = []
    for tag, stamps, chunks in runs:
        events: list[object] = [AudioEvent(_second(n), tag) for n in chunks]
        position = {"before": 0, "between": 1, "after": len(events)}[placement]
        events.insert(position, stamps)
        if dones:
            events.append(DoneEvent(tag))
        for event in events:
            words += [e for e in state.receive(event) if isinstance(e, WordTimestamp)]  # type: ignore[arg-type]
    assert [(w.word, w.start, w.end) for w in words] == [
        ("One", 0.0, 0.4),
        ("two", 0.5, 0.9),
        ("Three", 1.1, 1.4),
        ("Four", 1.5, 1.8),
    ]


def test_a_done_alone_starts_a_new_run_even_under_the_same_tag() -> None:
    state = make_state()
    state.say("A. B. ", sentence=False)
    state.receive(AudioEvent(_second(1.0), "t#2"))
    state.receive(DoneEvent("t#2"))
    (word,) = state.receive(TimestampsEvent(("B",), (0.2,), (0.3,), "t#2"))
    assert isinstance(word, WordTimestamp)
    assert word.start == 1.2


def test_events_of_other_contexts_are_dropped_and_counted() -> None:
    state = make_state()
    state.say("Hi. ", sentence=False)
    for context_id in ("t0#1", "tt#1", "t#x", "t#9", "t#", "t#١", "other", None):
        assert state.receive(AudioEvent(b"\x00\x00", context_id)) == []
    assert state.foreign_events == 8
    assert state.audio_seconds == 0.0  # nothing was delivered


def test_an_interruption_drops_earlier_events_and_rewinds_to_the_audio_taken() -> None:
    state = make_state()
    state.say("First sentence. ", sentence=True)
    state.receive(AudioEvent(_second(0.5), "t#1"))  # 0.5 s handed over, 0.25 s of it taken
    state.hold(0.25)
    # while the interruption is on its way nothing is delivered, of any tag
    assert state.receive(AudioEvent(_second(0.5), "t#1")) == []
    assert state.needs_new_socket
    state.interrupt()
    assert not state.needs_new_socket
    assert not state.audio_owed
    # late events of the interrupted run never reach the caller
    assert state.receive(AudioEvent(_second(0.5), "t#1")) == []
    assert state.receive(TimestampsEvent(("x",), (0.0,), (0.1,), "t#1")) == []
    assert state.receive(DoneEvent("t#1")) == []
    assert state.foreign_events == 0  # stale, not foreign
    assert state.audio_seconds == 0.25  # what was taken, not what was dropped
    state.say("After. ", sentence=True)
    stamps = state.receive(TimestampsEvent(("After",), (0.04,), (0.3,), "t#2"))
    (chunk,) = state.receive(AudioEvent(b"\x00" * 800, "t#2"))
    assert stamps == [WordTimestamp("After", 0.29, 0.55, "s1")]
    assert isinstance(chunk, AudioChunk)
    assert chunk.offset == 0.25


def test_an_interruption_with_nothing_sent_since_the_last_keeps_the_socket() -> None:
    state = make_state()
    state.hold(0.0)
    assert not state.needs_new_socket
    state.interrupt()
    state.say("Hi", sentence=False)
    state.hold(0.0)
    assert state.needs_new_socket
    state.interrupt()
    state.flush()
    state.hold(0.0)
    assert not state.needs_new_socket  # a flush of nothing left nothing to stop


def test_error_event_raises_server_error() -> None:
    state = make_state()
    with pytest.raises(ServerError, match="bad speaker"):
        state.receive(ErrorEvent("bad speaker"))


def test_odd_pcm_bytes_are_carried_never_lost() -> None:
    state = make_state()
    state.say("Hi. ", sentence=False)
    out = state.receive(AudioEvent(b"\x01\x02\x03", "t#1"))
    out += state.receive(AudioEvent(b"\x04", "t#1"))
    out += state.receive(AudioEvent(b"\x05", "t#1"))
    state.end()
    out += state.finish()
    chunks = [e for e in out if isinstance(e, AudioChunk)]
    assert all(len(c.data) % 2 == 0 for c in chunks[:-1])
    assert b"".join(c.data for c in chunks) == b"\x01\x02\x03\x04\x05"


def test_restart_forgets_progress_since_the_last_interruption() -> None:
    state = make_state()
    state.say("Hi. ", sentence=True)
    state.receive(AudioEvent(b"\x01", "t#1"))  # a half sample, carried, not delivered
    state.restart()
    (chunk,) = state.receive(AudioEvent(b"\x02\x03", "t#1"))
    assert isinstance(chunk, AudioChunk)
    assert chunk.data == b"\x02\x03"
    assert chunk.offset == 0.0
    # after an interruption (audio already delivered), a retry restarts from that point
    state.hold(0.5)
    state.interrupt()
    state.say("Again. ", sentence=True)
    state.receive(AudioEvent(_second(0.25), "t#2"))
    state.restart()
    (again,) = state.receive(AudioEvent(_second(0.25), "t#2"))
    assert isinstance(again, AudioChunk)
    assert again.offset == 0.5


def test_a_flush_with_nothing_new_owes_nothing() -> None:
    state = make_state()
    state.say("Hello.", sentence=True)
    state.receive(AudioEvent(_second(0.1), "t#1"))
    state.receive(DoneEvent("t#1"))
    assert not state.audio_owed
    state.flush()  # nothing new was sent: the server has nothing to answer
    assert not state.audio_owed


def test_a_done_tagged_where_the_last_sentence_began_answers_up_to_its_flush() -> None:
    """A server may tag a run by the message its last sentence began in; the done still
    answers everything up to the flush that closed that sentence."""
    state = make_state()
    state.say("I met Dr. Smith.", sentence=True)  # two messages, t#1 and t#2, then a flush
    assert state.audio_owed
    state.receive(AudioEvent(_second(0.1), "t#1"))
    state.receive(DoneEvent("t#1"))
    assert not state.audio_owed


def test_audio_or_timestamps_answer_a_flushed_run_so_a_missing_done_owes_nothing() -> None:
    """A server may send no done (the emulator's missing_done): once a run's events arrive,
    a caller who pauses before the next sentence is owed nothing, so nothing times out."""
    state = make_state()
    state.say("First sentence.", sentence=True)
    assert state.audio_owed
    state.receive(AudioEvent(_second(0.1), "t#1"))
    assert not state.audio_owed  # the caller may now think as long as it likes
    state.say("Second sentence.", sentence=True)
    assert state.audio_owed
    state.receive(TimestampsEvent(("Second", "sentence."), (0.0, 0.3), (0.2, 0.6), "t#2"))
    assert not state.audio_owed
    state.end()
    assert state.audio_owed  # after the input ended, only the close ends the stream
    state.finish()
    assert not state.audio_owed


def test_events_of_an_earlier_run_leave_a_later_flushed_run_owed() -> None:
    state = make_state()
    state.say("One.", sentence=True)
    state.say("Two.", sentence=True)
    state.receive(AudioEvent(_second(0.1), "t#1"))
    state.receive(TimestampsEvent(("One.",), (0.0,), (0.1,), "t#1"))
    assert state.audio_owed  # "Two." is still to come
    state.receive(AudioEvent(_second(0.1), "t#2"))
    assert not state.audio_owed


def test_audio_tagged_where_the_last_sentence_began_answers_up_to_its_flush() -> None:
    state = make_state()
    state.say("I met Dr. Smith.", sentence=True)  # two messages, t#1 and t#2, then a flush
    state.receive(AudioEvent(_second(0.1), "t#1"))
    assert not state.audio_owed


def test_foreign_and_stale_audio_answer_nothing() -> None:
    state = make_state()
    state.say("Old.", sentence=True)
    state.hold(0.0)
    state.interrupt()
    state.say("New.", sentence=True)
    state.receive(AudioEvent(_second(0.1), "t#1"))  # stale: text sent before the interruption
    state.receive(AudioEvent(_second(0.1), "other#2"))  # another stream's
    state.receive(AudioEvent(_second(0.1), "t#9"))  # a tag never sent
    assert state.audio_owed
    state.receive(AudioEvent(_second(0.1), "t#2"))
    assert not state.audio_owed


def test_immediate_mode_audio_answers_what_was_sent() -> None:
    state = make_state(segment="immediate")
    state.say("Hello", sentence=False)
    assert state.audio_owed
    state.receive(AudioEvent(_second(0.1), "t#1"))
    assert not state.audio_owed


def test_mulaw_durations() -> None:
    state = make_state(audio_format="mulaw")
    state.say("Hi. ", sentence=False)
    (chunk,) = state.receive(AudioEvent(b"\x7f" * 4000, "t#1"))
    assert isinstance(chunk, AudioChunk)
    assert chunk.duration == 0.5


def test_whitespace_alone_sends_nothing_until_text_follows() -> None:
    state = make_state()
    assert state.say("   ", sentence=False) == []
    assert not state.needs_new_socket  # nothing went out: a clear() needs no new socket
    assert sent(state.say("x", sentence=False)) == [{"text": "   x", "contextId": "t#1"}]
    assert state.needs_new_socket


def test_recursion_limit_is_not_exceeded_by_deep_json() -> None:
    deep = "[" * (sys.getrecursionlimit() * 2) + "]" * (sys.getrecursionlimit() * 2)
    with pytest.raises(ProtocolError):
        decode_server_event(deep)


# ----------------------------------------------------------------------------- segment=never


def test_never_flushes_each_whole_sentence_and_ends_with_a_flush_not_eos() -> None:
    state = make_state(segment="never")
    assert sent(state.say("One. ", sentence=True)) == [
        {"text": "One. ", "contextId": "t#1"},
        {"operation": "flush"},
    ]
    assert sent(state.say("Two", sentence=False)) == [{"text": "Two", "contextId": "t#2"}]
    assert sent(state.end()) == [{"operation": "flush"}]
    assert state.awaits_done
    assert state.audio_owed
    assert not state.eos_sent


def test_never_completes_at_the_done_of_the_last_flush_and_leaves_the_socket_open() -> None:
    state = make_state(segment="never")
    state.say("One. ", sentence=True)
    state.say("Dr. Smith", sentence=False)  # cut in two at the server's rule
    state.end()
    assert state.receive(AudioEvent(b"\x01\x00", "t#1")) != []
    assert state.receive(DoneEvent("t#1")) == []
    assert not state.complete  # the first flush's done: the last one's audio is to come
    state.receive(AudioEvent(b"\x02\x00", "t#2"))
    state.receive(DoneEvent("t#2"))  # "Dr." alone, a server that cut there: more to come
    assert not state.complete
    state.receive(AudioEvent(b"\x03\x00", "t#3"))
    state.receive(DoneEvent("t#3"))
    assert state.complete
    assert state.ended_by_done
    assert not state.audio_owed
    assert state.give_up_on_done() == []


def test_never_ignores_foreign_and_unflushed_dones_and_gives_up_with_eos() -> None:
    state = make_state(segment="never")
    state.say("One. ", sentence=True)
    state.end()
    state.receive(DoneEvent("other#1"))  # another stream's
    state.receive(DoneEvent(None))
    assert not state.complete
    assert state.give_up_on_done() == []  # no audio yet: a slow server, the timeout's case
    state.receive(AudioEvent(b"\x01\x00", "t#1"))
    assert sent(state.give_up_on_done()) == [{"operation": "eos"}]
    assert state.gave_up_on_done
    assert state.done_missed
    assert state.eos_sent
    state.finish()  # the close is the end now
    assert state.complete
    assert not state.ended_by_done


def test_a_done_that_comes_after_the_give_up_was_only_slow() -> None:
    state = make_state(segment="never")
    state.say("One. ", sentence=True)
    state.end()
    state.receive(AudioEvent(b"\x01\x00", "t#1"))
    state.give_up_on_done()
    state.receive(DoneEvent("t#1"))  # before the close: dones can still be trusted
    assert not state.done_missed


def test_never_ends_with_eos_when_the_last_done_came_before_the_end_or_done_is_distrusted() -> None:
    early = make_state(segment="never")
    early.say("One. ", sentence=True)
    early.receive(AudioEvent(b"\x01\x00", "t#1"))
    early.receive(DoneEvent("t#1"))
    assert sent(early.end()) == [{"operation": "eos"}]  # nothing more would come to end on
    distrusted = make_state(segment="never")
    distrusted.trust_done = False
    distrusted.say("One. ", sentence=True)
    assert sent(distrusted.end()) == [{"operation": "eos"}]
    nothing = make_state(segment="never")
    assert sent(nothing.end()) == [{"operation": "eos"}]


def test_a_retry_forgets_the_dones_of_the_failed_socket() -> None:
    state = make_state(segment="never")
    state.say("One. ", sentence=True)
    state.receive(DoneEvent("t#1"))
    state.restart()  # everything is re-sent on a new socket: its done is to come again
    assert state.end() == []  # flushed already: wait for that done (not eos)
    assert state.awaits_done
    state.receive(DoneEvent("t#1"))
    assert state.ended_by_done
