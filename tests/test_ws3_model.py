"""The sans-IO /ws3 server model, tested synchronously: no sockets, no trio."""

from __future__ import annotations

import pathlib

import pytest

from rime_trio._options import Segment
from rime_trio._protocol import (
    AudioEvent,
    Clear,
    ClientMessage,
    DoneEvent,
    EndOfStream,
    Flush,
    ServerEvent,
    TextMessage,
    TimestampsEvent,
)
from rime_trio.testing import Ws3Readings, render_speech
from rime_trio.testing._ws3_model import CloseAction, Run, Ws3ServerModel, run_events


def model(segment: Segment = "bySentence", **readings: object) -> Ws3ServerModel:
    return Ws3ServerModel(segment, Ws3Readings(**readings))  # type: ignore[arg-type]


def start(server: Ws3ServerModel) -> Run:
    action = server.next_action()
    assert isinstance(action, Run), action
    return action


def drain(server: Ws3ServerModel) -> list[tuple[str, str | None, list[ServerEvent]]]:
    """Run everything the model has to say: (text, tag, events after it) per run, and a
    final ("<close>", None, []) if it closes."""
    log: list[tuple[str, str | None, list[ServerEvent]]] = []
    while (action := server.next_action()) is not None:
        if isinstance(action, CloseAction):
            log.append(("<close>", None, []))
            break
        log.append((action.text, action.context_id, server.finish_run(action)))
    return log


def feed(server: Ws3ServerModel, *messages: ClientMessage | str) -> None:
    for message in messages:
        server.receive(TextMessage(message) if isinstance(message, str) else message)


def test_model_is_sans_io() -> None:
    from rime_trio.testing import _ws3_model, _ws3_readings

    for module in (_ws3_model, _ws3_readings):
        source = pathlib.Path(module.__file__).read_text(encoding="utf-8")
        for word in ("import trio", "anyio", "asyncio", "async def", "await "):
            assert word not in source


# ----------------------------------------------------------------------------- bySentence


def test_by_sentence_runs_at_a_sentence_end_and_text_piles_up_while_busy() -> None:
    server = model()
    feed(server, "One. Two")
    assert server.buffered == " Two"
    first = start(server)
    assert first.text == "One."
    feed(server, ". Three. Fo")  # busy: nothing is taken
    assert server.busy
    assert server.buffered == " Two. Three. Fo"
    assert server.finish_run(first) == []  # buffer not empty: no done (current docs)
    assert drain(server) == [(" Two. Three.", None, [])]
    assert server.buffered == " Fo"


def test_run_sentences_first_takes_one_sentence_per_run() -> None:
    server = model(run_sentences="first")
    feed(server, "One. Two. Three. ")
    assert [text for text, _, _ in drain(server)] == ["One.", " Two.", " Three."]


@pytest.mark.parametrize(
    ("done", "dones"), [("when_empty", [[], [], [DoneEvent()]]), ("per_run", [[DoneEvent()]] * 3)]
)
def test_done_when_empty_or_per_run(done: str, dones: list[list[ServerEvent]]) -> None:
    server = model(done=done, run_sentences="first")
    feed(server, "One. Two. Three. ")
    assert [events for _, _, events in drain(server)] == dones


def test_whitespace_left_in_the_buffer_counts_as_empty() -> None:
    server = model()
    feed(server, TextMessage("Hello. \n ", "a"))
    assert drain(server) == [("Hello.", "a", [DoneEvent("a")])]


def test_lowercase_hold_waits_for_the_next_letter() -> None:
    server = model(lowercase_splits=False)
    feed(server, "Hi. ", "there. ")
    assert server.next_action() is None
    feed(server, "Bye")
    assert drain(server) == [("Hi. there.", None, [])]


def test_abbreviation_does_not_end_a_run() -> None:
    server = model(abbreviations_split=False)
    feed(server, "Ask Dr. ")
    assert server.next_action() is None
    feed(server, "Who. ")
    assert drain(server)[0][0] == "Ask Dr. Who."


def test_unspaced_end_is_held_until_more_text_or_a_flush() -> None:
    server = model(hold_unspaced_end=True)
    feed(server, "Take 2.")
    assert server.next_action() is None
    feed(server, "5ml. Then 3.")
    assert start(server).text == "Take 2.5ml."
    held = model(hold_unspaced_end=True)
    feed(held, "The end.", Flush())
    assert drain(held) == [("The end.", None, [DoneEvent()])]


def test_broad_rule_splits_early_as_the_docs_warn() -> None:
    server = model()
    feed(server, "Take 2.", "5ml. ")
    assert start(server).text == "Take 2."


# ----------------------------------------------------------------------------- contextId


def test_later_tagging_uses_the_last_message_in_the_run() -> None:
    server = model()
    feed(server, TextMessage("Hello", "a"), TextMessage(" there. Next", "b"))
    run = start(server)
    assert (run.text, run.context_id) == ("Hello there.", "b")
    assert server.finish_run(run) == []
    feed(server, Flush())
    assert drain(server) == [(" Next", "b", [DoneEvent("b")])]


def test_ids_persist_and_start_as_null() -> None:
    server = model("immediate", done="per_run")
    feed(server, "No id yet")
    assert drain(server) == [("No id yet", None, [DoneEvent(None)])]
    feed(server, TextMessage("Tagged", "a"))
    assert drain(server)[0][1] == "a"
    feed(server, "Inherits")
    assert drain(server)[0][1] == "a"


def test_per_sentence_tagging_splits_a_run_and_tags_each_sentence() -> None:
    server = model("never", tagging="per_sentence", done="per_run")
    feed(server, TextMessage("A one. ", "a"), TextMessage("B two. C", "b"))
    feed(server, TextMessage(" three.", "c"), Flush())
    assert [(text, tag) for text, tag, _ in drain(server)] == [
        ("A one.", "a"),
        (" B two.", "b"),
        (" C three.", "b"),
    ]


def test_per_sentence_tag_is_the_message_of_the_first_non_whitespace_character() -> None:
    server = model("never", tagging="per_sentence")
    feed(server, TextMessage("One.", "a"), TextMessage(" ", "b"), TextMessage("Two. ", "c"))
    feed(server, Flush())
    assert drain(server) == [
        ("One.", "a", []),  # one done per flush, after its last run
        (" Two. ", "c", [DoneEvent("c")]),
    ]
    later = model("never")
    feed(later, TextMessage("One.", "a"), TextMessage(" ", "b"), TextMessage("Two. ", "c"))
    feed(later, Flush())
    assert drain(later) == [("One. Two. ", "c", [DoneEvent("c")])]


# ----------------------------------------------------------------------------- other modes


def test_immediate_synthesizes_on_arrival_and_holds_text_while_busy() -> None:
    server = model("immediate")
    feed(server, "no stop")
    run = start(server)
    assert run.text == "no stop"
    feed(server, " and", " more")
    assert server.finish_run(run) == []
    assert drain(server) == [(" and more", None, [DoneEvent()])]


def test_never_waits_for_flush() -> None:
    server = model("never")
    feed(server, "One. Two. ")
    assert server.next_action() is None
    feed(server, Flush())
    assert drain(server) == [("One. Two. ", None, [DoneEvent()])]


def test_flushes_during_a_run_coalesce_into_one_run_under_the_older_reading() -> None:
    server = model("never", done="per_run", never_flushes="coalesce")
    feed(server, "First", Flush())
    first = start(server)
    feed(server, " second", Flush(), " third", Flush(), Flush())
    assert server.finish_run(first) == [DoneEvent()]
    assert drain(server) == [(" second third", None, [DoneEvent()])]


def test_under_never_each_flush_is_one_run_with_one_done_whatever_is_buffered() -> None:
    """The docs (docs/websockets-segment.mdx): held flushes are spoken in turn, each
    answered by exactly one done after its audio, under either done rule."""
    server = model("never")
    feed(server, TextMessage("First.", "a"), Flush())
    first = start(server)
    feed(server, TextMessage(" second.", "b"), Flush(), TextMessage(" third", "c"))
    assert server.finish_run(first) == [DoneEvent("a")]  # " third" buffered: still a done
    feed(server, Flush())
    assert drain(server) == [(" second.", "b", [DoneEvent("b")]), (" third", "c", [DoneEvent("c")])]


def test_under_never_a_flush_cut_into_sentences_has_one_done_after_its_last() -> None:
    server = model("never", tagging="per_sentence", done="per_run")
    feed(server, TextMessage("Dr. ", "a"), TextMessage("Smith came.", "b"), Flush())
    assert drain(server) == [("Dr.", "a", []), (" Smith came.", "b", [DoneEvent("b")])]


@pytest.mark.parametrize("empty_done", [False, True])
def test_flush_on_an_empty_buffer(empty_done: bool) -> None:
    server = model("never", flush_empty_done=empty_done)
    feed(server, Flush())
    assert drain(server) == ([("", None, [DoneEvent(None)])] if empty_done else [])
    feed(server, TextMessage(" ", "a"), Flush())  # whitespace only counts as empty
    assert drain(server) == ([("", "a", [DoneEvent("a")])] if empty_done else [])
    feed(server, TextMessage("Hi", "b"), Flush())  # the whitespace is kept, though
    assert drain(server)[-1] == (" Hi", "b", [DoneEvent("b")])


def test_empty_flush_done_comes_in_order_after_running_and_queued_runs() -> None:
    server = model("never", flush_empty_done=True)
    feed(server, TextMessage("One", "a"), Flush())
    running = start(server)
    feed(server, TextMessage("Two", "b"), Flush(), Flush())  # queued: the empty flush coalesces
    feed(server, TextMessage("", "c"))
    assert server.finish_run(running) == [DoneEvent("a")]
    third = start(server)
    feed(server, Flush())  # nothing buffered or queued now: answered after the running run
    assert server.finish_run(third) == [DoneEvent("b")]
    assert drain(server) == [("", "c", [DoneEvent("c")])]


def test_clear_drops_buffered_text_only_by_default() -> None:
    server = model("never")
    feed(server, TextMessage("Running", "a"), Flush())
    running = start(server)
    feed(server, TextMessage("Queued", "b"), Flush(), TextMessage("Buffered", "c"), Clear())
    assert server.buffered == ""
    assert not server.is_abandoned(running)
    assert server.finish_run(running) == [DoneEvent("a")]
    assert drain(server) == [("Queued", "b", [DoneEvent("b")])]


def test_flushes_do_not_coalesce_across_a_clear() -> None:
    server = model("never")
    feed(server, TextMessage("Running", "a"), Flush())
    running = start(server)
    feed(server, TextMessage("Old", "b"), Flush(), Clear(), TextMessage("New", "c"), Flush())
    server.finish_run(running)
    assert [(text, tag) for text, tag, _ in drain(server)] == [("Old", "b"), ("New", "c")]


def test_clear_can_stop_the_running_run_and_drop_queued_ones() -> None:
    server = model("never", clear_stops_synthesis=True)
    feed(server, TextMessage("Running", "a"), Flush())
    running = start(server)
    feed(server, TextMessage("Queued", "b"), Flush(), Clear())
    assert server.is_abandoned(running)
    assert server.finish_run(running) == []
    feed(server, TextMessage("After", "c"), Flush())
    assert drain(server) == [("After", "c", [DoneEvent("c")])]


@pytest.mark.parametrize("empty_done", [False, True])
def test_eos_flushes_closes_and_ignores_later_messages(empty_done: bool) -> None:
    server = model(eos_empty_done=empty_done)
    feed(server, TextMessage("Tail", "t"), EndOfStream(), "Ignored. ", Flush())
    assert server.ended
    assert drain(server) == [("Tail", "t", [DoneEvent("t")]), ("<close>", None, [])]
    assert server.next_action() is None


@pytest.mark.parametrize("empty_done", [False, True])
def test_eos_on_an_empty_buffer(empty_done: bool) -> None:
    server = model(eos_empty_done=empty_done)
    feed(server, TextMessage("", "a"), EndOfStream())
    answer = [("", "a", [DoneEvent("a")])] if empty_done else []
    assert drain(server) == [*answer, ("<close>", None, [])]


def test_eos_waits_for_the_running_run() -> None:
    server = model()
    feed(server, "One. ")
    running = start(server)
    feed(server, EndOfStream())
    assert server.finish_run(running) == [DoneEvent()]
    assert server.next_action() == CloseAction()


def test_misuse_raises() -> None:
    server = model()
    feed(server, "One. ")
    running = start(server)
    with pytest.raises(RuntimeError, match="still running"):
        server.next_action()
    server.finish_run(running)
    with pytest.raises(RuntimeError, match="not the running run"):
        server.finish_run(running)


# ----------------------------------------------------------------------------- events


@pytest.mark.parametrize(
    ("placement", "order"),
    [
        ("before", ["timestamps", "chunk", "chunk", "chunk"]),
        ("between", ["chunk", "timestamps", "chunk", "chunk"]),
        ("after", ["chunk", "chunk", "chunk", "timestamps"]),
    ],
)
def test_run_events_place_timestamps(placement: str, order: list[str]) -> None:
    run = Run("Hello world.", "x", 1, 0)
    speech = render_speech(run.text, 8000)
    size = -(-len(speech.pcm) // 3)
    sizes = [size, size, len(speech.pcm) - 2 * size]
    events = run_events(run, speech, speech.pcm, sizes, placement)  # type: ignore[arg-type]
    kinds = ["chunk" if isinstance(e, AudioEvent) else "timestamps" for e in events]
    assert kinds == order
    assert b"".join(e.data for e in events if isinstance(e, AudioEvent)) == speech.pcm
    assert all(getattr(e, "context_id", None) == "x" for e in events)
    stamps = next(e for e in events if isinstance(e, TimestampsEvent))
    assert stamps.words == ("Hello", "world")
    assert stamps.starts[0] == pytest.approx(0.04)  # relative to the run's start


def test_run_events_of_an_empty_run_and_bad_sizes() -> None:
    speech = render_speech("x", 8000)
    assert run_events(Run("", "a", 1, 0), speech, b"", [], "between") == []
    with pytest.raises(ValueError, match="add up"):
        run_events(Run("x", "a", 1, 0), speech, speech.pcm, [1], "between")
