"""The v1 stream's sans-IO state (``_protocol_v1.V1StreamState``), with plain synchronous calls:
frames in the order a server must see them, the ``segment="never"`` hold, clears and the
stale events after them, completion and what is owed. No sockets, no tasks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from rime_api import text_to_speech_pb2 as tts

from rime_trio import AudioChunk, RimeOptions, WordTimestamp
from rime_trio._errors import ConnectionLost, ProtocolError, ServerError
from rime_trio._options import Segment
from rime_trio._protocol_v1 import (
    FLUSH_MESSAGE,
    SUBPROTOCOL_BINARY,
    Audio,
    Cancelled,
    Done,
    ErrorEvent,
    Frame,
    Ready,
    Started,
    V1Connection,
    V1StreamState,
    decode_request,
    encode_message,
)
from rime_trio._segment import MAX_TEXT_CHARS

RATE = 8000
OPTIONS = RimeOptions(api_key="test-key", sample_rate=RATE)


def connection() -> V1Connection:
    conn = V1Connection(SUBPROTOCOL_BINARY)
    ready = tts.WebSocketResponse(ready=tts.WebSocketReady(protocol=1))
    assert conn.receive(encode_message(ready, "binary")) == [Ready(1)]
    return conn


def state_on(
    conn: V1Connection, segment: Segment = "bySentence", **options: object
) -> V1StreamState:
    state = V1StreamState("label", OPTIONS.replace(segment=segment, **options))
    state.attach(conn)
    return state


def requests(frames: list[Frame]) -> list[tuple[str, str | None]]:
    """(payload kind, its text) of each frame, as the server reads them."""
    out: list[tuple[str, str | None]] = []
    for frame in frames:
        request = decode_request(frame)
        kind = request.WhichOneof("payload")
        assert kind is not None
        out.append((kind, request.text if kind == "text" else None))
    return out


def server(conn: V1Connection, context_id: str, **payload: object) -> list[Audio | Done]:
    response = tts.WebSocketResponse(context_id=context_id, **payload)  # type: ignore[arg-type]
    events = conn.receive(encode_message(response, "binary"))
    assert all(isinstance(e, Audio | Done | Started | Cancelled | ErrorEvent) for e in events)
    return events  # type: ignore[return-value]


def say(state: V1StreamState, text: str, *, end: bool = False) -> list[Frame]:
    return state.frames(state.say(text, sentence=False) + (state.end() if end else []), end=end)


# --------------------------------------------------------------------------- outgoing


def test_the_first_frames_start_a_context_with_the_streams_settings_label_and_clock() -> None:
    conn = connection()
    state = state_on(conn, word_timestamps=False)
    frames = say(state, "Hello there. ")
    assert requests(frames) == [("start", None), ("text", "Hello there. ")]
    start = decode_request(frames[0])
    assert start.context_id == state.wire_id
    assert start.start.audio_parameters.sampling_rate == RATE
    assert not start.start.timestamps.enable  # word_timestamps=False
    assert conn.accepts_text(start.context_id)
    # The next text goes on the same context; the end closes its input.
    assert requests(say(state, "Bye.", end=True)) == [("text", "Bye."), ("end", None)]
    assert state.end_sent
    assert not conn.accepts_text(start.context_id)


def test_text_is_cut_like_on_ws3_into_whole_sentences_within_the_limit() -> None:
    state = state_on(connection())
    long = "word " * 230 + "end. "
    messages = state.say("One. Two? " + long, sentence=False)
    assert messages[:2] == ["One. ", "Two? "]
    assert "".join(messages) == "One. Two? " + long
    assert all(len(m) <= MAX_TEXT_CHARS for m in messages)
    # Whitespace alone is held for the next text (it would make no run).
    assert state.say("  ", sentence=False) == []
    assert state.say("Three.", sentence=False) == ["  Three."]


def test_segment_never_holds_the_text_until_a_flush() -> None:
    state = state_on(connection(), segment="never")
    assert state.say("One. ", sentence=False) == []
    assert state.say("Two.", sentence=False) == []
    assert state.flush() == ["One. ", "Two.", FLUSH_MESSAGE]
    assert state.flush() == []  # nothing held any more


def test_segment_never_says_each_whole_sentence_at_once_and_forces_it() -> None:
    """As on /ws3, where each sentence the client cut is flushed: a context of its own."""
    state = state_on(connection(), segment="never")
    assert state.say("Part of", sentence=False) == []
    assert state.say(" one. ", sentence=True) == ["Part of one. ", FLUSH_MESSAGE]
    assert state.say("Two. ", sentence=True) == ["Two. ", FLUSH_MESSAGE]
    assert state.flush() == []  # forced already


def test_segment_never_says_what_it_held_at_the_end() -> None:
    state = state_on(connection(), segment="never")
    assert state.say("Held back.", sentence=False) == []
    frames = state.frames(state.end(), end=True)
    assert requests(frames) == [("start", None), ("text", "Held back."), ("end", None)]


@pytest.mark.parametrize("segment", ["bySentence", "immediate"])
def test_other_modes_say_text_at_once_and_a_flush_forces_it_once(segment: Segment) -> None:
    state = state_on(connection(), segment=segment)
    assert state.flush() == []  # nothing said yet: nothing to force
    assert state.say("Now. ", sentence=False) == ["Now. "]
    assert state.flush() == [FLUSH_MESSAGE]
    assert state.flush() == []  # nothing said since


def test_an_end_with_nothing_said_still_opens_and_ends_a_context() -> None:
    state = state_on(connection())
    assert requests(state.frames([], end=True)) == [("start", None), ("end", None)]


def test_frames_need_a_socket() -> None:
    with pytest.raises(RuntimeError, match="not attached"):
        V1StreamState("s", OPTIONS).frames(["Hi."], end=False)


def test_after_the_context_ended_unasked_nothing_more_is_said_and_none_is_opened() -> None:
    conn = connection()
    state = state_on(conn)
    say(state, "Hello. ")
    wire_id = state.wire_id
    assert wire_id is not None
    [error] = server(conn, wire_id, error=tts.WebSocketError(kind="unavailable", message="busy"))
    assert say(state, "More.", end=True) == []
    assert state.wire_id == wire_id  # no other context behind its back
    assert conn.open_context_ids == []
    with pytest.raises(ServerError, match="unavailable: busy"):
        state.receive(error)


def test_a_new_socket_gets_a_fresh_context_with_a_fresh_id() -> None:
    first = connection()
    state = state_on(first)
    say(state, "Hello. ")
    old = state.wire_id
    second = connection()
    second.start(second.next_context_id(), OPTIONS)  # the id the old context had, taken
    state.attach(second)
    frames = state.frames(["Hello. "], end=False)  # a replay of what the old one took
    assert requests(frames) == [("start", None), ("text", "Hello. ")]
    new = decode_request(frames[0]).context_id
    assert new != old
    assert new == state.wire_id
    assert state.wire_id == new
    assert second.is_open(new)


# --------------------------------------------------------------------------- incoming


def test_audio_of_the_context_reaches_the_caller_and_its_done_completes_the_stream() -> None:
    conn = connection()
    state = state_on(conn)
    say(state, "Hello. ")
    assert state.wire_id is not None
    [started] = server(conn, state.wire_id, started=tts.WebSocketStarted(request_id="r"))
    assert state.receive(started) == []
    [audio] = server(conn, state.wire_id, audio=b"\x01\x00" * 800)
    [chunk] = state.receive(audio)
    assert isinstance(chunk, AudioChunk)
    assert (chunk.context_id, chunk.offset, chunk.duration) == ("label", 0.0, 0.1)
    state.frames(state.end(), end=True)
    span = tts.SpanTimestamp(text="Hello", start={"nanos": 10_000_000}, end={"nanos": 90_000_000})
    [done] = server(conn, state.wire_id, done=tts.WebSocketDone(timestamps={"spans": [span]}))
    assert state.receive(done) == [WordTimestamp("Hello", 0.01, 0.09, "label")]
    assert state.complete
    assert state.finish() == []
    assert state.foreign_events == 0


def test_audio_is_owed_while_text_is_unanswered_and_after_the_end_until_done() -> None:
    conn = connection()
    state = state_on(conn)
    assert not state.audio_owed  # nothing said
    say(state, "Hello. ")
    assert state.audio_owed
    assert state.wire_id is not None
    [audio] = server(conn, state.wire_id, audio=b"\x00\x00" * 10)
    state.receive(audio)
    assert not state.audio_owed  # answered; the caller may simply pause now
    state.frames([], end=True)
    assert state.audio_owed  # the rest, and the done
    [done] = server(conn, state.wire_id, done=tts.WebSocketDone())
    state.receive(done)
    assert not state.audio_owed


def test_a_done_before_the_input_ended_is_a_protocol_error() -> None:
    conn = connection()
    state = state_on(conn)
    say(state, "Hello. ")
    assert state.wire_id is not None
    [done] = server(conn, state.wire_id, done=tts.WebSocketDone())
    with pytest.raises(ProtocolError, match="before its input ended"):
        state.receive(done)


def test_an_unasked_cancelled_is_a_server_error() -> None:
    conn = connection()
    state = state_on(conn)
    say(state, "Hello. ")
    assert state.wire_id is not None
    [cancelled] = server(conn, state.wire_id, cancelled=tts.WebSocketCancelled())
    with pytest.raises(ServerError, match="cancelled the stream's context"):
        state.receive(cancelled)


def test_finish_before_the_done_is_a_lost_connection() -> None:
    state = state_on(connection())
    state.frames(state.say("Hello.", sentence=False), end=True)
    with pytest.raises(ConnectionLost):
        state.finish()


# --------------------------------------------------------------------------- flush


def flush(state: V1StreamState, text: str = "") -> list[Frame]:
    """The send task's writes for *text* (if any), then a flush, as one list of frames."""
    frames = state.frames(state.say(text, sentence=False), end=False) if text else []
    return frames + state.frames(state.flush(), end=False)


def test_a_flush_ends_the_context_and_the_next_text_starts_a_fresh_one() -> None:
    """v1 has no flush: the context's end is what makes a server speak what it holds."""
    conn = connection()
    state = state_on(conn)
    frames = flush(state, "Hello there")
    assert requests(frames) == [("start", None), ("text", "Hello there"), ("end", None)]
    first = state.wire_id
    assert first is not None
    assert not conn.accepts_text(first)
    assert not state.end_sent  # the input goes on
    assert state.audio_owed  # the server owes the ended context's audio and done
    assert flush(state) == []  # nothing said since: nothing to end
    frames = say(state, "More.")
    assert requests(frames) == [("start", None), ("text", "More.")]
    assert state.wire_id not in (None, first)


def test_a_flush_with_the_text_held_by_segment_never_sends_it_and_ends_the_context() -> None:
    state = state_on(connection(), segment="never")
    assert state.say("Held back", sentence=False) == []
    frames = state.frames(state.flush(), end=False)
    assert requests(frames) == [("start", None), ("text", "Held back"), ("end", None)]


def test_the_next_context_speaks_after_the_flushed_one_on_one_contiguous_clock() -> None:
    """The second context starts before the first's done (its clock place unknown then):
    its events wait, and come out after the first's words, shifted to where its audio ends."""
    conn = connection()
    state = state_on(conn)
    flush(state, "First")
    first = state.wire_id
    assert first is not None
    say(state, "Second.")
    second = state.wire_id
    assert second is not None
    [early] = server(conn, second, audio=b"\x02\x00" * 400)  # 0.05 s, on the wire first
    assert state.receive(early) == []
    [audio] = server(conn, first, audio=b"\x01\x00" * 800)  # 0.1 s
    [chunk] = state.receive(audio)
    assert isinstance(chunk, AudioChunk)
    assert (chunk.offset, chunk.duration) == (0.0, 0.1)
    span = tts.SpanTimestamp(text="First", start={"nanos": 10_000_000}, end={"nanos": 90_000_000})
    [done] = server(conn, first, done=tts.WebSocketDone(timestamps={"spans": [span]}))
    word, kept = state.receive(done)
    assert word == WordTimestamp("First", 0.01, 0.09, "label")
    assert not state.complete  # the input goes on: a flush's done completes nothing
    assert isinstance(kept, AudioChunk)
    assert kept.data == b"\x02\x00" * 400
    assert kept.offset == pytest.approx(0.1)
    [later] = server(conn, second, audio=b"\x03\x00" * 400)
    [next_chunk] = state.receive(later)
    assert isinstance(next_chunk, AudioChunk)
    assert next_chunk.offset == pytest.approx(0.15)
    state.frames(state.end(), end=True)
    span = tts.SpanTimestamp(text="Second", start={"nanos": 40_000_000}, end={"nanos": 80_000_000})
    [done] = server(conn, second, done=tts.WebSocketDone(timestamps={"spans": [span]}))
    [word] = state.receive(done)
    assert isinstance(word, WordTimestamp)
    assert (word.start, word.end) == pytest.approx((0.14, 0.18))
    assert state.complete
    assert not state.audio_owed


def test_the_done_of_a_flushed_context_after_the_next_ones_releases_them_in_order() -> None:
    conn = connection()
    state = state_on(conn)
    flush(state, "One")
    one = state.wire_id
    flush(state, "Two")
    two = state.wire_id
    state.frames(state.say("Three.", sentence=False) + state.end(), end=True)
    three = state.wire_id
    assert one is not None
    assert two is not None
    assert three is not None
    assert len({one, two, three}) == 3
    # The server answers the last context first, then the second, then the first.
    for wire_id, byte in [(three, 3), (two, 2)]:
        for event in server(conn, wire_id, audio=bytes([byte, 0]) * 80):
            assert state.receive(event) == []
        for event in server(conn, wire_id, done=tts.WebSocketDone()):
            assert state.receive(event) == []
    assert state.audio_owed
    out = state.receive(server(conn, one, audio=b"\x01\x00" * 80)[0])
    out += state.receive(server(conn, one, done=tts.WebSocketDone())[0])
    assert [(c.data[0], c.offset) for c in out if isinstance(c, AudioChunk)] == [
        (1, 0.0),
        (2, pytest.approx(0.01)),
        (3, pytest.approx(0.02)),
    ]
    assert state.complete
    assert state.offset == pytest.approx(0.03)


def test_an_end_after_a_flush_with_nothing_new_waits_for_the_flushed_context() -> None:
    conn = connection()
    state = state_on(conn)
    flush(state, "Only this")
    wire_id = state.wire_id
    assert wire_id is not None
    assert state.frames(state.end(), end=True) == []  # its end went out with the flush
    assert state.end_sent
    [done] = server(conn, wire_id, done=tts.WebSocketDone())
    state.receive(done)
    assert state.complete


def test_an_end_drops_the_flushes_of_its_write_and_starts_one_context_at_most() -> None:
    state = state_on(connection())
    messages = ["One", FLUSH_MESSAGE, "Two", FLUSH_MESSAGE, "Three."]
    frames = state.frames(messages, end=True)
    assert requests(frames) == [
        ("start", None),
        ("text", "One"),
        ("text", "Two"),
        ("text", "Three."),
        ("end", None),
    ]


def test_a_write_starts_one_context_at_most_and_keeps_the_rest_for_the_next() -> None:
    """The link routes the context a write leaves current: a second would be nobody's."""
    state = state_on(connection())
    frames = state.frames(["One", FLUSH_MESSAGE, "Two", FLUSH_MESSAGE], end=False)
    assert requests(frames) == [("start", None), ("text", "One"), ("end", None)]
    kept = state.frames(["Three."], end=False)
    assert requests(kept) == [("start", None), ("text", "Two"), ("end", None)]
    assert requests(state.frames([], end=True)) == [
        ("start", None),
        ("text", "Three."),
        ("end", None),
    ]


def test_with_a_context_open_a_write_may_end_it_and_start_the_next() -> None:
    state = state_on(connection())
    say(state, "One. ")
    frames = state.frames(["Two", FLUSH_MESSAGE, "Three."], end=False)
    assert requests(frames) == [("text", "Two"), ("end", None), ("start", None), ("text", "Three.")]


def test_under_split_none_text_is_owed_only_once_its_context_ended() -> None:
    """A server may speak NONE only at the end: silence before it is no stall."""
    conn = connection()
    state = state_on(conn, segment="immediate")
    say(state, "Hello there. ")
    assert not state.audio_owed
    state.frames(state.flush(), end=False)
    assert state.audio_owed
    assert state.wire_id is not None
    [done] = server(conn, state.wire_id, done=tts.WebSocketDone())
    state.receive(done)
    assert not state.audio_owed


def test_a_done_of_a_context_never_ended_is_still_a_protocol_error_after_a_flush() -> None:
    conn = connection()
    state = state_on(conn)
    flush(state, "One")
    say(state, "Two. ")
    assert state.wire_id is not None
    [done] = server(conn, state.wire_id, done=tts.WebSocketDone())
    with pytest.raises(ProtocolError, match="before its input ended"):
        state.receive(done)


def test_a_clear_cancels_every_context_still_speaking() -> None:
    conn = connection()
    state = state_on(conn)
    flush(state, "One")
    one = state.wire_id
    say(state, "Two. ")
    two = state.wire_id
    state.hold(0.0)
    frames = state.interrupt()
    assert requests(frames) == [("cancel", None), ("cancel", None)]
    assert {decode_request(f).context_id for f in frames} == {one, two}
    assert one is not None
    [cancelled] = server(conn, one, cancelled=tts.WebSocketCancelled())
    assert state.receive(cancelled) == []  # asked for: stale, not an error


def test_leaving_cancels_every_context_still_speaking() -> None:
    conn = connection()
    state = state_on(conn)
    flush(state, "One")
    say(state, "Two. ")
    assert requests(state.leave()) == [("cancel", None), ("cancel", None)]
    assert state.wire_id is None


# --------------------------------------------------------------------------- clear


def test_a_clear_holds_at_once_cancels_the_context_and_starts_afresh_on_the_clock() -> None:
    conn = connection()
    state = state_on(conn)
    say(state, "A long first sentence. ")
    old = state.wire_id
    assert old is not None
    [taken] = server(conn, old, audio=b"\x00\x00" * 1600)  # 0.2 s
    state.receive(taken)
    state.hold(0.15)  # the caller took 0.15 s of it
    [late] = server(conn, old, audio=b"\x00\x00" * 800)
    assert state.receive(late) == []  # held: stale at once
    assert state.epoch == 1
    frames = state.interrupt()
    assert requests(frames) == [("cancel", None)]
    assert decode_request(frames[0]).context_id == old
    assert state.wire_id is None
    assert not state.audio_owed
    new_frames = say(state, "Only this.")
    assert requests(new_frames) == [("start", None), ("text", "Only this.")]
    new = state.wire_id
    assert new is not None
    assert new != old
    assert new == state.wire_id
    # The old context's terminal event is stale; the new one's audio starts at 0.15 s.
    [cancelled] = server(conn, old, cancelled=tts.WebSocketCancelled())
    assert state.receive(cancelled) == []
    [audio] = server(conn, new, audio=b"\x00\x00" * 800)
    [chunk] = state.receive(audio)
    assert isinstance(chunk, AudioChunk)
    assert chunk.offset == pytest.approx(0.15)


def test_a_clear_forgets_held_and_half_cut_text() -> None:
    state = state_on(connection(), segment="never")
    state.say("Never said. ", sentence=False)
    state.hold(0.0)
    assert state.interrupt() == []  # no context was started: nothing to cancel
    assert state.flush() == []
    # An open end ('Hi.' may go on with '"'): without the clear, '" he said.' would be cut
    # after the quote that closes it.
    kept = state_on(connection())
    assert kept.say("Hi.", sentence=False) == ["Hi."]
    assert kept.say('" he said.', sentence=False) == ['" ', "he said."]
    cleared = state_on(connection())
    assert cleared.say("Hi.", sentence=False) == ["Hi."]
    cleared.hold(0.0)
    cleared.interrupt()
    assert cleared.say('" he said.', sentence=False) == ['" he said.']


def test_a_clear_after_the_context_ended_has_nothing_to_cancel() -> None:
    conn = connection()
    state = state_on(conn)
    state.frames(state.say("Hi.", sentence=False), end=True)
    assert state.wire_id is not None
    server(conn, state.wire_id, done=tts.WebSocketDone())
    state.hold(0.0)
    assert state.interrupt() == []


def test_leaving_cancels_the_context_only_while_its_audio_is_owed() -> None:
    conn = connection()
    state = state_on(conn)
    say(state, "Hello. ")
    wire_id = state.wire_id
    assert requests(state.leave()) == [("cancel", None)]
    assert state.wire_id is None
    assert conn.is_open(wire_id or "")  # until its cancelled comes

    done_state = state_on(conn)
    done_state.frames(done_state.say("Hi.", sentence=False), end=True)
    assert done_state.wire_id is not None
    [done] = server(conn, done_state.wire_id, done=tts.WebSocketDone())
    done_state.receive(done)
    assert done_state.leave() == []


def test_the_state_module_imports_no_async_library() -> None:
    """``_protocol_v1`` and every module of the package it imports, transitively."""
    package = Path(__file__).parent.parent / "src" / "rime_trio"
    seen: set[str] = set()
    todo = ["_protocol_v1"]
    banned = {"anyio", "trio", "asyncio", "trio_websocket", "sniffio"}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse((package / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
                assert not roots & banned, (name, roots)
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    assert (node.module or "").split(".")[0] not in banned, (name, node.module)
                elif node.level == 1 and node.module:
                    todo.append(node.module.split(".")[0])
    assert "_protocol_v1" in seen


def test_half_a_sample_ending_a_context_mid_stream_is_dropped_and_the_clock_stays_whole() -> None:
    """Found in review: a context whose audio ended on an odd byte handed the caller a 1-byte
    chunk, and every sample of the contexts after it came one byte off."""
    conn = connection()
    state = state_on(conn)
    state.frames(state.say("One. ", sentence=True) + state.flush(), end=False)
    first = state.wire_id
    assert first is not None
    state.frames(state.say("Two. ", sentence=True), end=True)
    second = state.wire_id
    assert second is not None
    out = []
    for wire_id, payload in (
        (first, {"audio": b"\x01\x02\x03"}),  # a sample and a half
        (first, {"done": tts.WebSocketDone()}),
        (second, {"audio": b"\x10\x20\x30"}),  # at the stream's end: handed on, as on /ws3
        (second, {"done": tts.WebSocketDone()}),
    ):
        for event in server(conn, wire_id, **payload):
            out += state.receive(event)
    chunks = [e for e in out if isinstance(e, AudioChunk)]
    assert [c.data for c in chunks] == [b"\x01\x02", b"\x10\x20", b"\x30"]
    assert chunks[1].offset == pytest.approx(1 / 8000)  # right after the one whole sample
    assert state.complete
