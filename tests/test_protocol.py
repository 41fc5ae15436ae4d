"""The sans-IO core, tested synchronously: no sockets, no trio."""

from __future__ import annotations

import base64
import json
import logging
import sys

import pytest

from rime_trio import AudioChunk, ProtocolError, ServerError, WordTimestamp
from rime_trio._protocol import (
    MAX_TEXT_CHARS,
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
    ends_sentence,
    split_text,
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


def test_unknown_message_types_are_skipped_with_a_debug_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="rime_trio"):
        assert decode_server_event('{"type": "metrics", "value": 1}') is None
    assert "metrics" in caplog.text


# ----------------------------------------------------------------------------- splitting


def test_short_text_is_not_split() -> None:
    assert split_text("Hello there.") == ["Hello there."]
    assert split_text("") == []


def test_long_text_splits_at_sentence_ends() -> None:
    sentence = "This sentence is exactly fifty characters long ok. "
    assert len(sentence) == 51
    text = sentence * 40
    pieces = split_text(text)
    assert "".join(pieces) == text
    assert all(len(p) <= MAX_TEXT_CHARS for p in pieces)
    assert all(p.endswith("ok. ") for p in pieces)


def test_a_sentence_longer_than_the_limit_splits_at_words() -> None:
    text = "word " * 500  # 2,500 characters, no sentence end
    pieces = split_text(text)
    assert "".join(pieces) == text
    assert all(len(p) <= MAX_TEXT_CHARS for p in pieces)
    assert all(p.endswith(" ") for p in pieces)


def test_a_giant_word_is_cut_as_a_last_resort() -> None:
    text = "x" * 2500
    pieces = split_text(text)
    assert [len(p) for p in pieces] == [1000, 1000, 500]


def test_split_respects_a_custom_limit_and_mixed_boundaries() -> None:
    text = "Short one. " + "averyveryverylongword " * 3 + "End!"
    pieces = split_text(text, limit=30)
    assert "".join(pieces) == text
    assert all(len(p) <= 30 for p in pieces)
    assert pieces[0] == "Short one. "


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello.", True),
        ("Hello. ", True),
        ('He said "hi!"', True),
        ("Hello", False),
        ("", False),
        ("3.5", False),
    ],
)
def test_ends_sentence(text: str, expected: bool) -> None:
    assert ends_sentence(text) is expected


# ----------------------------------------------------------------------------- stream state


def make_state(**kw: object) -> StreamState:
    kw.setdefault("audio_format", "pcm")
    kw.setdefault("sample_rate", 8000)
    return StreamState("s1", **kw)  # type: ignore[arg-type]


def sent_context_ids(frames: list[str]) -> list[str]:
    return [json.loads(f)["contextId"] for f in frames]


def test_each_text_message_gets_the_next_tag() -> None:
    state = make_state()
    assert sent_context_ids(state.text_frames("One. ")) == ["s1#1"]
    assert sent_context_ids(state.text_frames("Two. ")) == ["s1#2"]
    long = "word " * 300
    assert sent_context_ids(state.text_frames(long)) == ["s1#3", "s1#4"]


def test_whitespace_only_pieces_are_never_sent() -> None:
    state = make_state()
    assert state.text_frames("   \n") == []
    sentence = "a" * 994 + " end."
    assert len(sentence) == MAX_TEXT_CHARS - 1
    frames = state.text_frames(sentence + " ")
    texts = [json.loads(f)["text"] for f in frames]
    assert texts == [sentence]  # the lone trailing space is not a message of its own
    # ...but the next message keeps the sentences apart
    (frame,) = state.text_frames("Next.")
    assert json.loads(frame)["text"] == " Next."
    state.receive(DoneEvent("s1#1"))
    state.receive(DoneEvent("s1#2"))
    state.end_input_frames()
    assert state.complete


def test_pieces_never_exceed_the_limit_even_with_a_separator() -> None:
    state = make_state()
    state.text_frames("x" * 5)  # ends without whitespace
    frames = state.text_frames("y" * 3000)
    assert all(len(json.loads(f)["text"]) <= MAX_TEXT_CHARS for f in frames)
    assert json.loads(frames[0])["text"].startswith(" y")


def test_audio_owed_follows_sentences_flushes_and_dones() -> None:
    state = make_state()
    assert not state.audio_owed
    state.text_frames("Unfinished")
    assert not state.audio_owed  # bySentence: the server waits for a sentence end
    state.text_frames(" sentence. ")
    assert state.audio_owed
    state.receive(DoneEvent("s1#2"))
    assert not state.audio_owed
    state.text_frames("Tail")
    assert state.end_input_frames() == ['{"operation": "flush"}']
    assert state.audio_owed
    assert not state.complete
    state.receive(DoneEvent("s1#3"))
    assert state.complete
    assert not state.audio_owed


def test_never_segment_owes_audio_only_after_flush() -> None:
    state = make_state(segment="never")
    state.text_frames("Hello. ")
    assert not state.audio_owed
    state.flush_frame()
    assert state.audio_owed


def test_end_input_after_everything_was_done_needs_no_flush() -> None:
    state = make_state()
    state.text_frames("Hello. ")
    state.receive(DoneEvent("s1#1"))
    assert state.end_input_frames() == []
    assert state.complete


def test_audio_chunks_carry_stream_offsets() -> None:
    state = make_state()
    state.text_frames("Hi. ")
    (a,) = state.receive(AudioEvent(b"\x00" * 8000, "s1#1"))
    (b,) = state.receive(AudioEvent(b"\x00" * 4000, "s1#1"))
    assert isinstance(a, AudioChunk)
    assert isinstance(b, AudioChunk)
    assert (a.offset, a.duration, b.offset, b.duration) == (0.0, 0.5, 0.5, 0.25)
    assert (a.context_id, a.sample_rate, a.audio_format, a.channels) == ("s1", 8000, "pcm", 1)
    assert state.audio_seconds == 0.75


def test_timestamps_are_rebased_per_batch_wherever_they_arrive() -> None:
    state = make_state()
    state.text_frames("One two. ")
    state.text_frames("Three. ")
    state.text_frames("Four. ")
    # batch 1: timestamps before audio
    first = state.receive(TimestampsEvent(("One", "two"), (0.0, 0.5), (0.4, 0.9), "s1#1"))
    state.receive(AudioEvent(b"\x00" * 16000, "s1#1"))  # 1.0 s
    state.receive(DoneEvent("s1#1"))
    # batch 2: timestamps between chunks
    state.receive(AudioEvent(b"\x00" * 4000, "s1#2"))
    second = state.receive(TimestampsEvent(("Three",), (0.1,), (0.4,), "s1#2"))
    state.receive(AudioEvent(b"\x00" * 4000, "s1#2"))  # batch 2 = 0.5 s
    state.receive(DoneEvent("s1#2"))
    # batch 3: timestamps after all audio
    state.receive(AudioEvent(b"\x00" * 8000, "s1#3"))
    third = state.receive(TimestampsEvent(("Four",), (0.0,), (0.3,), "s1#3"))
    assert first == [WordTimestamp("One", 0.0, 0.4, "s1"), WordTimestamp("two", 0.5, 0.9, "s1")]
    assert second == [WordTimestamp("Three", 1.1, 1.4, "s1")]
    assert third == [WordTimestamp("Four", 1.5, 1.8, "s1")]


def test_events_of_other_contexts_are_dropped_and_counted() -> None:
    state = make_state()
    state.text_frames("Hi. ")
    for context_id in (None, "s0#1", "s10#1", "s1#x", "s1#9", "other"):
        assert state.receive(AudioEvent(b"\x00\x00", context_id)) == []
        assert state.receive(DoneEvent(context_id)) == []
    assert state.foreign_events == 12
    assert state.audio_bytes == 0
    assert state.audio_owed


def test_clear_discards_earlier_audio_and_keeps_timestamps_aligned() -> None:
    state = make_state()
    state.text_frames("First sentence. ")
    state.receive(AudioEvent(b"\x00" * 8000, "s1#1"))  # 0.5 s delivered
    assert json.loads(state.clear_frame()) == {"operation": "clear"}
    assert not state.audio_owed
    # late audio of the interrupted batch must not reach the caller
    assert state.receive(AudioEvent(b"\x00" * 8000, "s1#1")) == []
    assert state.receive(TimestampsEvent(("x",), (0.0,), (0.1,), "s1#1")) == []
    assert state.discarded_events == 2
    state.text_frames("After. ")
    stamps = state.receive(TimestampsEvent(("After",), (0.04,), (0.3,), "s1#2"))
    (chunk,) = state.receive(AudioEvent(b"\x00" * 800, "s1#2"))
    assert stamps == [WordTimestamp("After", 0.54, 0.8, "s1")]
    assert isinstance(chunk, AudioChunk)
    assert chunk.offset == 0.5


def test_error_event_raises_server_error() -> None:
    state = make_state()
    with pytest.raises(ServerError, match="bad speaker"):
        state.receive(ErrorEvent("bad speaker"))


def test_odd_pcm_bytes_are_carried_never_lost() -> None:
    state = make_state()
    state.text_frames("Hi. ")
    out = state.receive(AudioEvent(b"\x01\x02\x03", "s1#1"))
    out += state.receive(AudioEvent(b"\x04", "s1#1"))
    out += state.receive(AudioEvent(b"\x05", "s1#1"))
    state.end_input_frames()
    out += state.receive(DoneEvent("s1#1"))
    chunks = [e for e in out if isinstance(e, AudioChunk)]
    assert all(len(c.data) % 2 == 0 for c in chunks[:-1])
    assert b"".join(c.data for c in chunks) == b"\x01\x02\x03\x04\x05"


def test_mulaw_durations() -> None:
    state = make_state(audio_format="mulaw")
    state.text_frames("Hi. ")
    (chunk,) = state.receive(AudioEvent(b"\x7f" * 4000, "s1#1"))
    assert isinstance(chunk, AudioChunk)
    assert chunk.duration == 0.5


def test_sent_any() -> None:
    state = make_state()
    assert not state.sent_any
    state.text_frames("x")
    assert state.sent_any


def test_recursion_limit_is_not_exceeded_by_deep_json() -> None:
    deep = "[" * (sys.getrecursionlimit() * 2) + "]" * (sys.getrecursionlimit() * 2)
    with pytest.raises(ProtocolError):
        decode_server_event(deep)
