"""The emulator's sans-IO v1 server model, with plain synchronous tests."""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rime_api import text_to_speech_pb2 as tts

from rime_trio import RimeOptions
from rime_trio._protocol import Flush, TextMessage
from rime_trio._protocol_v1 import SUBPROTOCOL_BINARY, SUBPROTOCOL_JSON, synthesis_request
from rime_trio.testing import V1Readings, _v1_model, render_speech
from rime_trio.testing._v1_model import Close, Outgoing, V1ServerModel, Wait, select_subprotocol
from rime_trio.testing._ws3_model import Run, Ws3ServerModel

RATE = 8000
OPTIONS = RimeOptions(api_key="k", sample_rate=RATE)


def start_settings(
    text: str = "",
    *,
    split: str | None = None,
    timestamps: bool = True,
    options: RimeOptions = OPTIONS,
) -> tts.SynthesisRequest:
    """A ``start``'s settings as rime-trio makes them, plus what only other clients send (the
    server takes both): *text*, the whole input of a one-shot context, and a *split* strategy
    by name (``accumulate_sentence``, or one the options' segment mode would not give)."""
    request = synthesis_request(options, timestamps=timestamps)
    request.text = text
    if split is not None:
        request.split_strategy = tts.SplitStrategy.Value(f"SPLIT_STRATEGY_{split.upper()}")
    return request


def start(
    context_id: str, text: str = "", *, split: str | None = None, timestamps: bool = True
) -> tts.WebSocketRequest:
    request = start_settings(text, split=split, timestamps=timestamps)
    return tts.WebSocketRequest(context_id=context_id, start=request)


def text(context_id: str, value: str) -> tts.WebSocketRequest:
    return tts.WebSocketRequest(context_id=context_id, text=value)


def end(context_id: str) -> tts.WebSocketRequest:
    return tts.WebSocketRequest(context_id=context_id, end=tts.WebSocketEnd())


def cancel(context_id: str) -> tts.WebSocketRequest:
    return tts.WebSocketRequest(context_id=context_id, cancel=tts.WebSocketCancel())


def model(**kwargs: object) -> V1ServerModel:
    """A model whose ``ready`` has been taken already."""
    server = V1ServerModel(**kwargs)  # type: ignore[arg-type]
    first = server.next_event()
    assert isinstance(first, Outgoing)
    assert first.kind == "ready"
    return server


def drain(server: V1ServerModel, now: float = 0.0) -> list[tts.WebSocketResponse]:
    out: list[tts.WebSocketResponse] = []
    while isinstance(item := server.next_event(now), Outgoing):
        out.append(item.response)
    return out


def kinds(responses: list[tts.WebSocketResponse], context_id: str | None = None) -> list[str]:
    """Payload kinds in order (for *context_id* only, if given), runs of audio folded."""
    folded: list[str] = []
    for response in responses:
        if context_id is not None and response.context_id != context_id:
            continue
        kind = str(response.WhichOneof("payload"))
        if not (kind == "audio" and folded and folded[-1] == "audio"):
            folded.append(kind)
    return folded


def audio_of(responses: list[tts.WebSocketResponse], context_id: str) -> bytes:
    return b"".join(
        r.audio for r in responses if r.context_id == context_id and r.HasField("audio")
    )


def pcm(*sentences: str) -> bytes:
    return b"".join(render_speech(s, RATE).pcm for s in sentences)


def drain_until_audio(server: V1ServerModel, n: int) -> list[tts.WebSocketResponse]:
    """The first *n* audio envelopes (anything before them is passed over)."""
    audio: list[tts.WebSocketResponse] = []
    while len(audio) < n and isinstance(item := server.next_event(0.0), Outgoing):
        if item.kind == "audio":
            audio.append(item.response)
    return audio


def test_ready_comes_first_and_once() -> None:
    server = V1ServerModel()
    first = server.next_event()
    assert isinstance(first, Outgoing)
    assert first.response.ready.protocol == 1
    assert server.next_event() is None


def test_a_one_shot_context_speaks_each_sentence_then_done_with_context_timestamps() -> None:
    server = model(chunk_bytes=500)
    server.receive(start("a", "Hello there. How are you?"))
    out = drain(server)
    assert kinds(out) == ["started", "audio", "done"]
    assert audio_of(out, "a") == pcm("Hello there.", " How are you?")
    spans = out[-1].done.timestamps.spans
    first = render_speech("Hello there.", RATE)
    second = render_speech("How are you?", RATE)
    assert [s.text for s in spans] == ["Hello", "there", "How", "are", "you"]
    # Times run from the start of the context's audio, across its sentences.
    start_of = [s.start.seconds + s.start.nanos / 1e9 for s in spans]
    assert start_of[:2] == pytest.approx(list(first.starts))
    assert start_of[2:] == pytest.approx([first.duration + t for t in second.starts])
    assert [r.text for r in server.records] == ["Hello there.", " How are you?"]
    assert all(r.done for r in server.records)


def test_per_sentence_reading_restarts_word_times_at_each_sentence() -> None:
    server = model(readings=V1Readings(timestamps="per_sentence"))
    server.receive(start("a", "Hello there. How are you?"))
    spans = drain(server)[-1].done.timestamps.spans
    second = render_speech("How are you?", RATE)
    assert spans[2].start.nanos / 1e9 == pytest.approx(second.starts[0])


def test_audio_is_the_same_as_ws3_gives_for_the_same_sentences() -> None:
    """The client sends a sentence at a time on either protocol (a flush after each on /ws3):
    the bytes must not depend on the protocol."""
    sentences = ["Hello there. ", "How are you? ", "Fine."]
    ws3 = Ws3ServerModel("bySentence")
    runs: list[str] = []
    server = model()
    server.receive(start("a"))
    for sentence in sentences:
        ws3.receive(TextMessage(sentence, "x"))
        ws3.receive(Flush())
        while isinstance(action := ws3.next_action(), Run):
            runs.append(action.text)
            ws3.finish_run(action)
        server.receive(text("a", sentence))
    server.receive(end("a"))
    assert len(runs) == 3
    assert audio_of(drain(server), "a") == pcm(*runs)


def test_streaming_split_strategies() -> None:
    server = model()
    server.receive(start("s", split="sentence"))
    server.receive(start("n", split="none"))
    server.receive(start("acc", split="accumulate_sentence"))
    for context_id in ("s", "n", "acc"):
        server.receive(text(context_id, "Hello th"))
        server.receive(text(context_id, "ere. How"))
    assert [(r.context_id, r.text) for r in server.records] == [
        ("s", "Hello th"),
        ("s", "ere."),
        ("s", " How"),
        ("n", "Hello th"),
        ("n", "ere. How"),
        ("acc", "Hello there."),
    ]
    server.receive(end("acc"))
    assert server.records[-1].text == " How"  # the rest, at end
    out = drain(server)
    assert kinds(out, "acc") == ["started", "audio", "done"]
    assert kinds(out, "s") == ["started", "audio"]  # still open


def test_accumulate_waits_for_what_follows_a_final_stop() -> None:
    server = model()
    server.receive(start("a", split="accumulate_sentence"))
    server.receive(text("a", "It costs 2."))
    assert server.records == []  # "2." may go on with "5"
    server.receive(text("a", "5 dollars. "))
    assert [r.text for r in server.records] == ["It costs 2.5 dollars."]


def test_concurrent_contexts_interleave_chunk_by_chunk() -> None:
    server = model(chunk_bytes=100)
    server.receive(start("a", "One two three."))
    server.receive(start("b", "Four five six."))
    out = drain(server)
    audio_ids = [r.context_id for r in out if r.HasField("audio")]
    # Turns alternate while both have audio left.
    assert audio_ids[:6] == ["a", "b"] * 3
    assert audio_of(out, "a") == pcm("One two three.")
    assert audio_of(out, "b") == pcm("Four five six.")
    assert [r.context_id for r in out if r.HasField("done")] == ["a", "b"]


def test_timestamps_only_when_asked() -> None:
    server = model()
    server.receive(start("a", "Hi.", timestamps=False))
    assert not drain(server)[-1].done.HasField("timestamps")


def test_cancel_drops_pending_audio_and_is_answered_once() -> None:
    server = model(chunk_bytes=100)
    server.receive(start("a", "A long enough sentence to cut."))
    server.receive(start("b", "Another."))
    first = [server.next_event() for _ in range(4)]  # started a, started b, a chunk each
    assert all(isinstance(item, Outgoing) for item in first)
    server.receive(cancel("a"))
    server.receive(cancel("a"))  # idempotent: the context is gone, nothing more said
    out = drain(server)
    assert kinds(out, "a") == ["cancelled"]
    assert kinds(out, "b") == ["audio", "done"]
    assert server.records[0].abandoned
    assert not server.records[0].done


def test_cancel_of_a_finished_context_under_each_reading() -> None:
    silent = model()
    silent.receive(start("a", "Hi."))
    drain(silent)
    silent.receive(cancel("a"))
    assert drain(silent) == []
    loud = model(readings=V1Readings(cancel_finished="cancelled"))
    loud.receive(start("a", "Hi."))
    drain(loud)
    loud.receive(cancel("a"))
    assert kinds(drain(loud)) == ["cancelled"]


def test_an_id_is_reusable_once_its_context_finished() -> None:
    server = model()
    server.receive(start("a", "One."))
    server.receive(start("a", "Two."))  # still open: the error ends the open context
    out = drain(server)
    assert kinds(out) == ["started", "error"]
    server.receive(start("a", "Two."))
    out = drain(server)
    assert kinds(out) == ["started", "audio", "done"]
    assert audio_of(out, "a") == pcm("Two.")


def test_bad_starts_are_context_errors_without_started() -> None:
    server = model()
    mp3 = tts.SynthesisRequest(audio_parameters=tts.AudioParameters(audio_format="audio/mpeg"))
    server.receive(tts.WebSocketRequest(context_id="m", start=mp3))
    server.receive(tts.WebSocketRequest(context_id="x" * 129, start=tts.SynthesisRequest()))
    server.receive(start("acc", "Hi."))
    out = drain(server)
    assert [(r.context_id, r.error.kind) for r in out if r.HasField("error")] == [
        ("m", "invalid_input"),
        ("x" * 129, "invalid_input"),
    ]
    assert kinds(out, "acc") == ["started", "audio", "done"]


def test_text_to_a_context_not_open_for_input_ends_it_with_an_error() -> None:
    server = model(max_text_chars=20)
    server.receive(start("a"))
    server.receive(text("a", "Hi. "))
    server.receive(end("a"))
    server.receive(text("a", "More."))  # after end: its one terminal event is this error
    server.receive(start("b"))
    server.receive(text("b", "x" * 21))
    out = drain(server)
    assert kinds(out, "a") == ["started", "error"]
    assert kinds(out, "b") == ["started", "error"]
    [too_long] = [r.error for r in out if r.context_id == "b" and r.HasField("error")]
    assert too_long.message == "text is too long"


def test_connection_level_errors_leave_contexts_running() -> None:
    server = model()
    server.receive(start("a"))
    server.receive(tts.WebSocketRequest(config=tts.WebSocketConfig()))  # after a start
    server.receive(tts.WebSocketRequest(context_id="a"))  # no payload
    server.receive(text("a", "Still here."))
    server.receive(end("a"))
    out = drain(server)
    errors = [r for r in out if r.HasField("error")]
    assert [(r.context_id, r.error.kind) for r in errors] == [("", "invalid_input")] * 2
    assert kinds(out, "a")[-2:] == ["audio", "done"]


def test_pacing_in_real_time_waits_between_chunks() -> None:
    server = model(chunk_bytes=RATE // 5, real_time_factor=1.0, time_to_first_chunk=0.5)
    server.receive(start("a", "Hello."), now=10.0)
    assert isinstance(server.next_event(10.0), Outgoing)  # started: a reply, at once
    item = server.next_event(10.0)
    assert item == Wait(10.5)
    first = server.next_event(10.5)
    assert isinstance(first, Outgoing)
    assert first.kind == "audio"
    # The next chunk (0.1 s of audio later) is due 0.1 s later.
    second = server.next_event(10.5)
    assert isinstance(second, Wait)
    assert second.until == pytest.approx(10.6)


def test_subprotocol_selection() -> None:
    assert select_subprotocol([SUBPROTOCOL_JSON, SUBPROTOCOL_BINARY]) == (SUBPROTOCOL_JSON, "json")
    assert select_subprotocol(["x", SUBPROTOCOL_BINARY]) == (SUBPROTOCOL_BINARY, "binary")
    assert select_subprotocol([]) == (None, "json")
    assert select_subprotocol([], V1Readings(no_subprotocol="binary")) == (None, "binary")
    assert select_subprotocol(["rime-trio"]) == (None, "json")  # unknown only: no echo
    with pytest.raises(ValueError, match="timestamps"):
        V1Readings(timestamps="never")  # type: ignore[arg-type]


_ids = st.sampled_from(["a", "b", "c"])
_requests = st.one_of(
    st.builds(start, _ids, st.sampled_from(["", "One.", "Two. Three"])),
    st.builds(text, _ids, st.sampled_from(["Hi. ", "there", "! Yes."])),
    st.builds(end, _ids),
    st.builds(cancel, _ids),
)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.tuples(_requests, st.integers(0, 4)), max_size=25),
    readings=st.builds(
        V1Readings,
        cancel_finished=st.sampled_from(["silent", "cancelled"]),
        unfinished=st.sampled_from(["speak", "hold"]),
    ),
)
def test_every_accepted_context_gets_exactly_one_terminal_event_after_its_audio(
    steps: list[tuple[tts.WebSocketRequest, int]], readings: V1Readings
) -> None:
    """Any sequence of requests, with sends interleaved at random: each ``started`` is
    followed by its audio and exactly one terminal event, and nothing follows a terminal
    event until the id starts again, except what a request for an id that is not open
    earns: an ``error`` for a text, end or start that found no open context, and (under
    ``cancel_finished="cancelled"``) a ``cancelled`` for a cancel that found none. Those are
    counted against the requests, so a second terminal event of a context is caught."""
    server = model(chunk_bytes=300, readings=readings)
    out: list[tts.WebSocketResponse] = []
    # Answers owed to requests for ids that were not open, per id and kind.
    stray: dict[tuple[str, str], int] = defaultdict(int)
    for request, sends in steps:
        kind = request.WhichOneof("payload")
        context_id = request.context_id
        if context_id not in server.open_contexts:
            if kind in ("text", "end"):
                stray[context_id, "error"] += 1
            elif kind == "cancel" and readings.cancel_finished == "cancelled":
                stray[context_id, "cancelled"] += 1
        server.receive(request)
        for _ in range(sends):
            item = server.next_event()
            if isinstance(item, Outgoing):
                out.append(item.response)
    for context_id in server.open_contexts:
        server.receive(end(context_id))
    out += drain(server)
    assert server.open_contexts == []
    state: dict[str, str] = {}  # id -> "open" or "finished"
    for response in out:
        kind = str(response.WhichOneof("payload"))
        context_id = response.context_id
        if kind == "started":
            assert state.get(context_id) != "open"
            state[context_id] = "open"
        elif state.get(context_id) == "open":
            if kind in ("done", "cancelled", "error"):
                state[context_id] = "finished"
            else:
                assert kind == "audio"
        elif kind in ("error", "cancelled") and stray[context_id, kind] > 0:
            stray[context_id, kind] -= 1  # the answer to a request for a closed id
        else:
            raise AssertionError(f"{kind} for {context_id!r}, which is not open")
    assert all(value == "finished" for value in state.values())


# --------------------------------------------------------------------------- review fixes


def test_mulaw_is_selected_by_the_emulators_own_mime_reading() -> None:
    """The emulator keeps its own MIME list (not the client's Accept table): mu-law is
    ``audio/pcmu`` by default, ``audio/x-mulaw`` under the other reading, never both."""
    request = start_settings("Hi.", options=OPTIONS.replace(audio_format="mulaw"))
    assert request.audio_parameters.audio_format == "audio/pcmu"
    server = model()
    server.receive(tts.WebSocketRequest(context_id="a", start=request))
    assert kinds(drain(server), "a") == ["started", "audio", "done"]
    legacy = model(readings=V1Readings(mulaw_mime="audio/x-mulaw"))
    legacy.receive(tts.WebSocketRequest(context_id="a", start=request))
    [refused] = drain(legacy)
    assert "audio/x-mulaw" in refused.error.message
    http_name = tts.SynthesisRequest(
        text="Hi.", audio_parameters=tts.AudioParameters(audio_format="audio/x-mulaw")
    )
    server.receive(tts.WebSocketRequest(context_id="b", start=http_name))
    assert kinds(drain(server), "b") == ["error"]


def test_round_robin_stays_fair_after_an_id_is_cancelled_and_started_again() -> None:
    server = model(chunk_bytes=100)
    server.receive(start("a", "One two three four five six."))
    server.receive(start("b", "Seven eight nine ten eleven."))
    drain_some = [server.next_event() for _ in range(3)]  # started a, started b, a chunk
    assert all(isinstance(item, Outgoing) for item in drain_some)
    server.receive(cancel("a"))
    server.receive(start("a", "Again one two three four."))
    out = drain(server)
    audio_ids = [r.context_id for r in out if r.HasField("audio")]
    # One chunk each in turn: the cancelled context's stale turn gives "a" no extra one.
    for first, second in itertools.pairwise(audio_ids[:12]):
        assert first != second
    assert audio_of(out, "a") == pcm("Again one two three four.")


def test_text_after_end_under_each_reading() -> None:
    abort = model()
    abort.receive(start("a"))
    abort.receive(text("a", "Hello there. "))
    abort.receive(end("a"))
    abort.receive(text("a", "More."))
    assert kinds(drain(abort), "a") == ["started", "error"]  # aborted, its audio dropped
    reject = model(readings=V1Readings(text_after_end="reject"))
    reject.receive(start("a"))
    reject.receive(text("a", "Hello there. "))
    reject.receive(end("a"))
    reject.receive(text("a", "More."))
    out = drain(reject)
    assert kinds(out, "a") == ["started", "error", "audio", "done"]  # it carries on
    assert audio_of(out, "a") == pcm("Hello there. ")


def test_duplicate_start_under_each_reading() -> None:
    abort = model()
    abort.receive(start("a", "One."))
    abort.receive(start("a", "Two."))
    assert kinds(drain(abort), "a") == ["started", "error"]
    reject = model(readings=V1Readings(duplicate_start="reject"))
    reject.receive(start("a", "One."))
    reject.receive(start("a", "Two."))
    out = drain(reject)
    assert kinds(out, "a") == ["started", "error", "audio", "done"]
    assert audio_of(out, "a") == pcm("One.")


def test_accumulate_final_stop_under_each_reading() -> None:
    holding = model()
    holding.receive(start("a", split="accumulate_sentence"))
    holding.receive(text("a", "It costs 2."))
    assert holding.records == []
    eager = model(readings=V1Readings(accumulate_holds_final_stop=False))
    eager.receive(start("a", split="accumulate_sentence"))
    eager.receive(text("a", "It costs 2."))
    assert [r.text for r in eager.records] == ["It costs 2."]


def test_unfinished_text_is_spoken_on_arrival_by_default() -> None:
    server = model()
    server.receive(start("s", split="sentence"))
    server.receive(start("n", split="none"))
    for context_id in ("s", "n"):
        server.receive(text(context_id, "Hello there."))
        server.receive(text(context_id, " A partial"))
    assert [(r.context_id, r.text) for r in server.records] == [
        ("s", "Hello there."),
        ("s", " A partial"),
        ("n", "Hello there."),
        ("n", " A partial"),
    ]


def test_under_the_hold_reading_sentence_holds_what_it_cannot_tell_is_finished() -> None:
    """ "Hello there." with nothing after it may go on ("Hello there.5"): it waits for more
    text or the end, as does a partial sentence; a sentence end with a space after it counts."""
    server = model(readings=V1Readings(unfinished="hold"))
    server.receive(start("s", split="sentence"))
    server.receive(text("s", "Hello there."))
    assert server.records == []
    server.receive(text("s", " How are you? A partial"))
    assert [r.text for r in server.records] == ["Hello there.", " How are you?"]
    assert kinds(drain(server), "s") == ["started", "audio"]  # the rest held, no done
    server.receive(end("s"))
    assert [r.text for r in server.records][2:] == [" A partial"]
    out = drain(server)
    assert kinds(out, "s") == ["audio", "done"]
    assert audio_of(out, "s") == pcm(" A partial")


def test_under_the_hold_reading_none_speaks_only_at_the_end_all_at_once() -> None:
    server = model(readings=V1Readings(unfinished="hold"))
    server.receive(start("n", split="none"))
    server.receive(text("n", "Hello there. "))
    server.receive(text("n", "Bye."))
    assert server.records == []
    assert kinds(drain(server), "n") == ["started"]
    server.receive(end("n"))
    assert [r.text for r in server.records] == ["Hello there. Bye."]
    out = drain(server)
    assert kinds(out, "n") == ["audio", "done"]
    assert audio_of(out, "n") == pcm("Hello there. Bye.")


def test_a_one_shot_context_says_everything_under_the_hold_reading() -> None:
    server = model(readings=V1Readings(unfinished="hold"))
    server.receive(start("s", "Hello there", split="sentence"))
    server.receive(start("n", "Hello there", split="none"))
    out = drain(server)
    for context_id in ("s", "n"):
        assert kinds(out, context_id) == ["started", "audio", "done"]
        assert audio_of(out, context_id) == pcm("Hello there")


def test_an_unknown_unfinished_reading_is_refused() -> None:
    with pytest.raises(ValueError, match="unfinished"):
        V1Readings(unfinished="later")  # type: ignore[arg-type]


def test_spans_are_reported_before_the_time_scale_factor() -> None:
    server = model()
    stretched = start_settings("Hello there.", options=OPTIONS.replace(time_scale_factor=2.0))
    server.receive(tts.WebSocketRequest(context_id="a", start=stretched))
    spans = drain(server)[-1].done.timestamps.spans
    speech = render_speech("Hello there.", RATE)
    assert [s.start.nanos / 1e9 for s in spans] == pytest.approx(
        [t / 2 for t in speech.starts], abs=1e-6
    )


def auth(value: str | None) -> tts.WebSocketRequest:
    config = tts.WebSocketConfig() if value is None else tts.WebSocketConfig(authorization=value)
    return tts.WebSocketRequest(config=config)


@pytest.mark.parametrize("value", ["Bearer secret", "Api-Key secret"])
def test_a_browser_authenticates_with_its_first_message(value: str) -> None:
    server = model(api_key="secret")
    server.receive(auth(value))
    server.receive(start("a", "Hi."))
    assert kinds(drain(server), "a") == ["started", "audio", "done"]


@pytest.mark.parametrize(
    "first", [auth("Bearer wrong"), auth(None), start("a", "Hi.")], ids=["wrong", "none", "start"]
)
def test_missing_or_wrong_first_message_auth_is_unauthenticated_then_close(
    first: tts.WebSocketRequest,
) -> None:
    server = model(api_key="secret")
    server.receive(first)
    server.receive(start("b", "Hi."))  # ignored: the close is on its way
    [error] = drain(server)
    assert (error.context_id, error.error.kind) == ("", "unauthenticated")
    assert server.next_event() == Close(1008, "unauthenticated")


def test_a_start_naming_an_unknown_speaker_fails_its_context_only() -> None:
    server = model(speakers=frozenset({"astra"}))
    unknown = start_settings("Hi.", options=OPTIONS.replace(speaker="astro"))
    server.receive(tts.WebSocketRequest(context_id="a", start=unknown))
    server.receive(start("b", "Hello there."))
    responses = drain(server)
    assert kinds(responses, "a") == ["error"]
    assert "'astro' is not a voice" in responses[0].error.message
    assert kinds(responses, "b")[-1] == "done"


def test_each_contexts_first_sentence_goes_out_before_anyones_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Sentences are rendered when their context's turn comes, not on arrival: a context
    # that sent a long text first does not hold back the first audio of the others.
    rendered: list[str] = []
    real_render = _v1_model.render_speech

    def counting(text: str, rate: int) -> Any:
        rendered.append(text)
        return real_render(text, rate)

    monkeypatch.setattr(_v1_model, "render_speech", counting)
    server = model(chunk_bytes=100_000)  # one chunk per sentence
    server.receive(start("a", "The first of a. The second of a. The third of a."))
    server.receive(start("b", "The first of b. The second of b."))
    assert rendered == []  # nothing rendered on arrival
    first = drain_until_audio(server, 2)
    assert [r.context_id for r in first] == ["a", "b"]
    assert rendered == ["The first of a.", "The first of b."]  # b's first before a's second
    server = model(chunk_bytes=100_000)
    server.receive(start("a", "The first of a. The second of a. The third of a."))
    server.receive(start("b", "The first of b. The second of b."))
    audio = [(r.context_id, r.audio) for r in drain(server) if r.WhichOneof("payload") == "audio"]
    assert [context_id for context_id, _ in audio] == ["a", "b", "a", "b", "a"]
    assert audio[1][1] == pcm("The first of b.")
    assert b"".join(a for c, a in audio if c == "a") == pcm(
        "The first of a.", " The second of a.", " The third of a."
    )
